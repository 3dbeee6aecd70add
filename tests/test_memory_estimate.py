"""training/memory_estimate.py against two independent references: the activation formulas of
Korthikanti et al. 2022 evaluated by hand, and the bytes of the tensors a tiny native-backend
run actually allocates (weights, fp32 gradient buffers, optimizer state and master copies)
after one step, in real gloo processes."""
import pytest
import torch

from megatron_core.models.rank_parameters import ModelShape
from megatron_core.mpu import parallel_state as ps
from tests.harness import run_distributed
from tests.harness.gpt_fixture import MICRO, SEQ, VOCAB, global_batches, gpt_step, tiny_gpt
from tests.harness.training_steps import backend_steps
from megatron_core.training.config import (DeepSpeedConfig, OptimizerConfig, ParallelConfig, PrecisionConfig,
                                           RunConfig, TrainingConfig)
from megatron_core.training.memory_estimate import (LayerActivation, estimate_memory, in_flight_microbatches,
                                                    layer_activation_bytes)
from megatron_core.transformer import TransformerConfig

pytestmark = pytest.mark.quick

# GPT-3 175B-like layer of the paper's Table 2 setting: s 2048, b 1, h 12288, a 96, t 8.
S, B, H, A, T = 2048, 1, 12288, 96, 8
LAYER = LayerActivation(seq=S, micro_batch=B, hidden=H, heads=A, query_size=H, kv_size=H, ffn=4 * H, gated=False,
                        keys=S)


def test_layer_activations_are_the_papers_formulas_for_16bit_activations():
    # Korthikanti et al., section 4: bytes per layer, 16-bit activations, 1-byte dropout masks.
    no_parallelism = S * B * H * 34 + 5 * A * S * S * B                          # eq. (1)
    tensor_parallel = S * B * H * (10 + 24 / T + 5 * A * S / (H * T))            # eq. (2)
    with_sequence_parallel = S * B * H / T * (34 + 5 * A * S / H)                # eq. (4)
    selective = S * B * H / T * 34                                                # eq. (6)
    assert layer_activation_bytes(LAYER, 1, False, 2) == no_parallelism == 2_868_903_936
    assert layer_activation_bytes(LAYER, T, False, 2) == int(tensor_parallel) == 578_813_952
    assert layer_activation_bytes(LAYER, T, True, 2) == int(with_sequence_parallel) == 358_612_992
    assert layer_activation_bytes(LAYER, T, True, 2, selective_recompute=True) == int(selective) == 106_954_752


def test_without_dropout_the_masks_are_not_kept():
    no_dropout = LayerActivation(**{**LAYER.__dict__, "attention_dropout": False, "hidden_dropout": False})
    # minus the a s^2 b attention mask, its dropout output (2 a s^2 b) and the two s b h masks
    expected = S * B * H * 32 + 2 * A * S * S * B
    assert layer_activation_bytes(no_dropout, 1, False, 2) == expected


def _run(world: int = 1, tp: int = 1, pp: int = 1, virtual=None, micro: int = 1, global_batch: int = 16,
         recompute=None, dtype=torch.bfloat16, distributed_optimizer: bool = False, num_layers: int = 8,
         deepspeed=None) -> RunConfig:
    config = TransformerConfig(num_layers=num_layers, hidden_size=64, num_attention_heads=4, params_dtype=dtype,
                               tensor_model_parallel_size=tp, recompute_granularity=recompute,
                               hidden_dropout=0.0, attention_dropout=0.0)
    return RunConfig(model=config,
                     training=TrainingConfig(micro_batch_size=micro, global_batch_size=global_batch, seq_length=32),
                     precision=PrecisionConfig(bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16),
                     parallel=ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                             virtual_pipeline_model_parallel_size=virtual, world_size=world,
                                             use_distributed_optimizer=distributed_optimizer),
                     deepspeed=DeepSpeedConfig(deepspeed=deepspeed is not None, resolved=deepspeed))


def test_first_1f1b_stage_holds_the_whole_model_of_activations():
    """With 1F1B stage 0 keeps PP micro-batches of its L/PP layers: all L layers' worth."""
    serial, piped = _run(), _run(world=4, pp=4)
    shape = ModelShape("gpt", serial.model, 256, 32, structure="decoder")
    one = estimate_memory(shape, serial)
    logits = 4 * 32 * 1 * 256                   # the last stage's fp32 softmax, here on the only stage
    first = [e for e in [estimate_memory(shape, piped)] if e.pipeline_rank == 0]
    assert first and first[0].activations == one.activations - logits
    assert in_flight_microbatches(0, 4, 16) == 4 and in_flight_microbatches(3, 4, 16) == 1
    assert in_flight_microbatches(0, 4, 2) == 2                       # fewer micro-batches than stages
    # interleaved (2 chunks per stage): Megatron's warmup 2 (p - r - 1) + (v - 1) p, plus the one in flight
    assert in_flight_microbatches(0, 4, 16, 2) == 11 and in_flight_microbatches(3, 4, 16, 2) == 5


