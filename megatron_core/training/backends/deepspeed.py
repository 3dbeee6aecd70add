"""The DeepSpeed training backend: the same Backend surface, with deepspeed.initialize underneath.

    backend = DeepSpeedBackend(chunks, optimizer_config, resolved_ds_config)
    backend.modules          # what the schedules run: the engine (ZeRO-2/3) or the chunks (ZeRO-0/1)

DeepSpeed gets our parallel state as its `mpu` (DeepSpeedMpu: the names it asks for,
read from megatron_core.mpu), our parameter groups (no decay on norms and biases, the
lr_mult/wd_mult the lr schedule reads), and our optimizer unless ds.json has its own
(see deepspeed_config.py). The config says `managed_gradient_accumulation: false`, so
DeepSpeed counts no micro-batches: our schedules run all of a step's micro-batches and
`engine.step()` is the accumulation boundary, where DeepSpeed reduces, unscales, clips
and steps.

Two ways the backward reaches DeepSpeed, as its own engines do:

* ZeRO-0/1 reduce once per step. The schedules run the chunks themselves; backward is
  plain autograd into `.grad`; step() first sums the pipeline stages' shared copies and
  the sequence-parallel norm gradients (whole gradients, as in the native backend), then
  engine.step() averages over data parallelism (ZeRO-1: reduce-scatter into its
  partitions). This is how DeepSpeed's PipelineEngine drives ZeRO-0/1 too.
* ZeRO-2/3 reduce during backward, inside hooks the engine's forward registers on its
  outputs ("torch-style backward"), so the schedules run the engine. Those hooks divide
  each output gradient by gradient_accumulation_steps, assuming a loss that is not yet
  averaged over micro-batches; our schedules already divide by the micro-batch count, so
  scale_loss multiplies it back (exact for powers of two, one rounding otherwise).

fp16 loss scaling is DeepSpeed's (its dynamic scaler and ds.json's fp16 section):
scale_loss applies the engine's current scale, and StepResult reports the engine's
scale, whether it applied the step (an overflow skips it) and its global grad norm.
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch

from ...errors import ConfigError
from ...mpu import parallel_state as ps
from ...mpu.grads import allreduce_sequence_parallel_gradients
from ...pipeline.finalize_grads import sum_stage_copies
from .base import StepResult
from ..config import OptimizerConfig
from ..deepspeed_config import zero_stage
from ..deepspeed_lr_schedule import EngineLearningRate
from ..optimizer import build_optimizer
from ..param_groups import build_param_groups


class DeepSpeedMpu:
    """megatron_core.mpu under the names DeepSpeed's engine and ZeRO optimizers call.

    "Model parallel" rank and size are the tensor-parallel ones (Megatron's older names,
    which DeepSpeed uses to count a replicated parameter once: on TP rank 0), while the
    model-parallel *group* spans TP x PP, so a norm is summed over every stage."""

    get_tensor_model_parallel_rank = staticmethod(ps.get_tensor_model_parallel_rank)
    get_tensor_model_parallel_world_size = staticmethod(ps.get_tensor_model_parallel_world_size)
    get_tensor_model_parallel_group = staticmethod(ps.get_tensor_model_parallel_group)
    get_tensor_model_parallel_src_rank = staticmethod(ps.get_tensor_model_parallel_src_rank)
    get_model_parallel_rank = staticmethod(ps.get_tensor_model_parallel_rank)
    get_model_parallel_world_size = staticmethod(ps.get_tensor_model_parallel_world_size)
    get_model_parallel_group = staticmethod(ps.get_model_parallel_group)
    get_pipeline_model_parallel_rank = staticmethod(ps.get_pipeline_model_parallel_rank)
    get_pipeline_model_parallel_world_size = staticmethod(ps.get_pipeline_model_parallel_world_size)
    get_pipeline_model_parallel_group = staticmethod(ps.get_pipeline_model_parallel_group)
    get_data_parallel_rank = staticmethod(ps.get_data_parallel_rank)
    get_data_parallel_world_size = staticmethod(ps.get_data_parallel_world_size)
    get_data_parallel_group = staticmethod(ps.get_data_parallel_group)
    get_data_parallel_src_rank = staticmethod(ps.get_data_parallel_src_rank)

    @staticmethod
    def get_data_parallel_group_ranks():
        return ps.get_data_parallel_ranks()


def import_deepspeed():
    try:
        import deepspeed
    except ImportError as e:
        raise ConfigError(f"--deepspeed needs the deepspeed package ({e}); install it with "
                          f"pip install 'mcore-pretrain[deepspeed]'.") from None
    return deepspeed


def _keep_clip_norm(optimizer: torch.optim.Optimizer, params: List[torch.nn.Parameter], max_norm: float, mpu):
    """ZeRO stage 0 in fp32 steps our torch optimizer directly: DeepSpeed clips with its
    clip_grad_norm_ but keeps no norm, and counts a pipeline stage's shared copy twice.
    Clip here instead, just before the update (after DeepSpeed's data-parallel reduction):
    the norm by DeepSpeed's clip_grad_norm_ over the parameters a replica counts once,
    DeepSpeed's coefficient on every gradient, and the norm left where the engine reads it
    (`_global_grad_norm`)."""
    from deepspeed.runtime.utils import clip_grad_norm_

    def clip(opt, args, kwargs):
        with_grads = [p for p in params if p.grad is not None]
        counted = [p for p in with_grads if not getattr(p, "shared", False)]
        norm = float(clip_grad_norm_(counted, max_norm=math.inf, mpu=mpu))   # inf: measure only
        if max_norm > 0:
            coefficient = min(1.0, max_norm / (norm + 1e-6))
            for p in with_grads:
                p.grad.mul_(coefficient)
        opt._global_grad_norm = norm
    optimizer.register_step_pre_hook(clip)


class DeepSpeedBackend:
    loads_per_parameter = False     # the engine loads its own files, at the sizes it saved them

    def __init__(self, chunks: List[torch.nn.Module], optimizer_config: OptimizerConfig, ds_config: dict):
        deepspeed = import_deepspeed()
        self.chunks = list(chunks)
        self.stage = zero_stage(ds_config)
        self.offload = bool(ds_config.get("zero_optimization", {}).get("offload_optimizer"))
        self.hooks_backward = self.stage >= 2
        self.fp16 = bool(ds_config.get("fp16", {}).get("enabled"))
        self.accumulation_steps = int(ds_config["gradient_accumulation_steps"])
        groups = build_param_groups(self.chunks, optimizer_config.weight_decay)
        self.params = [p for group in groups for p in group["params"]]
        for p in self.params:
            # A stage's copy of a table another stage owns (pipeline/chunk.py): the norm
            # counts the owner's; DeepSpeed skips parameters marked as its pipeline replicas.
            if getattr(p, "shared", False):
                p.ds_pipe_replicated = True
        mpu = DeepSpeedMpu()

        config = dict(ds_config)
        client_optimizer = None
        if "optimizer" not in config:
            client_optimizer = build_optimizer(groups, optimizer_config)
            plain = self.stage == 0 and not self.fp16 and not config.get("bf16", {}).get("enabled")
            if plain:
                _keep_clip_norm(client_optimizer, self.params, float(config.get("gradient_clipping", 0.0)), mpu)
                config["gradient_clipping"] = 0.0
        model = self.chunks[0] if len(self.chunks) == 1 else torch.nn.ModuleList(self.chunks)
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=client_optimizer, model_parameters=groups if client_optimizer is None else None,
            config=config, mpu=mpu, dist_init_required=False)
        if self.hooks_backward and len(self.chunks) > 1:
            raise ConfigError(f"ZeRO stage {self.stage} runs one model chunk; drop "
                              f"--num-layers-per-virtual-pipeline-stage.")
        self.optimizer = self.engine.optimizer
        self.modules = [self.engine] if self.hooks_backward else self.chunks

    # --- the Backend protocol -------------------------------------------------------------

    def zero_grad(self) -> None:
        self.engine.zero_grad()

    def prepare_accumulation(self, num_microbatches: int) -> None:
        """Nothing to arm: with managed_gradient_accumulation false DeepSpeed takes every
        engine.step() as the boundary, after however many micro-batches ran."""

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        if self.hooks_backward:
            loss = loss * self.accumulation_steps    # the engine's hooks divide by it again
            return self.engine.scale(loss) if self.fp16 else loss
        scale = self.loss_scale
        return loss * scale if scale is not None else loss

    @property
    def loss_scale(self) -> Optional[float]:
        if not self.fp16:
            return None
        scale = self.engine._get_optimizer_loss_scale()
        return float(scale) if scale is not None else None

    def step(self) -> StepResult:
        scale = self.loss_scale
        if not self.hooks_backward:
            # Whole gradients still sit in .grad: the sums the native backend also does first.
            sum_stage_copies(self.chunks)
            allreduce_sequence_parallel_gradients(self.params)
        self.engine.step()
        if not self.engine.was_step_applied():
            return StepResult(False, None, scale)
        norm = self.engine.get_global_grad_norm()
        norm = float(norm.item() if torch.is_tensor(norm) else norm) if norm is not None else None
        return StepResult(True, norm, scale)

    def describe(self) -> str:
        """The start-of-run line: which engine steps the optimizer."""
        offload = " with CPU optimizer offload" if self.offload else ""
        return f"DeepSpeed engine: ZeRO stage {self.stage}{offload}, {self.accumulation_steps} micro-batches per step"

    def learning_rate_schedule(self, schedule):
        """The flags' schedule, or DeepSpeed's scheduler from ds.json setting the rate."""
        if self.engine.lr_scheduler is None:
            return schedule
        return EngineLearningRate(schedule, self.engine.lr_scheduler)

    def checkpoint_files(self, run, chunks: List[torch.nn.Module]):
        """engine.save_checkpoint / load_checkpoint, DeepSpeed's layout (checkpoint/deepspeed_engine.py)."""
        from ...checkpoint.deepspeed_engine import DeepSpeedEngineFiles
        return DeepSpeedEngineFiles(run, self.engine, self.stage)

    # --- state (checkpoints go through the engine: checkpoint_files) ----------------------

    def state_dict(self) -> dict:
        return {"optimizer": self.engine.optimizer.state_dict(), "zero_stage": self.stage}

    def load_state_dict(self, state: dict) -> None:
        self.engine.optimizer.load_state_dict(state["optimizer"])

    def weights_replaced(self) -> None:
        """ZeRO's optimizer keeps fp32 partitions of the weights it steps: taken again from the model."""
        refresh = getattr(self.engine.optimizer, "refresh_fp32_params", None)
        if refresh is not None:
            refresh()
