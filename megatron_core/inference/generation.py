"""Incremental decoding of a batch of prompts with a KV cache.

    result = generate(CausalLMDecoder(model), [[5, 6, 7], [8, 9]], max_new_tokens=20,
                      params=SamplingParams(top_k=5, seed=1), vocab_size=tokenizer.vocab_size,
                      eos_id=tokenizer.eod)
    result.tokens      # the new tokens of each prompt (up to and including eos)

Prompts of different lengths are left padded to the longest: the padding keys are masked
and position ids count real tokens only (positions = cumsum(keep) - 1), so each row
computes what it would alone. The whole prompt runs in one pass that fills the cache,
then one token per pass. A row stops at eos_id; the loop stops when every row has, or
after max_new_tokens.

Every rank of the model-parallel group runs this loop. With pipeline parallelism each
pass runs stage by stage (decoders.run_pipeline_stage); the last stage samples and
broadcasts the new tokens (and their log-probabilities) to the other stages of its
pipeline, so every stage feeds the same tokens next. Tensor-parallel ranks agree on the
token by construction (vocab_parallel_sampling.py). Without a seed rank 0 draws one and
broadcasts it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import torch
import torch.distributed as dist

from ..errors import ConfigError
from ..mpu import parallel_state as ps
from .kv_cache import InferenceContext
from .sampling import SamplingParams, new_generator
from .vocab_parallel_sampling import sample_next_tokens, token_log_probs

# Called after every step on every rank: (step index, new token of each row, rows finished).
StepCallback = Callable[[int, List[int], List[bool]], None]


@dataclass
class Generation:
    tokens: List[List[int]]                       # the new tokens of each prompt
    log_probs: List[List[float]]                  # their log-probabilities under the raw logits (if asked)
    prompt_log_probs: Optional[List[List[float]]] = field(default=None)   # tokens 2.. of each prompt


def broadcast(tensor: torch.Tensor, src: int, group=None) -> torch.Tensor:
    """dist.broadcast of a CPU tensor on any backend (NCCL moves it through the GPU)."""
    if dist.get_backend(group) == "nccl":
        moved = tensor.cuda()
        dist.broadcast(moved, src=src, group=group)
        return moved.cpu()
    dist.broadcast(tensor, src=src, group=group)
    return tensor


def agreed_seed(seed: Optional[int]) -> int:
    """The seed, or one drawn on rank 0 and broadcast so every rank samples alike."""
    if seed is not None:
        return int(seed)
    drawn = torch.randint(0, 2 ** 62, (1,))
    if dist.is_initialized() and dist.get_world_size() > 1:
        drawn = broadcast(drawn, src=0)
    return int(drawn.item())


def from_last_stage(tensor: torch.Tensor) -> torch.Tensor:
    if ps.model_parallel_is_initialized() and ps.get_pipeline_model_parallel_world_size() > 1:
        return broadcast(tensor, src=ps.get_pipeline_model_parallel_last_rank(),
                         group=ps.get_pipeline_model_parallel_group())
    return tensor


def _choice_from_last_stage(new: Optional[torch.Tensor], scores: Optional[torch.Tensor], batch: int):
    """The last stage's new tokens [b] and log-probabilities [b] on every stage (one broadcast)."""
    chosen = torch.zeros(batch, 2, dtype=torch.float64)
    if new is not None:
        chosen[:, 0] = new.cpu().double()
        if scores is not None:
            chosen[:, 1] = scores.cpu().double()
    chosen = from_last_stage(chosen)
    return chosen[:, 0].long(), chosen[:, 1]


def is_last_stage() -> bool:
    return not ps.model_parallel_is_initialized() or ps.is_pipeline_last_stage()


def left_pad(prompts: Sequence[Sequence[int]], length: int, pad_id: int = 0, device=None):
    """(tokens [b, length], keep [b, length]) with each prompt at the right end."""
    tokens = torch.full((len(prompts), length), pad_id, dtype=torch.long, device=device)
    keep = torch.zeros(len(prompts), length, dtype=torch.bool, device=device)
    for row, prompt in enumerate(prompts):
        if len(prompt):
            tokens[row, length - len(prompt):length] = torch.tensor(list(prompt), dtype=torch.long)
            keep[row, length - len(prompt):length] = True
    return tokens, keep


