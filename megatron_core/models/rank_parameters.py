"""How many parameters each rank of a TP x PP layout holds, from the config alone.

    shape = ModelShape("gpt", config, vocab_size=50304, max_sequence_length=1024, structure="decoder")
    shape.total()                         # the serial model (the structures' own *_parameter_count)
    rank_parameters(shape, pipeline_rank=0)   # one tensor-parallel rank of that pipeline stage

A shape names its family (models/registry.py builds it) but is counted by its structure,
so a new family reuses one without touching this file or the memory estimate:

  decoder          GPT / Llama: embedding, layers, optional final norm, output layer
  masked_lm        BERT / RoFormer: the same plus the MLM head, pooler and binary head
  encoder_decoder  T5: encoder and decoder stacks, cross-attention, pipeline split
  transformer_xl   relative projection and r_w/r_r biases, segment memory

A rank holds its stage's pieces; each piece is split over the tensor-parallel ranks or
held whole by every one of them:

  split       qkv/fc1 weights and biases (column-parallel), out-proj/fc2 weights
              (row-parallel), vocabulary tables and the MLM output bias, the relative
              projection and r_w/r_r biases (Transformer-XL), T5's bucket tables (by head)
  replicated  norms, row-parallel biases, learned position and token-type tables,
              BERT's head dense + norm, pooler and binary head

A stage also holds copies of shared tables (pipeline/chunk.py): the tied word embedding
on a last stage without the embedding, Transformer-XL's r_w/r_r biases and T5's bucket
tables on every stage of their stack. They occupy memory but are not counted in total().
No weights are built; tests compare every count with a built model's tensors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..mpu.layout import PipelineStage
from ..transformer.config import TransformerConfig
from . import flops
from .bert import bert_parameter_count
from .t5 import t5_cross_attention_parameter_count, t5_parameter_count
from .transformer_xl import transformer_xl_parameter_count

STRUCTURES = ("decoder", "masked_lm", "encoder_decoder", "transformer_xl")


@dataclass(frozen=True)
class ModelShape:
    """What the family's builder makes, minus the weights."""
    family: str                          # the family's name (models/registry.py)
    config: TransformerConfig
    vocab_size: int                      # the padded vocabulary
    max_sequence_length: int = 0         # learned position table (0: none)
    num_tokentypes: int = 0              # BERT / RoFormer token types
    add_pooler: bool = False
    add_binary_head: bool = False
    decoder_num_layers: Optional[int] = None     # T5 (None: = num_layers)
    decoder_seq_length: Optional[int] = None     # T5's decoder length, for activations
    mem_length: int = 0                  # Transformer-XL memory, for activations
    untie_r: bool = False                # Transformer-XL: r_w/r_r per layer
    lm_head_bias: bool = False           # T5: Megatron's vocabulary bias on the LM head
    structure: str = ""                  # one of STRUCTURES: how it is counted

    def __post_init__(self):
        if self.structure not in STRUCTURES:
            raise ValueError(f"the {self.family} shape's structure {self.structure!r} is not one of "
                             f"{', '.join(STRUCTURES)}; give ModelShape(..., structure=...).")

    @property
    def decoder_layers(self) -> int:
        return self.config.num_layers if self.decoder_num_layers is None else self.decoder_num_layers

    def total(self) -> int:
        """The serial model's parameters, by the structure's own count (a rotary masked LM, RoFormer,
        has no position table: bert_parameter_count counts one only for learned positions)."""
        c, v = self.config, self.vocab_size
        if self.structure == "decoder":
            return flops.parameter_count(c, v, self.max_sequence_length, self.num_tokentypes)
        if self.structure == "masked_lm":
            return bert_parameter_count(c, v, self.max_sequence_length, self.num_tokentypes, self.add_pooler,
                                        self.add_binary_head)
        if self.structure == "encoder_decoder":
            return t5_parameter_count(c, v, self.decoder_layers, self.max_sequence_length,
                                      v if self.lm_head_bias else 0)
        return transformer_xl_parameter_count(c, v, self.untie_r)


@dataclass(frozen=True)
class Piece:
    """Parameters of one component: `split` are divided over the TP ranks, `replicated` are not."""
    split: int = 0
    replicated: int = 0

    def per_rank(self, tp: int) -> int:
        return self.split // tp + self.replicated

    def __add__(self, other: "Piece") -> "Piece":
        return Piece(self.split + other.split, self.replicated + other.replicated)

    def __mul__(self, n: int) -> "Piece":
        return Piece(self.split * n, self.replicated * n)


def _norm(config: TransformerConfig) -> int:
    return (2 if config.normalization == "LayerNorm" else 1) * config.hidden_size


