"""The HF registry converts every family both ways through files, as a converter will.

For each family a small HF model with random weights is saved with save_pretrained; its
config.json and model.safetensors go through the registry (mapping_for_hf_config,
config_from_hf, state_dict_from_hf) into a model of ours whose logits equal HF's. Our
weights (moved again, padding rows included) then go back out (config_to_hf,
state_dict_to_hf, safetensors save_file) and HF's from_pretrained loads the directory with
no missing or unexpected keys and computes our logits. No downloads.
"""
import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built locally; never reach the hub
transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402

from megatron_core.errors import ConversionError  # noqa: E402
from megatron_core.models.hf.qkv_layout import (deinterleave_kv, deinterleave_qkv, interleave_kv,  # noqa: E402
                                                interleave_qkv, qkv_from_blocks, qkv_to_blocks)
from megatron_core.models.hf.registry import (get_mapping, mapping_for_hf_config,  # noqa: E402
                                              registered_families)
from tests.harness.hf_models import CASES, VOCAB, hf_batch, saved_hf_model  # noqa: E402
from tests.harness.model_checks import single_process_world
from tests.harness.weights import randomize_trainable  # noqa: E402

pytestmark = pytest.mark.quick

TOL = dict(rtol=1e-4, atol=1e-4)
PADDED = 72


@pytest.fixture(scope="module", autouse=True)
def single_process_group():
    """Our layers need (trivial) model-parallel groups: one gloo process, TP=1."""
    with single_process_world():
        yield


