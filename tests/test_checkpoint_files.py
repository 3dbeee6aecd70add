"""The checkpoint package's pieces without a training run: names, plain records, RNG streams, safe loading,
checksums and the manifest."""
import argparse
import os
import random
import zlib

import numpy as np
import pytest
import torch

from megatron_core import mpu
from megatron_core.checkpoint import checksums, manifest, megatron_layout, rng_state
from megatron_core.checkpoint.deepspeed_layout import DeepSpeedLayout
from megatron_core.checkpoint.file_io import load_file, save_file
from megatron_core.checkpoint.run_record import args_to_dict
from megatron_core.errors import CheckpointError
from tests.harness.damaged_files import flip_a_byte

pytestmark = pytest.mark.quick


def test_megatron_names_add_the_pipeline_rank_only_with_pipeline_parallelism():
    assert megatron_layout.model_file("ck", 5, 1, 2, 4) == os.path.join("ck", "iter_0000005", "mp_rank_01_002",
                                                                         "model_optim_rng.pt")
    assert megatron_layout.model_file("ck", 1234567, 3, 0, 1) == os.path.join("ck", "iter_1234567", "mp_rank_03",
                                                                               "model_optim_rng.pt")
    assert megatron_layout.iteration_dir("ck", None) == os.path.join("ck", "release")
    assert megatron_layout.parse_tracker("12\n", "t") == 12 and megatron_layout.parse_tracker("release", "t") is None
    with pytest.raises(CheckpointError, match="not an iteration number"):
        megatron_layout.parse_tracker("iter_12", "ck/latest_checkpointed_iteration.txt")


def test_deepspeed_names_use_the_model_parallel_rank_and_the_global_step_tag():
    layout = DeepSpeedLayout()
    path = layout.model_file("ck", 7, 1, 2, 1, 2)          # TP rank 1 of 2 on PP rank 1: mp rank 3
    assert path == os.path.join("ck", "global_step7", "mp_rank_03_model_states.pt")
    assert layout.optimizer_shard_file(path, 1) == os.path.join("ck", "global_step7",
                                                                "zero_pp_rank_1_mp_rank_03_optim_states.pt")
    assert layout.parse_tracker("global_step7\n", "latest") == 7


def test_args_become_plain_values_that_weights_only_loads(tmp_path):
    args = argparse.Namespace(lr=1e-3, params_dtype=torch.float16, data_path=["0.3", "a"], tokenizer=object(),
                              rampup_batch_size=(1, 2, 3), load=None)
    record = args_to_dict(args)
    assert record == {"lr": 1e-3, "params_dtype": "float16", "data_path": ["0.3", "a"],
                      "rampup_batch_size": [1, 2, 3], "load": None}
    save_file({"args": record}, str(tmp_path / "a.pt"))
    assert load_file(str(tmp_path / "a.pt"))["args"] == record


def test_rng_streams_saved_and_restored_replay_the_same_draws(tmp_path):
    mpu.model_parallel_manual_seed(7)
    random.random(), np.random.rand(), torch.rand(1)          # somewhere in the middle of every stream
    save_file(rng_state.capture(), str(tmp_path / "rng.pt"))

    def draws():
        with mpu.get_rng_tracker().fork():
            tracked = torch.rand(3)
        return random.random(), float(np.random.rand()), np.random.randn(), torch.rand(3), tracked

    first = draws()
    rng_state.restore(load_file(str(tmp_path / "rng.pt")))
    second = draws()
    assert first[:3] == second[:3]
    assert torch.equal(first[3], second[3]) and torch.equal(first[4], second[4])


def test_a_truncated_file_is_one_sentence_naming_it(tmp_path):
    path = str(tmp_path / "model_optim_rng.pt")
    save_file({"x": torch.ones(1000)}, path)
    with open(path, "r+b") as f:
        f.truncate(100)
    with pytest.raises(CheckpointError, match="model_optim_rng.pt is not a readable checkpoint file"):
        load_file(path)


