"""A stack of transformer layers (optionally a pipeline stage's slice) and the final norm.

Layer numbers are global: a block built with layer_offset=k and num_layers_in_block=m
holds layers k+1 .. k+m of the full model (1-based, as in Megatron), each initialized
from its own seed (init.py), so the slice has exactly the serial model's weights.
Parameter names use local indices (layers.0 ...), as Megatron's per-stage checkpoints do.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..mpu import parallel_state as ps
from ..mpu.random import checkpoint
from .config import ConfigError, TransformerConfig
from .init import component_rng
from .layer import TransformerLayer
from .norms import build_norm


def check_parallel_size(config: TransformerConfig) -> None:
    world = ps.get_tensor_model_parallel_world_size()
    if world != config.tensor_model_parallel_size:
        raise ConfigError(
            f"config.tensor_model_parallel_size is {config.tensor_model_parallel_size} but the "
            f"tensor-parallel group has {world} ranks; build the config with tensor_model_parallel_size={world}.")


class TransformerBlock(nn.Module):
    def __init__(self, config: TransformerConfig, self_attn_mask_type: str = "causal",
                 has_cross_attention: bool = False, layer_offset: int = 0,
                 num_layers_in_block: Optional[int] = None, post_layer_norm: bool = True,
                 seed_name: str = "layer"):
        super().__init__()
        check_parallel_size(config)
        self.config = config
        count = config.num_layers - layer_offset if num_layers_in_block is None else num_layers_in_block
        if layer_offset < 0 or count < 0 or layer_offset + count > config.num_layers:
            raise ConfigError(
                f"layers {layer_offset + 1}..{layer_offset + count} do not fit in a model of "
                f"{config.num_layers} layers; check layer_offset and num_layers_in_block.")
        self.layer_offset = layer_offset
        layers = []
        for i in range(count):
            number = layer_offset + i + 1
            with component_rng(config, seed_name, number):
                layers.append(TransformerLayer(config, number, self_attn_mask_type, has_cross_attention))
        self.layers = nn.ModuleList(layers)
        self.final_layernorm = build_norm(config) if (post_layer_norm and config.final_layernorm) else None

    def _run_layers(self, start: int, end: int):
        def run(hidden, *args):
            for layer in self.layers[start:end]:
                hidden = layer(hidden, *args)
            return hidden
        return run

    def forward(self, hidden_states: Optional[torch.Tensor], attention_mask: Optional[torch.Tensor] = None,
                rotary_angles: Optional[torch.Tensor] = None, attention_bias: Optional[torch.Tensor] = None,
                encoder_output: Optional[torch.Tensor] = None, enc_dec_mask: Optional[torch.Tensor] = None,
                cross_attention_bias: Optional[torch.Tensor] = None, inference_context=None) -> torch.Tensor:
        """hidden_states [s(/tp with SP), b, h] -> same shape; inference_context: the KV cache of
        incremental decoding (inference/kv_cache.py)."""
        if hidden_states is None:
            raise ValueError("the transformer block got no input; a later pipeline stage passes the tensor its "
                             "model received through set_input_tensor.")
        args = (attention_mask, rotary_angles, attention_bias, encoder_output, enc_dec_mask, cross_attention_bias,
                inference_context)
        n = len(self.layers)
        config = self.config
        if config.recompute_granularity == "full" and self.training and torch.is_grad_enabled():
            k = config.recompute_num_layers
            if config.recompute_method == "uniform":
                # Checkpoint groups of k layers: only each group's input is kept.
                for start in range(0, n, k):
                    hidden_states = checkpoint(self._run_layers(start, min(start + k, n)), hidden_states, *args)
            else:
                # "block": checkpoint the first k layers one by one, run the rest normally.
                for i in range(n):
                    run = self._run_layers(i, i + 1)
                    hidden_states = checkpoint(run, hidden_states, *args) if i < k else run(hidden_states, *args)
        else:
            hidden_states = self._run_layers(0, n)(hidden_states, *args)
        if self.final_layernorm is not None:
            hidden_states = self.final_layernorm(hidden_states)
        return hidden_states
