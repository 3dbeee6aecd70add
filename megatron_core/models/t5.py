"""T5: encoder-decoder transformer with relative position buckets and cross-attention.

    encoder:  emb(enc_ids) -> [pre-LN layers, padding mask, bidirectional relative bias] -> norm
    decoder:  emb(dec_ids) -> [pre-LN layers, causal + padding mask, causal relative bias,
                               cross-attention to the encoder output] -> norm
    head:     logits = (h * d_model**-0.5 if scaled) @ E^T   (tied, T5 v1.0)
              logits = h @ W_out^T                           (untied, T5 v1.1 / mT5)
              logits = h @ E^T + b                           (Megatron's T5: lm_head_bias)

One vocab-parallel word embedding serves the encoder input, the decoder input and (tied)
the output layer. The HF-style T5 is the config
    TransformerConfig(normalization="RMSNorm", layernorm_epsilon=1e-6, add_bias_linear=False,
                      position_embedding_type="t5_relative", softmax_scale=1.0,
                      activation="relu" (v1.0) or "geglu_tanh" (v1.1 "gated-gelu"), ...)
(`models/hf/t5.py: from_hf_config` builds it). Megatron-LM's T5 (learned absolute
positions, LayerNorm, biases, scaled attention) is position_embedding_type="learned_absolute"
with `lm_head_bias=True`: the vocab-parallel bias Megatron's T5LMHead adds to the tied logits
(the t5 family gives it to every tied learned-position T5; checkpoints record the option).

Inputs are [batch, seq] token ids; masks are "keep" masks (1/True = may attend), as HF
tokenizers and Megatron's T5 dataset produce them:
  * encoder_attention_mask: [b, s_enc] (1 = real token) or [b, s_enc, s_enc];
  * decoder_attention_mask: [b, s_dec] or [b, s_dec, s_dec] (the causal mask is always added);
  * enc_dec_attention_mask: [b, s_dec, s_enc]; by default the encoder's key padding.
With `labels` the forward returns the per-token loss [b, s_dec] (0 where label < 0),
otherwise logits [b, s_dec, vocab/tp] (vocab-parallel; gathered with parallel_output=False).

Pipeline parallelism (Megatron's T5 split): a stage holds encoder layers (add_encoder) or
decoder layers (add_decoder), or both when unsplit. pre_process: this stage embeds its
stack's input ids (first encoder stage, first decoder stage). post_process: this stage
holds the LM head (last decoder stage). `stage=` (an mpu.PipelineStage with split_rank,
e.g. mpu.get_pipeline_stage()) sets all of these, each stack's layers split evenly over
its stages. Later stages take their input via set_input_tensor: the encoder hidden
states on encoder stages, (decoder hidden or None, encoder output) on decoder stages. A decoder stage that is not the last returns
(decoder hidden, encoder output) so the next stage gets both. The word embedding exists on
every stage that embeds or (tied) computes logits; copies on stages without encoder
layer 1 are `shared` (the first stage owns it). Each stage holding
layers of a stack holds that stack's relative-bias table; copies on stages that do not
hold the stack's first layer are `shared` as well. Every such table is a stage copy
(mark_stage_copy, pipeline/chunk.py): the pipeline sums the gradients of all copies,
whatever the tying, so they stay equal; the gradient norm counts each once and the
sharding map saves the non-owners as copies of the owner's key.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from .. import mpu
from ..mpu.init_methods import mark_vocab_parallel
from ..mpu.layers import ColumnParallelLinear
from ..mpu.layout import PipelineStage
from ..mpu.mappings import gather_from_tensor_model_parallel_region
from ..transformer.block import TransformerBlock, check_parallel_size
from ..transformer.config import ConfigError, TransformerConfig
from ..transformer.dropout import dropout
from ..transformer.init import component_rng
from ..mpu.sharding_map import mark_stage_copy
from ..pipeline.chunk import PipelineChunkMixin
from .embedding import LanguageEmbedding, build_word_embeddings_copy
from .flops import layer_parameter_count
from .gpt import check_vocab_size
from .language_model import ShardingMapMixin, TiedOutputLayerMixin
from .t5_relative_bias import T5RelativePositionBias

T5_POSITION_EMBEDDINGS = ("t5_relative", "learned_absolute")


def _keep_to_masked(mask: torch.Tensor, what: str, query_length: int) -> torch.Tensor:
    """A keep mask [b, sk] or [b, sq, sk] (1 = attend) -> core's bool mask (True = masked)."""
    if mask.dim() == 2:
        return ~mask.bool()[:, None, None, :]
    if mask.dim() == 3:
        if mask.shape[1] != query_length:
            raise ValueError(f"{what} has {mask.shape[1]} query rows but the sequence has {query_length} tokens.")
        return ~mask.bool()[:, None, :, :]
    if mask.dim() == 4:
        return ~mask.bool()
    raise ValueError(f"{what} must be [batch, keys] or [batch, queries, keys], got shape {tuple(mask.shape)}.")


