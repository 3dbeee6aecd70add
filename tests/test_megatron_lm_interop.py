"""Megatron-LM interop proven against NVIDIA's own code (megatron-core 0.16.1 on CPU, gloo;
tests/harness/megatron_lm.py): checkpoints megatron-core writes as Megatron-LM does load into
ours at TP=1, 2 and 4 with megatron-core's logits, in both formats; ours exported with
convert_checkpoint --to-megatron-lm load into megatron-core strictly (torch format: each rank's
load_state_dict(strict=True); torch_dist: dist_checkpointing.load) with the same logits; the
legacy key names go round trip through our reader."""
import os

import pytest
import torch

pytest.importorskip("megatron.core")

from megatron_core.checkpoint.saved_model import open_saved_model  # noqa: E402
from tests.harness import megatron_lm  # noqa: E402
from tests.harness.megatron_lm import our_logits  # noqa: E402
from tests.harness.megatron_lm_models import sample_batch  # noqa: E402
from tests.harness.tool_main import run_tool_main  # noqa: E402

ATOL = 1e-5
SAVED = [("gpt", "torch"), ("llama", "torch"), ("bert", "torch"), ("gpt", "torch_dist"), ("llama", "torch_dist")]


def _assert_logits(got, want, name):
    """Equal logits; BERT's at its real tokens (a padded position's output is used by nothing, and
    megatron-core and we mask its attention row differently)."""
    assert set(got) == set(want)
    for key in want:
        mine, theirs = got[key], want[key]
        if name == "bert" and key == "lm":
            real = sample_batch(name)["attention_mask"].bool()
            mine, theirs = mine[real], theirs[real]
        torch.testing.assert_close(mine, theirs, rtol=0, atol=ATOL)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each model written by megatron-core at TP=2 as Megatron-LM writes it, with its logits."""
    root = tmp_path_factory.mktemp("megatron_lm")
    out = {}
    for name, fmt in SAVED:
        directory = root / f"{name}_{fmt}"
        out[(name, fmt)] = (directory, megatron_lm.save_checkpoint(name, str(directory), tp=2, pp=1, fmt=fmt,
                                                                   seed=1234, iteration=7))
    return out


@pytest.mark.parametrize("name,fmt,tp", [("gpt", "torch", 1), ("llama", "torch", 1), ("bert", "torch", 1),
                                         ("gpt", "torch_dist", 1), ("llama", "torch_dist", 2), ("llama", "torch", 2),
                                         ("bert", "torch", 2), ("gpt", "torch", 4), ("gpt", "torch_dist", 4)])
def test_megatron_lm_checkpoints_load_into_ours_with_its_logits(saved, tmp_path, name, fmt, tp):
    directory, reference = saved[(name, fmt)]
    _assert_logits(our_logits(directory, name, tp, tmp_path), reference.logits, name)


@pytest.mark.parametrize("name,fmt,key_names,tp", [("llama", "torch", "mcore", 2), ("gpt", "torch", "mcore", 1),
                                                   ("bert", "torch", "mcore", 2), ("llama", "torch_dist", "mcore", 2)])
def test_ours_exported_to_megatron_lm_loads_into_megatron_core_strictly(saved, tmp_path, name, fmt, key_names, tp):
    directory, reference = saved[(name, "torch")]
    ours = tmp_path / "ours"
    run_tool_main("change_mp.py", directory, "--target-tensor-parallel-size", 1, "--output", ours)
    exported = tmp_path / "exported"
    run_tool_main("convert_checkpoint.py", "--to-megatron-lm", exported, "--load", ours, "--format", fmt,
                  "--key-names", key_names, "--tensor-model-parallel-size", tp)
    logits = megatron_lm.load_and_logits(name, str(exported), tp=tp, pp=1, fmt=fmt)
    _assert_logits(logits, reference.logits, name)


@pytest.mark.parametrize("name", ["llama", "bert"])
def test_legacy_key_names_go_round_trip_through_our_reader(saved, tmp_path, name):
    directory, _ = saved[(name, "torch")]
    exported = tmp_path / "legacy"
    run_tool_main("convert_checkpoint.py", "--to-megatron-lm", exported, "--load", directory, "--key-names", "legacy",
                  "--tensor-model-parallel-size", 2)
    first = torch.load(exported / "iter_0000007" / "mp_rank_00" / "model_optim_rng.pt", weights_only=False)
    assert "language_model" in first["model"] and first["checkpoint_version"] == 3.0
    original, legacy = open_saved_model(str(directory)), open_saved_model(str(exported))
    assert set(original.state) == set(legacy.state)
    for key in original.state:
        assert torch.equal(original.state[key], legacy.state[key]), key
