"""Parameter count and training FLOPs per token, from the config alone.

FLOPs follow Megatron-LM's `num_floating_point_operations`: every matrix multiply of
[m, k] x [k, n] costs 2mkn; training is forward + backward = 3 x forward; attention
scores count the full s x s square (no causal halving); activation recomputation is
NOT counted (model FLOPs, as used for MFU). Per token and layer the forward pass is
    qkv        2 h (n_h + 2 n_g) d
    scores     2 s n_h d        (q k^T)       and  2 s n_h d  (probs v)
    out proj   2 n_h d h
    mlp        2 h f (2 if gated else 1) + 2 f h
plus the logits 2 h V once per token.
"""
from __future__ import annotations

from ..transformer.config import TransformerConfig


def layer_parameter_count(config: TransformerConfig) -> int:
    h, f = config.hidden_size, config.ffn_hidden_size
    norm = (2 if config.normalization == "LayerNorm" else 1) * h
    qkv_out = config.query_projection_size + 2 * config.kv_projection_size
    mlp_up = f * (2 if config.gated_linear_unit else 1)
    count = 2 * norm  # two norms per layer, pre- or post-LN alike
    count += h * qkv_out + (qkv_out if config.add_qkv_bias else 0)
    count += config.query_projection_size * h + (h if config.add_bias_linear else 0)
    count += h * mlp_up + (mlp_up if config.add_bias_linear else 0)
    count += f * h + (h if config.add_bias_linear else 0)
    return count


def parameter_count(config: TransformerConfig, vocab_size: int, max_sequence_length: int = 0,
                    num_tokentypes: int = 0) -> int:
    """Parameters of a decoder-only model (GPT/Llama): the serial count, whatever the TP size."""
    h = config.hidden_size
    count = vocab_size * h + num_tokentypes * h
    if config.position_embedding_type == "learned_absolute":
        count += max_sequence_length * h
    count += config.num_layers * layer_parameter_count(config)
    if config.final_layernorm:
        count += (2 if config.normalization == "LayerNorm" else 1) * h
    if not config.share_embeddings_and_output_weights:
        count += vocab_size * h
    return count


def forward_flops_per_token(config: TransformerConfig, vocab_size: int, seq_length: int) -> int:
    h, f, d = config.hidden_size, config.ffn_hidden_size, config.kv_channels
    n_h, n_g = config.num_attention_heads, config.num_query_groups
    qkv = 2 * h * (n_h + 2 * n_g) * d
    attention = 2 * 2 * seq_length * n_h * d
    out_proj = 2 * n_h * d * h
    mlp = 2 * h * f * (2 if config.gated_linear_unit else 1) + 2 * f * h
    logits = 2 * h * vocab_size
    return config.num_layers * (qkv + attention + out_proj + mlp) + logits


def training_flops_per_token(config: TransformerConfig, vocab_size: int, seq_length: int) -> int:
    """Forward + backward (backward = 2 x forward). Multiply by tokens/s for FLOP/s."""
    return 3 * forward_flops_per_token(config, vocab_size, seq_length)
