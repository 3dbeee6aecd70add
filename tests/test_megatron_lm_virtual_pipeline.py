"""Megatron-LM checkpoints with virtual pipeline (interleaved) chunks, judged by NVIDIA's
megatron-core (tests/harness/megatron_lm_virtual.py): a 4-layer GPT at PP=2 with 2 chunks per
rank, saved in the torch format (model0/model1, each chunk's layers numbered from 0) and
through dist_checkpointing (megatron-core's own global layer numbering). Our reader of the
torch files gives every tensor of the torch_dist reading, and both load at PP=1 with the
logits of megatron-core's chunks; every way Megatron-LM records the virtual size reads the
same; a split that is not even is one sentence."""
import glob
import os
import re
import shutil

import pytest
import torch

pytest.importorskip("megatron.core")

from megatron_core.checkpoint.saved_model import open_saved_model  # noqa: E402
from megatron_core.errors import CheckpointError  # noqa: E402
from tests.harness.megatron_lm import our_logits  # noqa: E402
from tests.harness.megatron_lm_virtual import save_virtual_pipeline_checkpoints  # noqa: E402

LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("megatron_lm_virtual")
    reference = save_virtual_pipeline_checkpoints("gpt", str(root / "torch"), str(root / "dist"))
    return root, reference


def test_virtual_chunks_of_the_torch_files_read_as_megatron_cores_global_layers(saved, tmp_path):
    root, reference = saved
    files = sorted(glob.glob(str(root / "torch" / "iter_0000007" / "*" / "model_optim_rng.pt")))
    assert [os.path.basename(os.path.dirname(f)) for f in files] == ["mp_rank_00_000", "mp_rank_00_001"]
    raw = torch.load(files[1], weights_only=False)
    assert [k for k in raw if k.startswith("model")] == ["model0", "model1"]
    assert {LAYER.match(k).group(1) for c in ("model0", "model1") for k in raw[c] if LAYER.match(k)} == {"0"}
    ours, theirs = open_saved_model(str(root / "torch")), open_saved_model(str(root / "dist"))
    assert set(ours.state) == set(theirs.state)
    layers = {int(m.group(1)) for m in map(LAYER.match, theirs.state) if m}
    assert layers == {0, 1, 2, 3}
    for key in theirs.state:
        assert torch.equal(ours.state[key], theirs.state[key]), key
    for key in theirs.state:            # the check has teeth: no layer's tensor equals another layer's
        match = LAYER.match(key)
        if match and match.group(1) != "0":
            assert not torch.equal(theirs.state[key], theirs.state[f"decoder.layers.0.{match.group(2)}"]), key
    from_torch = our_logits(root / "torch", "gpt", 1, tmp_path)["lm"]
    from_dist = our_logits(root / "dist", "gpt", 1, tmp_path)["lm"]
    torch.testing.assert_close(from_torch, from_dist, rtol=0, atol=0)
    torch.testing.assert_close(from_torch, reference.logits["lm"], rtol=0, atol=1e-5)


def _edited_copy(source, target, edit):
    """The torch checkpoint `source` copied to `target` with each rank file's dict passed through
    edit(raw, pipeline_rank) (raw["args"] is the Namespace)."""
    shutil.copytree(source, target)
    for path in sorted(glob.glob(os.path.join(target, "iter_0000007", "*", "model_optim_rng.pt"))):
        raw = torch.load(path, weights_only=False)
        edit(raw, int(os.path.basename(os.path.dirname(path))[-3:]))
        torch.save(raw, path)
    return target


def _set_args(**values):
    def edit(raw, _):
        for name, value in values.items():
            if value is _DROP:
                delattr(raw["args"], name)
            else:
                setattr(raw["args"], name, value)
    return edit


_DROP = object()
RECORDS = {   # how each Megatron-LM records 2 chunks per rank of a 4-layer PP=2 model
    "num_layers_per_virtual_pipeline_stage": {},       # as saved: that flag and the size arguments.py derives
    "num_virtual_stages_per_pipeline_rank": dict(num_layers_per_virtual_pipeline_stage=None,
                                                 num_virtual_stages_per_pipeline_rank=2),   # 0.16's other flag
    "virtual_pipeline_model_parallel_size": dict(num_layers_per_virtual_pipeline_stage=_DROP,
                                                 num_virtual_stages_per_pipeline_rank=_DROP),   # early 2021's flag
    "layers_per_stage_only": dict(virtual_pipeline_model_parallel_size=_DROP),
}


@pytest.mark.parametrize("record", sorted(RECORDS))
def test_every_record_of_the_virtual_size_reads_the_same_model(saved, tmp_path, record):
    root, _ = saved
    copy = _edited_copy(root / "torch", tmp_path / record, _set_args(**RECORDS[record]))
    original, edited = open_saved_model(str(root / "torch")), open_saved_model(str(copy))
    assert set(edited.state) == set(original.state)
    assert all(torch.equal(edited.state[k], original.state[k]) for k in original.state)


def _uneven_layout(originals):
    """An edit re-cutting the even files (`originals`, by pipeline rank: model chunk j of rank r
    holds global layer 2 * j + r) to Megatron-LM's --pipeline-model-parallel-layout "Ett|t|t|L":
    model chunks, in model order, of 2, 1, 1 and 0 layers."""
    def layer(number):
        chunk, rank = divmod(number, 2)
        return {LAYER.match(k).group(2): v for k, v in originals[rank][f"model{chunk}"].items() if LAYER.match(k)}
    layout = {(0, 0): [0, 1], (0, 1): [2], (1, 0): [3], (1, 1): []}

    def edit(raw, pipeline_rank):
        for chunk in (0, 1):
            kept = {k: v for k, v in raw[f"model{chunk}"].items() if not LAYER.match(k)}
            for local, number in enumerate(layout[(chunk, pipeline_rank)]):
                kept.update({f"decoder.layers.{local}.{name}": v for name, v in layer(number).items()})
            raw[f"model{chunk}"] = kept
        vars(raw["args"]).update(pipeline_model_parallel_layout="Ett|t|t|L", num_layers_per_virtual_pipeline_stage=None)
    return edit


def test_a_virtual_pipeline_split_that_is_not_even_is_one_sentence(saved, tmp_path):
    root, _ = saved
    originals = [torch.load(p, weights_only=False)
                 for p in sorted(glob.glob(str(root / "torch" / "iter_0000007" / "*" / "model_optim_rng.pt")))]
    layout = _edited_copy(root / "torch", tmp_path / "layout", _uneven_layout(originals))
    with pytest.raises(CheckpointError) as error:
        open_saved_model(str(layout))
    message = str(error.value)
    assert "model0 holds 2 layers" in message and "Ett|t|t|L" in message and message.count(". ") == 0, message
    five = _edited_copy(root / "torch", tmp_path / "five", _set_args(num_layers=5))
    with pytest.raises(CheckpointError, match="5 layers do not split evenly over 2 pipeline stages x 2 chunks"):
        open_saved_model(str(five))
    three = _edited_copy(root / "torch", tmp_path / "three", _set_args(virtual_pipeline_model_parallel_size=3))
    with pytest.raises(CheckpointError, match="holds 2 model chunks .* its args record 3"):
        open_saved_model(str(three))
