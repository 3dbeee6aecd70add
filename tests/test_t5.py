"""T5: equals HF T5ForConditionalGeneration (v1.0 tied/relu and v1.1 untied/gated-gelu),
converts both ways, splits into encoder/decoder pipeline stages, counts its parameters and
FLOPs, and gives the TP=1 loss and gradients at TP=2 (one gloo spawn)."""

import pytest
import torch

from megatron_core import mpu
from megatron_core.models.hf import t5 as hf_t5
from megatron_core.models.t5 import T5Model
from megatron_core.models.t5_relative_bias import relative_position_bucket
from tests.harness import run_distributed
from megatron_core.transformer import ConfigError, TransformerConfig
from tests.harness.model_checks import gathered_grads, single_process_world

VOCAB, B, S_ENC, S_DEC = 96, 2, 11, 7
TOL = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def single_rank():
    """A world of one gloo process in this pytest process (TP=1), torn down afterwards."""
    with single_process_world():
        yield


def _hf_model(variant):
    transformers = pytest.importorskip("transformers")
    kwargs = dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3, num_heads=4,
                  relative_attention_num_buckets=8, relative_attention_max_distance=12, dropout_rate=0.0)
    if variant == "v1_0":
        kwargs.update(feed_forward_proj="relu", tie_word_embeddings=True)
    else:
        kwargs.update(feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(**kwargs)).eval()
    if variant == "v1_1":
        # transformers >= 5 always ties lm_head to `shared`; give it its own weight, as a
        # v1.1 checkpoint has.
        model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 32))
    return model


def _inputs(seed=3, s_enc=S_ENC, s_dec=S_DEC):
    g = torch.Generator().manual_seed(seed)
    enc = torch.randint(0, VOCAB, (B, s_enc), generator=g)
    dec = torch.randint(0, VOCAB, (B, s_dec), generator=g)
    enc_mask = torch.ones(B, s_enc, dtype=torch.long)
    enc_mask[1, -4:] = 0  # padding on the second encoder sequence
    dec_mask = torch.ones(B, s_dec, dtype=torch.long)
    dec_mask[0, -2:] = 0
    labels = torch.randint(0, VOCAB, (B, s_dec), generator=g)
    labels[0, -2:] = -100
    return enc, dec, enc_mask, dec_mask, labels


def _ours_from_hf(hf, **config_overrides):
    config = hf_t5.from_hf_config(hf.config, **config_overrides)
    model = T5Model(config, VOCAB + 32, decoder_num_layers=hf.config.num_decoder_layers).eval()
    state = hf_t5.from_hf_state_dict(hf.state_dict(), config, hf.config.num_decoder_layers, padded_vocab_size=VOCAB + 32)
    model.load_state_dict(state, strict=True)
    return config, model


@pytest.mark.parametrize("variant", ["v1_0", "v1_1"])
@pytest.mark.parametrize("backend", ["sdpa", "explicit"])
def test_logits_and_loss_match_hf(single_rank, variant, backend):
    hf = _hf_model(variant)
    config, ours = _ours_from_hf(hf, attention_backend=backend)
    assert config.share_embeddings_and_output_weights == (variant == "v1_0")
    assert config.activation == ("relu" if variant == "v1_0" else "geglu_tanh")
    enc, dec, enc_mask, dec_mask, labels = _inputs()
    with torch.no_grad():
        expected = hf(input_ids=enc, attention_mask=enc_mask, decoder_input_ids=dec,
                      decoder_attention_mask=dec_mask).logits
        logits = ours(enc, dec, enc_mask, dec_mask)
        loss = ours(enc, dec, enc_mask, dec_mask, labels=labels)
    assert logits.shape == (B, S_DEC, VOCAB + 32)
    torch.testing.assert_close(logits[..., :VOCAB], expected, **TOL)
    # Padding rows of the vocabulary are zero: their logits are 0, and they enter the loss.
    assert torch.all(logits[..., VOCAB:] == 0)
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB + 32), labels.reshape(-1), reduction="none",
                                            ignore_index=-100).view(B, S_DEC)
    torch.testing.assert_close(loss, ref, **TOL)
    assert torch.all(loss[0, -2:] == 0)


def test_megatron_style_masks_equal_padding_masks(single_rank):
    """[b, s, s] keep masks (Megatron's T5 dataset) give what [b, s] padding masks give."""
    hf = _hf_model("v1_0")
    _, ours = _ours_from_hf(hf)
    enc, dec, enc_mask, dec_mask, _ = _inputs()
    enc3 = enc_mask[:, :, None] * enc_mask[:, None, :]
    dec3 = dec_mask[:, :, None] * dec_mask[:, None, :]
    enc_dec = dec_mask[:, :, None] * enc_mask[:, None, :]
    with torch.no_grad():
        a = ours(enc, dec, enc_mask, dec_mask)
        b = ours(enc, dec, enc3, dec3, enc_dec_attention_mask=enc_dec)
    real = dec_mask.bool()  # padded decoder queries see nothing in the 3-D form: compare real rows
    torch.testing.assert_close(a[real], b[real], **TOL)


