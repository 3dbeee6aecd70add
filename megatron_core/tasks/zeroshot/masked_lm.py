"""Pseudo-perplexity of a masked language model (BERT, MegatronBERT, RoFormer in MLM mode).

A masked LM gives no probability of a whole text, so it is scored the way Salazar et al.
(2020, "Masked Language Model Scoring") define a pseudo-log-likelihood: every token is
replaced by [MASK] on its own, in a copy of its window, and scored by the log-probability
the model gives it there, seeing every other token of the window:

    PLL   = sum over tokens i of log p(w_i | the window with w_i masked)
    pppl  = exp(-PLL / N)                      N = tokens scored (every token of the text)

The token stream is cut into consecutive windows of seq_length - 2 tokens, each read as
[CLS] window [SEP] with token type 0 (RoFormer's bidirectional MLM mode); [CLS] and [SEP]
are not scored. A window of n tokens costs n forward passes, its masked copies batched
--micro-batch-size at a time; the MLM head runs on the masked position of each copy only.
Megatron-LM has no such task; the definition is the paper's.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from ...inference.decoders import run_pipeline_stage
from ...inference.generation import from_last_stage, is_last_stage
from ...inference.vocab_parallel_sampling import token_log_probs
from .progress import Progress


def masked_windows(num_tokens: int, window: int):
    """(start, length) of the consecutive windows that cover a stream of num_tokens tokens."""
    return [(start, min(window, num_tokens - start)) for start in range(0, num_tokens, window)]


@torch.no_grad()
def pseudo_log_likelihood(model, tokens: Sequence[int], seq_length: int, vocab_size: int, cls_id: int, sep_id: int,
                          mask_id: int, micro_batch_size: int = 8, progress: Optional[Progress] = None
                          ) -> Tuple[float, int]:
    """(-PLL, N): the sum of -log p over every token, each masked alone, and their number."""
    device = next(model.parameters()).device
    stream = torch.tensor(list(tokens), dtype=torch.long)
    totals = torch.zeros(2, dtype=torch.float64)
    for start, length in masked_windows(len(stream), seq_length - 2):
        sequence = torch.cat([torch.tensor([cls_id]), stream[start:start + length], torch.tensor([sep_id])])
        for first in range(0, length, micro_batch_size):
            masked = torch.arange(first, min(first + micro_batch_size, length)) + 1   # positions after [CLS]
            ids = sequence.repeat(len(masked), 1)
            ids[torch.arange(len(masked)), masked] = mask_id
            ids, keep = ids.to(device), torch.ones_like(ids, device=device)
            types = torch.zeros_like(ids)

            rows = torch.arange(len(masked), device=device)
            where = masked.to(device)

            def compute(received):
                if received is not None:
                    model.set_input_tensor(received)
                hidden = model.encode(ids, keep, types)                 # [s, b, h]
                if not model.post_process:
                    return hidden
                # The head runs on the masked positions only: [1, b, h] -> logits [b, 1, V/tp].
                return model.heads(hidden[where, rows][None])[0][:, 0]
            logits = run_pipeline_stage(model, compute, model.config.params_dtype)
            if is_last_stage():
                targets = sequence[masked].to(device)
                totals[0] -= token_log_probs(logits[:, None], targets[:, None], vocab_size).double().sum().cpu()
                totals[1] += len(masked)
            if progress is not None:
                progress.update(len(masked), len(masked))
    totals = from_last_stage(totals)
    return float(totals[0]), int(totals[1])