def test_selective_and_full_recompute_shrink_the_activations():
    shape = ModelShape("gpt", _run().model, 256, 32, structure="decoder")
    full = estimate_memory(shape, _run()).activations
    selective = estimate_memory(shape, _run(recompute="selective")).activations
    recompute = _run(recompute="full")
    recompute.model.recompute_method, recompute.model.recompute_num_layers = "uniform", 1
    checkpointed = estimate_memory(ModelShape("gpt", recompute.model, 256, 32, structure="decoder"),
                                   recompute).activations
    assert checkpointed < selective < full


def test_zero_stages_partition_what_the_zero_paper_says():
    shape = ModelShape("gpt", _run().model, 256, 32, structure="decoder")
    plain = estimate_memory(shape, _run(world=4, deepspeed={"zero_optimization": {"stage": 0}}))
    stages = {s: estimate_memory(shape, _run(world=4, deepspeed={"zero_optimization": {"stage": s}}))
              for s in (1, 2, 3)}
    psi = plain.parameters
    assert (plain.weights, plain.gradients, plain.optimizer) == (2 * psi, 2 * psi, 12 * psi)
    assert stages[1].optimizer == 12 * psi // 4 and stages[1].gradients == 2 * psi
    assert stages[2].gradients == 2 * psi // 4 and stages[2].weights == 2 * psi
    assert stages[3].weights == 2 * psi // 4
    offload = estimate_memory(shape, _run(world=4, deepspeed={"zero_optimization": {
        "stage": 2, "offload_optimizer": {"device": "cpu"}}}))
    assert offload.optimizer == 0 and offload.host_optimizer == 12 * psi // 4


# --- the bytes a tiny run allocates --------------------------------------------------------------------------

def _allocated(model, backend) -> dict:
    """What the run holds after a step, measured on its tensors."""
    optimizer_state = sum(t.numel() * t.element_size() for state in backend.optimizer.state.values()
                          for t in state.values() if torch.is_tensor(t) and t.numel() > 1)   # not the step counts
    masters = sum(m.param.numel() * m.param.element_size() for m in backend.masters if m.write_back is not None)
    return dict(weights=sum(p.numel() * p.element_size() for p in model.parameters()),
                gradients=sum(b.grad_data.numel() * b.grad_data.element_size() for b in backend.buffers),
                optimizer=optimizer_state + masters, buckets=sum(len(b.plans) for b in backend.buffers))


def _measure(tp: int, dtype, distributed_optimizer: bool) -> None:
    from megatron_core.training.backends.native import build_backend
    world = 2
    ps.initialize_model_parallel(tp, 1)
    dp = world // tp
    model = tiny_gpt(tp=tp, dtype=dtype)
    parallel = ParallelConfig(tensor_model_parallel_size=tp, world_size=world,
                              use_distributed_optimizer=distributed_optimizer)
    backend = build_backend([model], OptimizerConfig(lr=1e-3), PrecisionConfig(bf16=dtype == torch.bfloat16),
                            parallel)
    backend_steps([model], backend, global_batches(1, 2 * dp), gpt_step)
    measured = _allocated(model, backend)
    run = RunConfig(model=model.config, parallel=parallel,
                    training=TrainingConfig(micro_batch_size=MICRO, global_batch_size=2 * dp * MICRO,
                                            seq_length=SEQ),
                    precision=PrecisionConfig(bf16=dtype == torch.bfloat16))
    estimate = estimate_memory(ModelShape("gpt", model.config, VOCAB, SEQ, structure="decoder"), run)
    assert estimate.parameters == sum(p.numel() for p in model.parameters())
    assert estimate.weights == measured["weights"]
    if not distributed_optimizer:
        assert estimate.gradients == measured["gradients"]
        assert estimate.optimizer == measured["optimizer"]
    else:
        # The buffers pad each bucket to a multiple of DP; the estimate does not count padding.
        padding = measured["buckets"] * (dp - 1)
        assert 0 <= measured["gradients"] - estimate.gradients <= 4 * padding
        assert 0 <= measured["optimizer"] - estimate.optimizer <= 12 * measured["buckets"]
    ps.destroy_model_parallel()


def test_state_bytes_equal_the_tensors_of_a_bf16_run_at_dp2():
    run_distributed(_measure, 2, 1, torch.bfloat16, False)


def test_state_bytes_equal_the_tensors_of_a_bf16_distributed_optimizer_run_at_dp2():
    run_distributed(_measure, 2, 1, torch.bfloat16, True)


def test_state_bytes_equal_the_tensors_of_an_fp32_run_at_tp2():
    run_distributed(_measure, 2, 2, torch.float32, False)
