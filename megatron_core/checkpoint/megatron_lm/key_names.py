"""Tensor names between Megatron-LM's two naming schemes and ours.

Our names are megatron-core's module prefixes with the legacy inner names. One layer:

    ours                                   megatron-core (local / TE spec)                 legacy
    input_layernorm.*                      input_layernorm.*  | self_attention.linear_qkv.layer_norm_*   same
    self_attention.query_key_value.*       self_attention.linear_qkv.*                     same
    self_attention.dense.*                 self_attention.linear_proj.*                    same
    post_attention_layernorm.*             pre_mlp_layernorm.* | mlp.linear_fc1.layer_norm_*          same
    mlp.dense_h_to_4h.*                    mlp.linear_fc1.*                                same
    mlp.dense_4h_to_h.*                    mlp.linear_fc2.*                                same
    inter_attention.query / key_value / dense   cross_attention.linear_q / linear_kv / linear_proj   same
    post_inter_attention_layernorm.*       pre_cross_attn_layernorm.*                      same

Around the layers, megatron-core's keys are ours (embedding.*, decoder.* / encoder.*,
output_layer.*, BERT's pooler / lm_head / binary_head), except BERT's LM head: its
`lm_head.layer_norm` is our `lm_head.layernorm` and its `output_layer.bias` our
`lm_head.bias`. T5's LM-head bias is `output_layer.bias` on both sides; megatron-core's
T5Model registers two modules twice, so its torch-format files also hold the aliases
`position_embeddings.weight` and `lm_head.output_layer.*` (T5_ALIASES: read once, written
both ways). Legacy files nest their state dicts ({"language_model": {"embedding": {...},
"encoder": {...}}}); flattened with dots, `language_model.encoder.layers.N.` (older files:
`language_model.transformer.`) is our `decoder.layers.N.` for GPT and `encoder.layers.N.`
for BERT and T5 (T5's `language_model.decoder.` is our `decoder.`, its `lm_head.bias` our
`output_layer.bias`), `language_model.embedding.` is `embedding.`, `language_model.output_layer.` is
`output_layer.`, `language_model.pooler.` is `pooler.`, and a tied last stage's
`word_embeddings_for_head.weight` is our stage copy of the word table.

Legacy T5's decoder layer names its two later norms by what they follow: its
`post_attention_layernorm` comes after self-attention, before inter_attention (our
`post_inter_attention_layernorm`, megatron-core's `pre_cross_attn_layernorm`), and its
`post_inter_attention_layernorm` after inter_attention, before the MLP (our
`post_attention_layernorm`, megatron-core's `pre_mlp_layernorm`). The two swap names there.

Legacy QKV order. checkpoint_version 2.0 and later (and megatron-core) keep the fused QKV
rows per head as [q, k, v] (per query group with GQA), ours too; version 0 kept them as
[all q; all k; all v], version 1.0 as [hn, 3] inside each head (legacy fix_query_key_value_ordering).
"""
from __future__ import annotations

import re
from typing import Dict, List, Mapping, Optional

import torch

from ...errors import CheckpointError

MCORE, LEGACY = "mcore", "legacy"
KEY_STYLES = (MCORE, LEGACY)

