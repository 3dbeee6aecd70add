"""Tiny models of every generating family for the inference tests, built per TP size and
pipeline stage from one seed (serial-exact: a TP=2 or PP=2 build holds the TP=1 weights),
and the plain references decoding is checked against: greedy decoding that recomputes
the whole sequence with the model's ordinary forward at every step."""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch

from megatron_core.models.gpt import GPTModel
from megatron_core.models.llama import llama_config
from megatron_core.models.roformer import RoFormerModel
from megatron_core.models.t5 import T5Model
from megatron_core.models.transformer_xl import TransformerXLModel
from megatron_core.transformer.config import TransformerConfig

VOCAB, PADDED, MAX_POSITIONS = 60, 64, 64
# A wide init makes the logits peaked, so greedy tokens are far from ties.
_COMMON = dict(hidden_dropout=0.0, attention_dropout=0.0, init_method_std=0.3)


def tiny_gpt(tp: int = 1, stage=None, num_layers: int = 2) -> GPTModel:
    """GPT-2 style: learned positions, LayerNorm, tanh GELU (gelu_new), tied output layer."""
    config = TransformerConfig(num_layers=num_layers, hidden_size=32, num_attention_heads=4, ffn_hidden_size=48,
                               activation="gelu_tanh", tensor_model_parallel_size=tp, **_COMMON)
    return GPTModel(config, PADDED, MAX_POSITIONS, stage=stage).eval()


def tiny_llama(tp: int = 1, stage=None, num_layers: int = 2) -> GPTModel:
    """Llama style with grouped-query attention: 4 query heads over 2 key/value heads."""
    config = llama_config(num_layers=num_layers, hidden_size=32, num_attention_heads=4, num_query_groups=2,
                          ffn_hidden_size=48, tensor_model_parallel_size=tp, init_method_std=0.3)
    return GPTModel(config, PADDED, MAX_POSITIONS, stage=stage).eval()


def tiny_roformer(tp: int = 1) -> RoFormerModel:
    config = TransformerConfig(num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=48,
                               position_embedding_type="rope", rotary_interleaved=True, layernorm_position="pre",
                               tensor_model_parallel_size=tp, **_COMMON)
    return RoFormerModel(config, PADDED, MAX_POSITIONS).eval()


def tiny_t5(tp: int = 1, stage=None) -> T5Model:
    config = TransformerConfig(num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=48,
                               kv_channels=8, normalization="RMSNorm", layernorm_epsilon=1e-6, add_bias_linear=False,
                               position_embedding_type="t5_relative", softmax_scale=1.0, activation="relu",
                               relative_attention_num_buckets=8, relative_attention_max_distance=16,
                               tensor_model_parallel_size=tp, **_COMMON)
    return T5Model(config, PADDED, decoder_num_layers=2, max_sequence_length=MAX_POSITIONS,
                   stage=stage if stage is not None and stage.size > 1 else None).eval()


def tiny_transformer_xl(tp: int = 1, mem_length: int = 6, stage=None) -> TransformerXLModel:
    config = TransformerConfig(num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=48,
                               position_embedding_type="relative_xl", activation="gelu_tanh",
                               tensor_model_parallel_size=tp, **_COMMON)
    return TransformerXLModel(config, PADDED, mem_length, stage=stage).eval()


@torch.no_grad()
def greedy_by_recomputation(last_logits: Callable[[torch.Tensor], torch.Tensor], prompt: Sequence[int],
                            steps: int, vocab_size: int = VOCAB) -> List[int]:
    """Greedy tokens where every step runs the whole sequence: last_logits(ids [1, s]) -> [V]."""
    ids = list(prompt)
    for _ in range(steps):
        logits = last_logits(torch.tensor([ids]))[:vocab_size]
        ids.append(int(logits.argmax()))
    return ids[len(prompt):]


def random_prompts(lengths: Sequence[int], seed: int = 0, vocab_size: int = VOCAB) -> List[List[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab_size, (n,), generator=g).tolist() for n in lengths]


def full_logits(model, ids: torch.Tensor, family: str = "gpt", encoder_ids: Optional[torch.Tensor] = None):
    """The model's ordinary forward over a whole sequence: logits [b, s, V/tp]."""
    with torch.no_grad():
        if family == "gpt":
            return model(ids)
        if family == "roformer":
            ones = torch.ones_like(ids)
            return model(ids, ones, ones)[0]
        if family == "t5":
            return model(encoder_ids, ids, torch.ones_like(encoder_ids))
    raise ValueError(f"no full forward for family {family!r}")
