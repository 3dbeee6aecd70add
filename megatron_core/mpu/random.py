"""RNG streams for tensor-parallel code, and activation recomputation that replays them.

Two streams exist on every rank:
  * the default torch generator, seeded identically on all ranks: used for replicated
    work (dropout on activations that every tensor-parallel rank holds whole);
  * the "model-parallel-rng" stream in the tracker, seeded differently per tensor-parallel
    rank: used inside tensor-parallel regions (e.g. dropout on a rank's own heads), so
    ranks do not drop the same units of different shards.
On CUDA the streams are CUDA generator states; on CPU they are CPU generator states.
The same code runs on both.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Tuple

import torch

from . import parallel_state as ps

MODEL_PARALLEL_RNG_TRACKER_NAME = "model-parallel-rng"
# Megatron's offset between the data-parallel seed and the tensor-parallel seeds; kept so
# that runs started from the same --seed draw the same streams as Megatron-LM does.
_TENSOR_PARALLEL_SEED_OFFSET = 2718


def _uses_cuda() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def get_device_rng_state() -> torch.Tensor:
    return torch.cuda.get_rng_state() if _uses_cuda() else torch.get_rng_state()


def set_device_rng_state(state: torch.Tensor) -> None:
    if _uses_cuda():
        torch.cuda.set_rng_state(state)
    else:
        torch.set_rng_state(state)


def _seeded_state(seed: int) -> torch.Tensor:
    """Generator state for `seed` without disturbing the current stream."""
    if _uses_cuda():
        saved = torch.cuda.get_rng_state()
        torch.cuda.manual_seed(seed)
        state = torch.cuda.get_rng_state()
        torch.cuda.set_rng_state(saved)
        return state
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator.get_state()


class RNGStatesTracker:
    """Named generator states that code can temporarily switch to with `fork(name)`."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.states_: Dict[str, torch.Tensor] = {}
        self.seeds_ = set()

    def get_states(self) -> Dict[str, torch.Tensor]:
        return {name: state.clone() for name, state in self.states_.items()}

    def set_states(self, states: Dict[str, torch.Tensor]) -> None:
        self.states_ = {name: state.clone() for name, state in states.items()}

    def add(self, name: str, seed: int) -> None:
        if seed in self.seeds_:
            raise ValueError(f"RNG seed {seed} is already used by another tracked stream.")
        if name in self.states_:
            raise ValueError(f"RNG stream '{name}' already exists.")
        self.seeds_.add(seed)
        self.states_[name] = _seeded_state(seed)

    @contextlib.contextmanager
    def fork(self, name: str = MODEL_PARALLEL_RNG_TRACKER_NAME):
        if name not in self.states_:
            raise KeyError(f"RNG stream '{name}' is not tracked; call model_parallel_manual_seed(seed) first.")
        saved = get_device_rng_state()
        set_device_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = get_device_rng_state()
            set_device_rng_state(saved)


_RNG_TRACKER = RNGStatesTracker()


def get_rng_tracker() -> RNGStatesTracker:
    return _RNG_TRACKER


# Megatron's name, kept for users porting code.
get_cuda_rng_tracker = get_rng_tracker


def model_parallel_manual_seed(seed: int) -> None:
    """Seed the replicated stream with `seed` and the tensor-parallel stream per TP rank.

    Call after initialize_model_parallel. Every rank must pass the same seed.
    """
    tp_rank = ps.get_tensor_model_parallel_rank() if ps.model_parallel_is_initialized() else 0
    torch.manual_seed(seed)  # seeds CPU and every CUDA device alike
    _RNG_TRACKER.reset()
    _RNG_TRACKER.add(MODEL_PARALLEL_RNG_TRACKER_NAME, seed + _TENSOR_PARALLEL_SEED_OFFSET + tp_rank)


model_parallel_cuda_manual_seed = model_parallel_manual_seed


def get_all_rng_states() -> Dict[str, Any]:
    """Every generator a run draws from: for checkpoints and for recomputation."""
    states = {"cpu": torch.get_rng_state(), "tracker": _RNG_TRACKER.get_states()}
    if _uses_cuda():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def set_all_rng_states(states: Dict[str, Any]) -> None:
    torch.set_rng_state(states["cpu"])
    if "cuda" in states and _uses_cuda():
        torch.cuda.set_rng_state(states["cuda"])
    _RNG_TRACKER.set_states(states["tracker"])


class _CheckpointFunction(torch.autograd.Function):
    """Run `function` without keeping activations; recompute them in backward.

    The RNG states at forward time are saved and restored for the recomputation, so
    dropout masks are replayed exactly and gradients equal the non-recomputed ones.
    """

    @staticmethod
    def forward(ctx, function, num_tensor_args_mask: Tuple[bool, ...], *args):
        ctx.function = function
        ctx.is_tensor = num_tensor_args_mask
        ctx.rng_states = get_all_rng_states()
        with torch.no_grad():
            outputs = function(*args)
        tensors = [arg for arg, is_tensor in zip(args, num_tensor_args_mask) if is_tensor]
        ctx.non_tensors = [None if is_tensor else arg for arg, is_tensor in zip(args, num_tensor_args_mask)]
        ctx.save_for_backward(*tensors)
        return outputs

    @staticmethod
    def backward(ctx, *grad_outputs):
        saved = iter(ctx.saved_tensors)
        inputs = []
        for is_tensor, non_tensor in zip(ctx.is_tensor, ctx.non_tensors):
            if is_tensor:
                tensor = next(saved)
                detached = tensor.detach()
                detached.requires_grad_(tensor.requires_grad)
                inputs.append(detached)
            else:
                inputs.append(non_tensor)
        current_states = get_all_rng_states()
        set_all_rng_states(ctx.rng_states)
        try:
            with torch.enable_grad():
                outputs = ctx.function(*inputs)
        finally:
            set_all_rng_states(current_states)
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        pairs = [(out, grad) for out, grad in zip(outputs, grad_outputs)
                 if isinstance(out, torch.Tensor) and out.requires_grad]
        if pairs:
            torch.autograd.backward([p[0] for p in pairs], [p[1] for p in pairs])
        grads = tuple(inp.grad if isinstance(inp, torch.Tensor) else None for inp in inputs)
        return (None, None) + grads


def checkpoint(function, *args):
    """Activation recomputation: `function(*args)` with its activations recomputed in backward."""
    is_tensor = tuple(isinstance(arg, torch.Tensor) for arg in args)
    return _CheckpointFunction.apply(function, is_tensor, *args)