def t5_stage_arguments(stage: PipelineStage, config: TransformerConfig, decoder_num_layers: int) -> dict:
    """T5Model's per-stage arguments for a pipeline stage: stages below split_rank hold the
    encoder, the others the decoder; each stack's first stage embeds, the last decoder
    stage holds the head."""
    if stage.size > 1 and stage.split_rank is None:
        raise ConfigError("a T5 pipeline puts the encoder and the decoder on different stages; give the stage a "
                          "split_rank (--pipeline-model-parallel-split-rank).")
    if stage.virtual_size is not None:
        raise ConfigError("T5 does not run on virtual pipeline stages; drop --virtual-pipeline-model-parallel-size.")
    encoder, decoder = stage.stack_stage("encoder"), stage.stack_stage("decoder")
    return dict(add_encoder=encoder is not None, add_decoder=decoder is not None,
                pre_process=any(s is not None and s.is_first for s in (encoder, decoder)),
                post_process=decoder is not None and decoder.is_last,
                encoder_layers=encoder.layer_range(config.num_layers) if encoder is not None else (0, None),
                decoder_layers=decoder.layer_range(decoder_num_layers) if decoder is not None else (0, None))


class T5Model(PipelineChunkMixin, TiedOutputLayerMixin, ShardingMapMixin, nn.Module):
    def __init__(self, config: TransformerConfig, vocab_size: int, decoder_num_layers: Optional[int] = None,
                 max_sequence_length: int = 512, pre_process: bool = True, post_process: bool = True,
                 add_encoder: bool = True, add_decoder: bool = True,
                 encoder_layer_offset: int = 0, encoder_num_layers_in_stage: Optional[int] = None,
                 decoder_layer_offset: int = 0, decoder_num_layers_in_stage: Optional[int] = None,
                 scale_decoder_output: Optional[bool] = None, parallel_output: bool = True,
                 label_smoothing: float = 0.0, lm_head_bias: bool = False,
                 stage: Optional[PipelineStage] = None):
        super().__init__()
        check_parallel_size(config)
        self.stage = stage
        if stage is not None:
            # The stage decides which stacks, layers, embedding and head this model holds.
            derived = t5_stage_arguments(stage, config, decoder_num_layers or config.num_layers)
            add_encoder, add_decoder = derived["add_encoder"], derived["add_decoder"]
            pre_process, post_process = derived["pre_process"], derived["post_process"]
            encoder_layer_offset, encoder_num_layers_in_stage = derived["encoder_layers"]
            decoder_layer_offset, decoder_num_layers_in_stage = derived["decoder_layers"]
        # One source of pre_process / post_process (read by the pipeline through the
        # properties below): the stage when given, else the explicit arguments.
        self._stage_roles = (bool(pre_process), bool(post_process))
        if config.position_embedding_type not in T5_POSITION_EMBEDDINGS:
            raise ConfigError(f"T5 needs position_embedding_type 't5_relative' (HF T5) or 'learned_absolute' "
                              f"(Megatron T5), got {config.position_embedding_type!r}.")
        if not (add_encoder or add_decoder):
            raise ValueError("a T5 stage must hold encoder layers, decoder layers or both (add_encoder/add_decoder).")
        if post_process and not add_decoder:
            raise ValueError("post_process (the LM head) needs the decoder on this stage; set add_decoder=True.")
        check_vocab_size(config, vocab_size)
        self.config = config
        self.decoder_config = config if decoder_num_layers in (None, config.num_layers) \
            else config.replace(num_layers=decoder_num_layers)
        self.vocab_size = vocab_size
        self.max_sequence_length = max_sequence_length
        self.add_encoder, self.add_decoder = add_encoder, add_decoder
        self.parallel_output = parallel_output
        self.label_smoothing = label_smoothing
        self.share_embeddings_and_output_weights = config.share_embeddings_and_output_weights
        self.lm_head_bias = lm_head_bias
        relative = config.position_embedding_type == "t5_relative"
        self.scale_decoder_output = (self.share_embeddings_and_output_weights and relative) \
            if scale_decoder_output is None else scale_decoder_output
        # HF T5 drops out the stack output after its final norm; Megatron's T5 does not.
        self.dropout_after_final_norm = relative
        # Encoder and decoder stages of one unsplit model share the input embedding.
        owns_embedding = add_encoder and pre_process and encoder_layer_offset == 0

        self.embedding = None
        if pre_process or (post_process and self.share_embeddings_and_output_weights):
            with component_rng(config, "embedding"):
                if pre_process:
                    self.embedding = LanguageEmbedding(config, vocab_size, max_sequence_length)
                else:
                    # Last stage without an input embedding: only the table for the tied head,
                    # drawn from the same seed as the first stage's table.
                    self.embedding = nn.Module()
                    self.embedding.word_embeddings = build_word_embeddings_copy(config, vocab_size)
            if not owns_embedding:
                # A copy of the first stage's tables (tied or not): summed with it by the pipeline.
                for name, param in self.embedding.named_parameters():
                    mark_stage_copy(param, f"embedding.{name}", owner=False)

        self.encoder = self.encoder_relative_bias = None
        if add_encoder:
            self.encoder = self._build_stack(config, "encoder", encoder_layer_offset, encoder_num_layers_in_stage)
            if relative:
                self.encoder_relative_bias = self._build_bias(config, "encoder", encoder_layer_offset)
        self.decoder = self.decoder_relative_bias = None
        if add_decoder:
            self.decoder = self._build_stack(self.decoder_config, "decoder", decoder_layer_offset,
                                             decoder_num_layers_in_stage)
            if relative:
                self.decoder_relative_bias = self._build_bias(config, "decoder", decoder_layer_offset)

        self.output_layer = None
        if post_process:
            tied = self.share_embeddings_and_output_weights
            with component_rng(config, "output_layer"):
                self.output_layer = ColumnParallelLinear(
                    config.hidden_size, vocab_size, bias=lm_head_bias, gather_output=False,
                    init_method=mpu.init_method_normal(config.init_method_std),
                    skip_weight_param_allocation=tied, params_dtype=config.params_dtype,
                    sequence_parallel=config.sequence_parallel)
            if not tied:
                mark_vocab_parallel(self.output_layer.weight)
            if lm_head_bias:
                mark_vocab_parallel(self.output_layer.bias)     # zeros, like Megatron's

    @staticmethod
    def _build_stack(config: TransformerConfig, name: str, offset: int, count: Optional[int]) -> TransformerBlock:
        count = config.num_layers - offset if count is None else count
        return TransformerBlock(config, self_attn_mask_type="padding" if name == "encoder" else "causal",
                                has_cross_attention=name == "decoder", layer_offset=offset,
                                num_layers_in_block=count, post_layer_norm=offset + count == config.num_layers,
                                seed_name=f"{name}_layer")

    @staticmethod
    def _build_bias(config: TransformerConfig, name: str, offset: int) -> T5RelativePositionBias:
        with component_rng(config, f"{name}_relative_bias"):
            bias = T5RelativePositionBias(config, bidirectional=name == "encoder")
        # On a later pipeline stage of this stack: a copy of the stack's first stage's table.
        mark_stage_copy(bias.weight, f"{name}_relative_bias.weight", owner=offset == 0)
        return bias

    # --- pipeline hooks: PipelineChunkMixin; encoder stages receive the encoder hidden states,
    # decoder stages (decoder hidden or None, encoder output), a bare tensor on a decoder-only
    # stage being the encoder output.
    max_input_tensors = 2

    @property
    def pre_process(self) -> bool:
        """This stage embeds its stack's input ids (the first stage of each stack)."""
        return self._stage_roles[0]

    @property
    def post_process(self) -> bool:
        """This stage holds the LM head (the last decoder stage)."""
        return self._stage_roles[1]

    def _stage_inputs(self) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """(hidden received for this stage's first stack, encoder output received)."""
        received = self.input_tensor
        if isinstance(received, (list, tuple)):
            return received[0], received[1]
        if self.add_encoder:
            return received, None
        return None, received

    # --- forward -----------------------------------------------------------------------------------
    def encode(self, encoder_input_ids: Optional[torch.Tensor], encoder_attention_mask: Optional[torch.Tensor],
               hidden: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Encoder layers of this stage -> [s_enc(/tp with SP), b, h]."""
        if self.pre_process and self.encoder.layer_offset == 0:
            if encoder_input_ids is None:
                raise ValueError("the first encoder stage needs encoder_input_ids.")
            hidden = self.embedding(encoder_input_ids, self._position_ids(encoder_input_ids))
        elif hidden is None:
            raise ValueError("this encoder stage takes its input from set_input_tensor, which was not called.")
        s_enc = encoder_input_ids.shape[1] if encoder_input_ids is not None else self._full_length(hidden)
        mask = None if encoder_attention_mask is None else \
            _keep_to_masked(encoder_attention_mask, "encoder_attention_mask", s_enc)
        bias = self.encoder_relative_bias(s_enc, s_enc) if self.encoder_relative_bias is not None else None
        hidden = self.encoder(hidden, attention_mask=mask, attention_bias=bias)
        if self.encoder.final_layernorm is not None and self.dropout_after_final_norm:
            hidden = self._stack_dropout(hidden)
        return hidden

    def decode(self, decoder_input_ids: Optional[torch.Tensor], encoder_output: torch.Tensor,
               decoder_attention_mask: Optional[torch.Tensor] = None,
               enc_dec_attention_mask: Optional[torch.Tensor] = None, hidden: Optional[torch.Tensor] = None,
               inference_context=None) -> torch.Tensor:
        """Decoder layers of this stage -> [s_dec(/tp with SP), b, h]. With an inference_context
        (inference/kv_cache.py) decoder_input_ids are the tokens after the cached ones: their
        positions and relative biases start at the context's offset."""
        if encoder_output is None:
            raise ValueError("the decoder needs the encoder output (pass encoder_output or set_input_tensor).")
        offset = 0 if inference_context is None else inference_context.sequence_len_offset
        if self.pre_process and self.decoder.layer_offset == 0:
            if decoder_input_ids is None:
                raise ValueError("the first decoder stage needs decoder_input_ids.")
            hidden = self.embedding(decoder_input_ids, self._position_ids(decoder_input_ids, offset))
        elif hidden is None:
            raise ValueError("this decoder stage takes its input from set_input_tensor, which was not called.")
        s_dec = decoder_input_ids.shape[1] if decoder_input_ids is not None else self._full_length(hidden)
        mask = None if decoder_attention_mask is None else \
            _keep_to_masked(decoder_attention_mask, "decoder_attention_mask", s_dec)
        cross_mask = None if enc_dec_attention_mask is None else \
            _keep_to_masked(enc_dec_attention_mask, "enc_dec_attention_mask", s_dec)
        bias = None
        if self.decoder_relative_bias is not None:
            # The rows of this step's queries (the last s_dec) over every key so far.
            bias = self.decoder_relative_bias(offset + s_dec, offset + s_dec)[:, :, offset:]
        hidden = self.decoder(hidden, attention_mask=mask, attention_bias=bias, encoder_output=encoder_output,
                              enc_dec_mask=cross_mask, inference_context=inference_context)
        if self.decoder.final_layernorm is not None and self.dropout_after_final_norm:
            hidden = self._stack_dropout(hidden)
        return hidden

    def forward(self, encoder_input_ids: Optional[torch.Tensor] = None,
                decoder_input_ids: Optional[torch.Tensor] = None,
                encoder_attention_mask: Optional[torch.Tensor] = None,
                decoder_attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None,
                enc_dec_attention_mask: Optional[torch.Tensor] = None,
                encoder_output: Optional[torch.Tensor] = None):
        received_hidden, received_encoder_output = self._stage_inputs()
        if self.add_encoder:
            encoder_output = self.encode(encoder_input_ids, encoder_attention_mask, hidden=received_hidden)
            received_hidden = None
            if not self.add_decoder:
                return encoder_output
        elif encoder_output is None:
            encoder_output = received_encoder_output

        if enc_dec_attention_mask is None and encoder_attention_mask is not None:
            # The encoder's key padding, for every decoder query.
            keys = encoder_attention_mask if encoder_attention_mask.dim() == 2 \
                else encoder_attention_mask.bool().any(dim=-2)
            enc_dec_attention_mask = keys
        hidden = self.decode(decoder_input_ids, encoder_output, decoder_attention_mask, enc_dec_attention_mask,
                             hidden=received_hidden)
        if not self.post_process:
            return hidden, encoder_output
        return self._head(hidden, labels)

    def _head(self, hidden: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        if self.scale_decoder_output:
            hidden = hidden * (self.config.hidden_size ** -0.5)
        logits, _ = self.output_layer(hidden, weight=self.output_weight())  # [s, b, V/tp]
        logits = logits.transpose(0, 1).contiguous()
        if labels is None:
            return logits if self.parallel_output else gather_from_tensor_model_parallel_region(logits)
        ignore = labels < 0
        loss = mpu.vocab_parallel_cross_entropy(logits.float(), labels.masked_fill(ignore, 0),
                                                self.label_smoothing)
        return loss.masked_fill(ignore, 0.0)

    # --- helpers ----------------------------------------------------------------------------------------
    def _position_ids(self, input_ids: torch.Tensor, offset: int = 0) -> Optional[torch.Tensor]:
        if self.config.position_embedding_type != "learned_absolute":
            return None
        if offset + input_ids.shape[1] > self.max_sequence_length:
            raise ValueError(f"sequence of {offset + input_ids.shape[1]} tokens exceeds max_sequence_length "
                             f"{self.max_sequence_length}.")
        positions = torch.arange(offset, offset + input_ids.shape[1], device=input_ids.device)
        return positions.unsqueeze(0).expand_as(input_ids)

    def _full_length(self, hidden: torch.Tensor) -> int:
        length = hidden.shape[0]
        if self.config.sequence_parallel_active:
            length *= self.config.tensor_model_parallel_size
        return length

    def _stack_dropout(self, hidden: torch.Tensor) -> torch.Tensor:
        split_dim = 0 if self.config.sequence_parallel_active else None
        return dropout(hidden, self.config.hidden_dropout, self.training, self.config, split_dim=split_dim)

    # --- size ----------------------------------------------------------------------------------------------
    def parameter_count(self) -> int:
        """Parameters of the whole serial model (all stages), from the config alone."""
        return t5_parameter_count(self.config, self.vocab_size, self.decoder_config.num_layers,
                                  self.max_sequence_length, self.output_layer_bias_size())

    def output_layer_bias_size(self) -> int:
        """The serial LM-head bias (0 without one); any stage can tell (the config and the head say)."""
        return self.vocab_size if self.lm_head_bias else 0

    def training_flops_per_sample(self, encoder_seq_length: int, decoder_seq_length: int) -> int:
        return 3 * t5_forward_flops_per_sample(self.config, self.vocab_size, encoder_seq_length,
                                               decoder_seq_length, self.decoder_config.num_layers)

    def training_flops_per_token(self, seq_length: int, decoder_seq_length: Optional[int] = None) -> int:
        """Training FLOPs of one sample divided by its encoder + decoder tokens."""
        dec = seq_length if decoder_seq_length is None else decoder_seq_length
        return self.training_flops_per_sample(seq_length, dec) // (seq_length + dec)


# --- parameter count and FLOPs (Megatron's conventions, see models/flops.py) -----------------------------------
def _norm_size(config: TransformerConfig) -> int:
    return (2 if config.normalization == "LayerNorm" else 1) * config.hidden_size


def t5_cross_attention_parameter_count(config: TransformerConfig) -> int:
    """A decoder layer's cross-attention: its norm, q / kv / out projections and their biases."""
    h, q, kv = config.hidden_size, config.query_projection_size, config.kv_projection_size
    count = h * q + h * 2 * kv + q * h + _norm_size(config)
    return count + (q + 2 * kv if config.add_qkv_bias else 0) + (h if config.add_bias_linear else 0)


def t5_parameter_count(config: TransformerConfig, vocab_size: int, decoder_num_layers: Optional[int] = None,
                       max_sequence_length: int = 0, lm_head_bias_size: int = 0) -> int:
    """Parameters of the serial T5 (encoder + decoder + tied or untied head), whatever the TP size."""
    h = config.hidden_size
    dec_layers = config.num_layers if decoder_num_layers is None else decoder_num_layers
    cross = t5_cross_attention_parameter_count(config)
    count = vocab_size * h
    if config.position_embedding_type == "learned_absolute":
        count += max_sequence_length * h
    if config.position_embedding_type == "t5_relative":
        count += 2 * config.relative_attention_num_buckets * config.num_attention_heads
    count += (config.num_layers + dec_layers) * layer_parameter_count(config) + dec_layers * cross
    if config.final_layernorm:
        count += 2 * _norm_size(config)
    if not config.share_embeddings_and_output_weights:
        count += vocab_size * h
    return count + lm_head_bias_size


def t5_forward_flops_per_sample(config: TransformerConfig, vocab_size: int, encoder_seq_length: int,
                                decoder_seq_length: int, decoder_num_layers: Optional[int] = None) -> int:
    """Matmul FLOPs (2mkn each) of one forward pass over one (encoder, decoder) sample pair.

    Encoder layer per token: qkv, scores + context over s_enc keys, out proj, MLP. Decoder
    layer per token: the same over s_dec keys, plus cross-attention (query and out proj per
    decoder token, key/value projections per encoder token, scores + context over s_enc
    keys). Plus the logits per decoder token.
    """
    h, f, d = config.hidden_size, config.ffn_hidden_size, config.kv_channels
    n_h, n_g = config.num_attention_heads, config.num_query_groups
    s_e, s_d = encoder_seq_length, decoder_seq_length
    dec_layers = config.num_layers if decoder_num_layers is None else decoder_num_layers
    qkv = 2 * h * (n_h + 2 * n_g) * d
    out = 2 * n_h * d * h
    mlp = 2 * h * f * (2 if config.gated_linear_unit else 1) + 2 * f * h

    def attention(keys):
        return 2 * 2 * keys * n_h * d

    encoder = config.num_layers * s_e * (qkv + attention(s_e) + out + mlp)
    cross = s_d * (2 * h * n_h * d + attention(s_e) + out) + s_e * 2 * h * 2 * n_g * d
    decoder = dec_layers * (s_d * (qkv + attention(s_d) + out + mlp) + cross)
    return encoder + decoder + s_d * 2 * h * vocab_size
