"""How megatron-core names a model's tensors inside a torch_dist checkpoint (pure functions).

A GPTModel's state dict numbers its layers (`decoder.layers.3.mlp.linear_fc2.weight`, BERT:
`encoder.layers.3...`); its torch_dist checkpoint stores every such family of tensors as one
tensor with a leading layer axis over the whole model, numbered globally across pipeline
stages, under the name without the number:

    decoder.layers.3.mlp.linear_fc2.weight [64, 256]
        -> decoder.layers.mlp.linear_fc2.weight [num_layers, 64, 256], row 3

and names the two norms as Transformer Engine's fused norm+linear modules hold them, so that
checkpoints of local and Transformer Engine layers are the same:

    input_layernorm.{weight,bias}    -> self_attention.linear_qkv.layer_norm_{weight,bias}
    pre_mlp_layernorm.{weight,bias}  -> mlp.linear_fc1.layer_norm_{weight,bias}

Models built with non-homogeneous layers (MoE every k layers, heterogeneous blocks, or
`singleton_local_shards`) keep the number instead: `decoder.layers.3.mlp.linear_fc2.weight`,
no layer axis (still numbered globally). Every other tensor keeps its state-dict name.
"""
from __future__ import annotations

import re
from typing import Optional, Tuple

NUMBERED = re.compile(r"^(?P<block>.+?\.layers)\.(?P<layer>\d+)\.(?P<rest>.+)$")
STACKED = re.compile(r"^(?P<block>.+?\.layers)\.(?P<rest>\D.*)$")

# (state-dict prefix inside a layer, checkpoint prefix)
NORM_NAMES = (
    ("input_layernorm.", "self_attention.linear_qkv.layer_norm_"),
    ("pre_mlp_layernorm.", "mlp.linear_fc1.layer_norm_"),
)

# The linear modules of a layer; each has an `_extra_state` entry in megatron-core's state dict.
LAYER_LINEARS = ("self_attention.linear_qkv", "self_attention.linear_proj", "mlp.linear_fc1", "mlp.linear_fc2",
                 "cross_attention.linear_q", "cross_attention.linear_kv", "cross_attention.linear_proj")


def _rename(rest: str, to_checkpoint: bool) -> str:
    for model_name, checkpoint_name in NORM_NAMES:
        old, new = (model_name, checkpoint_name) if to_checkpoint else (checkpoint_name, model_name)
        if rest.startswith(old):
            return new + rest[len(old):]
    return rest


def checkpoint_name(key: str) -> Tuple[str, Optional[int]]:
    """(stacked checkpoint name, global layer index) of a state-dict key numbered globally;
    (key, None) for a tensor outside the layers."""
    match = NUMBERED.match(key)
    if match is None:
        return key, None
    return f"{match['block']}.{_rename(match['rest'], True)}", int(match["layer"])


def layer_block(key: str) -> Optional[str]:
    """`decoder.layers` for `decoder.layers.3.x`, None outside the layers."""
    match = NUMBERED.match(key)
    return match["block"] if match else None


def state_dict_name(name: str, layer: Optional[int] = None) -> str:
    """The state-dict key of checkpoint tensor `name` (row `layer` of a stacked one)."""
    if layer is not None:
        match = STACKED.match(name)
        return f"{match['block']}.{layer}.{_rename(match['rest'], False)}"
    match = NUMBERED.match(name)
    if match is None:
        return name
    return f"{match['block']}.{match['layer']}.{_rename(match['rest'], False)}"


def is_stacked(name: str) -> bool:
    """Whether checkpoint tensor `name` carries a leading layer axis."""
    return STACKED.match(name) is not None


def shifted(key: str, layer_offset: int) -> str:
    """`key` with its layer number moved by `layer_offset` (a pipeline stage numbers its layers
    from 0; the checkpoint numbers them across the model)."""
    match = NUMBERED.match(key)
    if match is None or not layer_offset:
        return key
    return f"{match['block']}.{int(match['layer']) + layer_offset}.{match['rest']}"
