"""The key/value cache of incremental decoding (megatron/core's InferenceParams, our names).

    context = InferenceContext(max_batch_size=b, max_sequence_length=prompt + new tokens)
    logits = model(prompt, positions, mask, inference_context=context)   # fills slots 0..P-1
    context.advance(P)
    logits = model(next_token, positions, mask, inference_context=context)  # one new slot
    context.advance(1)

Each self-attention layer (keyed by its global layer number) stores its keys and values
after rotary, [max_len, b, kv_groups/tp, d]: with grouped-query attention only the kv
heads are cached, never the repeated query-head copies. A step writes its s new
positions at `sequence_len_offset` and attends over everything written so far; the
caller advances the offset once the whole model (every layer) has run the step.
Cross-attention (T5) projects the encoder output once per layer and keeps it. With
`last_logits_only` a language model computes logits for the step's last position only.
Beam search (beam_search.py) continues each new beam from the cache of the beam it
extends: `select_rows(rows)` makes row i the old row rows[i], in every layer.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch


class InferenceContext:
    def __init__(self, max_batch_size: int, max_sequence_length: int, last_logits_only: bool = True):
        self.max_batch_size = max_batch_size
        self.max_sequence_length = max_sequence_length
        self.sequence_len_offset = 0
        # The output layer needs only the last position of a step (not of the whole prompt)
        # unless the prompt's own log-probabilities are wanted.
        self.last_logits_only = last_logits_only
        self._self_kv: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}
        self._cross_kv: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}

    def append_key_value(self, layer_number: int, key: torch.Tensor, value: torch.Tensor
                         ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Store this step's key/value [s, b, groups, d] of `layer_number`; return all of them so far."""
        s, b = key.shape[:2]
        start, end = self.sequence_len_offset, self.sequence_len_offset + s
        if end > self.max_sequence_length or b > self.max_batch_size:
            raise ValueError(f"the KV cache holds {self.max_sequence_length} positions of {self.max_batch_size} "
                             f"sequences; this step needs {end} positions of {b}.")
        if layer_number not in self._self_kv:
            shape = (self.max_sequence_length, b) + tuple(key.shape[2:])
            self._self_kv[layer_number] = (key.new_empty(shape), value.new_empty(shape))
        keys, values = self._self_kv[layer_number]
        keys[start:end, :b] = key
        values[start:end, :b] = value
        return keys[:end, :b], values[:end, :b]

    def cross_key_value(self, layer_number: int, project: Callable[[], Tuple[torch.Tensor, torch.Tensor]]
                        ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The encoder output's key/value of `layer_number`, projected on first use."""
        if layer_number not in self._cross_kv:
            self._cross_kv[layer_number] = project()
        return self._cross_kv[layer_number]

    def select_rows(self, rows: torch.Tensor) -> None:
        """Row i of every cached key/value (self- and cross-attention) becomes the old row
        rows[i]; rows [b] holds indices into the cached batch, repeats allowed."""
        for cache in (self._self_kv, self._cross_kv):
            for layer, (keys, values) in cache.items():
                cache[layer] = (keys.index_select(1, rows.to(keys.device)),
                                values.index_select(1, rows.to(values.device)))

    def advance(self, steps: int) -> None:
        self.sequence_len_offset += steps

    def cached_kv_heads(self, layer_number: int) -> int:
        """How many key/value heads this rank caches for a layer (tests check GQA stores groups)."""
        return self._self_kv[layer_number][0].shape[2]
