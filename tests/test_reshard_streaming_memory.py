"""tools/change_mp.py streams: resharding a ~135 MB TP=2 checkpoint to TP=1 in a child
process raises its peak RSS above what the tool's imports left resident by at most its
largest output tensor plus its largest source tensor plus a small allowance, never by a
whole shard or the model; the result is no bigger than its input and each of its tensors
owns a storage of exactly its own size (no shard drags a parent). The same holds with Adam's
state saved by the distributed optimizer at DP=2 (exp_avg, exp_avg_sq as flat pieces over
two shard files, parameters cut at the shard boundary): the optimizer fields add one
gathered copy of the largest parameter, and come out equal to the pieces put together.

The checkpoint is made in this process from a hand-written sharding map (GPT-shaped keys:
a vocabulary-split table, fused QKV with stride 3, GLU-style stride 2, row-parallel
matrices split along dimension 1, replicated norms), so no model or process group is built.
"""
import os
import subprocess
import sys

import pytest
import torch

from megatron_core.mpu.sharding_map import ShardingMap, ShardSpec
from tests.harness.entry_points import ROOT, clean_env
from tests.harness.peak_rss import tool_peak_rss_growth
from megatron_core.checkpoint.contents import FORMAT_VERSION, PER_PARAMETER, optimizer_shard_state
from megatron_core.checkpoint.file_io import save_file
from megatron_core.checkpoint.megatron_layout import model_file, optimizer_shard_file

HIDDEN, LAYERS, PADDED_VOCAB = 512, 10, 4096
TOOL = os.path.join(ROOT, "tools", "change_mp.py")
ALLOWANCE = 24 * 2**20      # Python objects, the files' unpickled indexes, writer buffers


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


def _distributed_optimizer_shards(model):
    """The distributed optimizer's state of one TP rank at DP=2, as the native backend saves it
    (contents.optimizer_shard_state of NativeBackend.state_dict()): the parameters laid end to
    end in one flat buffer cut in two halves; each shard's torch Adam state holds, per position,
    the flat elements [first, end) of one parameter that fall in its half."""
    total = sum(t.numel() for t in model.values())
    bounds = [(0, total // 2), (total // 2, total)]
    shards = [{"optimizer": {"state": {}, "param_groups": [{"params": []}]}, "fp32_master_weights": [], "params": [],
               "shard": {"distributed": True, "data_parallel_size": 2}} for _ in bounds]
    at = 0
    for key, tensor in model.items():
        moments = {"exp_avg": tensor.reshape(-1) * 0.5, "exp_avg_sq": tensor.reshape(-1) ** 2}
        for (low, high), shard in zip(bounds, shards):
            first, end = max(at, low) - at, min(at + tensor.numel(), high) - at
            if first < end:
                position = len(shard["params"])
                shard["params"].append(["model", key, first, end, False])
                shard["optimizer"]["param_groups"][0]["params"].append(position)
                shard["optimizer"]["state"][position] = dict(
                    step=torch.tensor(5.0), **{k: v[first:end].clone() for k, v in moments.items()})
        at += tensor.numel()
    return [optimizer_shard_state(shard, 1, d, 2) for d, shard in enumerate(shards)]


def _save_tp2(root, layers=LAYERS, distributed_optimizer=False):
    specs = {k: v for k, v in _specs().items() if not k.startswith("decoder.layers.") or
             int(k.split(".")[2]) < layers}
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
                              "virtual_pipeline_model_parallel_size": None,
                              "data_parallel_size": 2 if distributed_optimizer else 1,
                              "use_distributed_optimizer": distributed_optimizer},
                 "vocab_size": PADDED_VOCAB - 5, "padded_vocab_size": PADDED_VOCAB, "opt_param_scheduler": {},
                 "rng_state": [], "model": model, "sharding_map": {"model": smap.to_dict()}}
        path = model_file(root, 1, rank, 0, 1)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_file(state, path)
        if distributed_optimizer:
            for d, shard in enumerate(_distributed_optimizer_shards(model)):
                save_file(shard, optimizer_shard_file(path, d))
    with open(os.path.join(root, "latest_checkpointed_iteration.txt"), "w") as f:
        f.write("1\n")
    largest_output = max(torch.Size(shape).numel() for _, shape in specs.values()) * 4
    largest_source = max(t.numel() for t in model.values()) * 4
    return largest_output, largest_source, specs


def _growth(*args):
    """Peak RSS of tools/change_mp.py's work with `args` above its RSS after the imports (bytes)."""
    return tool_peak_rss_growth("tools/change_mp.py", args)


def _files(directory):
    return [os.path.join(d, n) for d, _, names in os.walk(directory) for n in names]


@pytest.fixture(scope="module")
def resharded(tmp_path_factory):
    root = tmp_path_factory.mktemp("streaming")
    source, output = str(root / "tp2"), str(root / "tp1")
    largest_output, largest_source, _ = _save_tp2(source)
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


