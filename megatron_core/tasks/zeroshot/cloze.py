"""Zero-shot CHID: a masked LM fills the blank with each candidate and picks the likeliest.

For a passage `left #idiom# right` and a candidate c of L tokens, the model reads

    [CLS] left [MASK] * L right [SEP]          (token type 0; the passage cut around the blank
                                                to --seq-length, the left side keeping its end)

and the candidate's score is the sum over its tokens of log p(c_i | that input) at the i-th
[MASK] (all of c masked at once, as FewCLUE's zero-shot baselines score a cloze). The answer
is the candidate with the highest score (the first on a tie). Candidates of one length share
the input, so an item costs one forward pass per distinct candidate length; the passes are
batched --micro-batch-size at a time.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ...inference.decoders import run_pipeline_stage
from ...inference.generation import from_last_stage, is_last_stage
from ...inference.vocab_parallel_sampling import token_log_probs
from ..multiple_choice import IDIOM_BLANK, ClozeItem
from .progress import Progress


def cloze_input(left: List[int], right: List[int], length: int, seq_length: int, cls_id: int, sep_id: int,
                mask_id: int) -> Tuple[List[int], int]:
    """(ids, position of the first [MASK]) with the passage cut to fit seq_length."""
    budget = seq_length - 2 - length
    if budget < 0:
        raise ValueError(f"a candidate of {length} tokens does not fit --seq-length {seq_length}")
    keep_left = min(len(left), max(budget // 2, budget - len(right)))
    keep_right = min(len(right), budget - keep_left)
    ids = [cls_id] + left[len(left) - keep_left:] + [mask_id] * length + right[:keep_right] + [sep_id]
    return ids, 1 + keep_left


@torch.no_grad()
def cloze_predictions(model, tokenizer, items: Sequence[ClozeItem], seq_length: int, vocab_size: int,
                      micro_batch_size: int = 8, progress: Optional[Progress] = None) -> List[int]:
    """The chosen candidate of every item (the same list on every rank)."""
    device = next(model.parameters()).device
    rows: List[Tuple[int, List[int], int, int]] = []         # (item, ids, first mask, length)
    candidates: List[List[List[int]]] = []
    for index, item in enumerate(items):
        left_text, right_text = item.content.split(IDIOM_BLANK, 1)
        left, right = tokenizer.tokenize(left_text), tokenizer.tokenize(right_text.replace(IDIOM_BLANK, ""))
        tokens = [tokenizer.tokenize(candidate) for candidate in item.candidates]
        candidates.append(tokens)
        for length in sorted({len(t) for t in tokens}):
            ids, first = cloze_input(left, right, length, seq_length, tokenizer.cls, tokenizer.sep, tokenizer.mask)
            rows.append((index, ids, first, length))
    scores = torch.full((len(items), max((len(c) for c in candidates), default=0)), float("-inf"), dtype=torch.float64)
    pad = tokenizer.pad if getattr(tokenizer, "pad", None) is not None else 0
    for start in range(0, len(rows), micro_batch_size):
        batch = rows[start:start + micro_batch_size]
        width = max(len(ids) for _, ids, _, _ in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        keep = torch.zeros_like(ids)
        for r, (_, row_ids, _, _) in enumerate(batch):
            ids[r, :len(row_ids)] = torch.tensor(row_ids)
            keep[r, :len(row_ids)] = 1
        ids, keep = ids.to(device), keep.to(device)

        def compute(received):
            if received is not None:
                model.set_input_tensor(received)
            hidden = model.encode(ids, keep, torch.zeros_like(ids))
            if not model.post_process:
                return hidden
            return model.heads(hidden)[0]            # [b, s, V/tp]
        logits = run_pipeline_stage(model, compute, model.config.params_dtype)
        if is_last_stage():
            for r, (index, _, first, length) in enumerate(batch):
                for c, tokens in enumerate(candidates[index]):
                    if len(tokens) != length:
                        continue
                    where = torch.arange(first, first + length, device=device)
                    target = torch.tensor(tokens, device=device)
                    scores[index, c] = token_log_probs(logits[r:r + 1, where], target[None], vocab_size).double().sum()
        if progress is not None:
            progress.update(len(batch), int(keep.sum()))
    scores = from_last_stage(scores)
    return [int(torch.argmax(row)) for row in scores] if len(items) else []


def cloze_metrics(items: Sequence[ClozeItem], predictions: Sequence[int]) -> Dict:
    labelled = [(item.answer, p) for item, p in zip(items, predictions) if item.answer is not None]
    correct = sum(int(answer == p) for answer, p in labelled)
    return {"correct": correct, "total": len(labelled), "accuracy": correct / len(labelled) if labelled else None,
            "predictions": list(predictions)}
