"""tools/convert_checkpoint.py streams both ways (issue 12 points 4-5), measured in a child
process as the peak RSS its work adds above what its imports left resident
(tests.harness.peak_rss; a tiny conversion of the same kind runs first, so the
imports main() does inside are paid before the mark is reset):

  --from-hf of a ~170 MB Llama saved by transformers in five safetensors shards, into TP=2:
    at most one output file (half the model at TP=2) + the largest conversion window (the HF
    tensors of one window and ours made from them) + an allowance -- never the model built at
    TP=1 plus every TP shard of it, which is what the converter held before;
  --to-hf of that TP=2 checkpoint with --max-shard-size 30MB: at most one HF output shard + the
    largest window + the allowance.
"""
import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built locally; never reach the hub
transformers = pytest.importorskip("transformers")

from megatron_core.convert.safetensors_files import INDEX_FILE  # noqa: E402
from tests.harness.peak_rss import PEAK_RSS_RESETTABLE, tool_peak_rss_growth  # noqa: E402

pytestmark = pytest.mark.skipif(not PEAK_RSS_RESETTABLE, reason="resets the peak RSS mark the Linux way")

TOOL = os.path.join("tools", "convert_checkpoint.py")
MB = 2 ** 20
# Python objects, file indexes and headers, writer buffers, and the allocator's slack (glibc keeps
# freed window tensors in its heap, so a later window can raise the mark by ~25 MiB here)
ALLOWANCE = 48 * MB
HF_SHARD, OUT_SHARD = "40MB", 30 * 10 ** 6


def _llama(hidden, layers, intermediate, vocab):
    return transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                                    num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=4,
                                    max_position_embeddings=64, tie_word_embeddings=False,
                                    bos_token_id=None, eos_token_id=None, pad_token_id=None)


def _save(config, directory, max_shard_size):
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(directory, max_shard_size=max_shard_size)
    return {key: value.numel() * value.element_size() for key, value in model.state_dict().items()}


def _window_bytes(sizes):
    """The HF bytes of the largest window the import converts at once: one layer, or everything
    outside the layers (embedding, final norm, output layer)."""
    windows = {}
    for key, size in sizes.items():
        parts = key.split(".")
        window = parts[2] if parts[1] == "layers" else "rest"
        windows[window] = windows.get(window, 0) + size
    return max(windows.values())


@pytest.fixture(scope="module")
def conversions(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_memory")
    sizes = _save(_llama(512, 12, 1536, 4000), root / "hf", HF_SHARD)
    _save(_llama(32, 2, 48, 64), root / "tiny_hf", HF_SHARD)
    from_hf = tool_peak_rss_growth(
        TOOL, ["--from-hf", root / "hf", "--output", root / "ours", "--tensor-model-parallel-size", 2],
        warmup=["--from-hf", root / "tiny_hf", "--output", root / "tiny_ours", "--tensor-model-parallel-size", 2])
    to_hf = tool_peak_rss_growth(
        TOOL, ["--to-hf", "--load", root / "ours", "--output", root / "back", "--max-shard-size", OUT_SHARD],
        warmup=["--to-hf", "--load", root / "tiny_ours", "--output", root / "tiny_back"])
    return root, sizes, from_hf, to_hf


def test_from_hf_holds_one_output_file_and_one_window_not_the_model(conversions):
    root, sizes, growth, _ = conversions
    model = sum(sizes.values())
    with open(root / "hf" / INDEX_FILE) as f:
        assert len(set(json.load(f)["weight_map"].values())) >= 4          # really read from several shards
    one_file = max(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(root / "ours")
                   for n in names if n.endswith(".pt"))
    assert abs(one_file - model / 2) < 0.1 * model           # TP=2: each file holds about half the model
    bound = one_file + 2 * _window_bytes(sizes) + ALLOWANCE
    assert bound < 1.2 * model        # a converter that built the model and all its shards (2x) would show
    assert growth <= bound, (f"--from-hf raised the peak RSS {growth / MB:.0f} MiB above its imports; bound "
                             f"{bound / MB:.0f} MiB, model {model / MB:.0f} MiB")


def test_to_hf_with_max_shard_size_holds_one_hf_shard_and_one_window(conversions):
    root, sizes, _, growth = conversions
    model = sum(sizes.values())
    with open(root / "back" / INDEX_FILE) as f:
        index = json.load(f)
    assert set(index["weight_map"]) == set(sizes) and len(set(index["weight_map"].values())) >= 5
    bound = OUT_SHARD + 2 * _window_bytes(sizes) + ALLOWANCE
    assert bound < 0.75 * model      # an export that held the model would show
    assert growth <= bound, (f"--to-hf raised the peak RSS {growth / MB:.0f} MiB above its imports; bound "
                             f"{bound / MB:.0f} MiB, model {model / MB:.0f} MiB")
