"""The native backend with ZeRO-1 on 4 ranks equals one serial process running plain AdamW
for 5 steps: TP=2 x DP=2 (with sequence parallelism and overlapped reduction), and PP=2 x
DP=2 with the tied word embedding summed over the first and last stage before the
reduce-scatter (whose shard layout differs between the stages). The reported gradient norm
is the serial norm (shared copies and replicated parameters counted once).
"""
import torch

from megatron_core.mpu import parallel_state as ps
from tests.harness import run_distributed
from tests.harness.gpt_fixture import global_batches, gpt_step, p2p_config, tiny_gpt
from tests.harness.training_steps import assert_params_match, backend_steps, serial_adamw_steps
from megatron_core.training.config import OptimizerConfig, ParallelConfig, PrecisionConfig
from megatron_core.training.backends.native import build_backend

OPT = OptimizerConfig(lr=1e-3, weight_decay=0.1, clip_grad=0.5)
STEPS, MICROBATCHES = 5, 4


def _check(tp, pp, sequence_parallel=False, overlap=True):
    ps.initialize_model_parallel(1, 1)
    serial = serial_adamw_steps(tiny_gpt(num_layers=4), global_batches(STEPS, MICROBATCHES), gpt_step, OPT)
    ps.destroy_model_parallel()
    ps.initialize_model_parallel(tp, pp)
    model = tiny_gpt(tp, stage=ps.get_pipeline_stage(), sequence_parallel=sequence_parallel, num_layers=4)
    parallel = ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                              use_distributed_optimizer=True, overlap_grad_reduce=overlap, ddp_bucket_size=500,
                              world_size=4)
    backend = build_backend([model], OPT, PrecisionConfig(), parallel)
    results = backend_steps([model], backend, global_batches(STEPS, MICROBATCHES), gpt_step,
                            p2p_config(tp, sequence_parallel))
    assert all(r.updated for r in results)
    torch.testing.assert_close(torch.tensor([r.grad_norm for r in results]), torch.tensor(serial.grad_norms),
                               rtol=1e-5, atol=0)
    assert assert_params_match([model], serial.model, atol=1e-5, rtol=1e-4) > 0
    ps.destroy_model_parallel()


def _four_ranks():
    _check(tp=2, pp=1, sequence_parallel=True)
    _check(tp=1, pp=2)


def test_zero1_at_tp2xdp2_with_sequence_parallel_and_pp2xdp2_tied_equal_serial_adamw():
    run_distributed(_four_ranks, 4, timeout=300)
