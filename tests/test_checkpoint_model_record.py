"""A checkpoint says what model it holds (checkpoint/model_record.py).

Each writer records `model_family` (ours: llama is gpt) and `model_options`; each reader
takes the family from there, so a recorded family that disagrees with the tensor names
is read as recorded (and a model that does not fit is one sentence); a file written
before families were recorded is guessed once, by one rule, with one printed line.
"""
import glob
import os

import pytest
import torch

from megatron_core import mpu
from megatron_core.checkpoint.model_record import check_family, guess_family, saved_family
from megatron_core.checkpoint.saved_model import open_saved_model
from megatron_core.convert.hf_export import export_checkpoint
from megatron_core.errors import CheckpointError, ConversionError
from megatron_core.inference.checkpoint_model import load_checkpoint_model
from tests.harness.inference_checkpoints import tiny_model_options, write_tiny_checkpoint
from tests.harness.model_checks import single_process_world
from tests.harness.tool_main import run_tool_main

GUESSES = [
    ({"r_w_bias", "decoder.layers.0.self_attention.linear_qkv.weight"}, {}, {}, "transformer_xl"),
    ({"encoder.layers.0.mlp.fc1.weight", "decoder.layers.0.inter_attention.linear_q.weight"}, {}, {}, "t5"),
    ({"encoder.layers.0.mlp.fc1.weight"}, {"pipeline_model_parallel_size": 2,      # a T5's encoder stage
                                           "pipeline_model_parallel_split_rank": 1}, {}, "t5"),
    ({"decoder.layers.1.inter_attention.linear_q.weight"}, {}, {}, "t5"),        # a T5's decoder stage
    ({"encoder.layers.0.mlp.fc1.weight"}, {}, {"position_embedding_type": "rope"}, "roformer"),
    ({"encoder.layers.0.mlp.fc1.weight"}, {}, {"position_embedding_type": "learned_absolute"}, "bert"),
    ({"decoder.layers.0.mlp.fc1.weight"}, {}, {"normalization": "RMSNorm"}, "gpt"),   # Llama-style is a gpt
]


@pytest.mark.parametrize("keys,args,config,family", GUESSES)
def test_one_rule_guesses_a_legacy_checkpoints_family_from_whole_or_one_stages_tensor_names(keys, args, config,
                                                                                            family):
    assert guess_family(keys, args, config) == family


def test_the_recorded_family_wins_over_the_tensor_names_and_a_legacy_guess_says_so_in_one_line():
    lines = []
    gpt_keys = ["decoder.layers.0.mlp.fc1.weight"]
    assert saved_family("f.pt", {"model_family": "bert"}, gpt_keys, say=lines.append) == "bert"
    assert lines == []
    assert saved_family("f.pt", {"args": {}, "model_config": {}}, gpt_keys, say=lines.append) == "gpt"
    assert lines == ["note: f.pt records no model family (written before checkpoints recorded it); guessed 'gpt' "
                     "from its tensor names and config."]
    with pytest.raises(CheckpointError, match=r"records no model family and its tensors .* match none"):
        saved_family("f.pt", {}, ["word_embeddings.weight"], say=lines.append)


def test_resuming_another_familys_checkpoint_is_one_sentence():
    with pytest.raises(CheckpointError) as info:
        check_family("ckpt/iter_0000002/mp_rank_00/model_optim_rng.pt", {"model_family": "gpt"}, [], "bert")
    assert str(info.value) == ("ckpt/iter_0000002/mp_rank_00/model_optim_rng.pt holds a gpt model and this run "
                               "trains a bert model; load it with the entry point of its family (e.g. "
                               "pretrain_gpt.py), or give another --load.")


def _rewrite_files(directory, change):
    """Apply change(state) to every rank file of a weights checkpoint, in place."""
    paths = glob.glob(os.path.join(directory, "**", "*.pt"), recursive=True)
    assert paths
    for path in paths:
        state = torch.load(path, weights_only=True)
        change(state)
        torch.save(state, path)


