"""BERT, MegatronBERT and RoFormer equal their HuggingFace models, weights mapped both ways.

Each HF model is built from a small config with random weights (every parameter moved off
its init so biases and norms matter), loaded into ours through from_hf_state_dict, and
compared in fp32 (eval, no dropout): final hidden states, MLM logits and NSP logits.
Ours -> HF -> ours is the identity, and HF loads our export with strict=True. The same
module checks parameter_count(), the RoFormer LM/MLM mask, and pipeline stages.
"""
import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from megatron_core.models.bert import BertModel, bert_pretraining_loss, masked_mean  # noqa: E402
from megatron_core.models.hf import bert as hf_bert  # noqa: E402
from megatron_core.models.hf import megatron_bert as hf_megatron_bert  # noqa: E402
from megatron_core.models.hf import roformer as hf_roformer  # noqa: E402
from megatron_core.models.hf.bert import ConversionError  # noqa: E402
from megatron_core.models.hf.qkv_layout import deinterleave_qkv, interleave_qkv  # noqa: E402
from megatron_core.models.roformer import (RoFormerModel, unified_attention_mask,  # noqa: E402
                                           unified_lm_targets)
from megatron_core.mpu.layout import PipelineStage  # noqa: E402
from megatron_core.transformer import ConfigError  # noqa: E402
from tests.harness.model_checks import single_process_world  # noqa: E402
from tests.harness.weights import randomize_trainable  # noqa: E402

pytestmark = pytest.mark.quick

TOL = dict(rtol=1e-4, atol=1e-4)
VOCAB, MAX_POS, B, S = 97, 24, 3, 11
SMALL = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, type_vocab_size=2,
             attn_implementation="eager")


@pytest.fixture(scope="module", autouse=True)
def single_process_group():
    """Our layers need (trivial) model-parallel groups: one gloo process, TP=1."""
    with single_process_world():
        yield


def _inputs(seed=3):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (B, S), generator=gen)
    types = torch.zeros(B, S, dtype=torch.long)
    types[:, 6:] = 1
    padding = torch.ones(B, S, dtype=torch.long)
    padding[1, 8:] = 0
    padding[2, 5:] = 0
    return ids, types, padding


def _ours_hidden(model, ids, padding, types):
    return model.encode(ids, padding, types).transpose(0, 1)


