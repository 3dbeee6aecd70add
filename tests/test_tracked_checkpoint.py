"""formats.tracked_checkpoint: the one reader of "the checkpoint a tracker names, or one
sentence", used by generation, --use-checkpoint-args and the resharder."""
import os

import pytest

from megatron_core.errors import CheckpointError
from megatron_core.checkpoint.formats import LAYOUTS, tracked_checkpoint

pytestmark = pytest.mark.quick


def _write(path, text=""):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def test_a_tracker_gives_its_layout_iteration_and_first_model_file(tmp_path):
    _write(str(tmp_path / "iter_0000007" / "mp_rank_00" / "model_optim_rng.pt"))
    _write(str(tmp_path / "latest_checkpointed_iteration.txt"), "7\n")
    layout, iteration, first = tracked_checkpoint(str(tmp_path))
    assert (layout, iteration, first) == (LAYOUTS["megatron"], 7,
                                          str(tmp_path / "iter_0000007" / "mp_rank_00" / "model_optim_rng.pt"))
    _write(str(tmp_path / "global_step9" / "mp_rank_00_model_states.pt"))
    _write(str(tmp_path / "latest"), "global_step9")
    assert tracked_checkpoint(str(tmp_path), "deepspeed")[:2] == (LAYOUTS["deepspeed"], 9)


@pytest.mark.parametrize("case,message", [("missing", "is not a directory"), ("no_tracker", "holds no checkpoint"),
                                          ("empty_iteration", "which holds no model file")])
def test_what_is_missing_is_one_sentence_naming_the_flag(tmp_path, case, message):
    directory = str(tmp_path / "ckpt")
    if case != "missing":
        os.makedirs(directory)
    if case == "empty_iteration":
        os.makedirs(os.path.join(directory, "iter_0000003"))
        _write(os.path.join(directory, "latest_checkpointed_iteration.txt"), "3")
    with pytest.raises(CheckpointError, match=message) as error:
        tracked_checkpoint(directory, what="--load")
    assert str(error.value).startswith(("--load", "the tracker")) and str(error.value).count(". ") == 0
