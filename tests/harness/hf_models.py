"""Tiny random HuggingFace models of every family we map, and how each side computes its logits.

    hf = saved_hf_model("gpt", directory)          # built, weights moved off init, save_pretrained
    x = hf_batch()
    expected = logits_of("gpt", hf, None, x)       # HF's logits [b, s, vocab] (BERT: MLM + NSP, flat)
    got = logits_of("gpt", None, ours, x)          # our model's on the same batch

No downloads: every model is built locally from a config (transformers is imported here, so
only tests that have it import this module).
"""
from __future__ import annotations

import torch
import transformers

from .weights import randomize_trainable

VOCAB, B, S = 61, 2, 10
NO_DROPOUT_BERT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
ENCODER = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
               max_position_embeddings=S + 6, type_vocab_size=2, **NO_DROPOUT_BERT)


def hf_batch(seed: int = 3) -> dict:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (B, S), generator=gen)
    dec = torch.randint(0, VOCAB, (B, S - 3), generator=gen)
    keep = torch.ones(B, S, dtype=torch.long)
    keep[1, -3:] = 0  # right padding in the second sequence
    types = torch.zeros(B, S, dtype=torch.long)
    types[:, S // 2:] = 1
    return dict(ids=ids, dec=dec, keep=keep, types=types)


def _decoder_logits(hf, ours, x):
    if hf is not None:
        return hf(input_ids=x["ids"], attention_mask=x["keep"]).logits
    return ours(x["ids"], attention_mask=(x["keep"] == 0)[:, None, None, :])


def _bert_logits(hf, ours, x):
    if hf is not None:
        out = hf(input_ids=x["ids"], token_type_ids=x["types"], attention_mask=x["keep"])
        return torch.cat([out.prediction_logits.flatten(), out.seq_relationship_logits.flatten()])
    logits, nsp = ours(x["ids"], x["keep"], x["types"])
    return torch.cat([logits[..., :VOCAB].flatten(), nsp.flatten()])


def _roformer_logits(hf, ours, x):
    mlm = torch.zeros_like(x["types"])  # token type 0 everywhere: HF's bidirectional MLM
    if hf is not None:
        return hf(input_ids=x["ids"], token_type_ids=mlm, attention_mask=x["keep"]).logits
    return ours(x["ids"], x["keep"], mlm)[0]


def _t5_logits(hf, ours, x):
    dec_keep = torch.ones_like(x["dec"])
    if hf is not None:
        return hf(input_ids=x["ids"], attention_mask=x["keep"], decoder_input_ids=x["dec"],
                  decoder_attention_mask=dec_keep).logits
    return ours(x["ids"], x["dec"], x["keep"], dec_keep)


def _untie_t5_head(model):
    # transformers >= 5 builds T5's lm_head tied to `shared`; a v1.1 checkpoint has its own.
    model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, model.config.d_model))


CASES = {
    # id: (our family, HF model class, HF config, logits, fix-up after building the HF model)
    "gpt": ("gpt", transformers.GPT2LMHeadModel,
            transformers.GPT2Config(vocab_size=VOCAB, n_positions=S + 6, n_embd=32, n_layer=2, n_head=4, n_inner=48,
                                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None,
                                    eos_token_id=None),
            _decoder_logits, None),
    "llama_gqa": ("llama", transformers.LlamaForCausalLM,
                  transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=S + 6,
                                           rope_parameters={"rope_type": "default", "rope_theta": 5000.0},
                                           bos_token_id=None, eos_token_id=None, pad_token_id=None),
                  _decoder_logits, None),
    "bert": ("bert", transformers.BertForPreTraining, transformers.BertConfig(**ENCODER), _bert_logits, None),
    "megatron_bert": ("megatron_bert", transformers.MegatronBertForPreTraining,
                      transformers.MegatronBertConfig(**ENCODER), _bert_logits, None),
    "roformer": ("roformer", transformers.RoFormerForMaskedLM, transformers.RoFormerConfig(**ENCODER),
                 _roformer_logits, None),
    "t5_v1_0": ("t5", transformers.T5ForConditionalGeneration,
                transformers.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3,
                                      num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=12,
                                      dropout_rate=0.0, feed_forward_proj="relu", tie_word_embeddings=True),
                _t5_logits, None),
    "t5_v1_1": ("t5", transformers.T5ForConditionalGeneration,
                transformers.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2,
                                      num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=12,
                                      dropout_rate=0.0, feed_forward_proj="gated-gelu", tie_word_embeddings=False),
                _t5_logits, _untie_t5_head),
}


def saved_hf_model(case: str, directory) -> torch.nn.Module:
    """A small random HF model of the case, saved as HF saves it; returns the live model."""
    _, model_cls, hf_config, _, fix_up = CASES[case]
    torch.manual_seed(0)
    hf = model_cls(hf_config)
    if fix_up:
        fix_up(hf)
    hf = randomize_trainable(hf, seed=1)
    hf.save_pretrained(directory)
    return hf


def logits_of(case: str, hf, ours, x) -> torch.Tensor:
    """The case's logits from the HF model (ours=None) or from our model (hf=None)."""
    return CASES[case][3](hf, ours, x)
