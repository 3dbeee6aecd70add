"""Input embeddings shared by the families: words (+ learned positions) (+ token types).

Output is Megatron's [seq, batch, hidden] layout, split along the sequence when
sequence parallelism is on, after an optional norm on the sum (original BERT, HF
RoFormer) and embedding dropout.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..mpu.layers import VocabParallelEmbedding, default_device
from ..mpu.mappings import scatter_to_sequence_parallel_region
from ..mpu.sharding_map import mark_stage_copy
from ..transformer.config import TransformerConfig
from ..transformer.dropout import dropout
from ..transformer.init import component_rng, init_method
from ..transformer.norms import build_norm

WORD_EMBEDDINGS_SEED_NAME = "word_embeddings"
# The stage-copy key of the word table (pipeline/chunk.py): its name in the serial model.
WORD_TABLE_KEY = "embedding.word_embeddings.weight"


def build_word_embeddings(config: TransformerConfig, vocab_size: int) -> VocabParallelEmbedding:
    """The (vocab-parallel) word table, drawn from its own component seed: a last pipeline
    stage that rebuilds it for a tied output layer gets exactly the first stage's table."""
    with component_rng(config, WORD_EMBEDDINGS_SEED_NAME):
        return VocabParallelEmbedding(vocab_size, config.hidden_size, init_method=init_method(config),
                                      params_dtype=config.params_dtype)


def build_word_embeddings_copy(config: TransformerConfig, vocab_size: int) -> VocabParallelEmbedding:
    """A later pipeline stage's copy of the word table (for a tied output layer): same seed,
    so it starts equal to the first stage's table; a stage copy that the first stage owns, so
    the pipeline sums its gradient with the others' and the gradient norm counts it once."""
    table = build_word_embeddings(config, vocab_size)
    mark_stage_copy(table.weight, WORD_TABLE_KEY, owner=False)
    return table


class LanguageEmbedding(nn.Module):
    """words (+ learned positions) (+ token types) -> [norm] -> dropout, [s, b, h].

    layernorm=True adds the config's norm on the summed embeddings (`layernorm.*` in the
    state dict). It runs after the sequence-parallel scatter (it is per token), so its
    weights are marked like every other sequence-parallel norm.
    """

    def __init__(self, config: TransformerConfig, vocab_size: int, max_sequence_length: int,
                 num_tokentypes: int = 0, layernorm: bool = False):
        super().__init__()
        self.config = config
        self.word_embeddings = build_word_embeddings(config, vocab_size)
        self.position_embeddings = None
        if config.position_embedding_type == "learned_absolute":
            # Replicated on every TP rank; each table has its own component seed.
            # (nn.Embedding draws its own default init: keep that inside the fork too, so
            # building the model leaves the caller's generator untouched.)
            with component_rng(config, "position_embeddings"):
                self.position_embeddings = nn.Embedding(max_sequence_length, config.hidden_size,
                                                        dtype=config.params_dtype, device=default_device())
                init_method(config)(self.position_embeddings.weight.data)
        self.tokentype_embeddings = None
        if num_tokentypes > 0:
            with component_rng(config, "tokentype_embeddings"):
                self.tokentype_embeddings = nn.Embedding(num_tokentypes, config.hidden_size,
                                                         dtype=config.params_dtype, device=default_device())
                init_method(config)(self.tokentype_embeddings.weight.data)
        self.layernorm = build_norm(config) if layernorm else None
        # Another pipeline stage may hold a copy of these tables (T5's first decoder stage,
        # a tied last stage): this one owns them unless its model says otherwise.
        for name, param in self.named_parameters():
            mark_stage_copy(param, f"embedding.{name}")

    def forward(self, input_ids: torch.Tensor, position_ids: Optional[torch.Tensor] = None,
                tokentype_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """input_ids [b, s] -> [s(/tp with SP), b, h]."""
        x = self.word_embeddings(input_ids)
        if self.position_embeddings is not None:
            if position_ids is None:
                position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
            x = x + self.position_embeddings(position_ids)
        if self.tokentype_embeddings is not None:
            if tokentype_ids is None:
                raise ValueError("this model has token-type embeddings; pass tokentype_ids.")
            x = x + self.tokentype_embeddings(tokentype_ids)
        x = x.transpose(0, 1).contiguous()
        split_dim = None
        if self.config.sequence_parallel_active:
            x = scatter_to_sequence_parallel_region(x)
            split_dim = 0
        if self.layernorm is not None:
            x = self.layernorm(x)
        return dropout(x, self.config.hidden_dropout, self.training, self.config, split_dim=split_dim)
