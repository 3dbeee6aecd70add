"""tools/change_mp.py streams: resharding a ~135 MB TP=2 checkpoint to TP=1 in a child
process raises its peak RSS above what the tool's imports left resident by at most its largest output tensor plus its largest source tensor plus a small
allowance, never by a whole shard or the model; the result is no bigger than its input and
each of its tensors owns a storage of exactly its own size (no shard drags a parent).

The checkpoint is made in this process from a hand-written sharding map (GPT-shaped keys:
a vocabulary-split table, fused QKV with stride 3, GLU-style stride 2, row-parallel
matrices split along dimension 1, replicated norms), so no model or process group is built.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from megatron_core.mpu.sharding_map import ShardingMap, ShardSpec
from megatron_core.testing.entry_points import ROOT, clean_env
from megatron_core.training.checkpoint.contents import FORMAT_VERSION
from megatron_core.training.checkpoint.file_io import save_file
from megatron_core.training.checkpoint.megatron_layout import model_file

HIDDEN, LAYERS, PADDED_VOCAB = 512, 10, 4096
ALLOWANCE = 24 * 2**20      # Python objects, the files' unpickled indexes, writer buffers
TOOL = os.path.join(ROOT, "tools", "change_mp.py")


def _specs():
    specs = {"embedding.word_embeddings.weight": (ShardSpec(0, 1, vocab=True), (PADDED_VOCAB, HIDDEN))}
    for i in range(LAYERS):
        layer = f"decoder.layers.{i}."
        specs.update({
            layer + "input_layernorm.weight": (ShardSpec(), (HIDDEN,)),
            layer + "self_attention.query_key_value.weight": (ShardSpec(0, 3), (3 * HIDDEN, HIDDEN)),
            layer + "self_attention.dense.weight": (ShardSpec(1), (HIDDEN, HIDDEN)),
            layer + "mlp.dense_h_to_4h.weight": (ShardSpec(0, 2), (4 * HIDDEN, HIDDEN)),
            layer + "mlp.dense_4h_to_h.weight": (ShardSpec(1), (HIDDEN, 4 * HIDDEN))})
    return specs


def _save_tp2(root):
    specs = _specs()
    smap = ShardingMap({k: spec for k, (spec, _) in specs.items()}, 2, PADDED_VOCAB, PADDED_VOCAB - 5,
                       {"decoder.layers": 0})
    for rank in range(2):
        generator = torch.Generator().manual_seed(rank)
        model = {}
        for key, (spec, shape) in specs.items():
            shape = list(shape)
            if not spec.replicated:
                shape[spec.split_dim] //= 2
            model[key] = torch.randn(shape, generator=generator if not spec.replicated else
                                     torch.Generator().manual_seed(7))
        state = {"format_version": FORMAT_VERSION, "iteration": 1, "consumed_train_samples": 0,
                 "consumed_valid_samples": 0, "args": {}, "model_config": {},
                 "parallel": {"tensor_model_parallel_size": 2, "pipeline_model_parallel_size": 1,
                              "virtual_pipeline_model_parallel_size": None, "data_parallel_size": 1,
                              "use_distributed_optimizer": False},
                 "vocab_size": PADDED_VOCAB - 5, "padded_vocab_size": PADDED_VOCAB, "opt_param_scheduler": {},
                 "rng_state": [], "model": model, "sharding_map": {"model": smap.to_dict()}}
        path = model_file(root, 1, rank, 0, 1)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_file(state, path)
    with open(os.path.join(root, "latest_checkpointed_iteration.txt"), "w") as f:
        f.write("1\n")
    largest_output = max(torch.Size(shape).numel() for _, shape in specs.values()) * 4
    largest_source = max(t.numel() for t in model.values()) * 4
    return largest_output, largest_source


# The child imports the tool, then resets its peak-RSS mark (Linux: clear_refs 5), so the
# peak it reports is that of the resharding alone, above what the imports left resident
# (importing torch peaks higher than it stays, which would hide the work).
_CHILD = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("change_mp", sys.argv[1])
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)
def status(field):
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field + ":")).split()[1]) * 1024
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS")
tool.main(sys.argv[2:])
print(json.dumps({"before": before, "peak": status("VmHWM")}))
"""


def _growth(*args):
    """Peak RSS of tools/change_mp.py's work with `args` above its RSS after the imports (bytes)."""
    done = subprocess.run([sys.executable, "-c", _CHILD, TOOL, *args], capture_output=True, text=True,
                          env=clean_env(), cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rss = json.loads(done.stdout.strip().splitlines()[-1])
    return rss["peak"] - rss["before"]


def _files(directory):
    return [os.path.join(d, n) for d, _, names in os.walk(directory) for n in names]


@pytest.fixture(scope="module")
def resharded(tmp_path_factory):
    root = tmp_path_factory.mktemp("streaming")
    source, output = str(root / "tp2"), str(root / "tp1")
    largest_output, largest_source = _save_tp2(source)
    growth = _growth(source, "--no-optim", "--target-tensor-parallel-size", "1", "--output", output)
    return source, output, growth, largest_output, largest_source


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="resets the peak RSS mark the Linux way")
def test_change_mp_holds_one_output_tensor_and_one_source_tensor_not_the_checkpoint(resharded):
    source, _, growth, largest_output, largest_source = resharded
    checkpoint = sum(os.path.getsize(p) for p in _files(source))
    bound = largest_output + largest_source + ALLOWANCE
    assert checkpoint > 3 * bound     # a reader that held a shard or the model would show
    assert growth <= bound, (f"resharding raised the peak RSS {growth / 2**20:.0f} MiB above the tool's imports; "
                             f"bound {bound / 2**20:.0f} MiB, checkpoint {checkpoint / 2**20:.0f} MiB")


def test_the_result_is_no_bigger_than_its_input_and_each_tensor_owns_exactly_its_storage(resharded):
    source, output, *_ = resharded
    size_in = sum(os.path.getsize(p) for p in _files(source))
    size_out = sum(os.path.getsize(p) for p in _files(output))
    assert size_out <= 1.01 * size_in
    (path,) = [p for p in _files(output) if p.endswith(".pt")]
    model = torch.load(path, weights_only=True)["model"]
    assert set(model) == set(_specs())
    for key, tensor in model.items():
        assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size(), key
        assert tuple(tensor.shape) == _specs()[key][1], key
