"""Transformer-XL language model as in THUDM's Chinese-Transformer-XL (a GPT-2 style,
pre-LN Megatron model with `--transformer-xl`: relative attention and segment memory).

    logits, mems = model(input_ids)                 # first segment
    loss, mems = model(next_ids, mems, labels=...)  # later segments attend to the memory

Per layer (pre-LN):  x = x + attn(ln1(x), memory=ln1(mem_i));  x = x + mlp(ln2(x)).
mem_i is the *input* of layer i over the last mem_length positions, detached: the new
mems returned by forward are cat(old mem_i, this segment's input of layer i)[-mem_length:],
one per layer of this stage, [m, b, h] (sequence-first like every hidden state here).
Attention is causal over [memory + segment] with the relative scores of
models/relative_attention.py; the relative position embedding is the sinusoid
[sin(p f) | cos(p f)], f_j = 10000^(-2j/h), over the distances m+s-1 .. 0, after
embedding dropout. r_w_bias / r_r_bias are shared by all layers (Chinese-Transformer-XL;
`untie_r=True` gives each layer its own, as HF TransfoXL's default). The output layer is
tied to the word embedding (or untied) and logits stay vocab-parallel.

What Chinese-Transformer-XL's code has (read for checkpoint conversion; THUDM/
Chinese-Transformer-XL mpu/transformer.py GPT2ParallelTransformer and change_mp.py):
  * DeepSpeed checkpoints `<tag>/mp_rank_XX_model_states.pt` with the weights under 'module':
    word_embeddings.weight (vocab-parallel rows), transformer.r_w_bias and
    transformer.r_r_bias [heads/tp, d] (split by rows, zero-initialised, shared by all
    layers), transformer.position_embeddings.inv_freq (buffer),
    transformer.layers.i.{input_layernorm, post_attention_layernorm}.{weight,bias},
    transformer.layers.i.attention.query_key_value.{weight,bias} (ColumnParallelLinear 3h
    with stride 3: each rank's shard is [q_p | k_p | v_p], the full weight is [q | k | v],
    NOT our per-head [q0 k0 v0 | ...]; a converter must regroup rows by head),
    transformer.layers.i.attention.relative.{weight,bias} (column-parallel h x h, with bias),
    transformer.layers.i.attention.dense.{weight,bias},
    transformer.layers.i.mlp.dense_h_to_4h / dense_4h_to_h (gelu, tanh approximation),
    transformer.final_layernorm.{weight,bias}; the output logits reuse word_embeddings.
  * Their mems are [b, m, h] and there are num_layers + 1 of them (the last, the output of
    the final layer, is never attended to); ours are [m, b, h], one per layer.
  * Masked scores: scores * mask - 10000 * (1 - mask); scaling 1/sqrt(d) after adding the
    content and position terms; rel-shift by the zero-pad/reshape trick.
Our names: embedding.word_embeddings, r_w_bias, r_r_bias, layers.i.input_layernorm,
layers.i.self_attention.{query_key_value, relative, dense}, layers.i.post_attention_layernorm,
layers.i.mlp.*, final_layernorm (activation "gelu_tanh" for their checkpoints).
`from_chinese_txl_state_dict` / `to_chinese_txl_state_dict` map a merged (TP=1) `module`
dict both ways (renames + the q|k|v regrouping); merging their mp_rank shards (stride-3
query_key_value) is the checkpoint tool's job.

Pipeline: the model builds the chunk `stage` (an mpu.PipelineStage, by default the whole
model; a pipeline passes mpu.get_pipeline_stage(virtual_rank)), as GPT and BERT do: the
first chunk (pre_process) builds the embedding, the last (post_process) the final norm
and the head, and each chunk builds only its layers (stage.layer_range, Megatron's even
split) and keeps only their mems. The shared r_w_bias / r_r_bias live on every stage as
stage copies (pipeline/chunk.py) that the stage holding layer 1 owns: the pipeline sums
their gradients over the stages, the gradient norm counts them once and the sharding map
saves the other stages' as copies. Under a schedule each stage keeps its mems in its own
`memory` (models/segment_memory.py), one stream per micro-batch index, so mems never cross
the p2p link; the forward step asks for it with `use_memory=True`:

    def forward_step(data_iterator, model):
        batch = next(data_iterator)
        output, _ = model(batch["tokens"], labels=batch["labels"], use_memory=True)
        return output, loss_func

Evaluation runs inside `evaluation_scope()`, on a memory of its own (the validation
streams'), so validating between steps does not change what training attends to.
"""
from __future__ import annotations

