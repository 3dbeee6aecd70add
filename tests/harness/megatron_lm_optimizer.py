"""Megatron-LM's optimizer stack on the CPU: DDP wrapper, get_megatron_optimizer, lr scheduler.

megatron-core's DistributedDataParallel (a contiguous fp32 grad buffer) and get_megatron_optimizer
(Adam with decoupled weight decay, wrapped in FP32Optimizer inside a ChainedOptimizer) run on
gloo once megatron_cpu.py's patches are in, except grad clipping (clip_grad=0). `take_steps`
does what Megatron-LM's train_step does for one micro-batch and DP=1: zero the buffers, forward
with the tokens as labels, backward, finish the grad sync, step, and step the scheduler by the
global batch size (its num_steps counts samples).

distributed=True builds what --use-distributed-optimizer builds: the DDP buffers padded for
sharding and megatron-core's DistributedOptimizer, each data-parallel rank stepping its
contiguous slice of every buffer (the same batch on every rank, so any DP size takes the
same steps). distributed_optimizer_state_by_name gathers those slices back by parameter.
"""
from __future__ import annotations

import torch

from .megatron_cpu import CudaTensorTypes
from .megatron_lm_args import LEARNING_RATE
from .megatron_lm_models import BATCH, sample_batch, t5_megatron_masks


def build_optimizer(model, config, distributed: bool = False):
    """(ddp_model, optimizer, opt_param_scheduler) as Megatron-LM's setup_model_and_optimizer builds them."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    ddp = DistributedDataParallel(config, DistributedDataParallelConfig(use_distributed_optimizer=distributed), model)
    with CudaTensorTypes():
        optimizer = get_megatron_optimizer(
            OptimizerConfig(optimizer="adam", lr=LEARNING_RATE, min_lr=0.0, weight_decay=0.01, adam_beta1=0.9,
                            adam_beta2=0.999, adam_eps=1e-8, clip_grad=0.0, use_distributed_optimizer=distributed),
            [ddp])
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=LEARNING_RATE, min_lr=0.0, lr_warmup_steps=0,
        lr_decay_steps=100 * BATCH, lr_decay_style="linear", start_wd=0.01, end_wd=0.01,
        wd_incr_steps=100 * BATCH, wd_incr_style="constant")
    return ddp, optimizer, scheduler


def take_steps(name: str, ddp, optimizer, scheduler, steps: int) -> None:
    """`steps` training steps on the fixed batch (single pipeline stage only)."""
    from megatron.core import parallel_state

    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        raise ValueError("the harness's optimizer steps run without pipeline parallelism; use pp=1")
    batch = sample_batch(name)
    ddp.train()
    for _ in range(steps):
        ddp.zero_grad_buffer()
        optimizer.zero_grad()
        if name == "bert":
            lm_loss, binary_logits = ddp(**batch, lm_labels=batch["input_ids"])
            loss = lm_loss.float().mean() + binary_logits.float().square().mean()
        elif name == "t5":      # pretrain_t5.py's step: the decoder's tokens as its labels
            loss = ddp(batch["encoder_input_ids"], batch["decoder_input_ids"], **t5_megatron_masks(batch),
                       lm_labels=batch["decoder_input_ids"]).float().mean()
        else:
            loss = ddp(**batch, labels=batch["input_ids"]).float().mean()
        loss.backward()
        ddp.finish_grad_sync()
        updated, _, _ = optimizer.step()
        if not updated:
            raise RuntimeError("megatron's optimizer skipped a step (found inf/nan in the grads)")
        scheduler.step(increment=BATCH)
    torch.distributed.barrier()


def optimizer_state_by_name(model, optimizer) -> dict:
    """{megatron-core parameter name: {field: tensor}} of this rank, read from the live optimizer by
    parameter object (not by position): what a checkpoint's positional state must come back as."""
    by_param = {}
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        for param, state in inner.optimizer.state.items():
            by_param[param] = {field: value.detach().clone() for field, value in state.items()}
    return {name: by_param[param] for name, param in model.named_parameters() if param in by_param}


def distributed_optimizer_state_by_name(model, optimizer) -> dict:
    """optimizer_state_by_name of a distributed optimizer, on every data-parallel rank: each rank
    puts the slice it steps (its shard range of the parameter, read off the optimizer's main
    parameter and state) into zeros of the parameter's shape, and a sum over the data-parallel
    group joins the disjoint slices. Independent of what save_parameter_state writes."""
    from megatron.core import parallel_state

    group = parallel_state.get_data_parallel_group()
    inners = getattr(optimizer, "chained_optimizers", [optimizer])
    out = {}
    for name, param in model.named_parameters():
        fields = {f: torch.zeros(param.shape, dtype=torch.float32) for f in ("exp_avg", "exp_avg_sq")}
        step = torch.zeros((), dtype=torch.float32)
        for inner in inners:
            if param in inner.model_param_gbuf_map:
                piece = inner._get_model_param_range_map(param)["param"]
                held = inner._get_main_param_and_optimizer_states(param)
                for field, whole in fields.items():
                    whole.view(-1)[piece.start:piece.end].copy_(held[field].detach().reshape(-1))
                step = held["step"].detach().clone().float()
        for whole in fields.values():
            torch.distributed.all_reduce(whole, group=group)
        torch.distributed.all_reduce(step, op=torch.distributed.ReduceOp.MAX, group=group)
        out[name] = dict(fields, step=step)
    return out
