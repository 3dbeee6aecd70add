"""GPT through the pipeline schedules on gloo equals the serial model.

Layouts: PP=2, PP=4, PP=2 x TP=2 (also with sequence parallelism), PP=2 x DP=2,
interleaved PP=2 with 2 virtual stages, and no pipelining at TP=2 and TP=2 x DP=2;
4 micro-batches per data-parallel rank; loss, every gradient (the tied word embedding
included, summed over the stages holding a copy), the gradient norm and the weights after
one SGD step against one serial process.
"""
import torch

from megatron_core.mpu import parallel_state as ps
from megatron_core.models.gpt import GPTModel
from megatron_core.pipeline.p2p import P2PConfig
from tests.harness.distributed import run_distributed
from tests.harness.gpt_fixture import gpt_step
from megatron_core.transformer.config import TransformerConfig
from tests.harness.pipeline_checks import check_grads, check_norm_and_step, run_pipeline, serial_step

VOCAB, SEQ, MICRO, HIDDEN = 64, 8, 2, 16


def _config(tp, sequence_parallel=False):
    return TransformerConfig(num_layers=4, hidden_size=HIDDEN, num_attention_heads=4, hidden_dropout=0.0,
                             attention_dropout=0.0, tensor_model_parallel_size=tp,
                             sequence_parallel=sequence_parallel)


def _batches(n):
    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(n):
        tokens = torch.randint(0, VOCAB, (MICRO, SEQ + 1), generator=g)
        mask = (torch.rand(MICRO, SEQ, generator=g) > 0.2).float()
        out.append({"tokens": tokens[:, :-1], "labels": tokens[:, 1:], "loss_mask": mask})
    return out


def _builder(tp, sequence_parallel=False):
    def build(stage):
        return GPTModel(_config(tp, sequence_parallel), VOCAB, SEQ, stage=stage)
    return build


def _sgd(params):
    # SGD, not Adam: at TP=2 a bias gradient near zero differs from the serial one by
    # rounding, and Adam's g / sqrt(v) turns that into a different step.
    return torch.optim.SGD(params, lr=0.5)


def _check_layout(tp, pp, virtual=None, sequence_parallel=False):
    world = torch.distributed.get_world_size()
    dp = world // (tp * pp)
    batches = _batches(4 * dp)
    reference = serial_step(_builder(1), batches, gpt_step, _sgd)
    serial_losses, grads = reference.losses, reference.grads
    seq = SEQ // tp if sequence_parallel else SEQ
    p2p_config = P2PConfig(tensor_shape=(seq, MICRO, HIDDEN))
    chunks, stats, mine = run_pipeline(_builder(tp, sequence_parallel), batches, gpt_step, tp, pp, virtual, p2p_config)
    if ps.is_pipeline_last_stage(ignore_virtual=True):
        dp_rank = ps.get_data_parallel_rank()
        got = [s["loss"].item() for s in stats]
        want = serial_losses[dp_rank * len(mine):(dp_rank + 1) * len(mine)]
        assert torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-5), (got, want)
    else:
        assert stats == []
    assert check_grads(chunks, grads) > 0
    check_norm_and_step(chunks, reference, _sgd)  # the tied table counted once
    # Evaluation: forward-only gives the same losses and touches no gradient.
    for chunk in chunks:
        chunk.zero_grad(set_to_none=True)
    ps.destroy_model_parallel()
    chunks, stats, mine = run_pipeline(_builder(tp, sequence_parallel), batches, gpt_step, tp, pp, virtual,
                                       p2p_config, forward_only=True)
    if ps.is_pipeline_last_stage(ignore_virtual=True):
        dp_rank = ps.get_data_parallel_rank()
        got = [s["loss"].item() for s in stats]
        want = serial_losses[dp_rank * len(mine):(dp_rank + 1) * len(mine)]
        assert torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-5), (got, want)
    assert all(p.grad is None for c in chunks for p in c.parameters())
    ps.destroy_model_parallel()


def _two_ranks():
    _check_layout(tp=1, pp=2)
    _check_layout(tp=2, pp=1)  # no pipelining: gradient accumulation over micro-batches
    _check_layout(tp=1, pp=2, virtual=2)


def _four_ranks():
    _check_layout(tp=1, pp=4)
    _check_layout(tp=2, pp=2)
    _check_layout(tp=2, pp=2, sequence_parallel=True)
    _check_layout(tp=1, pp=2)  # DP=2
    _check_layout(tp=2, pp=1)  # no pipelining with TP=2 x DP=2


def test_gpt_pipeline_two_stages_and_interleaved():
    run_distributed(_two_ranks, 2, timeout=300)


def test_gpt_pipeline_four_ranks_pp4_pp2xtp2_pp2xdp2():
    run_distributed(_four_ranks, 4, timeout=400)