# (ours, megatron-core) inside one layer
_LAYER_MCORE = (
    ("self_attention.query_key_value.", "self_attention.linear_qkv."),
    ("self_attention.dense.", "self_attention.linear_proj."),
    ("post_attention_layernorm.", "pre_mlp_layernorm."),
    ("mlp.dense_h_to_4h.", "mlp.linear_fc1."),
    ("mlp.dense_4h_to_h.", "mlp.linear_fc2."),
    ("inter_attention.query.", "cross_attention.linear_q."),
    ("inter_attention.key_value.", "cross_attention.linear_kv."),
    ("inter_attention.dense.", "cross_attention.linear_proj."),
    ("post_inter_attention_layernorm.", "pre_cross_attn_layernorm."),
)
# Transformer Engine's fused layer norms, read only (we write the local spec's names)
_LAYER_TE = (
    ("input_layernorm.weight", "self_attention.linear_qkv.layer_norm_weight"),
    ("input_layernorm.bias", "self_attention.linear_qkv.layer_norm_bias"),
    ("post_attention_layernorm.weight", "mlp.linear_fc1.layer_norm_weight"),
    ("post_attention_layernorm.bias", "mlp.linear_fc1.layer_norm_bias"),
)
# (ours, megatron-core) outside the layers: BERT's LM head
_OUTSIDE_MCORE = (("lm_head.layernorm.", "lm_head.layer_norm."), ("lm_head.bias", "output_layer.bias"))
# megatron-core T5Model's second names of the same modules: {alias prefix: the key prefix it repeats}
T5_ALIASES = {"position_embeddings.": "embedding.position_embeddings.", "lm_head.output_layer.": "output_layer."}
_LAYER_KEY = re.compile(r"^((?:encoder|decoder)\.layers\.\d+\.)(.*)$")
_UNSUPPORTED = {
    "mlp.router.": "mixture-of-experts layers (MoE)",
    "mlp.experts.": "mixture-of-experts layers (MoE)",
    "linear_q_down_proj": "multi-latent attention (MLA)",
    "linear_kv_down_proj": "multi-latent attention (MLA)",
    "mixer.": "hybrid Mamba layers",
    "q_layernorm.": "query/key layer norms (qk_layernorm)",
    "k_layernorm.": "query/key layer norms (qk_layernorm)",
}


# Every name of ours a Megatron-LM GPT, BERT or T5 maps to; anything else is a tensor we would not load.
_OUR_NAMES = re.compile(
    r"^(?:embedding\.(?:word_embeddings|position_embeddings|tokentype_embeddings)\.weight"
    r"|word_embeddings\.weight|output_layer\.(?:weight|bias)"
    r"|(?:encoder|decoder)\.final_layernorm\.(?:weight|bias)"
    r"|(?:encoder|decoder)\.layers\.\d+\.(?:input_layernorm|post_attention_layernorm|post_inter_attention_layernorm"
    r"|self_attention\.(?:query_key_value|dense)|inter_attention\.(?:query|key_value|dense)"
    r"|mlp\.(?:dense_h_to_4h|dense_4h_to_h))\.(?:weight|bias)"
    r"|pooler\.dense\.(?:weight|bias)|lm_head\.(?:dense|layernorm)\.(?:weight|bias)|lm_head\.bias"
    r"|binary_head\.(?:weight|bias))$")


def known(ours: str) -> bool:
    """Whether `ours` (a renamed Megatron-LM key) is a tensor of the models we build."""
    return bool(_OUR_NAMES.match(ours))


def is_extra_state(key: str) -> bool:
    """Transformer Engine's and megatron-core's per-module `_extra_state` entries (fp8 metadata): not weights."""
    return key.endswith("._extra_state") or key == "_extra_state"


def unsupported_feature(key: str) -> Optional[str]:
    for marker, what in _UNSUPPORTED.items():
        if marker in key:
            return what
    return None


def _swap(rest: str, pairs, forward: bool) -> Optional[str]:
    for ours, theirs in pairs:
        source, target = (theirs, ours) if forward else (ours, theirs)
        if rest == source or (source.endswith(".") and rest.startswith(source)):
            return target + rest[len(source):]
    return None


def alias_of(key: str) -> Optional[str]:
    """The key a megatron-core T5 alias repeats (None: not an alias)."""
    for alias, original in T5_ALIASES.items():
        if key.startswith(alias):
            return original + key[len(alias):]
    return None


def t5_aliases(keys) -> Dict[str, str]:
    """{alias: original} a megatron-core T5 checkpoint holds beside the original keys `keys`."""
    return {alias + key[len(original):]: key for key in keys
            for alias, original in T5_ALIASES.items() if key.startswith(original)}


