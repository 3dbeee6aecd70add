"""Building a model without its weights (transformer/meta_build.py, mpu/parameter_device.py):
a meta build has every tensor on the meta device and the same keys, shapes and sharding map
as a real one; materialize() gives exactly the values a whole build gives the asked-for
tensors while every other component stays on meta; a normal build is unchanged by all this
(same weights, same caller's generator state after it); and --from-hf of an HF BertModel
(no MLM head) initializes our MLM head with the values of a whole TP=1 build."""
import os

import pytest
import torch

from megatron_core.models.bert import BertModel
from megatron_core.mpu.layout import PipelineStage
from megatron_core.mpu.parameter_device import parameters_on
from tests.harness.inference_checkpoints import build_tiny_model, tiny_config
from megatron_core.checkpoint.weights_checkpoint import serial_world
from megatron_core.transformer.config import TransformerConfig
from megatron_core.transformer.meta_build import materialize, meta_state_dict

pytestmark = pytest.mark.quick

VOCAB = 256


def _build(family):
    if family == "bert":
        config = TransformerConfig(num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=48)
        return BertModel(config, VOCAB, 64)
    return build_tiny_model(family, tiny_config(family), VOCAB, PipelineStage())


FAMILIES = ["gpt", "llama", "t5", "transformer_xl", "bert"]


@pytest.fixture
def world():
    with serial_world():
        yield


@pytest.mark.parametrize("family", FAMILIES)
def test_a_meta_build_has_no_data_and_the_keys_shapes_and_sharding_map_of_a_real_one(world, family):
    meta = meta_state_dict(lambda: _build(family))
    real = _build(family)
    assert all(t.is_meta for t in meta.values())
    assert {k: (t.shape, t.dtype) for k, t in meta.items()} == \
        {k: (t.shape, t.dtype) for k, t in real.state_dict().items()}
    with parameters_on(torch.device("meta")):
        meta_model = _build(family)
    assert meta_model.sharding_map(vocab_size=200) == real.sharding_map(vocab_size=200)


@pytest.mark.parametrize("family", FAMILIES)
def test_materialized_tensors_equal_a_whole_build_and_the_other_components_stay_meta(world, family):
    torch.manual_seed(3)
    whole = _build(family).state_dict()
    wanted = [k for k in whole if k.startswith("lm_head.") or ".layers.1." in k or k.startswith("layers.1.")]
    assert wanted
    built = []
    got = materialize(lambda: built.append(_build(family)) or built[-1], wanted)
    assert set(got) == set(wanted)
    for key in wanted:
        assert torch.equal(got[key], whole[key]), key
    selective = built[-1].state_dict()
    assert all(t.is_meta for k, t in selective.items() if ".layers.0." in k or k.startswith("layers.0."))
    assert any(t.is_meta for k, t in selective.items() if "word_embeddings" in k)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_normal_build_is_unchanged_by_meta_builds_and_leaves_the_callers_generator(world, family):
    torch.manual_seed(11)
    before = _build(family).state_dict()
    rng_before = torch.get_rng_state()
    meta_state_dict(lambda: _build(family))
    materialize(lambda: _build(family), list(before)[:3])
    torch.manual_seed(11)
    after = _build(family).state_dict()
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert list(before) == list(after) and all(torch.equal(before[k], after[k]) for k in before)


def test_from_hf_of_a_bert_model_initializes_our_mlm_head_as_a_whole_tp1_build(tmp_path):
    transformers = pytest.importorskip("transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from megatron_core.convert.hf_import import read_hf_config
    from megatron_core.models.hf.registry import mapping_for_hf_config
    from megatron_core.mpu.layout import pad_vocab_size
    from tests.harness.tool_main import run_tool_main

    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=48)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(tmp_path / "hf")
    run_tool_main("convert_checkpoint.py", "--from-hf", tmp_path / "hf", "--output", tmp_path / "ours",
                  "--tensor-model-parallel-size", 2)
    shards = [torch.load(tmp_path / "ours" / "release" / f"mp_rank_0{r}" / "model_optim_rng.pt",
                         weights_only=True)["model"] for r in range(2)]
    # the reference: our whole model built the ordinary way at TP=1
    config_json = read_hf_config(str(tmp_path / "hf"))
    mapping = mapping_for_hf_config(config_json)
    spec = mapping.config_from_hf(config_json, padded_vocab_size=pad_vocab_size(100, 128, 2),
                                  make_vocab_size_divisible_by=128)
    with serial_world():
        whole = mapping.build_model(spec).state_dict()
    head = [k for k in whole if k.startswith("lm_head.")]
    assert head and all(k in shards[0] for k in head)
    for key in head:
        merged = torch.cat([s[key] for s in shards]) if key == "lm_head.bias" else shards[0][key]
        assert torch.equal(merged, whole[key]), key
