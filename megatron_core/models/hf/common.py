"""Pieces the HF converters share: ConversionError, the ModelSpec every mapping speaks,
reading a config.json dict, vocabulary padding, config checks and layer counting.
(The fused-QKV layouts are in qkv_layout.py.)

Vocabulary padding is explicit: our tables have `padded_vocab_size` rows, a number chosen
when the model was made and stored with it (never recomputed from a parallel size); HF's
have `vocab_size`. Import appends zero rows (pad_vocab_rows), export drops them
(trim_vocab_rows).
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import torch

from ...errors import ConversionError
from ...transformer.config import TransformerConfig

__all__ = ["ConversionError", "ModelSpec", "HFMapping", "model_argument", "hf_config_object", "hf_architecture",
           "pad_vocab_rows", "trim_vocab_rows", "check_vocab_rows", "require", "count_layers", "take",
           "owning_outputs"]


@dataclass(frozen=True)
class ModelSpec:
    """One model of ours as the HF mappings see it: what builds it (config, padded vocabulary,
    model_kwargs), what its HF twin is called (architecture) and the real vocabulary. The
    registry's mappings make one (config_from_hf, HFMapping.spec) and read it.

    vocab_size: the tokenizer's vocabulary, HF's `vocab_size`; padded_vocab_size: the rows of
    our tables (>= vocab_size). model_kwargs: our model class's other constructor arguments
    (max_sequence_length, num_tokentypes, decoder_num_layers, heads, ...).
    """
    family: str
    config: TransformerConfig
    vocab_size: int
    padded_vocab_size: int
    architecture: str
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.padded_vocab_size < self.vocab_size:
            raise ConversionError(f"padded_vocab_size {self.padded_vocab_size} is smaller than vocab_size "
                                  f"{self.vocab_size}; pass the padded size the model was built with.")


def model_argument(model_class: type, spec: ModelSpec, name: str):
    """spec.model_kwargs[name], else the default of that argument of our model class."""
    if name in spec.model_kwargs:
        return spec.model_kwargs[name]
    default = inspect.signature(model_class.__init__).parameters[name].default
    if default is inspect.Parameter.empty:
        raise ConversionError(f"converting a {spec.family} model needs model_kwargs[{name!r}] "
                              f"(the {model_class.__name__} argument); pass it in the ModelSpec.")
    return default


@dataclass(frozen=True)
class HFMapping:
    """How one family of ours maps to HF transformers, config and weights, both ways.

    config_to_hf(spec) -> a config.json dict (no transformers needed);
    config_from_hf(config.json dict or transformers config, padded_vocab_size=None,
                   **config_overrides) -> ModelSpec (padded_vocab_size None: no padding);
    state_dict_to_hf(our full TP=1 state dict, spec) -> HF state dict (padding rows dropped);
    state_dict_from_hf(HF state dict, spec) -> ours (zero rows up to spec.padded_vocab_size).
    """
    name: str                       # our family: "gpt", "llama", "bert", ...
    model_type: str                 # HF config.json model_type
    architectures: Tuple[str, ...]  # HF model classes it converts; the first is the default export
    model_class: type               # our model class to build
    config_to_hf: Callable[[ModelSpec], dict]
    config_from_hf: Callable[..., ModelSpec]
    state_dict_to_hf: Callable[[Dict[str, torch.Tensor], ModelSpec], Dict[str, torch.Tensor]]
    state_dict_from_hf: Callable[[Dict[str, torch.Tensor], ModelSpec], Dict[str, torch.Tensor]]

    def spec(self, config: TransformerConfig, vocab_size: int, padded_vocab_size: Optional[int] = None,
             architecture: Optional[str] = None, **model_kwargs) -> ModelSpec:
        """The ModelSpec of a model of ours (e.g. read from our checkpoint) to export."""
        architecture = architecture or self.architectures[0]
        if architecture not in self.architectures:
            raise ConversionError(f"{self.name} exports to {', '.join(self.architectures)}, not {architecture!r}.")
        return ModelSpec(self.name, config, vocab_size, padded_vocab_size or vocab_size, architecture, model_kwargs)

    def build_model(self, spec: ModelSpec, **kwargs) -> torch.nn.Module:
        """Our model for the spec (kwargs: e.g. pre_process/post_process for a pipeline stage)."""
        return self.model_class(spec.config, spec.padded_vocab_size, **{**spec.model_kwargs, **kwargs})


def hf_config_object(hf_config, model_type: str):
    """A transformers config for a config.json dict (transformers fills the keys the file omits,
    as older save_pretrained did for defaults); a config object is returned as it is."""
    if not isinstance(hf_config, Mapping):
        return hf_config
    found = hf_config.get("model_type", model_type)
    if found != model_type:
        raise ConversionError(f"the HF config has model_type {found!r}, this mapping reads {model_type!r}; "
                              f"look the mapping up with mapping_for_hf_config.")
    try:
        from transformers import AutoConfig
    except ImportError:
        raise ConversionError("reading an HF config.json needs transformers; pip install "
                              "'mcore-pretrain[hf]'.") from None
    values = {k: v for k, v in hf_config.items() if k != "model_type"}
    return AutoConfig.for_model(model_type, **values)


def hf_architecture(hf_config, supported: Sequence[str]) -> str:
    """The HF class a config names (its first `architectures` entry we map); the family's
    default, supported[0], when it names none."""
    named = list(getattr(hf_config, "architectures", None) or [])
    for name in named:
        if name in supported:
            return name
    if named:
        raise ConversionError(f"HF architectures {named} have no mapping here; this family converts "
                              f"{', '.join(supported)}.")
    return supported[0]


def check_vocab_rows(table: torch.Tensor, spec: ModelSpec, what: str) -> None:
    """Our table must have the padded size the spec says (a model built for another padding
    is a different model, not something to trim silently)."""
    if table.shape[0] != spec.padded_vocab_size:
        raise ConversionError(f"{what} has {table.shape[0]} rows but padded_vocab_size is {spec.padded_vocab_size}; "
                              f"pass the padded size the checkpoint was saved with.")


def pad_vocab_rows(table: torch.Tensor, padded_vocab_size: Optional[int], what: str) -> torch.Tensor:
    """Append zero rows up to our padded vocabulary (None: keep the size)."""
    if padded_vocab_size is None or padded_vocab_size == table.shape[0]:
        return table
    if padded_vocab_size < table.shape[0]:
        raise ConversionError(f"padded_vocab_size {padded_vocab_size} is smaller than the {table.shape[0]} rows of "
                              f"{what}; pass a size of at least {table.shape[0]}.")
    return torch.cat([table, table.new_zeros((padded_vocab_size - table.shape[0],) + tuple(table.shape[1:]))])


def trim_vocab_rows(table: torch.Tensor, vocab_size: Optional[int], what: str) -> torch.Tensor:
    """Drop our padding rows (None: keep every row)."""
    if vocab_size is None or vocab_size == table.shape[0]:
        return table
    if vocab_size > table.shape[0]:
        raise ConversionError(f"vocab_size {vocab_size} is larger than the {table.shape[0]} rows of {what}.")
    return table[:vocab_size].clone()


def require(config: TransformerConfig, family: str, **expected) -> None:
    """One sentence listing every config field that the HF family cannot represent."""
    problems = [f"{name}={value!r} (this config has {getattr(config, name)!r})"
                for name, value in expected.items() if getattr(config, name) != value]
    if problems:
        raise ConversionError(f"{family} needs {', '.join(problems)}; convert a model built that way.")


def count_layers(keys: Iterable[str], marker: str) -> int:
    """Number of layers in a state dict whose layer keys contain `marker` followed by the index."""
    indices = set()
    for key in keys:
        if marker in key:
            rest = key.split(marker, 1)[1]
            head = rest.split(".", 1)[0]
            if head.isdigit():
                indices.add(int(head))
    return len(indices)


def take(state_dict: Dict[str, torch.Tensor], key: str, family: str) -> torch.Tensor:
    try:
        return state_dict[key]
    except KeyError:
        raise ConversionError(f"the {family} state dict has no {key!r}; is it a checkpoint of that model?") from None


class _ReadsRecorded(Mapping):
    """A state dict that notes the storage address of every tensor read from it (addresses only:
    it keeps no tensor alive)."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor]):
        self.state_dict, self.addresses = state_dict, set()

    def __getitem__(self, key: str) -> torch.Tensor:
        value = self.state_dict[key]
        if isinstance(value, torch.Tensor) and not value.is_meta:
            self.addresses.add(value.untyped_storage().data_ptr())
        return value

    def __iter__(self):
        return iter(self.state_dict)

    def __len__(self) -> int:
        return len(self.state_dict)

    def __contains__(self, key) -> bool:
        return key in self.state_dict


