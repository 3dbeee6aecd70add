"""The `args` a Megatron-LM checkpoint pickles: read safely, checked, and written back.

Megatron-LM stores its whole argparse.Namespace in every file. It is read with
torch.load(weights_only=True) and an allowlist of exactly what Megatron-LM puts there:
argparse.Namespace, torch dtypes (weights_only reads those anyway), the enums its
arguments hold (pickled_args.py: stand-ins under Megatron's class names), and the numpy
arrays of numpy's generator state in `rng_state`. Nothing else unpickles: any other class
is refused with the file's name (file_io.load_file).

Our flags carry Megatron-LM's names, so its args become our args record (plain values,
run_record.args_to_dict) and our TransformerConfig (TransformerConfig.from_megatron_flags);
what we cannot build is refused in one sentence (unsupported_options).
"""
from __future__ import annotations

import argparse
import enum
import pathlib
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from ...errors import CheckpointError
from ..run_record import args_to_dict
from .pickled_args import ARGS_ALLOWLIST


def _numpy_array_globals() -> List:
    """What numpy's state in Megatron-LM's rng_state (np.random.get_state()) pickles: arrays of
    plain dtypes, under numpy 2's and numpy 1's module names."""
    reconstruct = np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct
    found = [np.ndarray, np.dtype, (reconstruct, "numpy.core.multiarray._reconstruct"),
             (reconstruct, "numpy._core.multiarray._reconstruct")]
    if hasattr(np, "dtypes"):
        found += [getattr(np.dtypes, name) for name in ("UInt32DType", "Int64DType", "Float64DType")
                  if hasattr(np.dtypes, name)]
    return found


ALLOWED_GLOBALS: List = list(ARGS_ALLOWLIST) + _numpy_array_globals()


def _plain_value(value):
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain_value(v) for v in value]
    return value


def plain_args(namespace) -> Dict:
    """The args as our record keeps them: plain values; an enum by its member's name, a path as text."""
    if isinstance(namespace, Mapping):
        return dict(namespace)
    values = {name: _plain_value(value) for name, value in vars(namespace).items()}
    return args_to_dict(argparse.Namespace(**values))


# (flag, what it turns on, a test on its value)
_UNSUPPORTED: Tuple = (
    ("num_experts", "mixture-of-experts layers (MoE, --num-experts)", lambda v: v not in (None, 0, 1)),
    ("multi_latent_attention", "multi-latent attention (MLA, --multi-latent-attention)", bool),
    ("hybrid_override_pattern", "hybrid Mamba layers (--hybrid-override-pattern)", bool),
    ("is_hybrid_model", "hybrid Mamba layers", bool),
    ("qk_layernorm", "query/key layer norms (--qk-layernorm)", bool),
    ("squared_relu", "the squared-ReLU activation (--squared-relu)", bool),
    ("apply_layernorm_1p", "layer norms with weight + 1 (--apply-layernorm-1p)", bool),
    ("use_rope_scaling", "rotary position scaling (--use-rope-scaling)", bool),
    ("window_size", "sliding-window attention (--window-size)", lambda v: v is not None),
    ("mtp_num_layers", "multi-token prediction layers (--mtp-num-layers)", bool),
    ("num_layers_per_virtual_pipeline_stage", None, lambda v: False),
    ("decoder_first_pipeline_num_layers", "an uneven pipeline split (--decoder-first-pipeline-num-layers)",
     lambda v: v is not None),
    ("decoder_last_pipeline_num_layers", "an uneven pipeline split (--decoder-last-pipeline-num-layers)",
     lambda v: v is not None),
    ("account_for_embedding_in_pipeline_split", "an uneven pipeline split (--account-for-embedding-in-pipeline-split)",
     bool),
    ("account_for_loss_in_pipeline_split", "an uneven pipeline split (--account-for-loss-in-pipeline-split)", bool),
)


def unsupported_options(args: Mapping) -> List[str]:
    return [what for flag, what, used in _UNSUPPORTED if what and flag in args and used(args[flag])]


def check_supported(args: Mapping, where: str) -> None:
    found = unsupported_options(args)
    if found:
        raise CheckpointError(f"{where} is a Megatron-LM checkpoint of a model with {', '.join(found)}, which "
                              f"megatron_core does not build; convert a dense GPT, BERT or T5 model.")


def virtual_stages(args: Mapping, pp: int) -> Optional[int]:
    """Model chunks per pipeline rank (None for one) as the args record them. Every Megatron-LM
    since the interleaved schedule came in (early 2021, as --virtual-pipeline-model-parallel-size)
    keeps virtual_pipeline_model_parallel_size, None for one chunk; its flags since then,
    --num-layers-per-virtual-pipeline-stage (layers of one chunk) and 0.16's
    --num-virtual-stages-per-pipeline-rank, are kept beside it and read when it is missing."""
    recorded = args.get("virtual_pipeline_model_parallel_size")
    if recorded is None and "virtual_pipeline_model_parallel_size" not in args:
        if args.get("num_virtual_stages_per_pipeline_rank"):
            recorded = args["num_virtual_stages_per_pipeline_rank"]
        elif args.get("num_layers_per_virtual_pipeline_stage") and args.get("num_layers"):
            recorded = int(args["num_layers"]) // pp // int(args["num_layers_per_virtual_pipeline_stage"])
    return int(recorded) if recorded and int(recorded) > 1 else None


