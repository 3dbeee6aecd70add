"""Transformer-XL through the pipeline schedules on gloo equals the serial model.

Each stage is built from its explicit stage (mpu.get_pipeline_stage), so it builds only
its share of the layers. Three consecutive iterations of two micro-batches each are three
segments of two streams: micro-batch i of iteration k+1 continues the text of micro-batch
i of iteration k, as Chinese-Transformer-XL continues each batch row. The serial model
carries its mems by hand (`model(ids, mems)`); the pipeline stages keep theirs in their
memory store (`use_memory=True`), and the mems never travel between stages. Losses, every
gradient, the gradient norm and the weights after each SGD step must match, at PP=2 and
at PP=2 with two virtual stages per rank.
"""
import pytest
import torch

from megatron_core.models.transformer_xl import TransformerXLModel
from megatron_core.mpu import parallel_state as ps
from megatron_core.mpu.grads import clip_grad_norm
from megatron_core.pipeline.finalize_grads import finalize_model_grads
from megatron_core.pipeline.p2p import P2PConfig
from megatron_core.pipeline.schedules import get_forward_backward_func
from tests.harness.distributed import DistributedTestFailure, run_distributed
from megatron_core.transformer.config import TransformerConfig
from tests.harness.model_checks import local_shard

pytestmark = pytest.mark.quick

VOCAB, MICRO, SEG, MEM, HIDDEN, LAYERS = 64, 2, 4, 6, 16, 4
ITERATIONS, MICROBATCHES = 3, 2
LR = 0.5


def _config():
    return TransformerConfig(num_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=4, ffn_hidden_size=32,
                             position_embedding_type="relative_xl", activation="gelu_tanh", hidden_dropout=0.0,
                             attention_dropout=0.0, init_seed=9, make_vocab_size_divisible_by=1)


def _build(stage=None):
    model = TransformerXLModel(_config(), VOCAB, mem_length=MEM, stage=stage)
    # Move the zero-initialised r_w_bias / r_r_bias off zero so they shape the scores.
    with torch.no_grad():
        for name in ("r_w_bias", "r_r_bias"):
            g = torch.Generator().manual_seed(len(name) + (name == "r_r_bias"))
            getattr(model, name).copy_(torch.randn(getattr(model, name).shape, generator=g) * 0.3)
    return model


def _iterations():
    g = torch.Generator().manual_seed(11)
    return [[{"tokens": torch.randint(0, VOCAB, (MICRO, SEG), generator=g),
              "labels": torch.randint(0, VOCAB, (MICRO, SEG), generator=g)} for _ in range(MICROBATCHES)]
            for _ in range(ITERATIONS)]


def _serial():
    """Per iteration: the losses, gradients and gradient norm, then the weights after SGD."""
    ps.initialize_model_parallel(1, 1)
    model = _build()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    mems = [None] * MICROBATCHES
    results = []
    for batches in _iterations():
        losses = []
        for i, batch in enumerate(batches):
            per_token, mems[i] = model(batch["tokens"], mems[i], labels=batch["labels"])
            loss = per_token.mean()
            (loss / MICROBATCHES).backward()
            losses.append(loss.item())
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        norm = torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in grads.values()])).item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        results.append((losses, grads, norm, {n: p.detach().clone() for n, p in model.named_parameters()}))
    ps.destroy_model_parallel()
    return results


def _forward_step(data_iterator, model):
    batch = next(data_iterator)
    output, _ = model(batch["tokens"] if model.pre_process else None, labels=batch["labels"], use_memory=True)
    return output, lambda per_token: (per_token.mean(), {"loss": per_token.mean().detach()})


def _build_chunks(pp, virtual):
    ps.initialize_model_parallel(1, pp, virtual)
    chunks = []
    for v in range(virtual or 1):
        chunks.append(_build(ps.get_pipeline_stage(v if virtual else None)))
    return chunks


def _check_pipeline(pp, virtual=None):
    serial = _serial()
    chunks = _build_chunks(pp, virtual)
    # Each stage holds only its layers: together they are the serial model's, once each.
    built = sum(len(chunk.layers) for chunk in chunks)
    assert built == LAYERS // pp, f"this rank built {built} layers of {LAYERS} at PP={pp}"
    params = [p for chunk in chunks for p in chunk.parameters()]
    optimizer = torch.optim.SGD(params, lr=LR)
    schedule = get_forward_backward_func()
    for k, batches in enumerate(_iterations()):
        losses, grads, norm, weights = serial[k]
        iterators = [iter(batches) for _ in chunks]
        stats = schedule(forward_step_func=_forward_step, data_iterator=iterators if virtual else iterators[0],
                         model=chunks if virtual else chunks[0], num_microbatches=MICROBATCHES,
                         p2p_config=P2PConfig(tensor_shape=(SEG, MICRO, HIDDEN)))
        finalize_model_grads(chunks)
        if ps.is_pipeline_last_stage(ignore_virtual=True):
            got = [s["loss"].item() for s in stats]
            assert torch.allclose(torch.tensor(got), torch.tensor(losses), atol=1e-5), (k, got, losses)
        for chunk in chunks:
            serial_name = chunk.sharding_map().global_key  # global layer index, copies' original
            for name, param in chunk.named_parameters():
                want = local_shard(param, grads[serial_name(name)])
                torch.testing.assert_close(param.grad, want, atol=1e-5, rtol=1e-4,
                                           msg=lambda m: f"iteration {k} grad {name}: {m}")
        got_norm = clip_grad_norm(params, max_norm=1e9)
        assert abs(got_norm - norm) <= 1e-5 * max(1.0, norm), (k, got_norm, norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for chunk in chunks:
            serial_name = chunk.sharding_map().global_key
            for name, param in chunk.named_parameters():
                torch.testing.assert_close(param.detach(), weights[serial_name(name)], atol=1e-6, rtol=1e-5,
                                           msg=lambda m: f"iteration {k} weight {name}: {m}")
    for chunk in chunks:  # one stream per micro-batch, [m, b, h] per layer of the chunk
        assert sorted(chunk.memory.streams()) == list(range(MICROBATCHES))
        assert all(m.shape == (MEM, MICRO, HIDDEN) for m in chunk.memory.read(0))
        assert len(chunk.memory.read(0)) == len(chunk.layers)
    ps.destroy_model_parallel()


def _two_ranks():
    _check_pipeline(2)
    _check_pipeline(2, virtual=2)


def test_pipeline_two_stages_and_interleaved_equal_serial_over_three_segments():
    run_distributed(_two_ranks, 2, timeout=300)


def _returns_mems_pair():
    chunks = _build_chunks(2, None)

    def forward_step(data_iterator, model):  # the serial habit: hand back (output, mems)
        batch = next(data_iterator)
        return model(batch["tokens"] if model.pre_process else None, labels=batch["labels"]), \
            lambda per_token: (per_token.mean(), {})

    get_forward_backward_func()(forward_step_func=forward_step, data_iterator=iter(_iterations()[0]),
                                model=chunks[0], num_microbatches=MICROBATCHES,
                                p2p_config=P2PConfig(tensor_shape=(SEG, MICRO, HIDDEN)))


def test_forward_step_returning_output_and_mems_gets_one_sentence():
    with pytest.raises(DistributedTestFailure) as failure:
        run_distributed(_returns_mems_pair, 2, timeout=120)
    message = str(failure.value)
    assert "UserError" in message and "use_memory=True" in message and "AttributeError" not in message
