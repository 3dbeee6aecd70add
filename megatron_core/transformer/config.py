"""TransformerConfig: every shape and switch of the parallel transformer, in one dataclass.

The config is passed down to every module; nothing reads global arguments. Derived
values (kv_channels, ffn_hidden_size, num_query_groups) are filled in by __post_init__,
which also rejects invalid combinations with one sentence that names the fix.

Vocabulary padding is deliberately not a config field: call `pad_vocab(n)` once when a
model is first created and store the padded size with the checkpoint; a later run with a
different tensor-parallel size must reuse that stored number, never re-pad.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping, Optional

import torch

from ..errors import ConfigError
from ..mpu.layout import pad_vocab_size

NORMALIZATIONS = ("LayerNorm", "RMSNorm")
LAYERNORM_POSITIONS = ("pre", "post")
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "swiglu", "geglu", "geglu_tanh")
GATED_ACTIVATIONS = ("swiglu", "geglu", "geglu_tanh")
POSITION_EMBEDDINGS = ("learned_absolute", "rope", "relative_xl", "t5_relative", "none")
RECOMPUTE_GRANULARITIES = (None, "full", "selective")
RECOMPUTE_METHODS = ("uniform", "block")
ATTENTION_BACKENDS = ("auto", "sdpa", "explicit")


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(repr(a) for a in allowed)}.")


@dataclass
class TransformerConfig:
    # --- shapes ----------------------------------------------------------------------
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    # Grouped-query attention: heads share this many key/value heads (None: = heads, MHA).
    num_query_groups: Optional[int] = None
    # MLP width (None: 4 * hidden_size; gated activations usually set it explicitly).
    ffn_hidden_size: Optional[int] = None
    # Per-head dimension (None: hidden_size // num_attention_heads).
    kv_channels: Optional[int] = None

    # --- normalization -----------------------------------------------------------------
    normalization: str = "LayerNorm"
    layernorm_epsilon: float = 1e-5
    # "pre": x + f(norm(x)) (GPT-2, Megatron, Llama); "post": norm(x + f(x)) (original BERT).
    layernorm_position: str = "pre"
    # Pre-LN only: take the residual from the norm's output instead of its input
    # (Megatron's --apply-residual-connection-post-layernorm).
    apply_residual_connection_post_layernorm: bool = False
    # Norm after the last layer (None: True for pre-LN, False for post-LN).
    final_layernorm: Optional[bool] = None

    # --- MLP -----------------------------------------------------------------------------
    activation: str = "gelu"

    # --- positions -------------------------------------------------------------------------
    position_embedding_type: str = "learned_absolute"
    # Rotary: True rotates adjacent pairs (GPT-J, Meta's Llama checkpoints); False rotates
    # the two halves of each head (GPT-NeoX, HF Llama).
    rotary_interleaved: bool = False
    rotary_percent: float = 1.0
    rotary_base: float = 10000.0
    # T5 relative buckets.
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128

    # --- biases ------------------------------------------------------------------------------
    add_bias_linear: bool = True
    # Bias on the fused QKV projection (None: same as add_bias_linear; Qwen-style: True).
    add_qkv_bias: Optional[bool] = None

    # --- dropout -------------------------------------------------------------------------------
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    # Draw dropout masks inside tensor-parallel regions at full size from the replicated
    # stream and keep this rank's slice, so TP=k drops exactly the units TP=1 drops.
    # Off (Megatron's behaviour): each rank draws its own part from the tracker's
    # model-parallel stream, cheaper but not serial-identical.
    tp_invariant_dropout: bool = False

    # --- init ----------------------------------------------------------------------------------
    init_method_std: float = 0.02
    # Output projections (attention dense, MLP down) use std / sqrt(2 * num_layers).
    use_scaled_init_method: bool = True
    # Every component (embedding, layer i, output layer) is initialized from its own seed
    # derived from this one, so a pipeline stage that builds only some layers gets exactly
    # the serial weights. See transformer/init.py.
    init_seed: int = 1234

    # --- attention numerics ------------------------------------------------------------------
    attention_softmax_in_fp32: bool = True
    # Multiplier of q.k before the softmax (None: 1/sqrt(kv_channels)). T5 uses 1.0: its
    # query init already carries the 1/sqrt(d).
    softmax_scale: Optional[float] = None
    # Megatron's fp16 trick: divide scores by layer_number before softmax, multiply back
    # in fp32. Mathematically a no-op; forces attention_softmax_in_fp32.
    apply_query_key_layer_scaling: bool = False
    # "auto": torch scaled_dot_product_attention unless tp_invariant dropout needs the
    # explicit path; "sdpa"/"explicit" force one (tests compare them).
    attention_backend: str = "auto"
    # Fused CUDA kernels (megatron_core.fused: softmax, norms, bias-GeLU, bias-dropout-add,
    # rotary) where built and on GPU tensors; False forces the torch fallbacks everywhere.
    fused_kernels: bool = True

    # --- precision and parallelism -------------------------------------------------------------
    params_dtype: torch.dtype = torch.float32
    tensor_model_parallel_size: int = 1
    # Split LayerNorm/dropout activations along the sequence across TP ranks. With
    # TP=1 it is accepted and has no effect (there is nothing to split).
    sequence_parallel: bool = False

    # --- activation recomputation ----------------------------------------------------------------
    recompute_granularity: Optional[str] = None
    # "uniform": checkpoint groups of recompute_num_layers layers; "block": checkpoint
    # only the first recompute_num_layers layers of this stage (Megatron's methods).
    recompute_method: str = "uniform"
    recompute_num_layers: int = 1

    # --- embeddings ----------------------------------------------------------------------------
    share_embeddings_and_output_weights: bool = True
    make_vocab_size_divisible_by: int = 128

    def __post_init__(self):
        if self.num_query_groups is None:
            self.num_query_groups = self.num_attention_heads
        if self.kv_channels is None and self.num_attention_heads > 0 \
                and self.hidden_size % self.num_attention_heads == 0:
            self.kv_channels = self.hidden_size // self.num_attention_heads
        if self.ffn_hidden_size is None:
            self.ffn_hidden_size = 4 * self.hidden_size
        if self.add_qkv_bias is None:
            self.add_qkv_bias = self.add_bias_linear
        if self.final_layernorm is None:
            self.final_layernorm = self.layernorm_position == "pre"
        if self.apply_query_key_layer_scaling:
            self.attention_softmax_in_fp32 = True
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError (one sentence) for an impossible or inconsistent config."""
        for name in ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups",
                     "ffn_hidden_size", "tensor_model_parallel_size", "make_vocab_size_divisible_by"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        _choice("normalization", self.normalization, NORMALIZATIONS)
        _choice("layernorm_position", self.layernorm_position, LAYERNORM_POSITIONS)
        _choice("activation", self.activation, ACTIVATIONS)
        _choice("position_embedding_type", self.position_embedding_type, POSITION_EMBEDDINGS)
        _choice("recompute_granularity", self.recompute_granularity, RECOMPUTE_GRANULARITIES)
        _choice("recompute_method", self.recompute_method, RECOMPUTE_METHODS)
        _choice("attention_backend", self.attention_backend, ATTENTION_BACKENDS)

        heads, groups, tp = self.num_attention_heads, self.num_query_groups, self.tensor_model_parallel_size
        if self.kv_channels is None:
            raise ConfigError(
                f"hidden_size ({self.hidden_size}) is not divisible by num_attention_heads ({heads}); "
                f"set kv_channels (the per-head size) explicitly or change one of them.")
        if heads % tp != 0:
            raise ConfigError(
                f"num_attention_heads ({heads}) is not divisible by tensor_model_parallel_size ({tp}); "
                f"each tensor-parallel rank must hold whole heads.")
        if heads % groups != 0:
            raise ConfigError(
                f"num_query_groups ({groups}) must divide num_attention_heads ({heads}) so that every "
                f"key/value head serves the same number of query heads.")
        if groups % tp != 0:
            raise ConfigError(
                f"num_query_groups ({groups}) is not divisible by tensor_model_parallel_size ({tp}); "
                f"each tensor-parallel rank must hold whole key/value groups.")
        if self.ffn_hidden_size % tp != 0:
            what = "each half of the gated MLP" if self.activation in GATED_ACTIVATIONS else "the MLP"
            raise ConfigError(
                f"ffn_hidden_size ({self.ffn_hidden_size}) is not divisible by tensor_model_parallel_size "
                f"({tp}); {what} is split by columns across ranks.")
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}.")
        if self.position_embedding_type == "rope":
            if not 0.0 < self.rotary_percent <= 1.0:
                raise ConfigError(f"rotary_percent must be in (0, 1], got {self.rotary_percent}.")
            if self.rotary_dim % 2 != 0:
                raise ConfigError(
                    f"the rotary dimension ({self.rotary_dim} = kv_channels {self.kv_channels} x "
                    f"rotary_percent {self.rotary_percent}) must be even.")
        if self.layernorm_position == "post" and self.apply_residual_connection_post_layernorm:
            raise ConfigError("apply_residual_connection_post_layernorm only applies to pre-LN layers; "
                              "post-LN layers already take the residual after the norm.")
        if self.recompute_granularity is not None and self.recompute_num_layers < 1:
            raise ConfigError(f"recompute_num_layers must be at least 1, got {self.recompute_num_layers}.")
        if not isinstance(self.params_dtype, torch.dtype) or not self.params_dtype.is_floating_point:
            raise ConfigError(f"params_dtype must be a floating torch.dtype, got {self.params_dtype!r}.")

    # --- derived ---------------------------------------------------------------------------
    @property
    def gated_linear_unit(self) -> bool:
        return self.activation in GATED_ACTIVATIONS

    @property
    def rotary_dim(self) -> int:
        return int(self.kv_channels * self.rotary_percent)

    @property
    def query_projection_size(self) -> int:
        return self.kv_channels * self.num_attention_heads

    @property
    def kv_projection_size(self) -> int:
        return self.kv_channels * self.num_query_groups

    @property
    def sequence_parallel_active(self) -> bool:
        """Sequence parallelism only splits anything when there are several TP ranks."""
        return self.sequence_parallel and self.tensor_model_parallel_size > 1

    def pad_vocab(self, vocab_size: int) -> int:
        """Padded vocabulary for a NEW model. Store the result; never recompute it later."""
        return pad_vocab_size(vocab_size, self.make_vocab_size_divisible_by, self.tensor_model_parallel_size)

    def replace(self, **changes) -> "TransformerConfig":
        """A copy with some fields changed, validated again (e.g. another TP size)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain values for checkpoints (dtype as its name)."""
        values = dataclasses.asdict(self)
        values["params_dtype"] = str(self.params_dtype).replace("torch.", "")
        return values

    @classmethod
    def from_megatron_flags(cls, flags: Mapping) -> "TransformerConfig":
        """The config that Megatron-LM's flags describe, by the names its arguments.py gives them
        (--swiglu, --openai-gelu, --group-query-attention, --untie-embeddings-and-output-weights,
        --norm-epsilon, --seed, ...): a run's validated flags (training/arguments.py), or the args a
        Megatron-LM checkpoint stores. Flags that are absent keep this config's defaults."""
        values = dict(flags)
        get = values.get
        values.update(
            activation="swiglu" if get("swiglu") else ("gelu_tanh" if get("openai_gelu") else "gelu"),
            num_query_groups=get("num_query_groups") if get("group_query_attention") else None,
            add_qkv_bias=bool(get("add_bias_linear", True) or get("add_qkv_bias")),
            share_embeddings_and_output_weights=not get("untie_embeddings_and_output_weights", False),
            recompute_method=get("recompute_method") or "uniform",
            recompute_num_layers=get("recompute_num_layers") or 1,
            rotary_base=float(get("rotary_base") or 10000))
        renames = {"layernorm_epsilon": "norm_epsilon", "init_seed": "seed"}
        chosen = {}
        for f in dataclasses.fields(cls):
            name = renames.get(f.name, f.name)
            if f.init and name in values:
                chosen[f.name] = values[name]
        if isinstance(chosen.get("params_dtype"), str):
            chosen["params_dtype"] = getattr(torch, chosen["params_dtype"])
        return cls(**chosen)

    def megatron_flags(self) -> dict:
        """This config as Megatron-LM's flags (the inverse of from_megatron_flags), for the args of
        a checkpoint Megatron-LM loads."""
        groups = self.num_query_groups
        return {"num_layers": self.num_layers, "hidden_size": self.hidden_size,
                "num_attention_heads": self.num_attention_heads, "ffn_hidden_size": self.ffn_hidden_size,
                "kv_channels": self.kv_channels, "group_query_attention": groups not in (None, self.num_attention_heads),
                "num_query_groups": groups or self.num_attention_heads, "normalization": self.normalization,
                "norm_epsilon": self.layernorm_epsilon, "swiglu": self.activation == "swiglu",
                "openai_gelu": self.activation == "gelu_tanh", "squared_relu": False,
                "position_embedding_type": self.position_embedding_type,
                "add_position_embedding": self.position_embedding_type == "learned_absolute",
                "rotary_percent": self.rotary_percent, "rotary_base": int(self.rotary_base),
                "rotary_interleaved": self.rotary_interleaved, "add_bias_linear": self.add_bias_linear,
                "add_qkv_bias": self.add_qkv_bias,
                "untie_embeddings_and_output_weights": not self.share_embeddings_and_output_weights,
                "apply_residual_connection_post_layernorm": self.apply_residual_connection_post_layernorm,
                "hidden_dropout": self.hidden_dropout, "attention_dropout": self.attention_dropout,
                "init_method_std": self.init_method_std, "attention_softmax_in_fp32": self.attention_softmax_in_fp32,
                "apply_query_key_layer_scaling": self.apply_query_key_layer_scaling,
                "params_dtype": self.params_dtype, "fp16": self.params_dtype == torch.float16,
                "bf16": self.params_dtype == torch.bfloat16,
                "make_vocab_size_divisible_by": self.make_vocab_size_divisible_by,
                "tensor_model_parallel_size": self.tensor_model_parallel_size,
                "sequence_parallel": self.sequence_parallel}

    @classmethod
    def from_dict(cls, values: dict) -> "TransformerConfig":
        values = dict(values)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown TransformerConfig field(s) {', '.join(unknown)}; check the spelling.")
        if isinstance(values.get("params_dtype"), str):
            values["params_dtype"] = getattr(torch, values["params_dtype"])
        return cls(**values)