@pytest.mark.parametrize("variant", ["v1_0", "v1_1"])
def test_round_trip_is_identity(single_rank, variant):
    hf = _hf_model(variant)
    config, ours = _ours_from_hf(hf)
    back = hf_t5.to_hf_state_dict(ours.state_dict(), config, hf.config.num_decoder_layers, vocab_size=VOCAB)
    original = hf.state_dict()
    assert set(back) == set(original)
    for key, value in original.items():
        assert torch.equal(back[key], value), key
    again = hf_t5.from_hf_state_dict(back, config, hf.config.num_decoder_layers, padded_vocab_size=VOCAB + 32)
    for key, value in ours.state_dict().items():
        assert torch.equal(again[key], value), key
    # The config builder gives back an HF config with the same shapes.
    rebuilt = hf_t5.to_hf_config(config, VOCAB, hf.config.num_decoder_layers)
    for name in ("d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads", "feed_forward_proj",
                 "relative_attention_num_buckets", "relative_attention_max_distance"):
        assert getattr(rebuilt, name) == getattr(hf.config, name), name
    assert hf_t5.hf_scales_decoder_output(rebuilt) == (variant == "v1_0")


def test_relative_buckets_match_hf():
    from transformers.models.t5.modeling_t5 import T5Attention
    rel = torch.arange(-300, 300)[None, :]
    for bidirectional in (True, False):
        for buckets, distance in ((32, 128), (8, 12)):
            expected = T5Attention._relative_position_bucket(rel, bidirectional, buckets, distance)
            assert torch.equal(relative_position_bucket(rel, bidirectional, buckets, distance), expected)


def _small_config(**overrides):
    values = dict(num_layers=2, hidden_size=16, num_attention_heads=4, ffn_hidden_size=24, normalization="RMSNorm",
                  layernorm_epsilon=1e-6, add_bias_linear=False, position_embedding_type="t5_relative",
                  softmax_scale=1.0, activation="relu", hidden_dropout=0.0, attention_dropout=0.0,
                  relative_attention_num_buckets=8, relative_attention_max_distance=16, init_seed=5,
                  make_vocab_size_divisible_by=1)
    values.update(overrides)
    return TransformerConfig(**values)


def test_pipeline_stages_equal_the_whole_model(single_rank):
    """Encoder stages and decoder stages chained by set_input_tensor give the full model's loss."""
    config = _small_config(share_embeddings_and_output_weights=True)
    enc, dec, enc_mask, dec_mask, labels = _inputs()
    full = T5Model(config, VOCAB, decoder_num_layers=3)
    stages = [T5Model(config, VOCAB, 3, pre_process=True, post_process=False, add_decoder=False,
                      encoder_num_layers_in_stage=1),
              T5Model(config, VOCAB, 3, pre_process=False, post_process=False, add_decoder=False,
                      encoder_layer_offset=1),
              T5Model(config, VOCAB, 3, pre_process=True, post_process=False, add_encoder=False,
                      decoder_num_layers_in_stage=2),
              T5Model(config, VOCAB, 3, pre_process=False, post_process=True, add_encoder=False,
                      decoder_layer_offset=2)]
    # Per-component seeds: every stage holds exactly the serial weights (no copying).
    full_state = full.state_dict()
    for stage in stages:
        for name, value in stage.state_dict().items():
            stack = "encoder" if "encoder" in name else "decoder"
            offset = stage.encoder.layer_offset if stack == "encoder" and stage.encoder is not None else \
                stage.decoder.layer_offset if stage.decoder is not None else 0
            if ".layers." in name:
                head, rest = name.split(".layers.")
                index, tail = rest.split(".", 1)
                name = f"{head}.layers.{int(index) + offset}.{tail}"
            assert torch.equal(value, full_state[name]), name
    assert not getattr(stages[0].embedding.word_embeddings.weight, "shared", False)
    assert stages[2].embedding.word_embeddings.weight.shared and stages[3].embedding.word_embeddings.weight.shared
    assert stages[1].encoder_relative_bias.weight.shared and stages[3].decoder_relative_bias.weight.shared

    expected = full(enc, dec, enc_mask, dec_mask, labels=labels)
    h = stages[0](enc, None, enc_mask)
    stages[1].set_input_tensor(h)
    encoder_output = stages[1](enc, None, enc_mask)
    stages[2].set_input_tensor([None, encoder_output])
    h, passed = stages[2](enc, dec, enc_mask, dec_mask)
    assert passed is encoder_output
    stages[3].set_input_tensor([h, encoder_output])
    loss = stages[3](enc, dec, enc_mask, dec_mask, labels=labels)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("tied,activation", [(True, "relu"), (False, "geglu_tanh")])