def _needs_copy(tensor: torch.Tensor, read: set, seen: Dict[int, int]) -> bool:
    if tensor.is_meta:
        return False
    address = tensor.untyped_storage().data_ptr()
    return (tensor.numel() == 0 or address in read or seen[address] > 1 or not tensor.is_contiguous()
            or tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size())


def owning_outputs(convert: Callable[..., Dict[str, torch.Tensor]]) -> Callable[..., Dict[str, torch.Tensor]]:
    """Decorate a state-dict conversion (its first argument the state dict) so that every output
    tensor owns its whole storage: one that is an input (or a view of one), shares storage with
    another output, or views part of a larger storage is cloned; one the conversion made fresh (a
    concatenation, a padded table) is returned as it is. Cloning only those keeps a streamed
    conversion at its inputs plus its outputs, not a third copy of the window."""
    @functools.wraps(convert)
    def converted(state_dict, *args, **kwargs):
        recorded = _ReadsRecorded(state_dict)
        outputs = convert(recorded, *args, **kwargs)
        seen: Dict[int, int] = {}
        for value in outputs.values():
            if not value.is_meta:
                address = value.untyped_storage().data_ptr()
                seen[address] = seen.get(address, 0) + 1
        return {key: value.detach().clone() if _needs_copy(value, recorded.addresses, seen) else value.detach()
                for key, value in outputs.items()}
    return converted