def test_weights_that_do_not_fit_name_the_first_missing_unexpected_and_reshaped_keys_with_counts():
    from megatron_core.checkpoint.state_dict_fit import describe_mismatch, load_fitting, tensor_shapes

    model = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(3)])
    state = model.state_dict()
    assert describe_mismatch(tensor_shapes(model.state_dict()), tensor_shapes(state)) is None
    for key in ("0.weight", "0.bias", "1.weight", "1.bias"):
        state.pop(key)
    state["2.bias"] = torch.zeros(5)
    state["head.weight"] = torch.zeros(2)
    state["step"] = [1]
    expected = ("4 missing keys (0.weight, 0.bias, 1.weight, ...), 2 unexpected (head.weight, step), "
                "1 of another shape (2.bias: saved [5], model [4])")
    assert describe_mismatch(tensor_shapes(model.state_dict()), tensor_shapes(state)) == expected
    assert describe_mismatch({"a": None, "b": (2,)}, {"a": (3,), "b": "a list"}) == \
        "1 of another shape (b: saved a list, model [2])"                     # None: a shape not compared
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(CheckpointError) as caught:
        load_fitting(model, state, "ck/model_optim_rng.pt: model does not fit this model",
                     "use the model flags it was saved with.")
    assert str(caught.value) == f"ck/model_optim_rng.pt: model does not fit this model: {expected}; use the " \
                                f"model flags it was saved with."
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))   # nothing was loaded


def test_the_checksums_taken_while_saving_are_those_of_the_bytes_on_disk(tmp_path):
    path = str(tmp_path / "model_optim_rng.pt")
    record = save_file({"x": torch.randn(3000), "step": 7}, path)
    assert (record.path, record.size) == (path, os.path.getsize(path))
    assert record.crc32 == checksums.file_checksums(path).crc32
    # Blocks: a stream fed in pieces that straddle the block edges gives each block's own crc32.
    data = open(path, "rb").read()
    blocks = checksums.BlockChecksums(block_bytes=1000)
    for first in range(0, len(data), 777):
        blocks.update(data[first:first + 777])
    assert blocks.blocks() == tuple(zlib.crc32(data[i:i + 1000]) for i in range(0, len(data), 1000))
    assert checksums.file_checksums(path, block_bytes=1000).crc32 == blocks.blocks()


def _saved_iteration(directory):
    """An iteration directory as a save leaves it: two rank files, an optimizer shard, the manifest."""
    names = ("mp_rank_00/model_optim_rng.pt", "mp_rank_01/model_optim_rng.pt", "mp_rank_01/distrib_optim_dp_000.pt")
    paths = [os.path.join(directory, name) for name in names]
    records = []
    for number, path in enumerate(paths):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        records.append(save_file({"weight": torch.randn(5000)}, path, optimizer_only=number == 2))
    manifest.write_manifest(directory, records)
    return paths


def test_the_manifest_names_a_flipped_byte_a_truncated_file_and_a_missing_one(tmp_path):
    directory = str(tmp_path / "iter_0000006")
    flipped, truncated, missing = _saved_iteration(directory)
    assert manifest.find_damage(directory) == []
    size = os.path.getsize(flipped)
    flip_a_byte(flipped)
    os.truncate(truncated, 1000)
    os.remove(missing)
    found = {d.path: d.what for d in manifest.find_damage(directory)}
    assert found == {flipped: f"fails its checksum (bytes 0 to {size:,} differ from what its save wrote)",
                     truncated: f"has 1,000 bytes, not the {size:,} its save wrote",
                     missing: "is missing"}
    # The ranks' shares add up to the whole (verify_collectively joins them).
    shares = [d for rank in range(3) for d in manifest.find_damage(directory, part=(rank, 3))]
    assert {d.path: d.what for d in shares} == found and len(shares) == 3
    # --no-verify-checkpoint: sizes and presence only; a weights-only load skips the optimizer shard.
    assert {d.path for d in manifest.find_damage(directory, manifest.Verification(checksums=False))} == {
        truncated, missing}
    assert {d.path for d in manifest.find_damage(directory, manifest.Verification(optimizer=False))} == {
        flipped, truncated}
    with pytest.raises(CheckpointError) as raised:
        manifest.check_intact(directory, manifest.Verification())
    assert str(raised.value) == (f"{flipped} fails its checksum (bytes 0 to {size:,} differ from what its save "
                                 f"wrote) (and 2 more damaged files): the checkpoint in {directory} was damaged after "
                                 f"it was saved; restore the file from a copy (or, if it was changed on purpose, "
                                 f"delete {directory}/checkpoint_manifest.json), or use an earlier iteration's "
                                 f"directory.")


def test_a_checkpoint_without_a_manifest_is_not_checked_and_an_unreadable_manifest_is_damage(tmp_path):
    directory = str(tmp_path / "iter_0000006")
    paths = _saved_iteration(directory)
    os.remove(paths[0])
    with open(manifest.manifest_path(directory), "r+b") as f:
        f.truncate(40)
    assert [d.path for d in manifest.find_damage(directory)] == [manifest.manifest_path(directory)]
    os.remove(manifest.manifest_path(directory))
    assert manifest.find_damage(directory) == []            # Megatron-LM's, DeepSpeed's, older ones: as before
    manifest.check_intact(directory, manifest.Verification())
