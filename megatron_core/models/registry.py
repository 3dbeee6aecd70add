"""The model families: one spec each, looked up by name (torchtitan's model specs).

    family = get_family("gpt")
    options = family.options(vars(args))      # the builder's arguments beyond the config (plain values)
    chunk = family.build_model(config, padded_vocab_size, options, stage)      # one pipeline stage
    shape = family.model_shape(config, padded_vocab_size, options, flags)      # parameter count, memory estimate
    family.hf_mapping(config)                 # "gpt" or "llama": models/hf/registry.py's name; None: no HF class
    family.generation, family.fill_mask       # how inference/ generates with it (text_generation.py)

A family is what a checkpoint records (checkpoint/model_record.py: `model_family` and
`model_options`, which are exactly `options` here), so the loop, the tools and the
converters build the model the file holds without guessing. What a family is made of:

  configure     the family's fixed choices over the flags' TransformerConfig (Transformer-XL:
                relative positions, tanh GELU); applied by build_model and model_shape
  build         (config, padded vocabulary, options, stage) -> the model of one pipeline stage
  options       the flags (a run's vars(args), or a checkpoint's `args` record) -> the
                builder's other arguments: the model class's keyword names (max_sequence_length,
                num_tokentypes, add_binary_head, add_pooler, decoder_num_layers, mem_length)
  shape         (config, padded vocabulary, options, flags) -> ModelShape (rank_parameters.py),
                counted by one of its structures (decoder, masked_lm, encoder_decoder, transformer_xl)
  hf_mappings   the HF architectures of the family (HF mapping names; the first is the
                default), and the rule that picks one for a config (llama for RMSNorm/SwiGLU/rotary)
  generation    the inference adapter: "causal_lm", "roformer_lm", "t5", "transformer_xl"
                (inference/text_generation.py), None if it does not generate; fill_mask: it
                predicts [MASK] tokens
  encoder_decoder  its pipeline stages split into encoder stages, then decoder stages

Llama is not a family: pretrain_gpt.py builds it with a config (RMSNorm, SwiGLU, rotary,
GQA), it is a GPTModel, and its checkpoints record "gpt"; "llama" is one of gpt's HF
architectures, as "megatron_bert" is one of bert's. What a family needs to train (its
batch, loss and datasets) sits with its entry point (training/train_spec.py's TrainSpec),
since models/ may not import training/.

A new family registers itself with register_family (a line below for a family of this
package; a test or a plugin may call it at runtime).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Tuple

import torch

from ..errors import CheckpointError, ConfigError
from ..mpu.layout import PipelineStage
from ..transformer.config import TransformerConfig
from .bert import BertModel
from .classification import ClassificationModel
from .gpt import GPTModel
from .rank_parameters import ModelShape
from .roformer import RoFormerModel
from .t5 import T5Model
from .transformer_xl import TransformerXLModel

GENERATION_ADAPTERS = ("causal_lm", "roformer_lm", "t5", "transformer_xl")


def _same(config: TransformerConfig) -> TransformerConfig:
    return config


@dataclass(frozen=True)
class ModelFamily:
    name: str
    build: Callable[..., torch.nn.Module]          # (config, padded vocab, options, stage)
    options: Callable[[Mapping], Dict]             # (flags) -> builder arguments
    shape: Callable[..., ModelShape]               # (config, padded vocab, options, flags)
    configure: Callable[[TransformerConfig], TransformerConfig] = _same
    hf_mappings: Tuple[str, ...] = ()
    choose_hf_mapping: Optional[Callable[[TransformerConfig], str]] = None
    generation: Optional[str] = None
    fill_mask: bool = False
    encoder_decoder: bool = False                  # pipeline stages split into encoder, then decoder stages

    def __post_init__(self):
        if self.generation is not None and self.generation not in GENERATION_ADAPTERS:
            raise ValueError(f"family {self.name}: generation {self.generation!r} is not one of "
                             f"{', '.join(GENERATION_ADAPTERS)} (or None).")

    def build_model(self, config: TransformerConfig, padded_vocab_size: int, options: Mapping,
                    stage: Optional[PipelineStage] = None) -> torch.nn.Module:
        return self.build(self.configure(config), padded_vocab_size, dict(options), stage)

    def model_shape(self, config: TransformerConfig, padded_vocab_size: int, options: Mapping,
                    flags: Optional[Mapping] = None) -> ModelShape:
        return self.shape(self.configure(config), padded_vocab_size, dict(options), dict(flags or {}))

    def hf_mapping(self, config: TransformerConfig) -> Optional[str]:
        """The HF mapping (models/hf/registry.py) of a model of this family; None if it has none."""
        if not self.hf_mappings:
            return None
        return self.choose_hf_mapping(config) if self.choose_hf_mapping else self.hf_mappings[0]


_FAMILIES: Dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> ModelFamily:
    if family.name in _FAMILIES and _FAMILIES[family.name] is not family:
        raise ValueError(f"a model family named {family.name!r} is already registered.")
    _FAMILIES[family.name] = family
    return family


def unregister_family(name: str) -> None:
    """Forget a family registered at runtime (tests)."""
    _FAMILIES.pop(name, None)


def registered_families() -> Tuple[str, ...]:
    return tuple(_FAMILIES)


def get_family(name: str) -> ModelFamily:
    if name not in _FAMILIES:
        raise ConfigError(f"no model family named {name!r}; the families are {', '.join(_FAMILIES)} "
                          f"(models/registry.py).")
    return _FAMILIES[name]


def family_of_hf_mapping(mapping_name: str) -> ModelFamily:
    """The family an HF mapping (e.g. "llama", "megatron_bert") is an architecture of."""
    for family in _FAMILIES.values():
        if mapping_name in family.hf_mappings:
            return family
    raise ConfigError(f"no model family has the HF mapping {mapping_name!r}.")


def checkpoint_model_options(family: ModelFamily, head: Mapping) -> Dict:
    """The builder options a checkpoint records, or (written before they were) its family's
    options from its `args` record."""
    options = head.get("model_options")
    if isinstance(options, Mapping):
        return dict(options)
    args = head.get("args")
    if not isinstance(args, Mapping):
        raise CheckpointError("the checkpoint records neither model_options nor args; it was not written by "
                              "this package.")
    return family.options(args)


# --- the families of this package -------------------------------------------------------------------

def _positions(flags: Mapping) -> int:
    return flags.get("max_position_embeddings") or flags.get("seq_length") or 512


def _gpt_hf_mapping(config: TransformerConfig) -> str:
    llama_like = (config.normalization == "RMSNorm" or config.activation == "swiglu"
                  or config.position_embedding_type == "rope")
    return "llama" if llama_like else "gpt"


register_family(ModelFamily(
    name="gpt",
    build=lambda config, vocab, o, stage: GPTModel(config, vocab, stage=stage, **o),
    options=lambda flags: {"max_sequence_length": _positions(flags)},
    shape=lambda config, vocab, o, flags: ModelShape("gpt", config, vocab, o["max_sequence_length"],
                                                     structure="decoder"),
    hf_mappings=("gpt", "llama"), choose_hf_mapping=_gpt_hf_mapping, generation="causal_lm"))


def _bert_options(flags: Mapping) -> Dict:
    """Megatron: no token types without the binary head."""
    binary = bool(flags.get("bert_binary_head", False))
    return {"max_sequence_length": _positions(flags), "num_tokentypes": 2 if binary else 0,
            "add_binary_head": binary, "add_pooler": binary}


register_family(ModelFamily(
    name="bert",
    build=lambda config, vocab, o, stage: BertModel(config, vocab, stage=stage, **o),
    options=_bert_options,
    shape=lambda config, vocab, o, flags: ModelShape(
        "bert", config, vocab, o["max_sequence_length"], num_tokentypes=o["num_tokentypes"],
        add_pooler=o["add_pooler"], add_binary_head=o["add_binary_head"], structure="masked_lm"),
    hf_mappings=("bert", "megatron_bert"),
    choose_hf_mapping=lambda config: "megatron_bert" if config.layernorm_position == "pre" else "bert",
    fill_mask=True))

register_family(ModelFamily(
    name="roformer",
    build=lambda config, vocab, o, stage: RoFormerModel(config, vocab, stage=stage, **o),
    options=lambda flags: {"max_sequence_length": _positions(flags), "num_tokentypes": 2},
    shape=lambda config, vocab, o, flags: ModelShape(
        "roformer", config, vocab, o["max_sequence_length"], num_tokentypes=o["num_tokentypes"],
        add_pooler=o.get("add_pooler") or False, add_binary_head=o.get("add_binary_head", False),
        structure="masked_lm"),
    hf_mappings=("roformer",), generation="roformer_lm", fill_mask=True))

def _t5_options(flags: Mapping) -> Dict:
    """Megatron's T5 (learned positions, tied head) has T5LMHead's vocabulary bias; HF's T5 and
    untied heads have none. pretrain_t5.py's runs record t5_lm_head_bias (on unless
    --no-t5-lm-head-bias); a record without it (written before the flag) builds none, and the
    Megatron-LM readers set it from the file's tensors."""
    megatron_t5 = (flags.get("position_embedding_type") or "learned_absolute") == "learned_absolute" \
        and not flags.get("untie_embeddings_and_output_weights", False)
    return {"decoder_num_layers": flags.get("decoder_num_layers"), "max_sequence_length": _positions(flags),
            "lm_head_bias": megatron_t5 and bool(flags.get("t5_lm_head_bias", False))}