def test_parameter_count_and_flops(single_rank, tied, activation):
    from torch.utils.flop_counter import FlopCounterMode
    config = _small_config(share_embeddings_and_output_weights=tied, activation=activation,
                           attention_backend="explicit", kv_channels=6)
    model = T5Model(config, VOCAB, decoder_num_layers=3)
    assert model.parameter_count() == sum(p.numel() for p in model.parameters())
    enc, dec, enc_mask, dec_mask, labels = _inputs()
    counter = FlopCounterMode(display=False)
    with counter:
        model(enc, dec, enc_mask, dec_mask, labels=labels).sum().backward()
    # The counter sees every matmul of forward and backward (attention scores included).
    assert counter.get_total_flops() == B * model.training_flops_per_sample(S_ENC, S_DEC)
    assert model.training_flops_per_token(S_ENC, S_DEC) == model.training_flops_per_sample(S_ENC, S_DEC) // (
        S_ENC + S_DEC)


def test_bad_configurations_get_one_sentence(single_rank):
    with pytest.raises(ConfigError, match="position_embedding_type"):
        T5Model(_small_config(position_embedding_type="rope"), VOCAB)
    with pytest.raises(ValueError, match="add_decoder"):
        T5Model(_small_config(), VOCAB, add_decoder=False, post_process=True)
    model = T5Model(_small_config(), VOCAB)
    enc, dec, enc_mask, dec_mask, _ = _inputs()
    with pytest.raises(ValueError, match="encoder_attention_mask"):
        model(enc, dec, enc_mask[:, None, None, None, :], dec_mask)
    with pytest.raises(ValueError, match="feed_forward_proj"):
        hf_t5.from_hf_config(type("C", (), {"feed_forward_proj": "gated-mish"})())


# --- TP=2 equals TP=1 (one spawn of 2 ranks) ---------------------------------------------------------------------
TP_CASES = {
    "v1_0_tied_relu": dict(share_embeddings_and_output_weights=True, activation="relu"),
    "v1_1_untied_gated_gqa": dict(share_embeddings_and_output_weights=False, activation="geglu_tanh",
                                  num_query_groups=2),
    "megatron_learned_absolute_layernorm_bias": dict(position_embedding_type="learned_absolute",
                                                     normalization="LayerNorm", add_bias_linear=True,
                                                     softmax_scale=None, activation="gelu"),
    "sequence_parallel_gated": dict(share_embeddings_and_output_weights=False, activation="geglu_tanh",
                                    sequence_parallel=True),
    "dropout_tp_invariant": dict(hidden_dropout=0.1, attention_dropout=0.1, tp_invariant_dropout=True),
}


def _run_case(overrides, tp):
    config = _small_config(**{**overrides, "tensor_model_parallel_size": tp})
    model = T5Model(config, VOCAB, decoder_num_layers=3, max_sequence_length=16)
    # Non-trivial norm weights and biases so their gradient paths matter.
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layernorm" in name or name.endswith("bias"):
                full = torch.randn(p.shape[0] * (tp if getattr(p, "tensor_model_parallel", False) else 1),
                                   generator=g) * 0.1 + (1.0 if "layernorm.weight" in name else 0.0)
                p.copy_(mpu.shard_tensor(full, 0, mpu.get_tensor_model_parallel_rank(), tp)
                        if getattr(p, "tensor_model_parallel", False) else full)
    enc, dec, enc_mask, dec_mask, labels = _inputs(s_enc=12, s_dec=8)  # even: sequence parallelism splits them
    torch.manual_seed(21)  # the same dropout masks in the TP=1 and TP=2 runs
    mpu.model_parallel_manual_seed(21)
    loss = model(enc, dec, enc_mask, dec_mask, labels=labels)
    loss.sum().backward()
    if config.sequence_parallel_active:
        mpu.allreduce_sequence_parallel_gradients(model.parameters())
    return loss.detach(), gathered_grads(model, tp)


def _check_tp2():
    results = {}
    mpu.initialize_model_parallel(1)
    for name, overrides in TP_CASES.items():
        results[name] = _run_case(overrides, 1)
    mpu.destroy_model_parallel()
    mpu.initialize_model_parallel(2)
    for name, overrides in TP_CASES.items():
        loss, grads = _run_case(overrides, 2)
        ref_loss, ref_grads = results[name]
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name} loss: {m}")
        assert set(grads) == set(ref_grads)
        for key in grads:
            torch.testing.assert_close(grads[key], ref_grads[key], rtol=1e-4, atol=1e-5,
                                       msg=lambda m: f"{name} grad {key}: {m}")


def test_tp2_equals_tp1():
    run_distributed(_check_tp2, 2)