import contextlib
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..mpu.cross_entropy import vocab_parallel_cross_entropy
from ..mpu.init_methods import mark_vocab_parallel
from ..mpu.layers import ColumnParallelLinear
from ..mpu.layout import PipelineStage
from ..transformer.block import check_parallel_size
from ..transformer.config import ConfigError, TransformerConfig
from ..transformer.dropout import dropout
from ..transformer.init import component_rng, init_method
from ..transformer.layer import bias_dropout_add
from ..transformer.mlp import ParallelMLP
from ..transformer.norms import build_norm
from ..mpu.sharding_map import mark_stage_copy
from ..pipeline.chunk import PipelineChunkMixin
from .embedding import LanguageEmbedding, build_word_embeddings_copy
from .flops import layer_parameter_count
from .gpt import check_vocab_size
from .hf.qkv_layout import qkv_from_blocks, qkv_to_blocks
from .language_model import ShardingMapMixin, TiedOutputLayerMixin, gather_logits, resolve_stage
from .relative_attention import RelativeSelfAttention, new_relative_bias
from .segment_memory import SegmentMemory


def sinusoid_position_embeddings(key_length: int, hidden_size: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """[key_length, h]: row r is the embedding of distance key_length - 1 - r."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0.0, hidden_size, 2.0, device=device) / hidden_size))
    distances = torch.arange(key_length - 1, -1, -1.0, device=device)
    angles = torch.outer(distances, inv_freq)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).to(dtype)


class TransformerXLLayer(nn.Module):
    def __init__(self, config: TransformerConfig, layer_number: int, untie_r: bool = False):
        super().__init__()
        self.config = config
        self.layer_number = layer_number
        self.input_layernorm = build_norm(config)
        self.self_attention = RelativeSelfAttention(config, layer_number, own_biases=untie_r)
        self.post_attention_layernorm = build_norm(config)
        self.mlp = ParallelMLP(config)

    def forward(self, hidden_states: torch.Tensor, memory: Optional[torch.Tensor], position_embeddings: torch.Tensor,
                r_w_bias: Optional[torch.Tensor], r_r_bias: Optional[torch.Tensor],
                attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        config, p = self.config, self.config.hidden_dropout
        normed = self.input_layernorm(hidden_states)
        normed_memory = self.input_layernorm(memory) if memory is not None else None
        out, bias = self.self_attention(normed, normed_memory, position_embeddings, r_w_bias, r_r_bias,
                                        attention_mask)
        hidden_states = bias_dropout_add(out, bias, hidden_states, p, self.training, config)
        out, bias = self.mlp(self.post_attention_layernorm(hidden_states))
        return bias_dropout_add(out, bias, hidden_states, p, self.training, config)


class TransformerXLModel(PipelineChunkMixin, TiedOutputLayerMixin, ShardingMapMixin, nn.Module):
    def __init__(self, config: TransformerConfig, vocab_size: int, mem_length: int,
                 stage: Optional[PipelineStage] = None, untie_r: bool = False,
                 parallel_output: bool = True, label_smoothing: float = 0.0):
        super().__init__()
        check_parallel_size(config)
        check_vocab_size(config, vocab_size)
        if config.position_embedding_type != "relative_xl":
            raise ConfigError(f"Transformer-XL needs position_embedding_type='relative_xl', "
                              f"got {config.position_embedding_type!r}.")
        if config.layernorm_position != "pre":
            raise ConfigError("Transformer-XL here is pre-LN (as Chinese-Transformer-XL); set layernorm_position='pre'.")
        if config.num_query_groups != config.num_attention_heads:
            raise ConfigError("Transformer-XL relative attention has no grouped-query variant; "
                              "set num_query_groups = num_attention_heads.")
        if config.sequence_parallel_active or config.recompute_granularity is not None:
            raise ConfigError("Transformer-XL does not support sequence_parallel or activation recomputation yet; "
                              "turn them off.")
        if config.hidden_size % 2 != 0:
            raise ConfigError(f"hidden_size ({config.hidden_size}) must be even for the sinusoid position embedding.")
        if mem_length < 0:
            raise ValueError(f"mem_length must be >= 0, got {mem_length}.")
        self.stage = stage = resolve_stage(stage)  # pre_process / post_process are read off it
        pre_process, post_process = stage.is_first, stage.is_last
        layer_offset, count = stage.layer_range(config.num_layers)
        self.config = config
        self.vocab_size = vocab_size
        self.mem_length = mem_length
        self.layer_offset = layer_offset
        self.untie_r = untie_r
        self.parallel_output = parallel_output
        self.label_smoothing = label_smoothing
        self.share_embeddings_and_output_weights = config.share_embeddings_and_output_weights

        self.embedding = LanguageEmbedding(config, vocab_size, 0) if pre_process else None
        if untie_r:
            self.r_w_bias = self.r_r_bias = None
        else:
            self.r_w_bias = new_relative_bias(config)
            self.r_r_bias = new_relative_bias(config)
            # One parameter each, used by every layer: the stage holding layer 1 owns it.
            mark_stage_copy(self.r_w_bias, "r_w_bias", owner=layer_offset == 0)
            mark_stage_copy(self.r_r_bias, "r_r_bias", owner=layer_offset == 0)
        layers = []
        for i in range(count):
            number = layer_offset + i + 1
            with component_rng(config, "layer", number):
                layers.append(TransformerXLLayer(config, number, untie_r))
        self.layers = nn.ModuleList(layers)

        self.final_layernorm = self.word_embeddings = self.output_layer = None
        if post_process:
            self.final_layernorm = build_norm(config)
            tied = self.share_embeddings_and_output_weights
            if tied and not pre_process:
                self.word_embeddings = build_word_embeddings_copy(config, vocab_size)
            with component_rng(config, "output_layer"):
                self.output_layer = ColumnParallelLinear(
                    config.hidden_size, vocab_size, bias=False, gather_output=False, init_method=init_method(config),
                    skip_weight_param_allocation=tied, params_dtype=config.params_dtype)
            if not tied:
                mark_vocab_parallel(self.output_layer.weight)
        self.memory = SegmentMemory()  # this stage's mems per micro-batch stream (use_memory=True)
        self.validation_memory = SegmentMemory()  # the validation streams' mems, kept between evaluations

    @contextlib.contextmanager
    def evaluation_scope(self):
        """Validation reads its own text streams: inside, `memory` is the validation memory,
        and the training memory comes back untouched afterwards (training/evaluate.py)."""
        self.memory, self.validation_memory = self.validation_memory, self.memory
        try:
            yield
        finally:
            self.memory, self.validation_memory = self.validation_memory, self.memory

    # --- forward ---------------------------------------------------------------------------------------
    def forward(self, input_ids: Optional[torch.Tensor], mems: Optional[Sequence[torch.Tensor]] = None,
                labels: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                use_memory: bool = False) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """input_ids [b, s]; mems: one [m, b, h] per layer of this stage (None or [] at the
        start). attention_mask: optional bool (True = masked) broadcastable to
        [b, heads, s, m + s], added to the causal mask. use_memory=True instead reads the
        mems of stream `current_microbatch` (set by the pipeline schedule) from
        `self.memory` and stores the new ones there.

        Returns (per-token loss [b, s] with labels, else logits [b, s, V/tp]; or the hidden
        states [s, b, h] on a stage without post_process) and the new mems."""
        if use_memory:
            if mems is not None:
                raise ValueError("pass mems or use_memory=True, not both.")
            if self.current_microbatch is None:
                raise ValueError("use_memory=True reads the mems of the micro-batch being run; call "
                                 "set_current_microbatch(i) first (the pipeline schedules do).")
            mems = self.memory.read(self.current_microbatch)
        output, new_mems = self._forward(input_ids, mems, labels, attention_mask)
        if use_memory:
            self.memory.write(self.current_microbatch, new_mems)
        return output, new_mems

    def _forward(self, input_ids, mems, labels, attention_mask):
        if self.pre_process:
            if input_ids is None:
                raise ValueError("the first Transformer-XL stage needs input_ids.")
            hidden = self.embedding(input_ids)
        else:
            hidden = self.input_tensor
            if hidden is None:
                raise ValueError("this Transformer-XL stage takes its input from set_input_tensor, which was not called.")
        mems = list(mems) if mems else []
        if mems and len(mems) != len(self.layers):
            raise ValueError(f"got {len(mems)} mems but this stage has {len(self.layers)} layers; pass the mems "
                             f"returned by the previous segment.")
        memory_length = mems[0].shape[0] if mems else 0
        s = hidden.shape[0]
        positions = sinusoid_position_embeddings(memory_length + s, self.config.hidden_size, hidden.dtype,
                                                 hidden.device)
        positions = dropout(positions, self.config.hidden_dropout, self.training, self.config)

        inputs = []
        for i, layer in enumerate(self.layers):
            inputs.append(hidden)
            hidden = layer(hidden, mems[i] if mems else None, positions, self.r_w_bias, self.r_r_bias,
                           attention_mask)
        new_mems = self._update_mems(inputs, mems)
        if not self.post_process:
            return hidden, new_mems
        hidden = self.final_layernorm(hidden)
        logits, _ = self.output_layer(hidden, weight=self.output_weight())
        logits = logits.transpose(0, 1).contiguous()
        if labels is None:
            return (logits if self.parallel_output else gather_logits(logits)), new_mems
        return vocab_parallel_cross_entropy(logits.float(), labels, self.label_smoothing), new_mems

    def _update_mems(self, inputs: List[torch.Tensor], mems: List[torch.Tensor]) -> List[torch.Tensor]:
        if self.mem_length == 0:
            return []
        with torch.no_grad():
            if not mems:
                return [x[-self.mem_length:].detach() for x in inputs]
            return [torch.cat([m, x], dim=0)[-self.mem_length:].detach() for m, x in zip(mems, inputs)]

    # --- accounting -------------------------------------------------------------------------------------------
    def parameter_count(self) -> int:
        return transformer_xl_parameter_count(self.config, self.vocab_size, self.untie_r)

    def training_flops_per_token(self, seq_length: int, mem_length: Optional[int] = None,
                                 micro_batch_size: int = 1) -> int:
        mem = self.mem_length if mem_length is None else mem_length
        return 3 * transformer_xl_forward_flops_per_token(self.config, self.vocab_size, seq_length, mem,
                                                          micro_batch_size)


def transformer_xl_parameter_count(config: TransformerConfig, vocab_size: int, untie_r: bool = False) -> int:
    """Parameters of the serial model: a GPT layer plus the relative projection per layer,
    and r_w_bias / r_r_bias (shared, or per layer with untie_r)."""
    h = config.hidden_size
    projection = config.query_projection_size
    relative = h * projection + (projection if config.add_bias_linear else 0)
    biases = 2 * config.num_attention_heads * config.kv_channels
    count = vocab_size * h + config.num_layers * (layer_parameter_count(config) + relative)
    count += biases * (config.num_layers if untie_r else 1)
    count += (2 if config.normalization == "LayerNorm" else 1) * h
    if not config.share_embeddings_and_output_weights:
        count += vocab_size * h
    return count


def transformer_xl_forward_flops(config: TransformerConfig, vocab_size: int, seq_length: int, mem_length: int,
                                 micro_batch_size: int = 1) -> int:
    """Forward matmul FLOPs (2mkn each) of one micro batch of segments of seq_length tokens
    after mem_length memory positions. Per layer and sequence: qkv over memory + segment
    (k = m + s rows), the content scores, position scores and context (2 s k n d each), the
    output projection and MLP per token; the relative projection of the k position
    embeddings is shared by the micro batch (2 k h n d). Plus the logits."""
    h, f, d, n = config.hidden_size, config.ffn_hidden_size, config.kv_channels, config.num_attention_heads
    s, k = seq_length, seq_length + mem_length
    per_sequence_layer = (2 * h * 3 * n * d * k
                          + s * 3 * 2 * k * n * d
                          + s * 2 * n * d * h
                          + s * (2 * h * f * (2 if config.gated_linear_unit else 1) + 2 * f * h))
    relative = 2 * k * h * n * d
    return config.num_layers * (micro_batch_size * per_sequence_layer + relative) \
        + micro_batch_size * s * 2 * h * vocab_size


def transformer_xl_forward_flops_per_token(config: TransformerConfig, vocab_size: int, seq_length: int,
                                           mem_length: int, micro_batch_size: int = 1) -> int:
    return transformer_xl_forward_flops(config, vocab_size, seq_length, mem_length, micro_batch_size) // (
        micro_batch_size * seq_length)


# --- Chinese-Transformer-XL checkpoints (full TP=1 'module' state dicts) --------------------------------------
# (our name, Chinese-Transformer-XL name) of the tensors that are only renamed; layer names are
# relative to layers.{i}. / transformer.layers.{i}.
_CHINESE_TXL_SHARED = (("embedding.word_embeddings.weight", "word_embeddings.weight"),
                       ("r_w_bias", "transformer.r_w_bias"), ("r_r_bias", "transformer.r_r_bias"))
_CHINESE_TXL_LAYER = tuple((f"{ours}.{kind}", f"{theirs}.{kind}")
                           for ours, theirs in (("input_layernorm", "input_layernorm"),
                                                ("post_attention_layernorm", "post_attention_layernorm"),
                                                ("self_attention.relative", "attention.relative"),
                                                ("self_attention.dense", "attention.dense"),
                                                ("mlp.dense_h_to_4h", "mlp.dense_h_to_4h"),
                                                ("mlp.dense_4h_to_h", "mlp.dense_4h_to_h"))
                           for kind in ("weight", "bias"))
_CHINESE_TXL_FINAL = tuple((f"final_layernorm.{kind}", f"transformer.final_layernorm.{kind}")
                           for kind in ("weight", "bias"))


def _check_chinese_txl_shape(config: TransformerConfig, untie_r: bool) -> None:
    if untie_r or not config.share_embeddings_and_output_weights or config.normalization != "LayerNorm" \
            or not config.add_bias_linear or not config.add_qkv_bias:
        raise ValueError("Chinese-Transformer-XL checkpoints have shared r_w/r_r biases, a tied output, LayerNorm "
                         "and biases; build the config that way (untie_r=False).")


def from_chinese_txl_state_dict(module_state, config: TransformerConfig, untie_r: bool = False):
    """Our full (TP=1) TransformerXLModel state dict from Chinese-Transformer-XL's merged
    (TP=1) `module` state dict. Their fused query_key_value is [q | k | v] (each h rows,
    heads in order); ours is per head [q0 k0 v0 | q1 k1 v1 | ...]."""
    _check_chinese_txl_shape(config, untie_r)
    n = config.num_attention_heads
    try:
        out = {ours: module_state[theirs] for ours, theirs in _CHINESE_TXL_SHARED}
        for i in range(config.num_layers):
            src, dst = f"transformer.layers.{i}.", f"layers.{i}."
            out.update({dst + ours: module_state[src + theirs] for ours, theirs in _CHINESE_TXL_LAYER})
            weight = module_state[f"{src}attention.query_key_value.weight"]
            bias = module_state[f"{src}attention.query_key_value.bias"]
            out[f"{dst}self_attention.query_key_value.weight"] = qkv_from_blocks(weight, n, n)
            out[f"{dst}self_attention.query_key_value.bias"] = qkv_from_blocks(bias, n, n)
        out.update({ours: module_state[theirs] for ours, theirs in _CHINESE_TXL_FINAL})
    except KeyError as missing:
        raise ValueError(f"the Chinese-Transformer-XL state dict has no {missing.args[0]!r}; pass the merged (TP=1) "
                         f"'module' dict of a --transformer-xl checkpoint with this many layers.") from None
    return {k: v.clone() for k, v in out.items()}


def to_chinese_txl_state_dict(state, config: TransformerConfig, untie_r: bool = False):
    """Chinese-Transformer-XL's merged (TP=1) `module` state dict from ours (inverse of the above)."""
    _check_chinese_txl_shape(config, untie_r)
    n, h = config.num_attention_heads, config.hidden_size
    try:
        out = {theirs: state[ours] for ours, theirs in _CHINESE_TXL_SHARED}
        out["transformer.position_embeddings.inv_freq"] = 1.0 / (10000 ** (torch.arange(0.0, h, 2.0) / h))
        for i in range(config.num_layers):
            src, dst = f"layers.{i}.", f"transformer.layers.{i}."
            out.update({dst + theirs: state[src + ours] for ours, theirs in _CHINESE_TXL_LAYER})
            weight = state[f"{src}self_attention.query_key_value.weight"]
            bias = state[f"{src}self_attention.query_key_value.bias"]
            out[f"{dst}attention.query_key_value.weight"] = qkv_to_blocks(weight, n, n)
            out[f"{dst}attention.query_key_value.bias"] = qkv_to_blocks(bias, n, n)
        out.update({theirs: state[ours] for ours, theirs in _CHINESE_TXL_FINAL})
    except KeyError as missing:
        raise ValueError(f"our Transformer-XL state dict has no {missing.args[0]!r}; pass the full TP=1 state dict "
                         f"of a model built with this config.") from None
    return {k: v.clone() for k, v in out.items()}