def _forget_family(state):
    del state["model_family"], state["model_options"]


@pytest.mark.parametrize("family,recorded", [("gpt", "gpt"), ("llama", "gpt"), ("t5", "t5"),
                                             ("transformer_xl", "transformer_xl")])
def test_the_weights_writer_records_the_family_and_options(tmp_path, family, recorded):
    write_tiny_checkpoint(str(tmp_path / "ckpt"), family, tensor_model_parallel_size=2,
                          pipeline_model_parallel_size=2 if family != "transformer_xl" else 1)
    saved = open_saved_model(str(tmp_path / "ckpt"))
    assert (saved.record["model_family"], saved.model_options) == (recorded, tiny_model_options(family))


def test_generation_loads_a_legacy_checkpoint_by_the_one_guess_and_prints_one_line(tmp_path, capsys):
    write_tiny_checkpoint(str(tmp_path / "ckpt"), "transformer_xl", tensor_model_parallel_size=2)
    _rewrite_files(str(tmp_path / "ckpt"), _forget_family)
    with single_process_world():
        mpu.destroy_model_parallel()
        loaded = load_checkpoint_model(str(tmp_path / "ckpt"))
    notes = [line for line in capsys.readouterr().err.splitlines() if "records no model family" in line]
    assert loaded.family == "transformer_xl" and loaded.model.mem_length == 8
    assert len(notes) == 1 and notes[0].endswith("guessed 'transformer_xl' from its tensor names and config.")


def test_generation_builds_the_recorded_family_and_weights_that_do_not_fit_it_are_one_sentence(tmp_path):
    write_tiny_checkpoint(str(tmp_path / "ckpt"), "gpt")
    _rewrite_files(str(tmp_path / "ckpt"), lambda state: state.update(model_family="transformer_xl",
                                                                      model_options={"mem_length": 4}))
    with single_process_world():
        mpu.destroy_model_parallel()
        with pytest.raises(CheckpointError, match=r"ckpt/release does not fit this model: \d+ missing keys \(r_w_bias, "
                                                  r"r_r_bias, .*; it was saved from another model"):
            load_checkpoint_model(str(tmp_path / "ckpt"))     # a Transformer-XL was built, as recorded


def test_export_reads_the_recorded_family(tmp_path):
    write_tiny_checkpoint(str(tmp_path / "ckpt"), "gpt")
    _rewrite_files(str(tmp_path / "ckpt"), lambda state: state.update(model_family="transformer_xl"))
    with pytest.raises(ConversionError, match=r"^Transformer-XL has no HuggingFace class"):
        export_checkpoint(str(tmp_path / "ckpt"), str(tmp_path / "hf"))


def test_change_mp_keeps_the_family_and_records_a_legacy_checkpoints_guess(tmp_path, capsys):
    write_tiny_checkpoint(str(tmp_path / "ckpt"), "t5", tensor_model_parallel_size=2, pipeline_model_parallel_size=2)
    run_tool_main("change_mp.py", str(tmp_path / "ckpt"), "--target-tensor-parallel-size", "1", "--no-optim",
                  "--output", str(tmp_path / "tp1"))
    kept = open_saved_model(str(tmp_path / "tp1"))
    assert (kept.record["model_family"], kept.model_options) == ("t5", tiny_model_options("t5"))
    assert "records no model family" not in capsys.readouterr().out

    _rewrite_files(str(tmp_path / "ckpt"), _forget_family)
    run_tool_main("change_mp.py", str(tmp_path / "ckpt"), "--target-tensor-parallel-size", "1", "--no-optim",
                  "--output", str(tmp_path / "legacy_tp1"))
    out = capsys.readouterr().out
    assert out.count("records no model family") == 1 and "guessed 't5'" in out
    recorded = open_saved_model(str(tmp_path / "legacy_tp1"))
    # the options come from the legacy file's args by the family's rule: the same builder arguments
    assert (recorded.record["model_family"], recorded.model_options) == ("t5", tiny_model_options("t5"))
