"""Scoring with a left-to-right model: GPT / Llama-style GPTModel and Transformer-XL.

    nll, scored = stream_log_likelihood(model, tokens, windows, vocab_size, micro_batch_size=8)
    correct = lambada_correct(model, samples, vocab_size, max_length, micro_batch_size=8)

Any TP x PP: a forward pass runs stage by stage (inference/decoders.run_pipeline_stage);
the last stage holds the vocab-parallel logits [b, s, V/tp] and scores them without
gathering a row: log-probabilities through three small all-reduces over the tensor-parallel
group (vocab_parallel_sampling.token_log_probs) and the argmax as every rank's best
(value, id) (sample_next_tokens, greedy: on a tie the lowest id, as torch.argmax over the
whole row). The vocabulary's padding rows are never a prediction: the softmax and the
argmax run over the tokenizer's vocab_size ids only. The sums are float64 and reach every
rank from the last pipeline stage.

Windows of a GPT are independent: micro batches of windows, right-padded (a causal model's
real positions never see the padding after them), the padded targets unscored. A
Transformer-XL (`memory=True`) reads the windows in order, one at a time, each attending to
the memory the previous windows left (the model's mem_length positions of every layer's
input), as its training and Chinese-Transformer-XL's evaluation read a text stream; the
windows then do not overlap, the memory is their context.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from ...errors import ConfigError
from ...inference.decoders import run_pipeline_stage
from ...inference.generation import from_last_stage, is_last_stage
from ...inference.sampling import SamplingParams
from ...inference.vocab_parallel_sampling import sample_next_tokens, token_log_probs
from .inputs import LambadaSample
from .progress import Progress
from .windows import Window

GREEDY = SamplingParams(greedy=True)


def causal_forward(model, tokens: torch.Tensor, transformer_xl: bool, mems=None
                   ) -> Tuple[Optional[torch.Tensor], Optional[List[torch.Tensor]]]:
    """(vocab-parallel logits [b, s, V/tp] on the last stage, else None; a Transformer-XL
    stage's new mems)."""
    out = {}

    def compute(received):
        if received is not None:
            model.set_input_tensor(received)
        if transformer_xl:
            output, out["mems"] = model(tokens, mems)
            return output
        return model(tokens)
    return run_pipeline_stage(model, compute, model.config.params_dtype), out.get("mems")


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _batches(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


@torch.no_grad()
def stream_log_likelihood(model, tokens: Sequence[int], windows: Sequence[Window], vocab_size: int,
                          micro_batch_size: int = 8, memory: bool = False, pad_id: int = 0,
                          progress: Optional[Progress] = None) -> Tuple[float, int]:
    """(sum of -log p over the scored targets, their number) of the windows of `tokens`."""
    device = _device(model)
    stream = torch.tensor(list(tokens), dtype=torch.long)
    totals = torch.zeros(2, dtype=torch.float64)
    mems = None
    for batch in _batches(windows, 1 if memory else micro_batch_size):
        length = max(w.length for w in batch)
        inputs = torch.full((len(batch), length), pad_id, dtype=torch.long)
        targets = torch.zeros(len(batch), length, dtype=torch.long)
        scored = torch.zeros(len(batch), length, dtype=torch.bool)
        for row, w in enumerate(batch):
            inputs[row, :w.length] = stream[w.start:w.start + w.length]
            targets[row, :w.length] = stream[w.start + 1:w.start + w.length + 1]
            scored[row, w.first_scored:w.length] = True
        logits, mems = causal_forward(model, inputs.to(device), memory, mems if memory else None)
        if is_last_stage():
            log_probs = token_log_probs(logits, targets.to(device), vocab_size).double().cpu()
            totals[0] -= torch.where(scored, log_probs, torch.zeros_like(log_probs)).sum()
            totals[1] += scored.sum()
        if progress is not None:
            progress.update(len(batch), int(scored.sum()))
    totals = from_last_stage(totals)
    return float(totals[0]), int(totals[1])


@torch.no_grad()
def lambada_correct(model, samples: Sequence[LambadaSample], vocab_size: int, max_length: int,
                    micro_batch_size: int = 8, transformer_xl: bool = False, pad_id: int = 0,
                    progress: Optional[Progress] = None) -> Tuple[int, int]:
    """(samples whose every target token is the greedy prediction, contexts cut to fit):
    each sample is context + target, the first tokens of the context dropped when it is
    longer than max_length + 1 tokens (Megatron-LM's dataset assumes it never is)."""
    device = _device(model)
    correct = torch.zeros(1, dtype=torch.float64)
    truncated = 0
    for batch in _batches(samples, micro_batch_size):
        sequences = []
        for sample in batch:
            sequence = list(sample.context) + list(sample.target)
            if len(sample.target) > max_length:
                raise ConfigError(f"a LAMBADA target of {len(sample.target)} tokens does not fit --seq-length "
                                  f"{max_length}; give a longer --seq-length.")
            if len(sequence) > max_length + 1:
                truncated += 1
                sequence = sequence[-(max_length + 1):]
            sequences.append(sequence)
        length = max(len(s) for s in sequences) - 1
        inputs = torch.full((len(batch), length), pad_id, dtype=torch.long)
        rows, positions, targets = [], [], []       # one entry per target token of the batch
        for row, (sample, sequence) in enumerate(zip(batch, sequences)):
            inputs[row, :len(sequence) - 1] = torch.tensor(sequence[:-1], dtype=torch.long)
            first = len(sequence) - 1 - len(sample.target)     # the position that predicts target[0]
            rows += [row] * len(sample.target)
            positions += range(first, first + len(sample.target))
            targets += sample.target
        logits, _ = causal_forward(model, inputs.to(device), transformer_xl)
        if is_last_stage():
            picked = logits[torch.tensor(rows, device=device), torch.tensor(positions, device=device)]
            predicted = sample_next_tokens(picked.float(), GREEDY, None, torch.empty(len(rows), 0, dtype=torch.long),
                                           vocab_size).cpu()
            wrong = torch.zeros(len(batch), dtype=torch.long).index_add_(
                0, torch.tensor(rows), (predicted != torch.tensor(targets)).long())
            correct += int((wrong == 0).sum())
        if progress is not None:
            progress.update(len(batch), int(sum(len(s) for s in sequences)))
    return int(from_last_stage(correct)[0]), truncated
