"""Beam search: the k best continuations of each prompt, scored with a length penalty.

    beams = beam_search(T5Decoder(model, start), sources, BeamSettings(beam_size=4), max_new_tokens=64,
                        vocab_size=tokenizer.vocab_size, eos_id=end)
    beams[0].tokens, beams[0].score     # the best new tokens of source 0 (its eos included), their score

A finished sequence y_1 .. y_n (n new tokens, the end token included when it ended with
one) scores

    score = (log p(y_1) + ... + log p(y_n)) / n ** length_penalty

the definition of Megatron-LM's beam search and HF's `length_penalty` (1: the mean
log-probability, 0: the plain sum, which favours short answers; log p over the real
vocabulary, from the raw logits). Each prompt keeps k live beams (rows b*k of one batch,
the prompt repeated; the first step extends the start alone). At every step, per prompt:

  1. the 2k best (beam, token) extensions by summed log-probability, best first;
  2. an extension by eos finishes its beam: it is kept among the prompt's k best finished
     sequences if it ranks among the first k of the 2k (as Megatron-LM and HF do), else
     dropped; the others become the next live beams until there are k;
  3. the prompt is done once it has k finished sequences and none scores below the best of
     this step's 2k sums divided by the current length ** length_penalty (their stopping
     rule: with beam size 1 that is greedy decoding exactly).
After max_new_tokens steps the live beams of a prompt not done are scored as finished.
The answer is the best finished sequence.

The KV cache is kept, not recomputed: after each step every stage's cache rows are
reordered to the beams they extend (InferenceContext.select_rows, Megatron-LM's key/value
swap). The encoder reads each source once per beam (its rows are the prompt repeated).
Tensor parallelism: log softmax without gathering the rows, then each rank's 2k best
extensions cross the group and every rank picks the same 2k (vocab_parallel_sampling.py).
Pipeline parallelism: the last stage broadcasts the 2k candidates of each prompt to its
pipeline group, and every stage then makes the same choices in the same Python code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from ..errors import ConfigError
from ..mpu import parallel_state as ps
from .generation import begin_rows, from_last_stage, is_last_stage
from .kv_cache import InferenceContext
from .vocab_parallel_sampling import gathered_top_k, log_softmax


@dataclass(frozen=True)
class BeamSettings:
    beam_size: int = 1
    length_penalty: float = 1.0     # score = sum of log p / length ** length_penalty

    def __post_init__(self):
        if self.beam_size < 1:
            raise ConfigError(f"--beam-size must be at least 1 (1: greedy decoding), got {self.beam_size}.")
        if not math.isfinite(self.length_penalty):
            raise ConfigError(f"--length-penalty must be a finite number (1.0: the mean log-probability), "
                              f"got {self.length_penalty}.")


@dataclass
class Beam:
    tokens: List[int]       # the new tokens, the end token included where the beam ended with it
    score: float            # their summed log-probability / len(tokens) ** length_penalty


class FinishedBeams:
    """The k best finished sequences of one prompt."""

    def __init__(self, size: int, length_penalty: float):
        self.size, self.length_penalty = size, length_penalty
        self.beams: List[Beam] = []

    def normalized(self, log_prob: float, length: int) -> float:
        return log_prob / length ** self.length_penalty

    def add(self, tokens: List[int], log_prob: float) -> None:
        score = self.normalized(log_prob, len(tokens))
        if len(self.beams) == self.size and score <= self.beams[-1].score:
            return
        self.beams.append(Beam(tokens, score))
        self.beams.sort(key=lambda beam: -beam.score)      # stable: on a tie the earlier stays first
        del self.beams[self.size:]

    def is_done(self, best_log_prob: float, length: int) -> bool:
        return len(self.beams) == self.size and self.beams[-1].score >= self.normalized(best_log_prob, length)


def _candidates(last_logits: torch.Tensor, beam_log_probs: torch.Tensor, count: int,
                vocab_size: int) -> torch.Tensor:
    """[b, count, 3] float64: each prompt's `count` best (summed log-probability, beam, token),
    best first, from this rank's logits [b*k, V/tp] and the beams' sums [b, k]."""
    batch, k = beam_log_probs.shape
    log_probs = log_softmax(last_logits, vocab_size).double()
    local = log_probs.shape[-1]
    padded = local * (ps.get_tensor_model_parallel_world_size() if ps.model_parallel_is_initialized() else 1)
    start = (ps.get_tensor_model_parallel_rank() if ps.model_parallel_is_initialized() else 0) * local
    totals = (beam_log_probs.to(log_probs.device)[:, :, None] + log_probs.view(batch, k, local)).view(batch, -1)
    column = torch.arange(k * local, device=totals.device)
    ids = (column // local * padded + column % local + start).expand(batch, -1)   # beam * V + token
    values, ids = gathered_top_k(totals, ids, count)
    return torch.stack([values, (ids // padded).double(), (ids % padded).double()], dim=-1).cpu()


def _choose(candidates: List[List[Tuple[float, float, float]]], histories: List[List[List[int]]],
            finished: List[FinishedBeams], done: List[bool], eos_id: Optional[int], k: int, step: int):
    """Megatron-LM's selection, per prompt (steps 1-3 of the module docstring): the beam each
    new beam extends [b*k], its token [b*k] and its summed log-probability [b, k]."""
    rows, tokens, sums = [], [], []
    for prompt, ranked in enumerate(candidates):
        if done[prompt]:
            rows += [prompt * k + beam for beam in range(k)]       # idle rows until the batch ends
            tokens += [0] * k
            sums.append([float("-inf")] * k)
            continue
        chosen = []
        for rank, (log_prob, beam, token) in enumerate(ranked):
            beam, token = int(beam), int(token)
            if token == eos_id:
                if rank < k and math.isfinite(log_prob):
                    finished[prompt].add(histories[prompt][beam] + [token], log_prob)
            else:
                chosen.append((beam, token, log_prob))
            if len(chosen) == k:
                break
        chosen += [(0, 0, float("-inf"))] * (k - len(chosen))    # a vocabulary of eos alone
        done[prompt] = finished[prompt].is_done(ranked[0][0], step + 1)
        histories[prompt] = [histories[prompt][beam] + [token] for beam, token, _ in chosen]
        rows += [prompt * k + beam for beam, _, _ in chosen]
        tokens += [token for _, token, _ in chosen]
        sums.append([log_prob for _, _, log_prob in chosen])
    return rows, tokens, sums


@torch.inference_mode()
def beam_search(decoder, prompts: Sequence[Sequence[int]], settings: BeamSettings, max_new_tokens: int,
                vocab_size: int, eos_id: Optional[int] = None, device=None) -> List[Beam]:
    """The best beam of every prompt (lists of token ids, at least one token each), on every
    rank of the model; `decoder` as generation.generate's (decoders.py)."""
    if max_new_tokens < 1:
        raise ConfigError(f"beam search needs at least 1 new token, got {max_new_tokens}.")
    batch, k = len(prompts), settings.beam_size
    tokens, keep, positions, start = begin_rows(decoder, [p for p in prompts for _ in range(k)], max_new_tokens,
                                                device)
    context = InferenceContext(batch * k, tokens.shape[1])

    logits = decoder.step(tokens[:, :start], positions[:, :start], keep[:, :start], context)
    context.advance(start)
    sums = torch.full((batch, k), float("-inf"), dtype=torch.float64)
    sums[:, 0] = 0.0                    # the k rows of a prompt are alike: extend the first alone
    histories: List[List[List[int]]] = [[[] for _ in range(k)] for _ in range(batch)]
    finished = [FinishedBeams(k, settings.length_penalty) for _ in range(batch)]
    done = [False] * batch
    for step in range(max_new_tokens):
        end = start + step
        candidates = _candidates(logits[:, -1], sums, 2 * k, vocab_size) if is_last_stage() \
            else torch.zeros(batch, 2 * k, 3, dtype=torch.float64)
        candidates = from_last_stage(candidates.contiguous())
        rows, new, chosen_sums = _choose(candidates.tolist(), histories, finished, done, eos_id, k, step)
        if all(done) or step == max_new_tokens - 1:
            break
        sums = torch.tensor(chosen_sums, dtype=torch.float64)
        rows = torch.tensor(rows, dtype=torch.long, device=tokens.device)
        tokens[:, :end] = tokens.index_select(0, rows)[:, :end]
        tokens[:, end] = torch.tensor(new, dtype=torch.long, device=tokens.device)
        context.select_rows(rows)
        logits = decoder.step(tokens[:, end:end + 1], positions[:, end:end + 1], keep[:, :end + 1], context)
        context.advance(1)
    for prompt in range(batch):
        if not done[prompt]:
            for history, log_prob in zip(histories[prompt], chosen_sums[prompt]):
                if math.isfinite(log_prob):
                    finished[prompt].add(history, log_prob)
    return [beams.beams[0] for beams in finished]
