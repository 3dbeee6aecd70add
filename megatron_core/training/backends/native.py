"""The native training backend: gradient buckets, data-parallel reduction (optionally
overlapped with backward), ZeRO-1, fp32 master weights, loss scaling and clipping.

It implements training.backends.base.Backend for the model chunks of this rank. Per step:

    zero_grad()                     main_grad buffers zeroed, counters reset
    prepare_accumulation(n)         n micro-batches follow (overlap counts against n)
    ... backward of each micro-batch on scale_loss(loss) ...
    step():
      1. sum the copies several pipeline stages hold (tied embedding, stack tables) while
         every element is still whole (pipeline/finalize_grads.sum_stage_copies)
      2. finish the data-parallel mean: all-reduce, or reduce-scatter for ZeRO-1
      3. sum sequence-parallel norm gradients over the tensor-parallel group
      4. loss scaling: unscale, agree on inf/nan over the data- and model-parallel groups,
         update the scaler; a found inf skips the step
      5. global norm over DP (ZeRO shards), TP and PP with each shared copy counted once;
         a non-finite norm skips the step; clip by --clip-grad
      6. optimizer step on the fp32 masters, write back to bf16/fp16 weights, all-gather
         the updated shards (ZeRO-1)

So the loop never calls finalize_model_grads nor any data-parallel reduction itself.
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch

from ...errors import CheckpointError
from ...mpu import parallel_state as ps
from ...mpu.collectives import _all_gather_flat
from ...mpu.grads import allreduce_sequence_parallel_gradients, total_norm
from ...pipeline.finalize_grads import stage_copy_parameters, sum_stage_copies
from .base import StepResult
from ...checkpoint.contents import PER_PARAMETER, model_keys
from ..config import OptimizerConfig, ParallelConfig, PrecisionConfig
from ..grad_buffer import build_grad_buffers, shard_range
from ..grad_sync import GradSync
from ..loss_scaler import LossScaler, build_loss_scaler, found_inf_across
from ..master_params import plain_masters, sharded_masters
from ..optimizer import build_optimizer
from ..param_groups import build_param_groups

# Megatron's default bucket: 40M elements, or 1M per data-parallel rank when that is more.
DEFAULT_BUCKET_ELEMENTS = 40_000_000


def default_bucket_size(data_parallel_size: int) -> int:
    return max(DEFAULT_BUCKET_ELEMENTS, 1_000_000 * data_parallel_size)


class NativeBackend:
    loads_per_parameter = True      # load_state_dict takes a resharded checkpoint's per-parameter optimizer state

    def __init__(self, chunks: List[torch.nn.Module], optimizer_config: OptimizerConfig,
                 scaler: Optional[LossScaler], distributed_optimizer: bool, overlap_grad_reduce: bool,
                 bucket_size: Optional[int] = None):
        self.chunks = list(chunks)
        self.modules = self.chunks          # the schedules run the chunks themselves
        self.clip_grad = optimizer_config.clip_grad
        self.scaler = scaler
        self.distributed = distributed_optimizer
        self.dp_group = ps.get_data_parallel_group()
        self.mp_group = ps.get_model_parallel_group()
        self.dp_size = ps.get_data_parallel_world_size()
        self.dp_rank = ps.get_data_parallel_rank()

        model_groups = build_param_groups(self.chunks, optimizer_config.weight_decay)
        registered = [p for group in model_groups for p in group["params"]]
        order = {id(p): i for i, p in enumerate(p for c in self.chunks for p in c.parameters())}
        backward_order = sorted(registered, key=lambda p: -order[id(p)])
        self.params = backward_order
        held = [p for p in stage_copy_parameters(self.chunks) if p.requires_grad]
        self.buffers = build_grad_buffers(backward_order, held, bucket_size or default_bucket_size(self.dp_size),
                                          self.dp_size, flat_params=distributed_optimizer)
        self.sync = GradSync(self.buffers, self.dp_group, self.dp_size, self.dp_rank, scatter=distributed_optimizer,
                             overlap=overlap_grad_reduce)
        self.sync.name_parameters({id(p): name for c in self.chunks for name, p in c.named_parameters()})
        if distributed_optimizer:
            self.masters, groups = sharded_masters(model_groups, self.buffers, self.dp_rank, self.dp_size)
        else:
            self.masters, groups = plain_masters(model_groups)
        self.optimizer = build_optimizer(groups, optimizer_config)

    # --- the Backend protocol -------------------------------------------------------------

    def zero_grad(self) -> None:
        for buffer in self.buffers:
            buffer.grad_data.zero_()
        for p in self.params:
            p.grad = None
        self.sync.reset()

    def prepare_accumulation(self, num_microbatches: int) -> None:
        self.sync.expect(num_microbatches)

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scaler.scale if self.scaler is not None else loss

    @property
    def loss_scale(self) -> Optional[float]:
        return self.scaler.scale if self.scaler is not None else None

    def step(self) -> StepResult:
        scale = self.loss_scale
        self._reduce_grads()
        if self.scaler is not None:
            local_inf = self._unscale_and_check(self.scaler.inv_scale)
            found_inf = found_inf_across([self.dp_group, self.mp_group], local_inf)
            self.scaler.update(found_inf)
            if found_inf:
                return StepResult(False, None, scale)
        norm = self.grad_norm()
        if not math.isfinite(norm):   # without a scaler a nan/inf gradient still must not reach the weights
            return StepResult(False, None, scale)
        if self.clip_grad > 0:
            coeff = self.clip_grad / (norm + 1.0e-6)
            if coeff < 1.0:
                torch._foreach_mul_([m.grad for m in self.masters], coeff)
        self._update()
        return StepResult(True, norm, scale)

    def describe(self) -> str:
        """Megatron's start-of-run line about the data-parallel buckets of this rank."""
        return (f"Number of buckets for gradient all-reduce / reduce-scatter: {len(self.sync.buckets)} "
                f"(data-parallel size {self.dp_size}, overlap {self.sync.overlap}, distributed optimizer "
                f"{self.distributed})")

    # --- the pieces of step() -------------------------------------------------------------

    def _reduce_grads(self) -> None:
        sum_stage_copies(self.chunks)
        self.sync.finish()
        allreduce_sequence_parallel_gradients(self.params)

    def _reduced_regions(self) -> List[torch.Tensor]:
        """The parts of the fp32 gradient buffers the optimizer reads on this rank."""
        if not self.distributed:
            return [buffer.grad_data for buffer in self.buffers]
        regions = []
        for buffer in self.buffers:
            for plan in buffer.plans:
                start, end = shard_range(plan, self.dp_rank, self.dp_size)
                regions.append(buffer.grad_data[start:end])
        return regions

    def _unscale_and_check(self, inv_scale: float) -> bool:
        flag = None
        for region in self._reduced_regions():
            region.mul_(inv_scale)
            bad = torch.logical_not(torch.isfinite(region).all())
            flag = bad if flag is None else flag | bad
        return bool(flag) if flag is not None else False

    def grad_norm(self) -> float:
        """The global L2 norm of the reduced gradients (shards over DP with ZeRO-1)."""
        groups = ([self.dp_group] if self.distributed else []) + [self.mp_group]
        return total_norm([m.grad for m in self.masters if m.counts], groups)

    def _update(self) -> None:
        for m in self.masters:
            m.param.grad = m.grad
        self.optimizer.step()
        for m in self.masters:
            m.param.grad = None
        self._write_back()

    def _write_back(self) -> None:
        with torch.no_grad():
            for m in self.masters:
                if m.write_back is not None:
                    m.write_back.copy_(m.param.view_as(m.write_back))
            if self.distributed and self.dp_size > 1:
                for buffer in self.buffers:
                    for plan in buffer.plans:
                        start, end = shard_range(plan, self.dp_rank, self.dp_size)
                        mine = buffer.param_data[start:end].clone()
                        _all_gather_flat(buffer.param_data[plan.start:plan.end], mine, group=self.dp_group)

    # --- state ----------------------------------------------------------------------------

    def _shard_layout(self) -> dict:
        ranges = [shard_range(plan, self.dp_rank, self.dp_size) if self.distributed else (plan.start, plan.end)
                  for buffer in self.buffers for plan in buffer.plans]
        return {"distributed": self.distributed, "data_parallel_rank": self.dp_rank,
                "data_parallel_size": self.dp_size if self.distributed else 1, "ranges": ranges}

    def _copied_masters(self):
        # fp32 parameters are their own masters: the model's weights already hold them.
        return [m for m in self.masters if m.write_back is not None]

    def _master_names(self) -> List[list]:
        """[chunk key, parameter name, first element, end element] of each master, in the
        optimizer's order: what lets a checkpoint's optimizer state be resharded by name."""
        keys = model_keys(len(self.chunks))
        where = {id(p): (keys[i], name) for i, c in enumerate(self.chunks) for name, p in c.named_parameters()}
        return [[*where[id(m.model_param)], *m.elements] for m in self.masters]

    def learning_rate_schedule(self, schedule):
        return schedule

    def checkpoint_files(self, run, chunks: List[torch.nn.Module]):
        from ...checkpoint.formats import TORCH_DIST
        from ...checkpoint.layout_files import LayoutFiles
        from ...checkpoint.torch_dist_files import TorchDistFiles
        return (TorchDistFiles if run.checkpoint.ckpt_format == TORCH_DIST else LayoutFiles)(run, chunks, self)

    def state_dict(self) -> dict:
        """Optimizer state (this rank's shard under ZeRO-1, with the ranges it covers), the
        fp32 master weights, for each master in the optimizer's order its parameter's chunk key,
        name, element range and whether it has an fp32 copy ("params": what resharding reads),
        and the loss scaler under its own key."""
        state = {"optimizer": self.optimizer.state_dict(),
                 "fp32_master_weights": [m.param.detach().clone() for m in self._copied_masters()],
                 "shard": self._shard_layout(),
                 "params": [[*names, m.write_back is not None] for names, m in zip(self._master_names(), self.masters)]}
        if self.scaler is not None:
            state["grad_scaler"] = self.scaler.state_dict()
        return state

    def weights_replaced(self) -> None:
        with torch.no_grad():
            for m in self._copied_masters():
                m.param.copy_(m.write_back.view_as(m.param))

    def load_state_dict(self, state: dict) -> None:
        """A state without "optimizer" (a checkpoint loaded with --no-load-optim or --finetune)
        keeps the fresh optimizer and takes the fp32 masters from the model's weights, which
        the checkpoint has just replaced; its "grad_scaler", if any, still loads."""
        if "optimizer" not in state and PER_PARAMETER not in state:
            self.weights_replaced()
            if self.scaler is not None and "grad_scaler" in state:
                self.scaler.load_state_dict(state["grad_scaler"])
            return
        if PER_PARAMETER in state:
            self._load_per_parameter(state[PER_PARAMETER])
            if self.scaler is not None and "grad_scaler" in state:
                self.scaler.load_state_dict(state["grad_scaler"])
            return
        saved, mine = state.get("shard"), self._shard_layout()
        if saved is not None and saved != mine:
            raise CheckpointError(
                f"the optimizer state was saved for shard {saved['ranges']} of data-parallel size "
                f"{saved['data_parallel_size']} (distributed: {saved['distributed']}), this rank holds "
                f"{mine['ranges']} of {mine['data_parallel_size']}; resume with the same layout and "
                f"--use-distributed-optimizer setting, or load without the optimizer (--no-load-optim).")
        weights, copied = state["fp32_master_weights"], self._copied_masters()
        if len(weights) != len(copied):
            raise CheckpointError(f"the optimizer state holds {len(weights)} fp32 master weights, this model has "
                                  f"{len(copied)}; it was saved from a different model or precision.")
        self.optimizer.load_state_dict(state["optimizer"])
        with torch.no_grad():
            for m, w in zip(copied, weights):
                m.param.copy_(w)
        self._write_back()
        if self.scaler is not None and "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])

    def _load_per_parameter(self, saved: dict) -> None:
        """Optimizer state keyed by parameter name, each tensor in its parameter's shape
        (a resharded checkpoint: checkpoint/reshard/). Each master takes its own
        elements, so any data-parallel size and either optimizer layout loads it; fields
        with no element dimension (Adam's step) are taken whole. "fp32_master" holds the
        fp32 weights of a bf16/fp16 model (else the model's weights, just loaded, are used)."""
        with torch.no_grad():
            for m, (chunk, name, start, end) in zip(self.masters, self._master_names()):
                entry = saved.get(chunk, {}).get(name)
                if entry is None:
                    raise CheckpointError(f"the resharded optimizer state has no entry for {chunk}.{name}; it was "
                                          f"resharded from another model, load it with --no-load-optim.")
                fields = {}
                for field, value in entry.items():
                    if field == "fp32_master":
                        continue
                    if isinstance(value, torch.Tensor) and value.dim() > 0:
                        value = value.reshape(-1)[start:end].view_as(m.param)
                    fields[field] = value.clone() if isinstance(value, torch.Tensor) else value
                self.optimizer.state[m.param] = fields
                if m.write_back is not None:
                    weights = entry.get("fp32_master", m.model_param.detach())
                    m.param.copy_(weights.reshape(-1)[start:end].view_as(m.param))
        self._write_back()


def build_backend(chunks: List[torch.nn.Module], optimizer: OptimizerConfig, precision: PrecisionConfig,
                  parallel: ParallelConfig) -> NativeBackend:
    """The native backend for this rank's model chunks (mpu must be initialized; the chunks
    already hold their weights in the precision's dtype)."""
    return NativeBackend(chunks, optimizer, build_loss_scaler(precision),
                         distributed_optimizer=parallel.use_distributed_optimizer,
                         overlap_grad_reduce=parallel.overlap_grad_reduce, bucket_size=parallel.ddp_bucket_size)