def _row_bias(config: TransformerConfig) -> int:
    return config.hidden_size if config.add_bias_linear else 0


def layer_piece(config: TransformerConfig) -> Piece:
    """A transformer layer: its two norms and two row-parallel biases are whole on every rank."""
    replicated = 2 * _norm(config) + 2 * _row_bias(config)
    return Piece(flops.layer_parameter_count(config) - replicated, replicated)


def cross_attention_piece(config: TransformerConfig) -> Piece:
    replicated = _norm(config) + _row_bias(config)
    return Piece(t5_cross_attention_parameter_count(config) - replicated, replicated)


def _embedding_piece(shape: ModelShape, norm: bool = False) -> Piece:
    h = shape.config.hidden_size
    positions = shape.max_sequence_length if shape.config.position_embedding_type == "learned_absolute" else 0
    return Piece(shape.vocab_size * h, (positions + shape.num_tokentypes) * h + (_norm(shape.config) if norm else 0))


def _output_piece(shape: ModelShape, pre_process: bool) -> Piece:
    """The output layer's own table when untied; the last stage's copy of the tied table."""
    tied = shape.config.share_embeddings_and_output_weights
    return Piece(shape.vocab_size * shape.config.hidden_size) if not tied or not pre_process else Piece()


def _decoder_only_chunk(shape: ModelShape, stage: PipelineStage) -> Piece:
    """GPT, BERT, RoFormer and Transformer-XL: layers, the embedding first, the head last."""
    c = shape.config
    _, layers = stage.layer_range(c.num_layers)
    bert_like = shape.structure == "masked_lm"
    piece = layer_piece(c) * layers
    if shape.structure == "transformer_xl":
        q = c.query_projection_size
        piece += Piece(c.hidden_size * q + (q if c.add_bias_linear else 0)) * layers    # relative projection
        biases = Piece(2 * c.num_attention_heads * c.kv_channels)
        piece += biases * layers if shape.untie_r else biases      # shared: a copy on every stage
    if stage.is_first:
        piece += _embedding_piece(shape, norm=bert_like and c.layernorm_position == "post")
    if stage.is_last:
        final = c.final_layernorm or shape.structure == "transformer_xl"
        piece += Piece(0, _norm(c) if final else 0) + _output_piece(shape, stage.is_first)
        if bert_like:
            h = c.hidden_size
            piece += Piece(shape.vocab_size, h * h + h + _norm(c))            # MLM head: bias split, dense + norm whole
            piece += Piece(0, (h * h + h if shape.add_pooler else 0) + (2 * h + 2 if shape.add_binary_head else 0))
    return piece


def _t5_chunk(shape: ModelShape, stage: PipelineStage) -> Piece:
    c = shape.config
    encoder, decoder = stage.stack_stage("encoder"), stage.stack_stage("decoder")
    buckets = Piece(c.relative_attention_num_buckets * c.num_attention_heads) \
        if c.position_embedding_type == "t5_relative" else Piece()
    piece = Piece()
    for stack, layers, extra in ((encoder, c.num_layers, Piece()), (decoder, shape.decoder_layers,
                                                                    cross_attention_piece(c))):
        if stack is None:
            continue
        offset, count = stack.layer_range(layers)
        piece += (layer_piece(c) + extra) * count + buckets
        if offset + count == layers and c.final_layernorm:
            piece += Piece(0, _norm(c))
    pre_process = any(s is not None and s.is_first for s in (encoder, decoder))
    post_process = decoder is not None and decoder.is_last
    if pre_process:
        piece += _embedding_piece(shape)
    if post_process:
        piece += _output_piece(shape, pre_process) + Piece(shape.vocab_size if shape.lm_head_bias else 0)
    return piece


def chunk_piece(shape: ModelShape, stage: PipelineStage) -> Piece:
    return _t5_chunk(shape, stage) if shape.structure == "encoder_decoder" else _decoder_only_chunk(shape, stage)


def rank_parameters(shape: ModelShape, pipeline_rank: int = 0, pipeline_size: int = 1,
                    virtual_size: Optional[int] = None, split_rank: Optional[int] = None) -> int:
    """Parameters one tensor-parallel rank of pipeline stage `pipeline_rank` holds (all its
    virtual chunks, stage copies included); TP is the config's tensor_model_parallel_size."""
    total = Piece()
    for virtual_rank in range(virtual_size or 1):
        stage = PipelineStage(pipeline_rank, pipeline_size, virtual_rank if virtual_size else None, virtual_size,
                              split_rank)
        total += chunk_piece(shape, stage)
    return total.per_rank(shape.config.tensor_model_parallel_size)