def _classification_options(flags: Mapping) -> Dict:
    """finetune_classification.py's head: --num-classes (1 with --multiple-choice); token types for pairs."""
    multiple_choice = bool(flags.get("multiple_choice", False))
    labels = flags.get("class_labels")
    return {"max_sequence_length": _positions(flags), "num_tokentypes": 2,
            "num_classes": 1 if multiple_choice else int(flags.get("num_classes") or 2),
            "multiple_choice": multiple_choice, "labels": json.loads(labels) if isinstance(labels, str) else labels}


register_family(ModelFamily(
    name="classification",
    build=lambda config, vocab, o, stage: ClassificationModel(config, vocab, stage=stage, **o),
    options=_classification_options,
    shape=lambda config, vocab, o, flags: ModelShape(
        "classification", config, vocab, o["max_sequence_length"], num_tokentypes=o["num_tokentypes"],
        add_pooler=True, structure="masked_lm"),
    hf_mappings=("bert_classification", "megatron_bert_classification"),
    choose_hf_mapping=lambda config: "megatron_bert_classification" if config.layernorm_position == "pre"
    else "bert_classification"))

register_family(ModelFamily(
    name="t5",
    build=lambda config, vocab, o, stage: T5Model(config, vocab, stage=stage, **o),
    options=_t5_options,
    shape=lambda config, vocab, o, flags: ModelShape(
        "t5", config, vocab, o["max_sequence_length"], decoder_num_layers=o["decoder_num_layers"],
        decoder_seq_length=flags.get("decoder_seq_length"), lm_head_bias=o.get("lm_head_bias", False),
        structure="encoder_decoder"),
    hf_mappings=("t5",), generation="t5", encoder_decoder=True))


def _transformer_xl_config(config: TransformerConfig) -> TransformerConfig:
    """Relative positions, and Chinese-Transformer-XL's tanh GELU unless --swiglu."""
    return config.replace(position_embedding_type="relative_xl",
                          activation="gelu_tanh" if config.activation == "gelu" else config.activation)


def _mem_length(flags: Mapping) -> int:
    """--mem-length, else --seq-length (0 if neither is known)."""
    mem_length = flags.get("mem_length")
    mem_length = (flags.get("seq_length") or 0) if mem_length is None else mem_length
    if mem_length < 0:
        raise ConfigError(f"--mem-length must be 0 (no memory) or more, got {mem_length}.")
    return mem_length


register_family(ModelFamily(
    name="transformer_xl",
    build=lambda config, vocab, o, stage: TransformerXLModel(config, vocab, stage=stage, **o),
    options=lambda flags: {"mem_length": _mem_length(flags)},
    shape=lambda config, vocab, o, flags: ModelShape("transformer_xl", config, vocab, mem_length=o["mem_length"],
                                                     untie_r=o.get("untie_r", False), structure="transformer_xl"),
    configure=_transformer_xl_config, generation="transformer_xl"))
