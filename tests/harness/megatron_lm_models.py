"""The three small megatron-core models the Megatron-LM harness builds, and their logits.

    "gpt"    GPTModel, Megatron-LM's GPT-2: learned absolute positions, LayerNorm, GeLU,
             biases, output layer tied to the word embeddings.
    "llama"  GPTModel with SwiGLU, RMSNorm, rotary positions, 4 heads in 2 query groups,
             no linear biases, untied output layer.
    "bert"   BertModel: learned absolute positions, 2 token types, LM head tied to the word
             embeddings, pooler and binary head.
    "t5"     T5Model, Megatron-LM's T5: 2 encoder and 2 decoder layers, learned absolute positions
             shared by both stacks, LayerNorm, GeLU, biases, the LM head tied to the word
             embeddings with its vocabulary bias (T5LMHead), decoder sequence 8.

All: 2 layers (build_model takes another count, and builds GPT's virtual pipeline chunks for
megatron_lm_virtual.py), hidden 64, 4 heads, FFN 256, sequence 16, vocabulary 128 (a multiple
of 128, so padding adds nothing at TP <= 4), fp32, dropouts 0, fusions off, the local (no Transformer
Engine) layer specs, and Megatron-LM's model provider arguments (pretrain_gpt.py's
gpt_builders.py, pretrain_bert.py). `megatron_lm_args` gives the same description in
Megatron-LM's argument names.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

MODEL_NAMES = ("gpt", "llama", "bert", "t5")
NUM_LAYERS, HIDDEN, HEADS, FFN, SEQ, VOCAB = 2, 64, 4, 256, 16, 128
DECODER_SEQ = 8
BATCH = 2


def _check_name(name: str) -> None:
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; the harness builds {', '.join(MODEL_NAMES)}")


def model_description(name: str) -> dict:
    """What differs between the models, in Megatron-LM's argument names."""
    _check_name(name)
    if name == "t5":
        return dict(model_description("gpt"), decoder_num_layers=NUM_LAYERS, decoder_seq_length=DECODER_SEQ)
    if name == "llama":
        return dict(position_embedding_type="rope", add_position_embedding=False,
                    use_rotary_position_embeddings=True, normalization="RMSNorm", swiglu=True,
                    add_bias_linear=False, add_qkv_bias=False, group_query_attention=True,
                    num_query_groups=2, untie_embeddings_and_output_weights=True, bert_binary_head=True)
    return dict(position_embedding_type="learned_absolute", add_position_embedding=True,
                use_rotary_position_embeddings=False, normalization="LayerNorm", swiglu=False,
                add_bias_linear=True, add_qkv_bias=True, group_query_attention=False,
                num_query_groups=1, untie_embeddings_and_output_weights=False,
                bert_binary_head=True)      # parse_args's default; only pretrain_bert.py reads it


def transformer_config(name: str, tp: int, pp: int, num_layers: int = NUM_LAYERS, virtual: int | None = None):
    from megatron.core.transformer.transformer_config import TransformerConfig

    described = model_description(name)
    llama = name == "llama"
    return TransformerConfig(
        num_layers=num_layers, hidden_size=HIDDEN, num_attention_heads=HEADS, ffn_hidden_size=FFN,
        num_query_groups=described["num_query_groups"] if llama else None,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, virtual_pipeline_model_parallel_size=virtual,
        normalization=described["normalization"], gated_linear_unit=llama,
        activation_func=F.silu if llama else F.gelu, add_bias_linear=not llama,
        hidden_dropout=0.0, attention_dropout=0.0, use_cpu_initialization=True,
        params_dtype=torch.float32, pipeline_dtype=torch.float32,
        bias_activation_fusion=False, masked_softmax_fusion=False, bias_dropout_fusion=False,
        apply_rope_fusion=False, gradient_accumulation_fusion=False, persist_layer_norm=False)


def build_model(name: str, tp: int, pp: int, num_layers: int = NUM_LAYERS, virtual: int | None = None,
                vp_stage: int | None = None):
    """This rank's stage of the model, as Megatron-LM's model provider builds it; with `virtual`
    chunks per pipeline rank, chunk `vp_stage` of them, as get_model builds each (GPT only): the
    embedding on the first rank's chunk 0, the head on the last rank's last chunk."""
    from megatron.core import parallel_state
    from megatron.core.models.bert.bert_layer_specs import bert_layer_local_spec
    from megatron.core.models.bert.bert_model import BertModel
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    if virtual is not None and name not in ("gpt", "llama"):
        raise ValueError(f"the harness builds virtual pipeline chunks of gpt and llama, not {name!r}")
    config, described = transformer_config(name, tp, pp, num_layers, virtual), model_description(name)
    first, last = parallel_state.is_pipeline_first_stage(), parallel_state.is_pipeline_last_stage()
    if virtual is not None:
        first, last = first and vp_stage == 0, last and vp_stage == virtual - 1
    stage = dict(pre_process=first, post_process=last, parallel_output=True,
                 share_embeddings_and_output_weights=not described["untie_embeddings_and_output_weights"])
    if name == "bert":
        return BertModel(config=config, transformer_layer_spec=bert_layer_local_spec, vocab_size=VOCAB,
                         max_sequence_length=SEQ, num_tokentypes=2, add_binary_head=True, **stage)
    if name == "t5":
        return _build_t5(config, stage)
    layer_spec = get_gpt_layer_local_spec(normalization=described["normalization"])
    return GPTModel(config=config, transformer_layer_spec=layer_spec, vocab_size=VOCAB, max_sequence_length=SEQ,
                    position_embedding_type=described["position_embedding_type"], rotary_percent=1.0,
                    vp_stage=vp_stage, **stage)


