"""BertModel / BertForPreTraining (HF transformers) <-> our BertModel (post-LN layout).

Full (TP=1) state dicts in both directions:

    ours = from_hf_state_dict(hf_model.state_dict(), config)            # -> BertModel.load_state_dict
    hf_sd = to_hf_state_dict(our_model.state_dict(), config, vocab_size=21128)
    hf_config = to_hf_config(config, vocab_size=21128, max_position_embeddings=512)  # hf_config_dict: plain dict

HF keeps q, k and v as three [h*d, h] matrices; ours is one fused query_key_value whose
rows are per-head interleaved [q0 k0 v0 | q1 k1 v1 | ...] (qkv_layout.py).
Everything else is a rename. HF's `cls.predictions.decoder` is tied to the word table
and shares `cls.predictions.bias`; ours keeps the bias as `lm_head.bias`.

Vocabulary padding: our tables may be padded (config.pad_vocab); `from_hf_state_dict(...,
padded_vocab_size=n)` appends zero rows, `to_hf_state_dict(..., vocab_size=n)` drops them.

This module also holds the mapping engine the MegatronBERT and RoFormer converters use,
and the registry entries of all three (`encoder_mapping`). `MAPPING` is BERT's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch

from ...transformer.config import TransformerConfig
from ..bert import BertModel
from .common import (ConversionError, HFMapping, ModelSpec, owning_outputs, check_vocab_rows, count_layers, hf_architecture,
                     hf_config_object, model_argument, pad_vocab_rows, trim_vocab_rows)
from .qkv_layout import deinterleave_qkv, interleave_qkv

HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
OUR_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}

Pairs = List[Tuple[str, str]]  # (our name, HF name), without .weight/.bias


# --- layouts ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncoderLayout:
    """Where each of our tensors lives in one HF encoder family (names without .weight/.bias)."""
    prefix: str                       # "bert." / "roformer." (the base model inside *ForXxx)
    embeddings: Pairs                 # word, position, token-type tables (.weight only)
    embedding_norm: Pairs             # [] or the LayerNorm on the embedding sum
    layer_qkv: Tuple[str, str, str]   # HF q, k, v linear names inside a layer
    layer: Pairs                      # our layer module -> HF layer module (weight + bias)
    final: Pairs                      # final norm (pre-LN) or []
    pooler: Pairs
    extra_buffers: Tuple[str, ...] = field(default=())  # HF buffers in the state dict we recompute
    layer_buffers: Tuple[str, ...] = field(default=())  # the same, inside every layer


MLM_HEAD: Pairs = [("lm_head.dense", "cls.predictions.transform.dense"),
                   ("lm_head.layernorm", "cls.predictions.transform.LayerNorm")]
BINARY_HEAD: Pairs = [("binary_head", "cls.seq_relationship")]

# Name pairs the BERT-like families share (BERT, MegatronBERT, RoFormer, Zhouwenwang).
WORD_EMBEDDINGS = ("embedding.word_embeddings", "embeddings.word_embeddings")
POSITION_EMBEDDINGS = ("embedding.position_embeddings", "embeddings.position_embeddings")
TOKENTYPE_EMBEDDINGS = ("embedding.tokentype_embeddings", "embeddings.token_type_embeddings")
HF_QKV = ("attention.self.query", "attention.self.key", "attention.self.value")
POST_LN_LAYER: Pairs = [("self_attention.dense", "attention.output.dense"),     # BERT, RoFormer
                        ("post_attention_layernorm", "attention.output.LayerNorm"),
                        ("mlp.dense_h_to_4h", "intermediate.dense"),
                        ("mlp.dense_4h_to_h", "output.dense"),
                        ("post_mlp_layernorm", "output.LayerNorm")]
PRE_LN_LAYER: Pairs = [("input_layernorm", "attention.ln"),                     # MegatronBERT, Zhouwenwang
                       ("self_attention.dense", "attention.output.dense"),
                       ("post_attention_layernorm", "ln"),
                       ("mlp.dense_h_to_4h", "intermediate.dense"),
                       ("mlp.dense_4h_to_h", "output.dense")]
PRE_LN_FINAL: Pairs = [("encoder.final_layernorm", "encoder.ln")]
POOLER: Pairs = [("pooler.dense", "pooler.dense")]

BERT_LAYOUT = EncoderLayout(
    prefix="bert.",
    embeddings=[WORD_EMBEDDINGS, POSITION_EMBEDDINGS, TOKENTYPE_EMBEDDINGS],
    embedding_norm=[("embedding.layernorm", "embeddings.LayerNorm")],
    layer_qkv=HF_QKV,
    layer=POST_LN_LAYER,
    final=[],
    pooler=POOLER,
)


def _wb(pairs: Pairs) -> Pairs:
    return [(o + s, h + s) for o, h in pairs for s in (".weight", ".bias")]


def _w(pairs: Pairs) -> Pairs:
    return [(o + ".weight", h + ".weight") for o, h in pairs]


def check_encoder_config(config: TransformerConfig, family: str, layernorm_position: str,
                         position_embedding_type: str) -> None:
    """Raise ConversionError if our config cannot be expressed in this HF family."""
    problems = []
    if config.layernorm_position != layernorm_position:
        problems.append(f"layernorm_position={layernorm_position!r}")
    if config.position_embedding_type != position_embedding_type:
        problems.append(f"position_embedding_type={position_embedding_type!r}")
    if position_embedding_type == "rope" and (not config.rotary_interleaved or config.rotary_percent != 1.0
                                              or config.rotary_base != 10000.0):
        problems.append("rotary_interleaved=True, rotary_percent=1.0 and rotary_base=10000")
    if config.normalization != "LayerNorm":
        problems.append("normalization='LayerNorm'")
    if config.activation not in OUR_ACTIVATIONS:
        problems.append(f"activation in {sorted(OUR_ACTIVATIONS)}")
    if not (config.add_bias_linear and config.add_qkv_bias):
        problems.append("add_bias_linear=True and add_qkv_bias=True")
    if config.num_query_groups != config.num_attention_heads:
        problems.append("num_query_groups == num_attention_heads (no GQA)")
    if config.kv_channels * config.num_attention_heads != config.hidden_size:
        problems.append("kv_channels * num_attention_heads == hidden_size")
    if config.final_layernorm != (layernorm_position == "pre"):
        problems.append(f"final_layernorm={layernorm_position == 'pre'}")
    if config.apply_residual_connection_post_layernorm:
        problems.append("apply_residual_connection_post_layernorm=False")
    if problems:
        raise ConversionError(f"{family} needs {', '.join(problems)}; this config differs.")


@owning_outputs
def encoder_from_hf(hf_sd: Dict[str, torch.Tensor], config: TransformerConfig, layout: EncoderLayout,
                    family: str, padded_vocab_size: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """HF state dict (base model alone, or with `prefix` and cls heads) -> ours.

    Heads missing from the HF model (e.g. BertModel has no MLM/NSP head, BertForMaskedLM
    no pooler) are missing from the result: load it with strict=False, or only into a
    model built without them.
    """
    src = {k: v for k, v in hf_sd.items()}
    has_prefix = any(k.startswith(layout.prefix) for k in src)
    base = layout.prefix if has_prefix else ""
    out: Dict[str, torch.Tensor] = {}
    used = set()

    def take(hf_name: str) -> torch.Tensor:
        if hf_name not in src:
            raise ConversionError(f"the {family} state dict has no '{hf_name}'; is it a {family} checkpoint "
                                  f"with {config.num_layers} layers?")
        used.add(hf_name)
        return src[hf_name]

    for ours, theirs in _w(layout.embeddings):
        if ours.startswith("embedding.position_embeddings") and config.position_embedding_type != "learned_absolute":
            continue
        out[ours] = take(base + theirs)
    out["embedding.word_embeddings.weight"] = pad_vocab_rows(out["embedding.word_embeddings.weight"],
                                                             padded_vocab_size, "word embeddings")
    for ours, theirs in _wb(layout.embedding_norm):
        out[ours] = take(base + theirs)

    n_hf = count_layers(src, base + "encoder.layer.")
    if n_hf != config.num_layers:
        raise ConversionError(f"the {family} checkpoint has {n_hf} layers but config.num_layers is "
                              f"{config.num_layers}; build the config from the checkpoint's config.")
    heads = config.num_attention_heads
    for i in range(config.num_layers):
        hf_layer, our_layer = f"{base}encoder.layer.{i}.", f"encoder.layers.{i}."
        for suffix in (".weight", ".bias"):
            q, k, v = (take(hf_layer + name + suffix) for name in layout.layer_qkv)
            out[our_layer + "self_attention.query_key_value" + suffix] = interleave_qkv(q, k, v, heads, heads)
        for ours, theirs in _wb(layout.layer):
            out[our_layer + ours] = take(hf_layer + theirs)
        used.update(hf_layer + name for name in layout.layer_buffers)
    for ours, theirs in _wb(layout.final):
        out[ours] = take(base + theirs)

    def optional_group(pairs: Pairs, hf_base: str) -> None:
        names = [(o, hf_base + h) for o, h in _wb(pairs)]
        present = [h in src for _, h in names]
        if all(present):
            for ours, theirs in names:
                out[ours] = take(theirs)
        elif any(present):
            missing = [h for (_, h), p in zip(names, present) if not p]
            raise ConversionError(f"the {family} state dict has part of a head but not {missing}.")

    if layout.pooler:
        optional_group(layout.pooler, base)
    optional_group(BINARY_HEAD, "")
    if "cls.predictions.bias" in src:
        optional_group(MLM_HEAD, "")
        out["lm_head.bias"] = pad_vocab_rows(take("cls.predictions.bias"), padded_vocab_size, "MLM output bias")
        if "cls.predictions.decoder.bias" in src:
            used.add("cls.predictions.decoder.bias")
        decoder = src.get("cls.predictions.decoder.weight")
        if decoder is not None:
            used.add("cls.predictions.decoder.weight")
            if config.share_embeddings_and_output_weights:
                table = src[base + layout.embeddings[0][1] + ".weight"]
                # (meta tensors: a streamed import's other windows, shapes only: nothing to compare)
                if not (decoder.is_meta or table.is_meta) and not torch.equal(decoder, table):
                    raise ConversionError(f"the {family} MLM decoder is not tied to the word embeddings; build "
                                          f"the config with share_embeddings_and_output_weights=False.")
            else:
                out["lm_head.output_weight"] = pad_vocab_rows(decoder, padded_vocab_size, "MLM decoder")
    for name in layout.extra_buffers:
        used.add(base + name)
    unused = sorted(set(src) - used)
    if unused:
        raise ConversionError(f"the {family} state dict has tensors this converter does not know: "
                              f"{unused[:5]}{' ...' if len(unused) > 5 else ''}; is it the right model family?")
    return out


@owning_outputs
def encoder_to_hf(our_sd: Dict[str, torch.Tensor], config: TransformerConfig, layout: EncoderLayout,
                  family: str, with_prefix: bool, with_pooler: bool, with_mlm_head: bool, with_binary_head: bool,
                  vocab_size: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """Ours -> HF names. The caller adds family-specific buffers (e.g. RoFormer's positions)."""
    base = layout.prefix if with_prefix else ""
    out: Dict[str, torch.Tensor] = {}

    def take(name: str) -> torch.Tensor:
        if name not in our_sd:
            raise ConversionError(f"our state dict has no '{name}'; convert a full (TP=1, all pipeline stages) "
                                  f"model with the heads this {family} needs.")
        return our_sd[name]

    for ours, theirs in _w(layout.embeddings):
        if ours.startswith("embedding.position_embeddings") and config.position_embedding_type != "learned_absolute":
            continue
        out[base + theirs] = take(ours)
    word_key = base + layout.embeddings[0][1] + ".weight"
    out[word_key] = trim_vocab_rows(out[word_key], vocab_size, "word embeddings")
    for ours, theirs in _wb(layout.embedding_norm):
        out[base + theirs] = take(ours)
    heads = config.num_attention_heads
    for i in range(config.num_layers):
        hf_layer, our_layer = f"{base}encoder.layer.{i}.", f"encoder.layers.{i}."
        for suffix in (".weight", ".bias"):
            q, k, v = deinterleave_qkv(take(our_layer + "self_attention.query_key_value" + suffix), heads, heads)
            for name, t in zip(layout.layer_qkv, (q, k, v)):
                out[hf_layer + name + suffix] = t
        for ours, theirs in _wb(layout.layer):
            out[hf_layer + theirs] = take(our_layer + ours)
    for ours, theirs in _wb(layout.final):
        out[base + theirs] = take(ours)
    if with_pooler:
        for ours, theirs in _wb(layout.pooler):
            out[base + theirs] = take(ours)
    if with_mlm_head:
        for ours, theirs in _wb(MLM_HEAD):
            out[theirs] = take(ours)
        bias = trim_vocab_rows(take("lm_head.bias"), vocab_size, "MLM output bias")
        out["cls.predictions.bias"] = bias
        out["cls.predictions.decoder.bias"] = bias
        if config.share_embeddings_and_output_weights:
            out["cls.predictions.decoder.weight"] = out[word_key]
        else:
            out["cls.predictions.decoder.weight"] = trim_vocab_rows(take("lm_head.output_weight"), vocab_size,
                                                               "MLM decoder")
    if with_binary_head:
        for ours, theirs in _wb(BINARY_HEAD):
            out[theirs] = take(ours)
    return out


def hf_activation(hf_config) -> str:
    act = getattr(hf_config, "hidden_act", "gelu")
    if act not in HF_ACTIVATIONS:
        raise ConversionError(f"hidden_act={act!r} has no equivalent here; supported: {sorted(HF_ACTIVATIONS)}.")
    return HF_ACTIVATIONS[act]


def architecture_heads(architectures: Dict[str, Tuple[bool, bool, bool, bool]], architecture: str
                       ) -> Tuple[bool, bool, bool, bool]:
    """(prefix, pooler, MLM head, binary head) of one HF architecture name of a family."""
    if architecture not in architectures:
        raise ConversionError(f"architecture {architecture!r} is not one of {sorted(architectures)}.")
    return architectures[architecture]


def require_absolute_positions(hf_config, family: str) -> None:
    """BERT-like HF configs may ask for relative position embeddings, which we do not have."""
    if getattr(hf_config, "position_embedding_type", "absolute") != "absolute":
        raise ConversionError(f"position_embedding_type={hf_config.position_embedding_type!r} {family} is "
                              f"not supported; only 'absolute'.")


def encoder_config_from_hf(hf_config, overrides: dict, **family_values) -> TransformerConfig:
    """Our TransformerConfig: the fields all BERT-like HF configs share, then the family's
    (layernorm_position, position_embedding_type, ...), then the caller's overrides."""
    values = dict(common_config_kwargs(hf_config), **family_values)
    values.update(overrides)
    return TransformerConfig(**values)


def common_config_kwargs(hf_config) -> dict:
    return dict(num_layers=hf_config.num_hidden_layers, hidden_size=hf_config.hidden_size,
                num_attention_heads=hf_config.num_attention_heads, ffn_hidden_size=hf_config.intermediate_size,
                layernorm_epsilon=hf_config.layer_norm_eps, activation=hf_activation(hf_config),
                hidden_dropout=hf_config.hidden_dropout_prob, attention_dropout=hf_config.attention_probs_dropout_prob,
                init_method_std=hf_config.initializer_range,
                share_embeddings_and_output_weights=getattr(hf_config, "tie_word_embeddings", True),
                normalization="LayerNorm", add_bias_linear=True, use_scaled_init_method=False)


def encoder_hf_config_dict(config: TransformerConfig, model_type: str, architecture: str, vocab_size: int,
                           max_position_embeddings: int, type_vocab_size: int, **family_values) -> dict:
    """The config.json keys all BERT-like HF configs share, then the family's."""
    return dict(model_type=model_type, architectures=[architecture], vocab_size=vocab_size,
                hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
                num_attention_heads=config.num_attention_heads, intermediate_size=config.ffn_hidden_size,
                hidden_act=OUR_ACTIVATIONS[config.activation], hidden_dropout_prob=config.hidden_dropout,
                attention_probs_dropout_prob=config.attention_dropout, layer_norm_eps=config.layernorm_epsilon,
                initializer_range=config.init_method_std, max_position_embeddings=max_position_embeddings,
                type_vocab_size=type_vocab_size, tie_word_embeddings=config.share_embeddings_and_output_weights,
                **family_values)


def encoder_mapping(name: str, model_type: str, architectures: Dict[str, Tuple[bool, bool, bool, bool]],
                    model_class: type, hf_config_dict: Callable[..., dict], from_hf_config: Callable,
                    from_hf_state_dict: Callable, to_hf_state_dict: Callable[[Dict, ModelSpec], Dict]) -> HFMapping:
    """The registry entry of a BERT-like family. Our model gets the pooler and binary head the HF
    architecture has; our MLM head is always built (left at its init when HF has none, as for
    BertModel: load such a state dict with strict=False)."""

    def config_to_hf(spec: ModelSpec) -> dict:
        return hf_config_dict(spec.config, spec.vocab_size, model_argument(model_class, spec, "max_sequence_length"),
                              model_argument(model_class, spec, "num_tokentypes"), spec.architecture)

    def config_from_hf(hf_config, padded_vocab_size: Optional[int] = None, **overrides) -> ModelSpec:
        hf_config = hf_config_object(hf_config, model_type)
        architecture = hf_architecture(hf_config, tuple(architectures))
        _, pooler, _, binary = architectures[architecture]
        return ModelSpec(name, from_hf_config(hf_config, **overrides), hf_config.vocab_size,
                         padded_vocab_size or hf_config.vocab_size, architecture,
                         dict(max_sequence_length=hf_config.max_position_embeddings,
                              num_tokentypes=hf_config.type_vocab_size, add_binary_head=binary, add_pooler=pooler))

    def state_dict_to_hf(our_sd: Dict[str, torch.Tensor], spec: ModelSpec) -> Dict[str, torch.Tensor]:
        if WORD_EMBEDDINGS[0] + ".weight" in our_sd:
            check_vocab_rows(our_sd[WORD_EMBEDDINGS[0] + ".weight"], spec, "the word table")
        return to_hf_state_dict(our_sd, spec)

    def state_dict_from_hf(hf_sd: Dict[str, torch.Tensor], spec: ModelSpec) -> Dict[str, torch.Tensor]:
        return from_hf_state_dict(hf_sd, spec.config, padded_vocab_size=spec.padded_vocab_size)

    return HFMapping(name=name, model_type=model_type, architectures=tuple(architectures), model_class=model_class,
                     config_to_hf=config_to_hf, config_from_hf=config_from_hf,
                     state_dict_to_hf=state_dict_to_hf, state_dict_from_hf=state_dict_from_hf)


# --- BERT ------------------------------------------------------------------------------------------
FAMILY = "BERT"
MODEL_TYPE = "bert"
ARCHITECTURES = {  # name -> (prefix, pooler, MLM head, binary head); the first is the default export
    "BertForPreTraining": (True, True, True, True),
    "BertModel": (False, True, False, False),
    "BertForMaskedLM": (True, False, True, False),
}


def check_config(config: TransformerConfig) -> None:
    check_encoder_config(config, "HF BertModel", "post", "learned_absolute")


def from_hf_state_dict(hf_sd: Dict[str, torch.Tensor], config: TransformerConfig,
                       padded_vocab_size: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """BertModel / BertForPreTraining / BertForMaskedLM state dict -> our BertModel's."""
    check_config(config)
    return encoder_from_hf(hf_sd, config, BERT_LAYOUT, FAMILY, padded_vocab_size)


def to_hf_state_dict(our_sd: Dict[str, torch.Tensor], config: TransformerConfig,
                     architecture: str = "BertForPreTraining", vocab_size: Optional[int] = None
                     ) -> Dict[str, torch.Tensor]:
    """Our BertModel's full state dict -> the HF `architecture`'s (vocab_size trims padding)."""
    check_config(config)
    prefix, pooler, mlm, binary = architecture_heads(ARCHITECTURES, architecture)
    return encoder_to_hf(our_sd, config, BERT_LAYOUT, FAMILY, prefix, pooler, mlm, binary, vocab_size)


def hf_config_dict(config: TransformerConfig, vocab_size: int, max_position_embeddings: int = 512,
                   type_vocab_size: int = 2, architecture: str = "BertForPreTraining") -> dict:
    """BERT's config.json for our model (vocab_size: the real, unpadded size)."""
    check_config(config)
    return encoder_hf_config_dict(config, MODEL_TYPE, architecture, vocab_size, max_position_embeddings,
                                  type_vocab_size, position_embedding_type="absolute")


def to_hf_config(config: TransformerConfig, vocab_size: int, max_position_embeddings: int = 512,
                 type_vocab_size: int = 2, architecture: str = "BertForPreTraining"):
    """A transformers.BertConfig describing our model (vocab_size: the real, unpadded size)."""
    return hf_config_object(hf_config_dict(config, vocab_size, max_position_embeddings, type_vocab_size,
                                           architecture), MODEL_TYPE)


def from_hf_config(hf_config, **overrides) -> TransformerConfig:
    """Our post-LN TransformerConfig for a transformers.BertConfig or its config.json dict
    (overrides: e.g. TP size)."""
    hf_config = hf_config_object(hf_config, MODEL_TYPE)
    require_absolute_positions(hf_config, FAMILY)
    return encoder_config_from_hf(hf_config, overrides, layernorm_position="post",
                                  position_embedding_type="learned_absolute")


MAPPING = encoder_mapping("bert", MODEL_TYPE, ARCHITECTURES, BertModel, hf_config_dict, from_hf_config,
                          from_hf_state_dict,
                          lambda sd, spec: to_hf_state_dict(sd, spec.config, spec.architecture, spec.vocab_size))
