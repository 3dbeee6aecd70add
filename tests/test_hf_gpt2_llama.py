"""HF GPT2LMHeadModel and LlamaForCausalLM <-> our GPTModel: logits match, round trips are exact.

The HF models are built from small configs with random weights (no download).
"""
import pytest
import torch

pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM  # noqa: E402

from megatron_core.models.gpt import GPTModel  # noqa: E402
from megatron_core.models.hf import gpt2 as hf_gpt2  # noqa: E402
from megatron_core.models.hf import llama as hf_llama  # noqa: E402
from megatron_core.models.hf.common import ConversionError  # noqa: E402
from megatron_core.models.llama import llama_config  # noqa: E402
from tests.harness.model_checks import single_process_world
from tests.harness.weights import randomize_trainable  # noqa: E402

pytestmark = pytest.mark.quick

TOL = dict(rtol=1e-4, atol=1e-4)
VOCAB, PADDED, MAX_POS, B, S = 60, 64, 16, 2, 12


@pytest.fixture(scope="module", autouse=True)
def single_process_group():
    """Our layers need (trivial) model-parallel groups: one gloo process, TP=1."""
    with single_process_world():
        yield


def _inputs():
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, VOCAB, (B, S), generator=gen)
    keep = torch.ones(B, S, dtype=torch.long)
    keep[1, -4:] = 0  # right padding in the second sequence
    return ids, keep


def _our_logits(model, ids, keep):
    mask = (keep == 0)[:, None, None, :]  # ours: True = masked key
    with torch.no_grad():
        return model(ids, attention_mask=mask)[..., :VOCAB]


def _hf_logits(model, ids, keep):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=keep).logits


def _gpt2_hf():
    config = GPT2Config(vocab_size=VOCAB, n_positions=MAX_POS, n_embd=32, n_layer=2, n_head=4, n_inner=48,
                        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    return randomize_trainable(GPT2LMHeadModel(config), 1)


def _llama_hf(kv_heads, tied=False):
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=MAX_POS,
                         rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 5000.0},
                         tie_word_embeddings=tied, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    torch.manual_seed(0)
    return randomize_trainable(LlamaForCausalLM(config), 2)


def _same_state(actual, expected):
    assert set(actual) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=0, atol=0, msg=lambda m: f"{key}: {m}")


def _check_family(module, hf_model, hf_class):
    config = module.from_hf_config(hf_model.config, hidden_dropout=0.0, attention_dropout=0.0)
    ours = GPTModel(config, PADDED, MAX_POS).eval()
    ours.load_state_dict(module.from_hf_state_dict(hf_model.state_dict(), config, padded_vocab_size=PADDED))
    ids, keep = _inputs()
    torch.testing.assert_close(_our_logits(ours, ids, keep), _hf_logits(hf_model, ids, keep), **TOL)
    # the padding rows are zero: their logits are exactly 0
    with torch.no_grad():
        assert (ours(ids)[..., VOCAB:] == 0).all()

    # HF -> ours -> HF is the identity (the padding rows are dropped again)
    hf_sd = {k: v for k, v in hf_model.state_dict().items()}
    _same_state(module.to_hf_state_dict(ours.state_dict(), config, vocab_size=VOCAB), hf_sd)

    # ours (any values, padded rows included) -> HF -> ours is the identity, and the HF model
    # built from to_hf_config with those weights computes our logits
    torch.manual_seed(4)
    other = randomize_trainable(GPTModel(config, PADDED, MAX_POS), 5)
    exported = module.to_hf_state_dict(other.state_dict(), config)
    _same_state(module.from_hf_state_dict(exported, config), other.state_dict())
    hf_config = module.to_hf_config(config, vocab_size=PADDED, max_position_embeddings=MAX_POS)
    rebuilt = hf_class(hf_config).eval()
    rebuilt.load_state_dict(exported)
    torch.testing.assert_close(_hf_logits(rebuilt, ids, keep)[..., :VOCAB], _our_logits(other, ids, keep), **TOL)
    assert module.from_hf_config(hf_config, hidden_dropout=0.0, attention_dropout=0.0) == config
    return config


def test_gpt2_logits_and_round_trips():
    config = _check_family(hf_gpt2, _gpt2_hf(), GPT2LMHeadModel)
    assert config.activation == "gelu_tanh" and config.share_embeddings_and_output_weights


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_llama_logits_and_round_trips(kv_heads):
    config = _check_family(hf_llama, _llama_hf(kv_heads), LlamaForCausalLM)
    assert config.num_query_groups == kv_heads and config.rotary_base == 5000.0
    assert config == llama_config(num_layers=2, hidden_size=32, num_attention_heads=4, num_query_groups=kv_heads,
                                  ffn_hidden_size=40, rope_theta=5000.0, init_method_std=0.02)


def test_llama_tied_embeddings():
    hf_model = _llama_hf(2, tied=True)
    config = hf_llama.from_hf_config(hf_model.config)
    assert config.share_embeddings_and_output_weights
    ours = GPTModel(config, PADDED, MAX_POS).eval()
    ours.load_state_dict(hf_llama.from_hf_state_dict(hf_model.state_dict(), config, padded_vocab_size=PADDED))
    ids, keep = _inputs()
    torch.testing.assert_close(_our_logits(ours, ids, keep), _hf_logits(hf_model, ids, keep), **TOL)


def test_unconvertible_configs_are_one_sentence():
    gqa = hf_gpt2.from_hf_config(_gpt2_hf().config).replace(num_query_groups=2)
    with pytest.raises(ConversionError, match=r"HF GPT2LMHeadModel needs num_query_groups=4 \(this config has 2\)"):
        hf_gpt2.to_hf_state_dict({}, gqa)
    interleaved = llama_config(num_layers=1, hidden_size=32, num_attention_heads=4, rotary_interleaved=True)
    with pytest.raises(ConversionError, match=r"needs rotary_interleaved=False"):
        hf_llama.from_hf_state_dict({}, interleaved)
    config = llama_config(num_layers=3, hidden_size=32, num_attention_heads=4, num_query_groups=2,
                          ffn_hidden_size=40)
    with pytest.raises(ConversionError, match=r"has 2 layers but config.num_layers is 3"):
        hf_llama.from_hf_state_dict(_llama_hf(2).state_dict(), config)
