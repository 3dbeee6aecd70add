"""The most likely tokens for each [MASK] of a BERT / MegatronBERT / RoFormer (MLM) input.

    candidates = fill_mask(model, [[cls, 5, mask, 7, sep]], mask_id, top_k=5, vocab_size=v)
    candidates[0][0]      # [(token id, probability), ...] for the first [MASK] of sequence 0

One bidirectional forward pass (token type 0; RoFormer's MLM mode), right padding. Only
the rows of the masked positions are gathered over the tensor-parallel group (V floats
per [MASK]); with pipeline parallelism the last stage broadcasts the candidates.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

from ..mpu import parallel_state as ps
from ..models.language_model import gather_logits
from .decoders import run_pipeline_stage
from .generation import broadcast
from .vocab_parallel_sampling import mask_vocab_padding


@torch.no_grad()
def fill_mask(model, inputs: Sequence[Sequence[int]], mask_id: int, top_k: int, vocab_size: int
              ) -> List[List[List[Tuple[int, float]]]]:
    length = max(len(x) for x in inputs)
    ids = torch.zeros(len(inputs), length, dtype=torch.long)
    keep = torch.zeros(len(inputs), length, dtype=torch.long)
    device = next(model.parameters()).device
    for row, x in enumerate(inputs):
        ids[row, :len(x)] = torch.tensor(list(x), dtype=torch.long)
        keep[row, :len(x)] = 1
    where = (ids == mask_id).nonzero().tolist()    # [(row, position)] in reading order
    types = torch.zeros_like(ids)
    ids, keep, types = ids.to(device), keep.to(device), types.to(device)

    def compute(received):
        if received is not None:
            model.set_input_tensor(received)
        return model(ids, keep, types)
    output = run_pipeline_stage(model, compute, model.config.params_dtype)
    k = min(top_k, vocab_size)
    found = torch.zeros(len(where), k, 2, dtype=torch.float64)
    if where and ps.is_pipeline_last_stage():
        logits = output[0]                          # [b, s, V/tp]
        rows = torch.stack([logits[r, p] for r, p in where])
        full = gather_logits(mask_vocab_padding(rows.float(), vocab_size))
        probs, tokens = torch.softmax(full, dim=-1).topk(k, dim=-1)
        found[..., 0], found[..., 1] = tokens.double().cpu(), probs.double().cpu()
    if where and ps.get_pipeline_model_parallel_world_size() > 1:
        found = broadcast(found, src=ps.get_pipeline_model_parallel_last_rank(),
                          group=ps.get_pipeline_model_parallel_group())
    result: List[List[List[Tuple[int, float]]]] = [[] for _ in inputs]
    for (row, _), options in zip(where, found.tolist()):
        result[row].append([(int(t), p) for t, p in options])
    return result
