"""The next token from vocab-parallel logits: each tensor-parallel rank holds [b, V/tp].

What crosses the tensor-parallel group per step (b sequences, tp ranks):
  greedy               every rank's (max logit, its token id): b * 2 values per rank
  top_k = k > 0        every rank's k best (logit, token id): b * 2k values per rank,
                       then the global top k (and top-p over them) on every rank alike
  top_k = 0 (full      the whole row, b * V/tp per rank: top-p and plain temperature
  sampling)            sampling need every token's probability
  log-probabilities    max, sum of exponentials and the chosen token's logit: 3b values
  beam candidates      every rank's k best (score, id): b * 2k values per rank, then the
                       global k best on every rank alike (gathered_top_k)
Every rank ends with the same candidates in the same order (sorted by token id) and the
same generator, so all ranks pick the same token without a broadcast. The padding rows of
the vocabulary (ids >= the tokenizer's vocab_size) can never be chosen.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.distributed as dist

from ..mpu import parallel_state as ps
from .sampling import SamplingParams, candidate_probabilities, draw, penalize_repeats


def _group_size() -> int:
    return ps.get_tensor_model_parallel_world_size() if ps.model_parallel_is_initialized() else 1


def _all_gather_columns(tensor: torch.Tensor) -> torch.Tensor:
    """[b, n] on every TP rank -> [b, tp * n] in rank order."""
    size = _group_size()
    if size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(size)]
    dist.all_gather(parts, tensor.contiguous(), group=ps.get_tensor_model_parallel_group())
    return torch.cat(parts, dim=1)


def _all_reduce(tensor: torch.Tensor, op) -> torch.Tensor:
    if _group_size() > 1:
        dist.all_reduce(tensor, op=op, group=ps.get_tensor_model_parallel_group())
    return tensor


def _vocab_start(local_size: int) -> int:
    rank = ps.get_tensor_model_parallel_rank() if ps.model_parallel_is_initialized() else 0
    return rank * local_size


def mask_vocab_padding(local_logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """-inf on the ids past the tokenizer's vocabulary (the embedding's padding rows)."""
    start = _vocab_start(local_logits.shape[1])
    ids = torch.arange(start, start + local_logits.shape[1], device=local_logits.device)
    return local_logits.masked_fill(ids >= vocab_size, float("-inf"))


def _candidates(logits: torch.Tensor, top_k: int, start: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(values, token ids) [b, n] of every rank's candidates, gathered and sorted by id."""
    if top_k > 0:
        values, local_ids = logits.topk(min(top_k, logits.shape[1]), dim=-1)
        ids = local_ids + start
    else:
        values = logits
        ids = torch.arange(start, start + logits.shape[1], device=logits.device).expand_as(logits)
    values, ids = _all_gather_columns(values), _all_gather_columns(ids)
    ids, order = ids.sort(dim=-1)
    return values.gather(1, order), ids


def sample_next_tokens(local_logits: torch.Tensor, params: SamplingParams, generator: torch.Generator,
                       previous_tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Token ids [b] (the same on every TP rank) from this rank's logits [b, V/tp];
    previous_tokens [b, t] are the prompt and the tokens generated so far (-1: none)."""
    if params.greedy and params.repetition_penalty == 1.0 and _group_size() == 1:
        # The whole row is here: argmax over the real vocabulary (the first of equal maxima).
        return local_logits[:, :vocab_size].argmax(dim=-1)
    start = _vocab_start(local_logits.shape[1])
    logits = mask_vocab_padding(local_logits.float(), vocab_size)
    logits = penalize_repeats(logits, previous_tokens, params.repetition_penalty, start)
    if params.greedy:
        best, index = logits.max(dim=-1, keepdim=True)
        values, ids = _all_gather_columns(best), _all_gather_columns(index + start)
        # The highest logit; on a tie the lowest token id (what argmax over the full row gives).
        top = values.max(dim=-1, keepdim=True).values
        return torch.where(values == top, ids, torch.full_like(ids, torch.iinfo(ids.dtype).max)).min(dim=-1).values
    values, ids = _candidates(logits, params.top_k, start)
    probs = candidate_probabilities(values, params)
    uniforms = torch.rand(probs.shape[0], generator=generator).to(probs.device)
    return ids.gather(1, draw(probs, uniforms)[:, None]).squeeze(1)


def log_softmax(local_logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """This rank's columns of log softmax over the real vocabulary, [..., V/tp] -> [..., V/tp]
    (fp32, -inf on the padding ids), without gathering the rows: one max and one sum of
    exponentials cross the tensor-parallel group per row."""
    logits = mask_vocab_padding(local_logits.float().flatten(0, -2), vocab_size).view(local_logits.shape)
    top = _all_reduce(logits.max(dim=-1).values, dist.ReduceOp.MAX)
    total = _all_reduce((logits - top.unsqueeze(-1)).exp().sum(dim=-1), dist.ReduceOp.SUM)
    return logits - (top + total.log()).unsqueeze(-1)


def token_log_probs(local_logits: torch.Tensor, tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """log softmax of the raw logits at `tokens`: [b, s, V/tp] and [b, s] -> [b, s] (fp32),
    over the real vocabulary, without gathering the rows."""
    log_probs = log_softmax(local_logits, vocab_size)
    local = tokens - _vocab_start(log_probs.shape[-1])
    inside = (local >= 0) & (local < log_probs.shape[-1])
    picked = log_probs.gather(-1, local.clamp(0, log_probs.shape[-1] - 1).unsqueeze(-1)).squeeze(-1)
    return _all_reduce(torch.where(inside, picked, torch.zeros_like(picked)), dist.ReduceOp.SUM)


def gathered_top_k(values: torch.Tensor, ids: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The k best (values, ids) [b, k] over every tensor-parallel rank's columns, from this
    rank's values and ids [b, n] (ids unique across ranks), best first and on a tie the lower
    id: each rank's k best cross the group, and every rank then picks the same k."""
    local_values, index = values.topk(min(k, values.shape[1]), dim=-1)
    values, ids = _all_gather_columns(local_values), _all_gather_columns(ids.gather(1, index))
    ids, order = ids.sort(dim=-1)
    values = values.gather(1, order)
    values, order = values.sort(dim=-1, descending=True, stable=True)
    return values[:, :k], ids.gather(1, order)[:, :k]