def with_t5_aliases(state: Mapping[str, object]) -> Dict[str, object]:
    """A T5's megatron-core state with the aliases megatron-core's T5Model also asks for."""
    out = dict(state)
    out.update({alias: state[original] for alias, original in t5_aliases(state).items()})
    return out


def ours_from_mcore(key: str, family: str = "") -> str:
    """Our name of a megatron-core key (an unknown layer part is kept: the caller's map check names
    it). `family` "t5": its output_layer.bias is ours as it is (BERT's is our lm_head.bias)."""
    match = _LAYER_KEY.match(key)
    if match:
        prefix, rest = match.groups()
        swapped = _swap(rest, _LAYER_TE, True) or _swap(rest, _LAYER_MCORE, True)
        return prefix + (swapped or rest)
    if family == "t5":
        return key
    return _swap(key, _OUTSIDE_MCORE, True) or key


def mcore_from_ours(key: str) -> str:
    match = _LAYER_KEY.match(key)
    if match:
        prefix, rest = match.groups()
        return prefix + (_swap(rest, _LAYER_MCORE, False) or rest)
    return _swap(key, _OUTSIDE_MCORE, False) or key


def mcore_names(ours: str, family: str = "") -> List[str]:
    """Every name megatron-core's model of `family` gives our tensor `ours`: its megatron-core key,
    and a T5's second name of it (T5_ALIASES). megatron-core's optimizer asks for one of the two
    (the position table's alias, the head's original), so a writer keeps its state under both."""
    key = mcore_from_ours(ours)
    return [key, *t5_aliases([key])] if family == "t5" else [key]


# --- legacy ----------------------------------------------------------------------------------
# Megatron-LM's legacy models renamed their norms in 2023 (get_norm): files from before and after
# read alike, under the older names, which are also the ones written.
_NEWER_LEGACY_NORMS = {"input_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
                       "post_inter_attention_norm": "post_inter_attention_layernorm", "final_norm": "final_layernorm"}


def _older_norm_names(name: str) -> str:
    """`name` (dotted: the legacy encoder keeps its layers' keys dotted) with the older norm names."""
    parts = name.split(".")
    return ".".join("layernorm" if part == "norm" and i and parts[i - 1] == "lm_head"
                    else _NEWER_LEGACY_NORMS.get(part, part) for i, part in enumerate(parts))


def flatten(nested: Mapping, prefix: str = "") -> Dict[str, object]:
    """A legacy nested state dict with dotted keys ({"a": {"b": t}} -> {"a.b": t}), the newer legacy
    norm names (`input_norm`, ..., BERT's `lm_head.norm`) under the older ones."""
    flat = {}
    for key, value in nested.items():
        name = _older_norm_names(f"{prefix}{key}")
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


_LEGACY_STACK = re.compile(r"^language_model\.(?:encoder|transformer)\.")


_DECODER_NORM = re.compile(r"^((?:language_model\.)?decoder\.layers\.\d+\.)post_(inter_)?attention_layernorm\.")


def _swap_decoder_norms(key: str) -> str:
    """A T5 decoder layer's norm under the other scheme's name (the swap is its own inverse)."""
    match = _DECODER_NORM.match(key)
    if match is None:
        return key
    other = "post_attention_layernorm." if match.group(2) else "post_inter_attention_layernorm."
    return match.group(1) + other + key[match.end():]


def ours_from_legacy(key: str, stack: str, family: str = "") -> str:
    """Our name of a flattened legacy key; `stack` is our name of the legacy `encoder` stack
    ("decoder" for GPT, "encoder" for BERT and T5)."""
    if family == "t5" and key == "lm_head.bias":
        return "output_layer.bias"
    if family == "t5" and key.startswith("language_model.decoder."):
        return _swap_decoder_norms(key[len("language_model."):])
    if _LEGACY_STACK.match(key):
        rest = _LEGACY_STACK.sub("", key)
        rest = "final_layernorm." + rest[len("final_norm."):] if rest.startswith("final_norm.") else rest
        return f"{stack}.{rest}"
    if key.startswith("language_model."):
        return key[len("language_model."):]
    if key.startswith("word_embeddings_for_head."):
        return "word_embeddings." + key[len("word_embeddings_for_head."):]
    return key