def begin_rows(decoder, prompts: Sequence[Sequence[int]], max_new_tokens: int, device=None):
    """(tokens, keep, positions) [b, start + max_new_tokens] and `start`: the prompts left padded
    and handed to decoder.begin (columns :start), the new tokens' columns real and zero."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ConfigError("every prompt needs at least one token; give a non-empty prompt.")
    prompt_tokens, prompt_keep = left_pad(prompts, max(len(p) for p in prompts), device=device)
    prompt_tokens, prompt_keep = decoder.begin(prompt_tokens, prompt_keep)
    start = prompt_tokens.shape[1]
    tokens = torch.zeros(len(prompts), start + max_new_tokens, dtype=torch.long, device=device)
    keep = torch.ones(len(prompts), start + max_new_tokens, dtype=torch.bool, device=device)
    tokens[:, :start], keep[:, :start] = prompt_tokens, prompt_keep   # new tokens are real: positions count on
    positions = (keep.long().cumsum(dim=1) - 1).clamp(min=0)
    return tokens, keep, positions, start


@torch.inference_mode()
def generate(decoder, prompts: Sequence[Sequence[int]], max_new_tokens: int, params: SamplingParams,
             vocab_size: int, eos_id: Optional[int] = None, max_sequence_length: Optional[int] = None,
             return_log_probs: bool = False, return_prompt_log_probs: bool = False,
             on_step: Optional[StepCallback] = None, device=None) -> Generation:
    """Generate for every prompt (lists of token ids, at least one token each) on every rank;
    log-probabilities of the new tokens (and of the prompts' tokens 2..) only when asked."""
    if max_new_tokens < 0:
        raise ConfigError(f"the number of tokens to generate must be 0 or more, got {max_new_tokens}.")
    batch = len(prompts)
    tokens, keep, positions, start = begin_rows(decoder, prompts, max_new_tokens, device)
    total = tokens.shape[1]
    if max_sequence_length is not None and total > max_sequence_length:
        raise ConfigError(f"a prompt of {start} tokens plus {max_new_tokens} new ones exceeds the model's "
                          f"{max_sequence_length} positions; shorten the prompt or lower --out-seq-length.")
    context = InferenceContext(batch, max(total, 1), last_logits_only=not return_prompt_log_probs)
    generator = new_generator(agreed_seed(None if params.greedy else params.seed))

    logits = decoder.step(tokens[:, :start], positions[:, :start], keep[:, :start], context)
    context.advance(start)
    result = Generation([[] for _ in range(batch)], [[] for _ in range(batch)])
    if return_prompt_log_probs:
        shape = (batch, start - 1)
        scores = token_log_probs(logits[:, :-1], tokens[:, 1:start], vocab_size).cpu() if is_last_stage() \
            else torch.zeros(shape)
        scores = from_last_stage(scores.float().contiguous()).tolist()
        lengths = keep[:, :start].sum(dim=1).tolist()
        result.prompt_log_probs = [row[start - n:] for row, n in zip(scores, lengths)]
    finished = [False] * batch
    pipelined = ps.model_parallel_is_initialized() and ps.get_pipeline_model_parallel_world_size() > 1
    for step in range(max_new_tokens):
        end = start + step
        new = scores = None
        if is_last_stage():
            last = logits[:, -1]
            previous = tokens[:, :0]
            if params.repetition_penalty != 1.0:
                previous = torch.where(keep[:, :end], tokens[:, :end], torch.full_like(tokens[:, :end], -1))
            new = sample_next_tokens(last, params, generator, previous, vocab_size)
            if return_log_probs:
                scores = token_log_probs(last[:, None], new[:, None], vocab_size)[:, 0]
        if pipelined:
            new, scores = _choice_from_last_stage(new, scores, batch)
        new_tokens = new.tolist()
        new_scores = scores.tolist() if return_log_probs else None
        for row, token in enumerate(new_tokens):
            if not finished[row]:
                result.tokens[row].append(token)
                if return_log_probs:
                    result.log_probs[row].append(new_scores[row])
        if eos_id is not None:
            finished = [done or token == eos_id for done, token in zip(finished, new_tokens)]
        tokens[:, end] = new.to(tokens.device)
        if on_step is not None:
            on_step(step, new_tokens, list(finished))
        if all(finished) or step == max_new_tokens - 1:
            break
        logits = decoder.step(tokens[:, end:end + 1], positions[:, end:end + 1], keep[:, :end + 1], context)
        context.advance(1)
    return result
