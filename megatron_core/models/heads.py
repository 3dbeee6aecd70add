"""Pieces the bidirectional encoder families (BERT, MegatronBERT, RoFormer) share.

  Pooler                   dense + tanh on the first token ([CLS]);
  MaskedLMHead             dense, activation, LayerNorm, then logits against the (tied)
                           word table plus an output-only bias; logits stay split over
                           the vocabulary across tensor-parallel ranks;
  build_binary_head        a 2-way classifier on the pooled output (NSP / SOP).

The heads are replicated on every tensor-parallel rank (they are small) and see the full
sequence: with sequence parallelism the encoder output is gathered first
(`gather_sequence_for_heads`). Each head is initialized from its own seed (transformer/init.py)
so a last pipeline stage builds exactly the serial heads.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..mpu import parallel_state as ps
from ..mpu.init_methods import mark_vocab_parallel, set_tensor_model_parallel_attributes
from ..mpu.layers import VocabParallelEmbedding, default_device
from ..mpu.mappings import copy_to_tensor_model_parallel_region, gather_from_sequence_parallel_region
from ..transformer.config import TransformerConfig
from ..transformer.init import component_rng, init_method
from ..transformer.mlp import activation_fn
from ..transformer.norms import build_norm
from .gpt import check_vocab_size


def _linear(config: TransformerConfig, in_features: int, out_features: int) -> nn.Linear:
    """A replicated linear layer: weight from the config's init, zero bias."""
    layer = nn.Linear(in_features, out_features, dtype=config.params_dtype, device=default_device())
    if layer.weight.is_meta:     # a build for shapes only (mpu/parameter_device.py): nothing to draw
        return layer
    with torch.no_grad():
        # Draw on the CPU generator (the one component_rng seeds), like the mpu layers do.
        weight = torch.empty(out_features, in_features, dtype=torch.float32)
        init_method(config)(weight)
        layer.weight.copy_(weight)
        layer.bias.zero_()
    return layer


def gather_sequence_for_heads(hidden: torch.Tensor, config: TransformerConfig) -> torch.Tensor:
    """[s/tp, b, h] -> [s, b, h] under sequence parallelism (identity otherwise).

    The heads after it compute the same thing on every rank (the vocab-parallel logits
    all-reduce their input gradient), so the backward keeps this rank's chunk.
    """
    if config.sequence_parallel_active:
        return gather_from_sequence_parallel_region(hidden, tensor_parallel_output_grad=False)
    return hidden


class Pooler(nn.Module):
    """tanh(dense(h[first token])): [s, b, h] -> [b, h]."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        with component_rng(config, "pooler"):
            self.dense = _linear(config, config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor, sequence_index: int = 0) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[sequence_index]))


def build_binary_head(config: TransformerConfig) -> nn.Linear:
    """Two logits (is-next / is-random, or in-order / swapped) from the pooled output."""
    with component_rng(config, "binary_head"):
        return _linear(config, config.hidden_size, 2)


class MaskedLMHead(nn.Module):
    """dense -> activation -> LayerNorm -> logits = x W_word^T + b, split over the vocabulary.

    The word table W is passed to forward (it lives in the embedding, or in the last
    stage's copy of it); the bias is this head's own parameter, split like the table's
    rows. With untied embeddings (config.share_embeddings_and_output_weights=False) the
    head owns its output table `output_weight`.
    """

    def __init__(self, config: TransformerConfig, vocab_size: int):
        super().__init__()
        self.config = config
        world = ps.get_tensor_model_parallel_world_size()
        with component_rng(config, "lm_head"):
            self.dense = _linear(config, config.hidden_size, config.hidden_size)
        self.activation = activation_fn(config.activation)
        if config.gated_linear_unit:
            raise ValueError(f"the masked-LM head needs a plain activation, not {config.activation!r}; "
                             f"use gelu (BERT) or relu.")
        self.layernorm = build_norm(config)
        for param in self.layernorm.parameters():
            param.sequence_parallel = False  # the head sees the gathered, full sequence
        check_vocab_size(config, vocab_size)
        self.bias = nn.Parameter(torch.zeros(vocab_size // world,
                                             dtype=config.params_dtype, device=default_device()))
        set_tensor_model_parallel_attributes(self.bias, True, 0, 1)
        mark_vocab_parallel(self.bias)
        self.output_weight = None
        if not config.share_embeddings_and_output_weights:
            with component_rng(config, "output_layer"):
                table = VocabParallelEmbedding(vocab_size, config.hidden_size, init_method=init_method(config),
                                               params_dtype=config.params_dtype)
            self.output_weight = table.weight

    def forward(self, hidden: torch.Tensor, word_embeddings_weight: Optional[torch.Tensor]) -> torch.Tensor:
        """hidden [s, b, h] -> vocab-parallel logits [b, s, vocab/tp]."""
        x = self.layernorm(self.activation(self.dense(hidden)))
        weight = self.output_weight if self.output_weight is not None else word_embeddings_weight
        if weight is None:
            raise ValueError("the masked-LM head needs the word embedding table; pass word_embeddings_weight.")
        # Replicated input, vocab-split weight: the input gradient is summed over TP ranks.
        logits = F.linear(copy_to_tensor_model_parallel_region(x), weight, self.bias)
        return logits.transpose(0, 1).contiguous()