FAMILIES = {
    # name: (HF config class, HF pretraining class, our converter module, our layernorm position)
    "bert": (transformers.BertConfig, transformers.BertForPreTraining, hf_bert),
    "megatron_bert": (transformers.MegatronBertConfig, transformers.MegatronBertForPreTraining, hf_megatron_bert),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_bert_matches_hf_pretraining(family):
    config_cls, model_cls, conv = FAMILIES[family]
    torch.manual_seed(0)
    hf = randomize_trainable(model_cls(config_cls(**SMALL, max_position_embeddings=MAX_POS)), seed=1)
    config = conv.from_hf_config(hf.config)
    assert config.layernorm_position == ("post" if family == "bert" else "pre")
    ours = BertModel(config, VOCAB, MAX_POS).eval()
    ours.load_state_dict(conv.from_hf_state_dict(hf.state_dict(), config), strict=True)

    ids, types, padding = _inputs()
    with torch.no_grad():
        ref = hf(input_ids=ids, token_type_ids=types, attention_mask=padding, output_hidden_states=True)
        logits, nsp = ours(ids, padding, types)
        hidden = _ours_hidden(ours, ids, padding, types)
        per_token, _ = ours(ids, padding, types, lm_labels=ids)
    torch.testing.assert_close(hidden, ref.hidden_states[-1], **TOL)
    torch.testing.assert_close(logits, ref.prediction_logits, **TOL)
    torch.testing.assert_close(nsp, ref.seq_relationship_logits, **TOL)
    # The loss is cross entropy of those logits, counted only where the loss mask says.
    expected = F.cross_entropy(ref.prediction_logits.transpose(1, 2), ids, reduction="none")
    torch.testing.assert_close(per_token, expected, **TOL)
    order = torch.tensor([0, 1, 1])
    torch.testing.assert_close(bert_pretraining_loss(per_token, nsp, padding, order),
                               (expected * padding).sum() / padding.sum()
                               + F.cross_entropy(ref.seq_relationship_logits, order), **TOL)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_bert_round_trip_and_hf_export(family):
    config_cls, model_cls, conv = FAMILIES[family]
    hf_config = config_cls(**SMALL, max_position_embeddings=MAX_POS)
    config = conv.from_hf_config(hf_config, init_seed=11)
    ours = randomize_trainable(BertModel(config, VOCAB, MAX_POS), seed=2)
    sd = ours.state_dict()
    exported = conv.to_hf_state_dict(sd, config)
    back = conv.from_hf_state_dict(exported, config)
    assert sorted(back) == sorted(sd)
    for name in sd:
        assert torch.equal(back[name], sd[name]), name

    # HF takes the export strictly and computes what we compute.
    hf = model_cls(conv.to_hf_config(config, VOCAB, MAX_POS)).eval()
    hf.load_state_dict(exported, strict=True)
    assert hf.config.hidden_act == "gelu" and hf.config.num_hidden_layers == 2
    ids, types, padding = _inputs(seed=4)
    with torch.no_grad():
        ref = hf(input_ids=ids, token_type_ids=types, attention_mask=padding)
        logits, nsp = ours(ids, padding, types)
    torch.testing.assert_close(logits, ref.prediction_logits, **TOL)
    torch.testing.assert_close(nsp, ref.seq_relationship_logits, **TOL)

    # The bare encoder export (BertModel / MegatronBertModel) has no prefix and no cls heads.
    bare = conv.to_hf_state_dict(sd, config, architecture=f"{'Megatron' if family != 'bert' else ''}BertModel")
    assert not any(k.startswith(("bert.", "cls.")) for k in bare)
    encoder_only = conv.from_hf_state_dict(bare, config)
    assert not any(k.startswith(("lm_head", "binary_head")) for k in encoder_only) and "pooler.dense.weight" in encoder_only


def test_bert_vocab_padding_and_param_count_match_hf():
    hf = randomize_trainable(
        transformers.BertForPreTraining(transformers.BertConfig(**SMALL, max_position_embeddings=MAX_POS)), seed=5)
    config = hf_bert.from_hf_config(hf.config, make_vocab_size_divisible_by=8)
    padded = config.pad_vocab(VOCAB)
    assert padded == 104
    ours = BertModel(config, padded, MAX_POS).eval()
    ours.load_state_dict(hf_bert.from_hf_state_dict(hf.state_dict(), config, padded_vocab_size=padded))
    ids, types, padding = _inputs()
    with torch.no_grad():
        logits, _ = ours(ids, padding, types)
        ref = hf(input_ids=ids, token_type_ids=types, attention_mask=padding)
    torch.testing.assert_close(logits[..., :VOCAB], ref.prediction_logits, **TOL)
    back = hf_bert.to_hf_state_dict(ours.state_dict(), config, vocab_size=VOCAB)
    assert back["bert.embeddings.word_embeddings.weight"].shape == (VOCAB, 32)
    assert back["cls.predictions.bias"].shape == (VOCAB,)
    # Unpadded, our count is HF's count of distinct parameters (tied decoder counted once).
    unpadded = BertModel(config, VOCAB, MAX_POS)
    hf_unique = sum(p.numel() for p in {id(p): p for p in hf.parameters()}.values())
    assert unpadded.parameter_count() == sum(p.numel() for p in unpadded.parameters()) == hf_unique
    assert ours.parameter_count() == sum(p.numel() for p in ours.parameters())


def test_conversion_errors_are_one_sentence():
    hf = transformers.BertForPreTraining(transformers.BertConfig(**SMALL, max_position_embeddings=MAX_POS))
    config = hf_bert.from_hf_config(hf.config)
    with pytest.raises(ConversionError, match="layernorm_position='pre'"):
        hf_megatron_bert.from_hf_state_dict(hf.state_dict(), config)
    with pytest.raises(ConversionError, match="has 2 layers but config.num_layers is 3"):
        hf_bert.from_hf_state_dict(hf.state_dict(), config.replace(num_layers=3))
    with pytest.raises(ConversionError, match="does not know"):
        hf_bert.from_hf_state_dict({**hf.state_dict(), "bert.extra.weight": torch.zeros(1)}, config)
    with pytest.raises(ConversionError, match="not one of"):
        hf_bert.to_hf_state_dict({}, config, architecture="BertForQuestionAnswering")
    with pytest.raises(ConfigError, match="rotary_interleaved=True"):
        RoFormerModel(config.replace(position_embedding_type="rope"), VOCAB)
    with pytest.raises(ValueError, match="pass tokentype_ids"):
        ids, _, padding = _inputs()
        RoFormerModel(hf_roformer.from_hf_config(transformers.RoFormerConfig(**SMALL)), VOCAB)(ids, padding)


def test_qkv_fusion_is_per_head_interleaved():
    heads, d, h = 2, 3, 4
    q, k, v = (torch.arange(heads * d * h, dtype=torch.float32).view(heads * d, h) + 100 * i for i in range(3))
    fused = interleave_qkv(q, k, v, heads, heads)
    torch.testing.assert_close(fused[:d], q[:d])
    torch.testing.assert_close(fused[d:2 * d], k[:d])
    torch.testing.assert_close(fused[2 * d:3 * d], v[:d])
    torch.testing.assert_close(fused[3 * d:4 * d], q[d:])
    for a, b in zip(deinterleave_qkv(fused, heads, heads), (q, k, v)):
        assert torch.equal(a, b)


# --- RoFormer -------------------------------------------------------------------------------
ROFORMER = dict(SMALL, max_position_embeddings=64)


@pytest.mark.parametrize("architecture", ["RoFormerForMaskedLM", "RoFormerForCausalLM"])
def test_roformer_matches_hf(architecture):
    causal = architecture == "RoFormerForCausalLM"
    hf_cls = getattr(transformers, architecture)
    hf = randomize_trainable(hf_cls(transformers.RoFormerConfig(**ROFORMER, is_decoder=causal)), seed=6)
    config = hf_roformer.from_hf_config(hf.config)
    ours = RoFormerModel(config, VOCAB).eval()
    ours.load_state_dict(hf_roformer.from_hf_state_dict(hf.state_dict(), config), strict=True)

    ids, _, padding = _inputs(seed=7)
    # Token type 1 everywhere selects the causal LM, 0 everywhere the bidirectional MLM.
    types = torch.full_like(ids, 1 if causal else 0)
    with torch.no_grad():
        ref = hf(input_ids=ids, token_type_ids=types, attention_mask=padding, output_hidden_states=True)
        logits, binary = ours(ids, padding, types)
        hidden = _ours_hidden(ours, ids, padding, types)
    assert binary is None
    torch.testing.assert_close(hidden, ref.hidden_states[-1], **TOL)
    torch.testing.assert_close(logits, ref.logits, **TOL)
    if causal:
        # Causal: a prefix of a sequence gives the same logits as the whole sequence.
        with torch.no_grad():
            short, _ = ours(ids[:, :6], padding[:, :6], types[:, :6])
        torch.testing.assert_close(short, logits[:, :6], **TOL)
        # and the next-token loss of the LM samples is HF's shifted cross entropy.
        labels, loss_mask = unified_lm_targets(ids, types, padding)
        with torch.no_grad():
            per_token, _ = ours(ids, padding, types, lm_labels=labels)
        hf_labels = ids.masked_fill(padding == 0, -100)
        with torch.no_grad():
            hf_loss = hf(input_ids=ids, token_type_ids=types, attention_mask=padding, labels=hf_labels).loss
        torch.testing.assert_close(masked_mean(per_token, loss_mask), hf_loss, **TOL)


def test_roformer_round_trip_and_export():
    hf_config = transformers.RoFormerConfig(**ROFORMER)
    config = hf_roformer.from_hf_config(hf_config, init_seed=3)
    ours = randomize_trainable(RoFormerModel(config, VOCAB), seed=8)
    sd = ours.state_dict()
    for architecture in ("RoFormerForMaskedLM", "RoFormerForCausalLM"):
        exported = hf_roformer.to_hf_state_dict(sd, config, architecture=architecture, max_position_embeddings=64)
        back = hf_roformer.from_hf_state_dict(exported, config)
        assert sorted(back) == sorted(sd)
        assert all(torch.equal(back[name], sd[name]) for name in sd)
        hf = getattr(transformers, architecture)(hf_roformer.to_hf_config(config, VOCAB, 64, architecture=architecture))
        hf.load_state_dict(exported, strict=True)
        # The sinusoid table we recompute is HF's own.
        torch.testing.assert_close(exported["roformer.encoder.embed_positions.weight"],
                                   hf.roformer.encoder.embed_positions.create_weight(), rtol=0, atol=1e-6)
    assert ours.parameter_count() == sum(p.numel() for p in ours.parameters())


def test_roformer_token_types_select_lm_or_mlm():
    """Zhouwenwang's rule: key j hidden from query i when cumsum(types)[j] > cumsum(types)[i]."""
    types = torch.tensor([[0, 0, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    padding = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    mask = unified_attention_mask(padding, types)[:, 0]
    assert mask.shape == (3, 5, 5)
    expected_mlm = torch.zeros(5, 5, dtype=torch.bool)
    expected_mlm[:, 4] = True  # the padding key
    assert torch.equal(mask[0], expected_mlm)
    assert torch.equal(mask[1], torch.ones(5, 5, dtype=torch.bool).triu(1))
    prefix = torch.ones(5, 5, dtype=torch.bool).triu(1)
    prefix[:2, :2] = False  # the type-0 prefix sees itself both ways
    assert torch.equal(mask[2], prefix)

    ids = torch.tensor([[5, 6, 7, 8, 9]] * 3)
    mlm_labels = torch.tensor([[0, 60, 0, 0, 0]] * 3)
    mlm_mask = torch.tensor([[0, 1, 0, 0, 0]] * 3)
    labels, loss_mask = unified_lm_targets(ids, types, padding, mlm_labels, mlm_mask)
    assert loss_mask.tolist() == [[0, 1, 0, 0, 0], [1, 1, 1, 1, 0], [0, 1, 1, 1, 0]]
    assert labels[0, 1] == 60 and labels[1, :4].tolist() == [6, 7, 8, 9] and labels[2, 1:4].tolist() == [7, 8, 9]


# --- pipeline stages ------------------------------------------------------------------------------
@pytest.mark.parametrize("model_cls,layernorm_position", [(BertModel, "post"), (BertModel, "pre"),
                                                          (RoFormerModel, "pre")])
def test_stages_rebuild_the_serial_model(model_cls, layernorm_position):
    """pre_process/post_process stages hold the serial weights (tied table included) and chain to its output."""
    base = transformers.RoFormerConfig(**ROFORMER) if model_cls is RoFormerModel else \
        transformers.BertConfig(**SMALL, max_position_embeddings=MAX_POS)
    conv = hf_roformer if model_cls is RoFormerModel else hf_bert
    config = conv.from_hf_config(base, num_layers=4, layernorm_position=layernorm_position, init_seed=21,
                                 final_layernorm=None)
    serial = model_cls(config, VOCAB).eval()
    first = model_cls(config, VOCAB, stage=PipelineStage(0, 2)).eval()
    last = model_cls(config, VOCAB, stage=PipelineStage(1, 2)).eval()
    serial_sd = serial.state_dict()
    for stage, offset in ((first, 0), (last, 2)):
        for name, tensor in stage.state_dict().items():
            if name == "word_embeddings.weight":
                serial_name = "embedding.word_embeddings.weight"
            elif name.startswith("encoder.layers."):
                i, rest = name[len("encoder.layers."):].split(".", 1)
                serial_name = f"encoder.layers.{int(i) + offset}.{rest}"
            else:
                serial_name = name
            assert torch.equal(tensor, serial_sd[serial_name]), name
    assert last.word_embeddings.weight.shared and not hasattr(first, "lm_head")
    assert len(first.encoder.layers) == 2 and len(last.encoder.layers) == 2

    ids, types, padding = _inputs(seed=9)
    with torch.no_grad():
        expected, binary = serial(ids, padding, types)
        hidden = first(ids, padding, types)
        last.set_input_tensor(hidden)
        got, got_binary = last(None, padding, types)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    if binary is not None:
        torch.testing.assert_close(got_binary, binary, rtol=1e-6, atol=1e-6)


def test_flops_per_token_counts_head_and_logits():
    config = hf_bert.from_hf_config(transformers.BertConfig(**SMALL))
    model = BertModel(config, VOCAB, MAX_POS)
    h, f, s, L = 32, 64, 16, 2
    per_layer = 2 * h * 3 * h + 4 * s * h + 2 * h * h + 4 * h * f
    assert model.training_flops_per_token(s) == 3 * (L * per_layer + 2 * h * VOCAB + 2 * h * h)


# --- Zhouwenwang (Fengshenbang-LM) names -----------------------------------------------------------
def _zhouwenwang_reference(sd, ids, types, padding, heads, eps):
    """A plain-torch forward of Zhouwenwang's RoFormer, written from its description and
    reading only Zhouwenwang-named tensors: pre-LN layers, final LN, rotary on adjacent
    pairs, key j hidden from query i when cumsum(types)[j] > cumsum(types)[i]."""
    p = "bert."
    ln = lambda x, name: F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps)
    lin = lambda x, name: F.linear(x, sd[name + ".weight"], sd[name + ".bias"])
    x = sd[p + "embeddings.word_embeddings.weight"][ids] + sd[p + "embeddings.token_type_embeddings.weight"][types]
    b, s, h = x.shape
    d = h // heads
    levels = types.cumsum(1)
    hidden = (levels[:, None, :] > levels[:, :, None]) | (padding[:, None, :] == 0)  # [b, q, k]
    layers = sorted({int(k.split(".")[3]) for k in sd if k.startswith(p + "encoder.layer.")})
    for i in layers:
        pre = f"{p}encoder.layer.{i}."
        angles = torch.arange(s, dtype=torch.float32)[:, None] * sd[pre + "attention.self.rope_emb.div_term"]
        sin, cos = angles.sin().repeat_interleave(2, -1), angles.cos().repeat_interleave(2, -1)

        def rope(t):
            swapped = torch.stack([-t[..., 1::2], t[..., 0::2]], dim=-1).flatten(-2)
            return t * cos + swapped * sin

        y = ln(x, pre + "attention.ln")
        q, k, v = (lin(y, pre + f"attention.self.{n}").view(b, s, heads, d).transpose(1, 2)
                   for n in ("query", "key", "value"))
        scores = rope(q) @ rope(k).transpose(-1, -2) / d ** 0.5
        probs = scores.masked_fill(hidden[:, None], float("-inf")).softmax(-1)
        x = x + lin((probs @ v).transpose(1, 2).reshape(b, s, h), pre + "attention.output.dense")
        y = ln(x, pre + "ln")
        x = x + lin(F.gelu(lin(y, pre + "intermediate.dense")), pre + "output.dense")
    x = ln(x, p + "encoder.ln")
    t = ln(F.gelu(lin(x, "cls.predictions.transform.dense")), "cls.predictions.transform.LayerNorm")
    logits = F.linear(t, sd[p + "embeddings.word_embeddings.weight"], sd["cls.predictions.bias"])
    return x, logits, torch.tanh(lin(x[:, 0], p + "pooler.dense"))


def test_zhouwenwang_names_match_an_independent_reference():
    config = hf_roformer.from_hf_config(transformers.RoFormerConfig(**ROFORMER), layernorm_position="pre",
                                        final_layernorm=None, init_seed=4)
    ours = randomize_trainable(RoFormerModel(config, VOCAB, add_pooler=True), seed=12)
    sd = ours.state_dict()
    exported = hf_roformer.to_zhouwenwang_state_dict(sd, config)
    assert "bert.encoder.layer.1.attention.ln.weight" in exported and "bert.encoder.ln.bias" in exported
    back = hf_roformer.from_zhouwenwang_state_dict(exported, config)
    assert sorted(back) == sorted(sd) and all(torch.equal(back[n], sd[n]) for n in sd)

    ids, _, padding = _inputs(seed=13)
    types = torch.zeros_like(ids)
    types[0, 4:] = 1  # prefix LM
    types[2, :] = 1  # causal LM; sample 1 is MLM
    with torch.no_grad():
        logits, _ = ours(ids, padding, types)
        hidden = _ours_hidden(ours, ids, padding, types)
        pooled = ours.pooled_output(ours.encode(ids, padding, types))
    ref_hidden, ref_logits, ref_pooled = _zhouwenwang_reference(exported, ids, types, padding, 4, 1e-12)
    real = padding.bool()
    torch.testing.assert_close(hidden[real], ref_hidden[real], **TOL)
    torch.testing.assert_close(logits[real], ref_logits[real], **TOL)
    torch.testing.assert_close(pooled, ref_pooled, **TOL)
    with pytest.raises(ConversionError, match="layernorm_position='pre'"):
        hf_roformer.from_zhouwenwang_state_dict(exported, hf_roformer.from_hf_config(transformers.RoFormerConfig(**ROFORMER)))