def _read_dir(directory):
    with open(os.path.join(directory, "config.json")) as f:
        config_json = json.load(f)
    return config_json, load_file(os.path.join(directory, "model.safetensors"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_family_converts_both_ways_through_files(case, tmp_path):
    family, model_cls, _, logits_of, _ = CASES[case]
    hf = saved_hf_model(case, tmp_path / "hf")
    config_json, hf_sd = _read_dir(tmp_path / "hf")
    x = hf_batch()

    # HF -> ours: the registry picks the family from config.json alone.
    mapping = mapping_for_hf_config(config_json)
    assert mapping.name == family and mapping is get_mapping(family)
    spec = mapping.config_from_hf(config_json, padded_vocab_size=PADDED)
    assert (spec.vocab_size, spec.padded_vocab_size, spec.architecture) == (VOCAB, PADDED, model_cls.__name__)
    ours = mapping.build_model(spec).eval()
    assert isinstance(ours, mapping.model_class)
    ours.load_state_dict(mapping.state_dict_from_hf(hf_sd, spec), strict=True)
    with torch.no_grad():
        expected = logits_of(hf, None, x)
        got = logits_of(None, ours, x)
        torch.testing.assert_close(got[..., :VOCAB] if got.dim() > 1 else got, expected, **TOL)
        if got.dim() > 1:  # the padding rows are zero: their logits are exactly 0
            assert got.shape[-1] == PADDED and (got[..., VOCAB:] == 0).all()

    # ours (weights moved again, padding rows included) -> HF files -> from_pretrained
    randomize_trainable(ours, seed=2)
    out_dir = tmp_path / "ours"
    out_dir.mkdir()
    with open(out_dir / "config.json", "w") as f:
        json.dump(mapping.config_to_hf(spec), f)
    exported = mapping.state_dict_to_hf(ours.state_dict(), spec)
    assert all(t.shape[0] == VOCAB for name, t in exported.items()
               if name.endswith(("word_embeddings.weight", "wte.weight", "embed_tokens.weight", "shared.weight",
                                 "lm_head.weight", "predictions.bias")))
    save_file(exported, str(out_dir / "model.safetensors"))
    reloaded, info = model_cls.from_pretrained(str(out_dir), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    reloaded.eval()
    with torch.no_grad():
        got = logits_of(None, ours, x)
        torch.testing.assert_close(logits_of(reloaded, None, x), got[..., :VOCAB] if got.dim() > 1 else got, **TOL)

    # and back in: the same config and the same weights, padding rows zero again
    again = mapping.config_from_hf(mapping.config_to_hf(spec), padded_vocab_size=PADDED)
    assert again.config == spec.config and dict(again.model_kwargs) == dict(spec.model_kwargs)
    back = mapping.state_dict_from_hf(exported, again)
    for name, tensor in ours.state_dict().items():
        if name in back and tensor.shape[0] == PADDED:
            assert torch.equal(back[name][:VOCAB], tensor[:VOCAB]) and not back[name][VOCAB:].any(), name
        elif name in back:
            assert torch.equal(back[name], tensor), name


def test_mapping_for_hf_config_picks_each_family_from_a_real_config():
    real = {"gpt": transformers.GPT2Config(), "llama": transformers.LlamaConfig(),
            "bert": transformers.BertConfig(), "megatron_bert": transformers.MegatronBertConfig(),
            "roformer": transformers.RoFormerConfig(), "t5": transformers.T5Config(),
            "bert_classification": transformers.BertConfig(architectures=["BertForSequenceClassification"]),
            "megatron_bert_classification": transformers.MegatronBertConfig(architectures=["MegatronBertForMultipleChoice"])}
    assert sorted(real) == sorted(registered_families())
    for family, hf_config in real.items():
        assert mapping_for_hf_config(hf_config.to_dict()).name == family
        assert mapping_for_hf_config(hf_config).name == family
    # without model_type, the class names decide
    assert mapping_for_hf_config({"architectures": ["MegatronBertForPreTraining"]}).name == "megatron_bert"
    assert mapping_for_hf_config({"architectures": ["T5ForConditionalGeneration"]}).name == "t5"
    assert mapping_for_hf_config({"architectures": ["BertForSequenceClassification"]}).name == "bert_classification"


def test_unknown_model_type_is_one_sentence():
    with pytest.raises(ConversionError) as caught:
        mapping_for_hf_config({"model_type": "xlnet", "architectures": ["XLNetLMHeadModel"]})
    message = str(caught.value)
    assert "'xlnet'" in message and "\n" not in message and message.count(". ") == 0 and message.endswith(".")
    for model_type in ("gpt2", "llama", "bert", "megatron-bert", "roformer", "t5"):
        assert model_type in message
    with pytest.raises(ConversionError, match=r"no HF mapping for model family 'xlnet'; the families with one are"):
        get_mapping("xlnet")
    with pytest.raises(ConversionError, match=r"have no mapping here; this family converts BertForPreTraining"):
        get_mapping("bert").config_from_hf(dict(transformers.BertConfig().to_dict(),
                                                architectures=["BertForSequenceClassification"]))


def test_vocab_padding_is_explicit():
    mapping = get_mapping("gpt")
    hf_config = CASES["gpt"][2].to_dict()
    assert mapping.config_from_hf(hf_config).padded_vocab_size == VOCAB  # no padding unless asked
    spec = mapping.config_from_hf(hf_config, padded_vocab_size=PADDED, tensor_model_parallel_size=2)
    assert spec.padded_vocab_size == PADDED  # the TP size changes nothing
    with pytest.raises(ConversionError, match="padded_vocab_size 60 is smaller than vocab_size 61"):
        mapping.config_from_hf(hf_config, padded_vocab_size=60)
    with pytest.raises(ConversionError, match="has 64 rows but padded_vocab_size is 72"):
        mapping.state_dict_to_hf({"embedding.word_embeddings.weight": torch.zeros(64, 32)}, spec)
    with pytest.raises(ConversionError, match=r"needs model_kwargs\['max_sequence_length'\]"):
        mapping.config_to_hf(mapping.spec(spec.config, VOCAB))


# --- fused QKV layouts, against index bookkeeping written out by hand ----------------------------------
def _labelled(kind, count, d, width=2):
    """Rows labelled (kind, head, channel): value kind*1000 + head*10 + channel in every column."""
    rows = torch.tensor([kind * 1000 + h * 10 + c for h in range(count) for c in range(d)], dtype=torch.float32)
    return rows[:, None].repeat(1, width)


@pytest.mark.parametrize("heads,groups", [(4, 4), (4, 2), (4, 1), (6, 3)])
def test_qkv_layouts_follow_the_documented_row_order(heads, groups):
    d = 3
    q, k, v = _labelled(1, heads, d), _labelled(2, groups, d), _labelled(3, groups, d)
    expected = []
    for g in range(groups):  # [q heads of group g | k_g | v_g] per group
        for h in range(g * heads // groups, (g + 1) * heads // groups):
            expected += [1000 + h * 10 + c for c in range(d)]
        expected += [2000 + g * 10 + c for c in range(d)]
        expected += [3000 + g * 10 + c for c in range(d)]
    fused = interleave_qkv(q, k, v, heads, groups)
    assert fused[:, 0].tolist() == expected and torch.equal(fused[:, 1], fused[:, 0])
    assert all(torch.equal(a, b) for a, b in zip(deinterleave_qkv(fused, heads, groups), (q, k, v)))
    blocks = torch.cat([q, k, v])
    assert torch.equal(qkv_from_blocks(blocks, heads, groups), fused)
    assert torch.equal(qkv_to_blocks(fused, heads, groups), blocks)
    # biases (1-D) follow the same rows
    assert torch.equal(interleave_qkv(q[:, 0], k[:, 0], v[:, 0], heads, groups), fused[:, 0])
    kv = interleave_kv(k, v, groups)
    assert kv[:, 0].tolist() == [base + g * 10 + c for g in range(groups) for base in (2000, 3000) for c in range(d)]
    assert all(torch.equal(a, b) for a, b in zip(deinterleave_kv(kv, groups), (k, v)))
    # outputs own their storage (safetensors refuses tensors that share it)
    parts = deinterleave_qkv(fused, heads, groups)
    assert len({t.untyped_storage().data_ptr() for t in parts + (fused,)}) == 4


def test_qkv_shape_mistakes_are_one_sentence():
    with pytest.raises(ConversionError, match="not a multiple of num_query_groups 3"):
        interleave_qkv(torch.zeros(8, 2), torch.zeros(4, 2), torch.zeros(4, 2), 4, 3)
    with pytest.raises(ConversionError, match="expected 2 groups x head size 2"):
        interleave_qkv(torch.zeros(8, 2), torch.zeros(6, 2), torch.zeros(6, 2), 4, 2)
    with pytest.raises(ConversionError, match="not a multiple of 8 heads"):
        deinterleave_qkv(torch.zeros(20, 2), 4, 2)
