"""The one contract model chunks meet (pipeline/chunk.py) and the micro-batch step's checks
of the user's forward_step_func, in one process (PP=1: the no-pipelining schedule runs the
same microbatch_step as the pipelined ones); and, on two gloo ranks, a table copy whose
copies do not name exactly one owner is reported instead of counted twice in the norm."""
import pytest
import torch

from megatron_core import mpu
from megatron_core.errors import ConfigError, UserError
from megatron_core.models.bert import BertModel
from megatron_core.models.gpt import GPTModel
from megatron_core.models.t5 import T5Model
from megatron_core.models.transformer_xl import TransformerXLModel
from megatron_core.pipeline.chunk import PipelineChunk, unwrap_model
from megatron_core.pipeline.finalize_grads import finalize_model_grads
from megatron_core.pipeline.schedules import get_forward_backward_func
from tests.harness import run_distributed
from megatron_core.transformer import TransformerConfig
from tests.harness.model_checks import single_process_world

VOCAB, B, S, H = 32, 2, 4, 16


def _config(**overrides):
    values = dict(num_layers=2, hidden_size=H, num_attention_heads=4, ffn_hidden_size=32, hidden_dropout=0.0,
                  attention_dropout=0.0, make_vocab_size_divisible_by=1)
    values.update(overrides)
    return TransformerConfig(**values)


def _txl(mem_length=3):
    return TransformerXLModel(_config(position_embedding_type="relative_xl"), VOCAB, mem_length=mem_length)


# Per test (0.06 s), not per module: run_distributed forks its workers only from a process without a
# process group, and a world kept to the end of the module made its later tests spawn them (~5 s each).
@pytest.fixture
def single_rank():
    with single_process_world():
        yield


def test_every_family_is_a_pipeline_chunk_with_its_stage_copies(single_rank):
    families = {
        "gpt": GPTModel(_config(), VOCAB, S),
        "bert": BertModel(_config(), VOCAB, S),
        "t5": T5Model(_config(position_embedding_type="t5_relative", normalization="RMSNorm"), VOCAB,
                      max_sequence_length=S),
        "transformer_xl": _txl(),
    }
    for name, model in families.items():
        assert isinstance(model, PipelineChunk), name
        assert model.word_embeddings_weight() is model.embedding.word_embeddings.weight, name
        assert "embedding.word_embeddings.weight" in model.stage_copies(), name
        # A one-element list is the tensor itself (what p2p hands a single-output stage).
        hidden = torch.zeros(S, B, H)
        model.set_input_tensor([hidden])
        assert model.input_tensor is hidden, name
        model.set_current_microbatch(3)
        assert model.current_microbatch == 3
    assert {"encoder_relative_bias.weight", "decoder_relative_bias.weight"} <= set(families["t5"].stage_copies())
    assert {"r_w_bias", "r_r_bias"} <= set(families["transformer_xl"].stage_copies())
    with pytest.raises(ValueError, match="at most 1"):
        families["gpt"].set_input_tensor([hidden, hidden])
    # pre_process / post_process have one source, the stage: read off it, never stored.
    last = GPTModel(_config(), VOCAB, S, stage=mpu.PipelineStage(1, 2))
    assert (last.pre_process, last.post_process) == (False, True) and "pre_process" not in vars(last)
    with pytest.raises(AttributeError):
        last.pre_process = True
    assert all(m.pre_process and m.post_process for m in families.values())
    families["t5"].set_input_tensor([None, hidden])  # decoder stages: (decoder hidden, encoder output)
    wrapped = torch.nn.Module()
    wrapped.module = families["gpt"]
    assert unwrap_model(wrapped) is families["gpt"]


def _run(forward_step, model, batches):
    return get_forward_backward_func()(forward_step_func=forward_step, data_iterator=iter(batches), model=model,
                                       num_microbatches=len(batches))


def _batches(n=2):
    g = torch.Generator().manual_seed(0)
    return [{"tokens": torch.randint(0, VOCAB, (B, S), generator=g),
             "labels": torch.randint(0, VOCAB, (B, S), generator=g)} for _ in range(n)]


def test_forward_step_contract_breaches_get_one_sentence(single_rank):
    gpt = GPTModel(_config(), VOCAB, S)
    loss_func = lambda out: (out.mean(), {})
    with pytest.raises(UserError, match=r"must return \(output, loss_func\)"):
        _run(lambda it, model: model(next(it)["tokens"]), gpt, _batches())
    with pytest.raises(UserError, match=r"loss_func returned .* it must return \(scalar loss tensor"):
        _run(lambda it, model: (model(next(it)["tokens"]), lambda out: out.mean()), gpt, _batches())
    with pytest.raises(UserError, match="not a pipeline model chunk"):
        _run(lambda it, model: (model(torch.zeros(B, H)), loss_func), torch.nn.Linear(H, H), _batches())
    # Transformer-XL's serial habit: model(...) is (output, mems).
    txl = _txl()
    with pytest.raises(UserError, match="use_memory=True"):
        _run(lambda it, model: (model(next(it)["tokens"]), loss_func), txl, _batches())
    with pytest.raises(UserError, match="use_memory=True"):  # mem_length 0: (output, [])
        _run(lambda it, model: (model(next(it)["tokens"]), loss_func), _txl(mem_length=0), _batches())


def test_use_memory_continues_each_micro_batch_stream(single_rank):
    """No pipelining: micro-batch i of each iteration continues stream i, as hand-carried mems."""
    model = _txl().eval()
    iterations = [_batches(), _batches()]
    iterations[1] = [{"tokens": b["tokens"].flip(0), "labels": b["labels"]} for b in iterations[1]]
    got = []

    def forward_step(data_iterator, chunk):
        batch = next(data_iterator)
        output, _ = chunk(batch["tokens"], labels=batch["labels"], use_memory=True)
        return output, lambda out: (out.mean(), {"loss": out.mean().detach()})

    with torch.no_grad():
        for batches in iterations:
            got += [s["loss"] for s in get_forward_backward_func()(
                forward_step_func=forward_step, data_iterator=iter(batches), model=model,
                num_microbatches=len(batches), forward_only=True)]
        mems, want = [None, None], []
        for batches in iterations:
            for i, batch in enumerate(batches):
                loss, mems[i] = model(batch["tokens"], mems[i], labels=batch["labels"])
                want.append(loss.mean())
    torch.testing.assert_close(torch.stack(got), torch.stack(want), rtol=0, atol=0)
    assert model.memory.streams() == [0, 1]
    with pytest.raises(ValueError, match="not both"):
        model(iterations[0][0]["tokens"], mems[0], use_memory=True)


def _two_owners():
    mpu.initialize_model_parallel(1, 2)
    config = _config()
    stage = GPTModel(config, VOCAB, S, stage=mpu.get_pipeline_stage())
    if mpu.is_pipeline_last_stage():
        stage.word_embeddings_weight().shared = False  # the copy claims to own the table too
    with pytest.raises(ConfigError, match="2 of the copies are marked as its owner"):
        finalize_model_grads(stage)


def test_a_table_with_two_owning_copies_is_reported():
    run_distributed(_two_owners, 2, timeout=120)
