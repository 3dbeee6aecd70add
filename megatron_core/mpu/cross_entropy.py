"""Cross entropy over logits whose vocabulary dimension is split across tensor-parallel ranks.

The full [tokens, vocab] logits are never gathered: each rank contributes its max, its
target logit and its sum of exponentials through three small all-reduces.

Label smoothing follows torch.nn.functional.cross_entropy: the target distribution is
(1 - eps) on the label plus eps / V spread over all V entries of the (padded) vocabulary.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from . import parallel_state as ps
from .utils import vocab_range_for_rank


def _all_reduce(tensor: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    if ps.get_tensor_model_parallel_world_size() > 1:
        dist.all_reduce(tensor, op=op, group=ps.get_tensor_model_parallel_group())
    return tensor


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, vocab_parallel_logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0):
        logits = vocab_parallel_logits.float()
        logits_max = _all_reduce(logits.max(dim=-1)[0], dist.ReduceOp.MAX)
        logits = logits - logits_max.unsqueeze(-1)

        partition_vocab = logits.size(-1)
        world = ps.get_tensor_model_parallel_world_size()
        first, last = vocab_range_for_rank(partition_vocab * world, ps.get_tensor_model_parallel_rank(), world)
        not_here = (target < first) | (target >= last)
        local_target = (target - first).masked_fill(not_here, 0)

        logits_2d = logits.reshape(-1, partition_vocab)
        rows = torch.arange(logits_2d.size(0), device=logits.device)
        target_logit = logits_2d[rows, local_target.reshape(-1)].reshape(target.shape)
        target_logit = _all_reduce(target_logit.masked_fill(not_here, 0.0))

        exp_logits = logits.exp()
        sum_exp = _all_reduce(exp_logits.sum(dim=-1))
        log_sum_exp = sum_exp.log()
        loss = log_sum_exp - target_logit

        vocab_size = partition_vocab * world
        if label_smoothing > 0.0:
            # mean over the full vocabulary of -log p = log_sum_exp - mean(logits)
            sum_logits = _all_reduce(logits.sum(dim=-1))
            smooth_loss = log_sum_exp - sum_logits / vocab_size
            loss = (1.0 - label_smoothing) * loss + label_smoothing * smooth_loss

        softmax = exp_logits.div_(sum_exp.unsqueeze(-1))
        ctx.label_smoothing, ctx.vocab_size = label_smoothing, vocab_size
        ctx.input_dtype = vocab_parallel_logits.dtype
        ctx.save_for_backward(softmax, not_here, local_target)
        return loss

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        softmax, not_here, local_target = ctx.saved_tensors
        grad = softmax  # reuse the saved buffer: softmax is not needed afterwards
        grad_2d = grad.view(-1, grad.size(-1))
        rows = torch.arange(grad_2d.size(0), device=grad.device)
        is_here = (~not_here).reshape(-1).to(grad.dtype)
        eps = ctx.label_smoothing
        grad_2d[rows, local_target.reshape(-1)] -= (1.0 - eps) * is_here
        if eps > 0.0:
            grad_2d -= eps / ctx.vocab_size
        grad.mul_(grad_output.unsqueeze(-1))
        return grad.to(ctx.input_dtype), None, None


def vocab_parallel_cross_entropy(vocab_parallel_logits: torch.Tensor, target: torch.Tensor,
                                 label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-token loss, shape of `target`. Logits: [..., vocab/tp] on each rank."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}.")
    return _VocabParallelCrossEntropy.apply(vocab_parallel_logits, target, label_smoothing)