OPTIMIZER_LAYERS = 4


@pytest.fixture(scope="module")
def resharded_with_optimizer(tmp_path_factory):
    root = tmp_path_factory.mktemp("streaming_optimizer")
    source, output = str(root / "tp2_dp2"), str(root / "tp1")
    largest_output, largest_source, specs = _save_tp2(source, OPTIMIZER_LAYERS, distributed_optimizer=True)
    growth = _growth(source, "--target-tensor-parallel-size", "1", "--output", output)
    return source, output, growth, largest_output, largest_source, specs


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="resets the peak RSS mark the Linux way")
def test_change_mp_streams_the_distributed_optimizers_adam_state_like_the_weights(resharded_with_optimizer):
    source, _, growth, largest_output, largest_source, _ = resharded_with_optimizer
    checkpoint = sum(os.path.getsize(p) for p in _files(source))
    # one more full parameter: a field cut over both shard files is gathered once per source rank
    bound = 2 * largest_output + largest_source + ALLOWANCE
    assert checkpoint > 3 * bound
    assert growth <= bound, (f"resharding with the optimizer raised the peak RSS {growth / 2**20:.0f} MiB above the "
                             f"tool's imports; bound {bound / 2**20:.0f} MiB, checkpoint {checkpoint / 2**20:.0f} MiB")


def test_change_mp_with_the_optimizer_never_reads_a_source_file_through_its_mapping(resharded_with_optimizer,
                                                                                    tmp_path):
    """Every mapping is made unreadable as it is opened (testing/guarded_mappings): a clone of a
    mapped view (the optimizer's scalar `step` once was one) kills the tool with SIGSEGV. Such a
    touch is what made the peak RSS grow with the checkpoint when its pages were cached."""
    source, output, *_ = resharded_with_optimizer
    done = subprocess.run([sys.executable, "-m", "tests.harness.guarded_mappings", TOOL, source,
                           "--target-tensor-parallel-size", "1", "--output", str(tmp_path / "tp1")],
                          capture_output=True, text=True, env=clean_env(), cwd=ROOT, timeout=300)
    assert done.returncode == 0, f"exit status {done.returncode}: {done.stderr[-2000:]}"
    guarded = str(tmp_path / "tp1")     # the same bytes as the unguarded run's output
    assert sorted(os.path.relpath(p, guarded) for p in _files(guarded)) == \
        sorted(os.path.relpath(p, output) for p in _files(output))
    for path in _files(output):
        if path.endswith(".pt"):    # every tensor equal (the recorded args name their own --output)
            a = _flat_tensors(torch.load(path, weights_only=True))
            b = _flat_tensors(torch.load(os.path.join(guarded, os.path.relpath(path, output)), weights_only=True))
            assert a.keys() == b.keys() and len(a) > 2 * OPTIMIZER_LAYERS, path
            assert all(torch.equal(a[k], b[k]) for k in a), path


def _flat_tensors(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    return {k: v for key, value in items for k, v in _flat_tensors(value, f"{prefix}/{key}").items()}


def test_the_resharded_adam_state_is_the_shards_pieces_put_together(resharded_with_optimizer):
    source, output, *_, specs = resharded_with_optimizer
    whole = {}
    for rank in range(2):     # the reference: each TP rank's moments from the pieces of both DP shards
        path = model_file(source, 1, rank, 0, 1)
        model = torch.load(path, weights_only=True)["model"]
        shards = [torch.load(optimizer_shard_file(path, d), weights_only=True)["optimizer"] for d in range(2)]
        for key, tensor in model.items():
            flat = {f: torch.zeros(tensor.numel()) for f in ("exp_avg", "exp_avg_sq")}
            for shard in shards:
                for position, (_, name, first, end, _) in enumerate(shard["params"]):
                    if name == key:
                        for field in flat:
                            flat[field][first:end] = shard["optimizer"]["state"][position][field]
            whole.setdefault(key, []).append({f: v.view(tensor.shape) for f, v in flat.items()})
    (path,) = [p for p in _files(output) if p.endswith(".pt")]
    saved = torch.load(path, weights_only=True)
    optimizer = saved["optimizer"][PER_PARAMETER]["model"]
    assert set(optimizer) == set(specs)
    for key, (spec, shape) in specs.items():
        for field in ("exp_avg", "exp_avg_sq"):
            parts = [whole[key][rank][field] for rank in range(2)]
            if spec.replicated:
                expected = parts[0]
            else:   # TP=1 holds the whole tensor: each rank's `stride` pieces interleaved back
                pieces = [p.chunk(spec.stride, spec.split_dim) for p in parts]
                expected = torch.cat([pieces[r][i] for i in range(spec.stride) for r in range(2)], spec.split_dim)
            assert torch.equal(optimizer[key][field], expected), (key, field)
            assert tuple(optimizer[key][field].shape) == shape
        assert float(optimizer[key]["step"]) == 5.0