def legacy_from_ours(key: str, family: str = "") -> str:
    """The flattened legacy key of ours (BERT's heads stay at the top, as legacy BertModel keeps them;
    T5's decoder is legacy T5's `language_model.decoder`, its head bias `lm_head.bias`)."""
    if family == "t5":
        if key == "output_layer.bias":
            return "lm_head.bias"
        if key.startswith("decoder."):
            return "language_model." + _swap_decoder_norms(key)
    match = re.match(r"^(?:encoder|decoder)\.(.*)$", key)
    if match:
        return "language_model.encoder." + match.group(1)
    if key.startswith(("embedding.", "output_layer.", "pooler.")):
        return "language_model." + key
    if key == "word_embeddings.weight":
        return "word_embeddings_for_head.weight"
    return key


def nest(flat: Mapping[str, object]) -> Dict[str, object]:
    """The legacy nesting of flattened keys: {"language_model": {"embedding": {"word_embeddings":
    {"weight": t}}, "encoder": {"layers.0.input_layernorm.weight": t}}} (a ParallelTransformer's
    own state dict is flat under "encoder", as legacy state_dict_for_save_checkpoint gives it)."""
    out: Dict[str, object] = {}
    for key, value in flat.items():
        stack = re.match(r"^language_model\.(encoder|decoder)\.", key)
        if stack:
            path = ["language_model", stack.group(1), key[stack.end():]]
        elif key.startswith("language_model."):
            module, _, rest = key[len("language_model."):].partition(".")
            if module == "embedding":
                table, _, leaf = rest.partition(".")
                path = ["language_model", "embedding", table, leaf]
            else:
                path = ["language_model", module, rest]
        else:
            module, _, rest = key.partition(".")
            path = [module, rest]
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


# --- the fused QKV rows of legacy files -------------------------------------------------------
def qkv_rows_to_current(tensor: torch.Tensor, version: float, heads: int) -> torch.Tensor:
    """Rows of a legacy query_key_value weight/bias (this rank's `heads` heads) in the order of
    checkpoint_version >= 2.0: per head [q, k, v]."""
    if version >= 2.0:
        return tensor
    rest = tuple(tensor.shape[1:])
    head_dim = tensor.shape[0] // (3 * heads)
    if version == 0:
        grouped = tensor.view(3, heads, head_dim, *rest).transpose(0, 1)
    elif version == 1.0:
        grouped = tensor.view(heads, head_dim, 3, *rest).transpose(1, 2)
    else:
        raise CheckpointError(f"checkpoint_version {version} is not one Megatron-LM wrote (0, 1.0, 2.0, 3.0); "
                              f"the file is damaged or from another program.")
    return grouped.contiguous().view(tensor.shape)


def style_of(keys) -> str:
    """MCORE or LEGACY, from a file's (flattened) model keys."""
    return LEGACY if any(k.startswith(("language_model.", "word_embeddings_for_head.")) for k in keys) else MCORE


def our_key(key: str, style: str, stack: str, family: str = "") -> str:
    return ours_from_legacy(key, stack, family) if style == LEGACY else ours_from_mcore(key, family)


def megatron_key(key: str, style: str, family: str = "") -> str:
    if style not in KEY_STYLES:
        raise CheckpointError(f"--key-names {style} is unknown; use {' or '.join(KEY_STYLES)}.")
    return legacy_from_ours(key, family) if style == LEGACY else mcore_from_ours(key)


__all__ = ["MCORE", "LEGACY", "KEY_STYLES", "T5_ALIASES", "alias_of", "t5_aliases", "with_t5_aliases", "mcore_names",
           "known", "is_extra_state", "unsupported_feature", "ours_from_mcore",
           "mcore_from_ours", "flatten", "nest", "ours_from_legacy", "legacy_from_ours", "qkv_rows_to_current",
           "style_of", "our_key", "megatron_key"]
