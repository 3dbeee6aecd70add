"""Run NVIDIA's megatron-core (package `megatron`) in a gloo rank on a machine without CUDA.

megatron-core 0.16.1 reaches for CUDA in a few places even with `use_cpu_initialization=True`:
the tensor-parallel scratch buffer (GlobalMemoryBuffer.get_tensor allocates on
torch.cuda.current_device()), rotary embeddings (inv_freq moved to the current device), the
DDP grad buffers, FP32Optimizer's scale and the grad-norm reductions (device='cuda' literals),
and the torch_dist writer (torch.cuda.synchronize, a results queue served by a spawned
Manager process, and writer processes a daemon worker may not fork). `start_ranks` patches
those in this process only (the ranks are forked or spawned workers that exit afterwards) and
enters `CudaDevicesOnCpu`, which turns every device='cuda'/index argument of a torch call
into 'cpu'. Grad clipping stays off: its check
`param.grad.type() == 'torch.cuda.FloatTensor'` cannot hold on the CPU. The distributed
optimizer sorts the parameters it wraps by the same kind of check when it is built; the
harness builds it inside `CudaTensorTypes` (and only there).
"""
from __future__ import annotations

import multiprocessing
import queue
import random

import numpy as np
import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode


class CudaDevicesOnCpu(TorchFunctionMode):
    """Rewrites a `device=` keyword naming CUDA (or a bare device index) to 'cpu', and makes
    Tensor.cuda() a no-op (the tied output layer's all-reduce at PP > 1 moves it to CUDA first)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.cuda:
            return args[0]
        kwargs = kwargs or {}
        device = kwargs.get("device")
        if device is not None and (isinstance(device, int) or torch.device(device).type == "cuda"):
            kwargs["device"] = "cpu"
        return func(*args, **kwargs)


class CudaTensorTypes(TorchFunctionMode):
    """Tensor.type() without arguments answers CUDA's name for a CPU tensor ('torch.FloatTensor'
    -> 'torch.cuda.FloatTensor'): what DistributedOptimizer.__init__ asks to tell fp32 parameters
    from fp16/bf16 ones."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if func is torch.Tensor.type and len(args) == 1 and not kwargs and result.startswith("torch.") \
                and not result.startswith("torch.cuda."):
            return "torch.cuda." + result[len("torch."):]
        return result


def import_megatron() -> None:
    """Import what the ranks use, in the parent: importing megatron.core costs ~8 s of CPU, which
    forked ranks then inherit instead of paying each (it starts no thread, so forking stays safe)."""
    import megatron.core.dist_checkpointing.strategies.filesystem_async  # noqa: F401
    import megatron.core.distributed  # noqa: F401
    import megatron.core.models.bert.bert_layer_specs  # noqa: F401
    import megatron.core.models.bert.bert_model  # noqa: F401
    import megatron.core.models.gpt.gpt_layer_specs  # noqa: F401
    import megatron.core.optimizer  # noqa: F401
    import megatron.core.optimizer_param_scheduler  # noqa: F401


def _cpu_scratch_tensor(self, tensor_shape, dtype, name, mem_alloc_context=None):
    # A fresh tensor each time: the buffer is only an allocation cache on the GPU.
    return torch.empty(tensor_shape, dtype=dtype)


def patch_megatron_for_cpu() -> None:
    """Install the patches the module docstring lists (idempotent)."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async
    from megatron.core.utils import GlobalMemoryBuffer

    torch.cuda.current_device = lambda: 0          # a bare index: CudaDevicesOnCpu maps it to cpu
    torch.cuda.synchronize = lambda *args, **kwargs: None
    GlobalMemoryBuffer.get_tensor = _cpu_scratch_tensor
    # A synchronous save puts and gets the write results in this process: no Manager needed.
    filesystem_async._results_queue = queue.Queue()
    # The torch_dist writer forks one writer per file and joins it; a daemon worker may not fork.
    multiprocessing.current_process().daemon = False


def start_ranks(tp: int, pp: int, seed: int, virtual: int | None = None) -> None:
    """In a gloo rank: megatron-core's model-parallel groups (`virtual` model chunks per pipeline
    rank, as --num-layers-per-virtual-pipeline-stage gives) and Megatron-LM's seeding.

    Megatron-LM's _set_random_seed offsets the seed by 100 per pipeline stage, then seeds
    random, numpy and torch (CPU initialization draws the full weights from torch's generator,
    so every TP rank builds the same master weights and keeps its slice)."""
    from megatron.core import parallel_state, tensor_parallel

    patch_megatron_for_cpu()
    CudaDevicesOnCpu().__enter__()      # left on: the rank exits after its function
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                             virtual_pipeline_model_parallel_size=virtual)
    stage_seed = seed + 100 * parallel_state.get_pipeline_model_parallel_rank()
    random.seed(stage_seed)
    np.random.seed(stage_seed)
    torch.manual_seed(stage_seed)
    tensor_parallel.model_parallel_cuda_manual_seed(stage_seed, inference_rng_tracker=True, force_reset_rng=True)


def stop_ranks() -> None:
    from megatron.core import parallel_state

    if dist.is_initialized():
        dist.barrier()
    parallel_state.destroy_model_parallel()


def prepare_distributed_optimizer_load(optimizer) -> None:
    """Make a fresh DistributedOptimizer with torch's Adam loadable from torch_dist, as the fused
    Adam of Apex/Transformer Engine (GPU) is. torch's Adam has no state, hence no `step`, before
    its first step, and DistributedOptimizer.state_dict() (which sharded_state_dict calls) needs
    one: megatron-core's own _init_optimizer_states_with_dummy_values makes placeholders that the
    load replaces. Its fully_reshardable load then copies every state key of a parameter from the
    checkpoint's tensors, `step` included, which only torch's Adam keeps there (the fused ones keep
    it in the param groups, which load_state_dict has already set from the checkpoint), so the
    copy skips `step`, and runs without autograd."""
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner._init_optimizer_states_with_dummy_values()
        copy_states = inner._set_main_param_and_optimizer_states

        def without_step(model_param, tensors, copy_states=copy_states, inner=inner):
            group_index, group_order = inner.model_param_group_index_map[model_param]
            state = inner.optimizer.state[inner.optimizer.param_groups[group_index]["params"][group_order]]
            step = state.pop("step", None)
            with torch.no_grad():   # an fp32 model's main params are views of its weights (the dp_zero
                copy_states(model_param, tensors)       # load path lacks the no_grad the others have)
            if step is not None:
                state["step"] = step

        inner._set_main_param_and_optimizer_states = without_step
