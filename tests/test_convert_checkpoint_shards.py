"""HuggingFace's sharded safetensors both ways, streamed: --from-hf reads a sharded
save_pretrained directory lazily and converts it one HF layer at a time (equal to the
whole-state-dict conversion, every family; one of our layer keys reads one HF layer),
--to-hf --max-shard-size writes model-0000X-of-0000N.safetensors plus
model.safetensors.index.json, which transformers' from_pretrained follows to the original
model's logits; a later export into the same directory leaves no stale shard behind."""
import json
import os
import re
from collections.abc import Mapping

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built locally; never reach the hub
transformers = pytest.importorskip("transformers")

from megatron_core.errors import ConfigError  # noqa: E402
from megatron_core.convert.safetensors_files import (INDEX_FILE, SafetensorsWeights, parse_shard_size,  # noqa: E402
                                                       write_safetensors_shards)
from megatron_core.models.hf.registry import mapping_for_hf_config  # noqa: E402
from megatron_core.convert.hf_streamed_import import StreamedImport  # noqa: E402
from megatron_core.mpu.layout import pad_vocab_size  # noqa: E402
from tests.harness.hf_models import CASES, hf_batch, logits_of, saved_hf_model  # noqa: E402
from tests.harness.tool_main import run_tool_main  # noqa: E402

pytestmark = pytest.mark.quick

TOL = dict(rtol=1e-4, atol=1e-4)


def convert(*flags):
    """tools/convert_checkpoint.py's main in this process."""
    run_tool_main("convert_checkpoint.py", *flags)


def test_shard_sizes_read_like_save_pretrained_and_a_bad_one_is_one_sentence():
    assert parse_shard_size("5GB") == 5 * 10 ** 9 and parse_shard_size("20KB") == 20000
    assert parse_shard_size("1.5MB") == 1500000 and parse_shard_size(123) == 123 and parse_shard_size("77") == 77
    with pytest.raises(ConfigError, match="--max-shard-size"):
        parse_shard_size("5 parsecs")


def test_shards_fill_in_order_and_an_oversized_tensor_sits_alone(tmp_path):
    sizes = {"a": 4, "b": 4, "c": 3, "big": 20, "d": 1, "e": 9}      # bytes: int8 tensors
    tensors = {key: torch.full((n,), i, dtype=torch.int8) for i, (key, n) in enumerate(sizes.items())}
    files = write_safetensors_shards(str(tmp_path), iter(tensors.items()), 10)
    assert files == [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)] + [INDEX_FILE]
    with open(tmp_path / INDEX_FILE) as f:
        index = json.load(f)
    groups = [["a", "b"], ["c"], ["big"], ["d", "e"]]
    assert index == {"metadata": {"total_size": 41},
                     "weight_map": {key: files[i] for i, keys in enumerate(groups) for key in keys}}
    back = SafetensorsWeights(str(tmp_path))
    assert all(torch.equal(back[key], value) for key, value in tensors.items())
    assert write_safetensors_shards(str(tmp_path), iter(tensors.items()), 100) == ["model.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]      # the old shards and index are gone


def test_sharded_hf_in_and_sharded_hf_out_keep_the_logits(tmp_path):
    case = "llama_gqa"
    model_cls = CASES[case][1]
    hf = saved_hf_model(case, tmp_path / "single")
    hf.save_pretrained(tmp_path / "hf", max_shard_size="20KB")      # HF's own sharded files as the input
    assert os.path.isfile(tmp_path / "hf" / INDEX_FILE)
    lazy, state = SafetensorsWeights(str(tmp_path / "hf")), hf.state_dict()
    assert len(lazy) > 0 and all(torch.equal(lazy[key], state[key]) for key in lazy)
    x = hf_batch()
    with torch.no_grad():
        expected = logits_of(case, hf, None, x)

    convert("--from-hf", tmp_path / "hf", "--output", tmp_path / "ours", "--tensor-model-parallel-size", 2)
    convert("--to-hf", "--load", tmp_path / "ours", "--output", tmp_path / "back", "--max-shard-size", "20KB")
    with open(tmp_path / "back" / INDEX_FILE) as f:
        index = json.load(f)
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and files == sorted(n for n in os.listdir(tmp_path / "back") if n.startswith("model-"))
    assert all(name.endswith(f"-of-{len(files):05d}.safetensors") for name in files)
    assert not os.path.exists(tmp_path / "back" / "model.safetensors")
    reloaded, info = model_cls.from_pretrained(str(tmp_path / "back"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    with torch.no_grad():
        torch.testing.assert_close(logits_of(case, reloaded.eval(), None, x), expected, **TOL)
    written = SafetensorsWeights(str(tmp_path / "back"))
    assert set(written) == set(index["weight_map"])
    assert index["metadata"]["total_size"] == sum(written[k].numel() * written[k].element_size() for k in written)

    convert("--to-hf", "--load", tmp_path / "ours", "--output", tmp_path / "back")    # default 5GB: one file
    assert sorted(n for n in os.listdir(tmp_path / "back") if "safetensors" in n) == ["model.safetensors"]
    with torch.no_grad():
        torch.testing.assert_close(logits_of(case, model_cls.from_pretrained(str(tmp_path / "back")).eval(), None, x),
                                   expected, **TOL)


class _CountingWeights(Mapping):
    """The HF weights, noting every key read."""

    def __init__(self, weights, read):
        self.weights, self.read = weights, read

    def __getitem__(self, key):
        self.read.append(key)
        return self.weights[key]

    def shape_and_dtype(self, key):
        return self.weights.shape_and_dtype(key)

    def __iter__(self):
        return iter(self.weights)

    def __len__(self):
        return len(self.weights)


@pytest.mark.parametrize("case", sorted(CASES))
def test_streamed_import_equals_the_whole_conversion_and_a_layer_key_reads_one_layer(case, tmp_path):
    saved_hf_model(case, tmp_path)
    with open(tmp_path / "config.json") as f:
        config_json = json.load(f)
    mapping = mapping_for_hf_config(config_json)
    spec = mapping.config_from_hf(config_json, padded_vocab_size=pad_vocab_size(config_json["vocab_size"], 128, 1),
                                  make_vocab_size_divisible_by=128)
    weights = SafetensorsWeights(str(tmp_path))
    whole = mapping.state_dict_from_hf(dict(weights.items()), spec)
    read = []
    streamed = StreamedImport(mapping, spec, _CountingWeights(weights, read))
    assert read == [] and set(streamed) == set(whole)      # planned from the file headers alone
    layer_key = next(k for k in whole if ".layers.1." in k)
    streamed[layer_key]
    assert read and all(re.search(r"\.(h|layers|layer|block)\.1\.", k) for k in read), read
    for key, value in whole.items():
        assert torch.equal(streamed[key], value), key