def _build_t5(config, stage: dict):
    """pretrain_t5.py's model_provider with --transformer-impl local. Its local block specs name
    Transformer Engine's norm for the stacks' final layer norms; without TE the same module is
    megatron-core's local LayerNorm (the same two tensors, the same names)."""
    from megatron.core.models.T5 import T5Model
    from megatron.core.models.T5.t5_spec import decoder_model_with_local_spec, encoder_model_with_local_spec
    from megatron.core.transformer.torch_norm import WrappedTorchNorm
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

    encoder = TransformerBlockSubmodules([encoder_model_with_local_spec()] * NUM_LAYERS, layer_norm=WrappedTorchNorm)
    decoder = TransformerBlockSubmodules([decoder_model_with_local_spec()] * NUM_LAYERS, layer_norm=WrappedTorchNorm)
    model = T5Model(config=config, encoder_config=config, transformer_encoder_layer_spec=encoder,
                    transformer_decoder_layer_spec=decoder, vocab_size=VOCAB, max_sequence_length=SEQ,
                    position_embedding_type="learned_absolute", add_encoder=True, add_decoder=True, **stage)
    if stage["post_process"]:
        # megatron-core starts the head's bias at zero; a trained one is not, and only a nonzero one
        # shows that it is read, written and added. Each TP rank holds its rows of one vector.
        from megatron.core import parallel_state

        bias = model.lm_head.output_layer.bias
        first = parallel_state.get_tensor_model_parallel_rank() * bias.numel()
        with torch.no_grad():
            bias.copy_(torch.sin(torch.arange(first, first + bias.numel(), dtype=torch.float32)))
    return model


def _t5_batch(tokens: torch.Tensor) -> dict:
    """Encoder and decoder ids and keep masks ([b, s]: 1 = real token); the second sample's
    encoder input and decoder input end in padding."""
    decoder_tokens = tokens[:, :DECODER_SEQ].flip(1).contiguous()
    encoder_keep = torch.ones(BATCH, SEQ, dtype=torch.bool)
    encoder_keep[1, SEQ - 4:] = False
    decoder_keep = torch.ones(BATCH, DECODER_SEQ, dtype=torch.bool)
    decoder_keep[1, DECODER_SEQ - 2:] = False
    return dict(encoder_input_ids=tokens, decoder_input_ids=decoder_tokens, encoder_keep=encoder_keep,
                decoder_keep=decoder_keep)


def t5_megatron_masks(batch: dict) -> dict:
    """pretrain_t5.py's masks for megatron-core (True = masked, [b, 1, q, k]): encoder padding,
    causal + padding on the decoder, encoder padding for cross-attention."""
    enc, dec = batch["encoder_keep"], batch["decoder_keep"]
    causal = torch.ones(DECODER_SEQ, DECODER_SEQ, dtype=torch.bool).tril()
    encoder_mask = ~(enc[:, None, :] & enc[:, :, None])
    decoder_mask = ~(causal[None] & dec[:, None, :] & dec[:, :, None])
    cross_mask = ~(dec[:, :, None] & enc[:, None, :])
    return dict(encoder_attn_mask=encoder_mask.unsqueeze(1), decoder_attn_mask=decoder_mask.unsqueeze(1),
                encoder_decoder_attn_mask=cross_mask.unsqueeze(1))


def sample_batch(name: str) -> dict:
    """Fixed inputs: the same tokens in every rank and every run."""
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(20240611))
    if name == "t5":
        return _t5_batch(tokens)
    if name == "bert":
        padding = torch.ones(BATCH, SEQ, dtype=torch.long)
        padding[1, SEQ - 4:] = 0                         # the second sample ends in padding
        tokentypes = torch.zeros(BATCH, SEQ, dtype=torch.long)
        tokentypes[:, SEQ // 2:] = 1
        return dict(input_ids=tokens, attention_mask=padding, tokentype_ids=tokentypes)
    causal = torch.ones(SEQ, SEQ, dtype=torch.bool).triu(1).view(1, 1, SEQ, SEQ)    # True: masked
    positions = torch.arange(SEQ).unsqueeze(0).expand(BATCH, -1)
    return dict(input_ids=tokens, position_ids=positions, attention_mask=causal)


def _gather_vocab(local_logits: torch.Tensor) -> torch.Tensor:
    from megatron.core import tensor_parallel

    return tensor_parallel.gather_from_tensor_model_parallel_region(local_logits.contiguous())


@torch.no_grad()
def full_logits(name: str, model) -> dict | None:
    """The full-vocabulary logits {"lm": [batch, seq, vocab]} (BERT adds "binary": [batch, 2]);
    the last stage returns them, the others None. Pipeline stages pass hidden states by gloo
    send/recv, as Megatron's schedule would, for a forward-only step."""
    from megatron.core import parallel_state

    model.eval()
    batch = sample_batch(name)
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    stage = parallel_state.get_pipeline_model_parallel_rank()
    if stage > 0:
        hidden = torch.empty(SEQ, BATCH, HIDDEN)
        dist.recv(hidden, src=parallel_state.get_pipeline_model_parallel_prev_rank())
        model.set_input_tensor(hidden)
    if name == "t5":
        output = model(batch["encoder_input_ids"], batch["decoder_input_ids"], **t5_megatron_masks(batch))
        return {"lm": _gather_vocab(output)}          # [b, s_dec, vocab]
    output = model(**batch)
    if stage < pp - 1:
        dist.send(output.contiguous(), dst=parallel_state.get_pipeline_model_parallel_next_rank())
        return None
    if name == "bert":
        lm, binary = output
        return {"lm": _gather_vocab(lm), "binary": binary}
    return {"lm": _gather_vocab(output)}
