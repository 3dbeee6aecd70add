"""The Megatron-LM harness (tests/harness/megatron_lm.py) itself: its files have Megatron-LM's
layout, what it saves it loads back to the same logits, and a wrong file fails the strict load."""
import argparse
import os

import pytest
import torch

pytest.importorskip("megatron.core", reason="NVIDIA's megatron-core is the reference these tests run")

from tests.harness import megatron_lm  # noqa: E402
from tests.harness.megatron_lm_files import rank_file  # noqa: E402

ITERATION = 7
FILE_KEYS = ["args", "checkpoint_version", "iteration", "model", "optimizer", "opt_param_scheduler",
             "rng_state", "num_floating_point_operations_so_far"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """save_checkpoint's results, each (model, tp, fmt) written once: {key: (directory, reference)}."""
    cache = {}

    def save(name, tp, fmt):
        if (name, tp, fmt) not in cache:
            directory = str(tmp_path_factory.mktemp(f"{name}_tp{tp}_{fmt}"))
            reference = megatron_lm.save_checkpoint(name, directory, tp=tp, fmt=fmt, iteration=ITERATION,
                                                    with_optimizer=fmt == "torch")
            cache[name, tp, fmt] = directory, reference
        return cache[name, tp, fmt]
    return save


def _assert_same_logits(loaded, reference):
    assert loaded.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(loaded[key], reference[key], rtol=0, atol=1e-6)


def _pickled_globals(path):
    """The classes and functions the file's pickle names, megatron.core's registered ones included."""
    registered = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    finally:
        torch.serialization.add_safe_globals(registered)


def test_torch_format_files_have_megatron_lm_layout_keys_and_pickled_classes(saved):
    from megatron.core.transformer.enums import AttnBackend

    directory, reference = saved("llama", 2, "torch")
    assert sorted(os.listdir(directory)) == ["iter_0000007", "latest_checkpointed_iteration.txt"]
    assert open(os.path.join(directory, "latest_checkpointed_iteration.txt")).read() == "7"
    assert sorted(os.listdir(os.path.join(directory, "iter_0000007"))) == ["mp_rank_00", "mp_rank_01"]
    for tp_rank in range(2):
        path = rank_file(directory, ITERATION, tp_rank, 0, 1)
        # What a weights_only reader must allow (numpy's: the numpy RNG state; torch dtypes are allowed
        # by default). megatron.core registers these, among others, when it is imported.
        pickled = {name.replace("numpy.core.", "numpy._core.") for name in _pickled_globals(path)}
        assert pickled == {"argparse.Namespace", "megatron.core.transformer.enums.AttnBackend",
                           "numpy.ndarray", "numpy.dtype", "numpy._core.multiarray._reconstruct"}
        from megatron.core.safe_globals import SAFE_GLOBALS      # what Megatron-LM registers at start
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            state = torch.load(path, weights_only=True)
        assert list(state) == FILE_KEYS
        assert state["checkpoint_version"] == 3.0 and state["iteration"] == ITERATION
        args = state["args"]
        assert isinstance(args, argparse.Namespace)
        assert vars(args) == {**reference.args, "rank": tp_rank, "local_rank": tp_rank}
        assert (args.tensor_model_parallel_size, args.pipeline_model_parallel_size, args.swiglu,
                args.untie_embeddings_and_output_weights, args.padded_vocab_size) == (2, 1, True, True, 128)
        assert args.params_dtype is torch.float32 and args.attention_backend is AttnBackend.auto
        # SwiGLU's fc1 in a rank's file: this rank's gate rows, then its up rows
        assert state["model"]["decoder.layers.0.mlp.linear_fc1.weight"].shape == (256, 64)
        assert state["model"]["decoder.layers.0.self_attention.linear_qkv._extra_state"] is None
        (rng,) = state["rng_state"]
        assert set(rng) == {"random_rng_state", "np_rng_state", "torch_rng_state", "cuda_rng_state",
                            "rng_tracker_states"}
        assert list(rng["rng_tracker_states"]) == ["data-parallel-rng", "model-parallel-rng", "expert-parallel-rng"]
        assert rng["cuda_rng_state"].dtype == torch.uint8 and rng["cuda_rng_state"].shape == (16,)
        optimizer = state["optimizer"]
        assert [len(group["params"]) for group in optimizer["param_groups"]] == [10, 5]   # decayed, then not
        assert set(optimizer["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
        assert optimizer["state"][0]["step"] == 2
        assert state["opt_param_scheduler"]["num_steps"] == 2 * 2      # samples: 2 steps of batch 2


@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("name", ["gpt", "llama", "bert"])
def test_torch_format_loads_back_to_the_saved_logits(saved, name, tp):
    directory, reference = saved(name, tp, "torch")
    _assert_same_logits(megatron_lm.load_and_logits(name, directory, tp=tp, with_optimizer=True), reference.logits)


@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("name", ["gpt", "llama"])
def test_torch_dist_round_trips(saved, name, tp):
    directory, reference = saved(name, tp, "torch_dist")
    iteration_dir = os.path.join(directory, "iter_0000007")
    assert {"common.pt", "metadata.json", ".metadata"} <= set(os.listdir(iteration_dir))
    _assert_same_logits(megatron_lm.load_and_logits(name, directory, tp=tp, fmt="torch_dist"), reference.logits)


def test_a_renamed_key_fails_the_strict_load_with_megatrons_message(saved, tmp_path):
    directory, _ = saved("gpt", 1, "torch")
    state = torch.load(rank_file(directory, ITERATION, 0, 0, 1), weights_only=False)
    state["model"]["decoder.final_norm.weight"] = state["model"].pop("decoder.final_layernorm.weight")
    broken = str(tmp_path)
    os.makedirs(os.path.dirname(rank_file(broken, ITERATION, 0, 0, 1)))
    torch.save(state, rank_file(broken, ITERATION, 0, 0, 1))
    with open(os.path.join(broken, "latest_checkpointed_iteration.txt"), "w") as f:
        f.write(str(ITERATION))
    with pytest.raises(megatron_lm.MegatronLoadError) as failure:
        megatron_lm.load_and_logits("gpt", broken, tp=1)
    message = str(failure.value)
    assert message.startswith("Error(s) in loading state_dict for GPTModel:")
    assert 'Missing key(s) in state_dict: "decoder.final_layernorm.weight"' in message
    assert 'Unexpected key(s) in state_dict: "decoder.final_norm.weight"' in message