def parallel_sizes(args: Mapping, where: str) -> Tuple[int, int, Optional[int]]:
    """(TP, PP, model chunks per pipeline rank or None)."""
    try:
        tp, pp = int(args["tensor_model_parallel_size"]), int(args["pipeline_model_parallel_size"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{where} holds Megatron-LM args without tensor_model_parallel_size and "
                              f"pipeline_model_parallel_size; the file is damaged or not Megatron-LM's.") from None
    return tp, pp, virtual_stages(args, pp)


# What Megatron-LM's models can be: anything else would load there as another model, silently.
_MEGATRON_ACTIVATIONS = ("gelu", "gelu_tanh", "swiglu")
_MEGATRON_POSITIONS = ("learned_absolute", "rope")


def check_megatron_can_build(config, where: str) -> None:
    """One sentence listing what of `config` Megatron-LM's GPT/BERT/T5 cannot express."""
    problems = []
    if config.layernorm_position != "pre":
        problems.append(f"layer norms after each sublayer (--layernorm-position {config.layernorm_position})")
    if config.activation not in _MEGATRON_ACTIVATIONS:
        problems.append(f"the {config.activation} activation")
    if config.position_embedding_type not in _MEGATRON_POSITIONS:
        problems.append(f"{config.position_embedding_type} positions")
    if config.softmax_scale is not None:
        problems.append(f"softmax scale {config.softmax_scale}")
    if problems:
        raise CheckpointError(f"{where} holds a model with {', '.join(problems)}, which Megatron-LM's models do not "
                              f"build; it would load there as another model. Convert a pre-LN GELU/SwiGLU model "
                              f"with learned or rotary positions.")


def megatron_namespace(record: Mapping, **overrides) -> argparse.Namespace:
    """An argparse.Namespace of our args record, as Megatron-LM's load reads its args (our flag
    names are its names); dtypes back as torch dtypes."""
    values = dict(record, **overrides)
    if isinstance(values.get("params_dtype"), str):
        values["params_dtype"] = getattr(torch, values["params_dtype"])
    return argparse.Namespace(**values)


def megatron_args(record: Mapping, config, tp: int, pp: int, padded_vocab_size: int, iteration: Optional[int],
                  consumed_train_samples: int, consumed_valid_samples: int,
                  max_position_embeddings: Optional[int] = None) -> argparse.Namespace:
    """The args of a checkpoint we write for Megatron-LM: our args record `record` with the
    model's flags from its TransformerConfig `config` (megatron_flags), the sizes the files are
    cut for (no virtual stages), the padded vocabulary and the counters, which Megatron-LM
    keeps in its args. `max_position_embeddings` fills a record that lacks one."""
    values = dict(record)
    values.update(config.replace(tensor_model_parallel_size=tp).megatron_flags())
    values.update(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, padded_vocab_size=padded_vocab_size,
                  virtual_pipeline_model_parallel_size=None, num_layers_per_virtual_pipeline_stage=None,
                  iteration=int(iteration or 0), consumed_train_samples=int(consumed_train_samples or 0),
                  consumed_valid_samples=int(consumed_valid_samples or 0))
    if values.get("max_position_embeddings") is None:
        values["max_position_embeddings"] = max_position_embeddings
    return megatron_namespace(values)


def megatron_args_of(head: Mapping, config, tp: int, pp: int, padded_vocab_size: int) -> argparse.Namespace:
    """megatron_args of one of our checkpoints, from its head (or a save's contents: the args
    record, counters, model family and options); a T5's two stack depths under pretrain_t5.py's
    names, which its model provider builds the encoder and the decoder from."""
    options = head.get("model_options") or {}
    namespace = megatron_args(head.get("args") or {}, config, tp, pp, padded_vocab_size, head.get("iteration"),
                              head.get("consumed_train_samples"), head.get("consumed_valid_samples"),
                              options.get("max_sequence_length"))
    if head.get("model_family") == "t5":
        namespace.encoder_num_layers = config.num_layers
        namespace.decoder_num_layers = options.get("decoder_num_layers") or config.num_layers
    return namespace


__all__ = ["ALLOWED_GLOBALS", "plain_args", "check_megatron_can_build", "unsupported_options", "check_supported",
           "virtual_stages", "parallel_sizes", "megatron_namespace", "megatron_args",
           "megatron_args_of"]
