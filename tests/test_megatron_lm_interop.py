"""Megatron-LM interop proven against NVIDIA's own code (megatron-core 0.16.1 on CPU, gloo;
tests/harness/megatron_lm.py): checkpoints megatron-core writes as Megatron-LM does load into
ours at TP=1, 2 and 4 with megatron-core's logits, in both formats; ours exported with
convert_checkpoint --to-megatron-lm load into megatron-core strictly (torch format: each rank's
load_state_dict(strict=True); torch_dist: dist_checkpointing.load) with the same logits; the
legacy key names go round trip through our reader, and carry the optimizer state in the legacy
models' parameter order."""

import shutil

import pytest
import torch
from safetensors.torch import load_file as load_safetensors

pytest.importorskip("megatron.core")

from megatron_core.checkpoint import reshard  # noqa: E402
from megatron_core.checkpoint.megatron_lm.key_names import ours_from_mcore  # noqa: E402
from megatron_core.checkpoint.reshard import SavedCheckpoint  # noqa: E402
from megatron_core.checkpoint.reshard.targets import target_optimizer_state  # noqa: E402
from megatron_core.checkpoint.saved_model import open_saved_model  # noqa: E402
from tests.harness import megatron_lm  # noqa: E402
from tests.harness.datasets import null_tokenizer_run_flags  # noqa: E402
from tests.harness.entry_points import failure_report, logged_values, run_ranks  # noqa: E402
from tests.harness.megatron_lm import our_logits  # noqa: E402
from tests.harness.megatron_lm_legacy_order import flattened, legacy_named_parameters  # noqa: E402
from tests.harness.megatron_lm_models import sample_batch  # noqa: E402
from tests.harness.tool_main import run_tool_main  # noqa: E402

ATOL = 1e-5
SAVED = [("gpt", "torch"), ("llama", "torch"), ("bert", "torch"), ("gpt", "torch_dist"), ("llama", "torch_dist"),
         ("t5", "torch"), ("t5", "torch_dist")]


def _assert_logits(got, want, name):
    """Equal logits; BERT's and T5's at their real tokens (a padded position's output is used by
    nothing, and megatron-core and we mask its attention row differently)."""
    assert set(got) == set(want)
    for key in want:
        mine, theirs = got[key], want[key]
        if name in ("bert", "t5") and key == "lm":
            real = sample_batch(name)["attention_mask" if name == "bert" else "decoder_keep"].bool()
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
    for name in ("gpt", "bert"):      # two pipeline stages: layer offsets, and the tied table's last-stage copy
        directory = root / f"{name}_torch_pp2"
        out[(name, "torch_pp2")] = (directory, megatron_lm.save_checkpoint(name, str(directory), tp=1, pp=2,
                                                                           fmt="torch", seed=1234, iteration=7))
    return out


@pytest.mark.parametrize("name,fmt,tp", [("gpt", "torch", 1), ("llama", "torch", 1), ("bert", "torch", 1),
                                         ("gpt", "torch_dist", 1), ("llama", "torch_dist", 2), ("llama", "torch", 2),
                                         ("bert", "torch", 2), ("gpt", "torch", 4), ("gpt", "torch_dist", 4),
                                         ("gpt", "torch_pp2", 2), ("bert", "torch_pp2", 1), ("t5", "torch", 1),
                                         ("t5", "torch_dist", 2)])
def test_megatron_lm_checkpoints_load_into_ours_with_its_logits(saved, tmp_path, name, fmt, tp):
    directory, reference = saved[(name, fmt)]
    _assert_logits(our_logits(directory, name, tp, tmp_path), reference.logits, name)


@pytest.mark.parametrize("name,fmt,key_names,tp", [("llama", "torch", "mcore", 2), ("gpt", "torch", "mcore", 1),
                                                   ("bert", "torch", "mcore", 2), ("llama", "torch_dist", "mcore", 2),
                                                   ("gpt", "torch_dist", "mcore", 1), ("bert", "torch_dist", "mcore", 2),
                                                   ("t5", "torch", "mcore", 2), ("t5", "torch_dist", "mcore", 1)])
def test_ours_exported_to_megatron_lm_loads_into_megatron_core_strictly(saved, tmp_path, name, fmt, key_names, tp):
    directory, reference = saved[(name, "torch")]
    ours = tmp_path / "ours"
    run_tool_main("change_mp.py", directory, "--target-tensor-parallel-size", 1, "--output", ours)
    exported = tmp_path / "exported"
    run_tool_main("convert_checkpoint.py", "--to-megatron-lm", exported, "--load", ours, "--format", fmt,
                  "--key-names", key_names, "--tensor-model-parallel-size", tp)
    logits = megatron_lm.load_and_logits(name, str(exported), tp=tp, pp=1, fmt=fmt)
    _assert_logits(logits, reference.logits, name)


@pytest.mark.parametrize("name", ["llama", "bert", "t5"])
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
    if name == "t5":        # Megatron's T5 (learned positions, head bias) has no HF architecture
        return
    for source, hf in ((directory, tmp_path / "hf_mcore"), (exported, tmp_path / "hf_legacy")):    # and through HF
        run_tool_main("convert_checkpoint.py", "--to-hf", "--load", source, "--output", hf)
    from_mcore, from_legacy = (load_safetensors(str(tmp_path / d / "model.safetensors")) for d in ("hf_mcore", "hf_legacy"))
    assert from_mcore.keys() == from_legacy.keys() and all(torch.equal(from_mcore[k], from_legacy[k]) for k in from_mcore)


@pytest.mark.parametrize("name", ["llama", "bert"])
def test_megatron_lm_optimizer_state_comes_over_per_parameter(tmp_path, name):
    """Adam's moments and step of a torch-format checkpoint, read by position, are the live
    optimizer's by parameter (the harness reads those off megatron-core's optimizer); a resharded
    copy (change_mp to TP=1) keeps them."""
    directory = tmp_path / "with_optimizer"
    reference = megatron_lm.save_checkpoint(name, str(directory), tp=2, pp=1, fmt="torch", seed=1234,
                                            iteration=7, with_optimizer=True, steps=2)
    source = SavedCheckpoint(str(directory))
    assert source.has_optimizer()
    checked = 0
    for (tp_rank, _), by_name in reference.optimizer.items():
        for theirs, fields in by_name.items():
            ours = ours_from_mcore(theirs)
            if ours == "output_layer.bias":
                ours = "lm_head.bias"
            _, pieces = source.optimizer_pieces(ours, tp_rank)
            for field in ("exp_avg", "exp_avg_sq"):
                (first, end, flat), = pieces[field]
                torch.testing.assert_close(flat, fields[field].reshape(-1), rtol=0, atol=0)
            assert float(pieces["step"]) == float(fields["step"]) == 2.0
            checked += 1
    assert checked >= 2 * len(source.owners) - 2        # both ranks, every parameter (tied tables are one)
    tp1 = tmp_path / "tp1"
    run_tool_main("change_mp.py", directory, "--target-tensor-parallel-size", 1, "--output", tp1)
    merged = SavedCheckpoint(str(tp1))
    assert merged.has_optimizer() and set(merged.optimizer_fields("decoder.layers.0.mlp.dense_h_to_4h.weight"
                                                                  if name == "llama" else
                                                                  "encoder.layers.0.mlp.dense_h_to_4h.weight")) \
        >= {"exp_avg", "exp_avg_sq", "step"}


@pytest.mark.parametrize("mode", ["resume", "finetune"])
def test_pretrain_gpt_trains_on_from_a_megatron_lm_checkpoint(tmp_path, mode):
    """pretrain_gpt.py --load of megatron-core's TP=2 Llama checkpoint (with its optimizer) at TP=1,
    the model flags from its args (--use-checkpoint-args): resuming goes on at iteration 8 with
    Megatron-LM's optimizer state, and stops in one sentence where a schedule flag disagrees with
    its opt_param_scheduler; --finetune starts at iteration 1 with a fresh one."""
    directory = tmp_path / "megatron_llama"
    megatron_lm.save_checkpoint("llama", str(directory), tp=2, pp=1, fmt="torch", seed=1234, iteration=7,
                                with_optimizer=True, steps=2)
    flags = null_tokenizer_run_flags(directory, tmp_path) + ["--train-iters", "10" if mode == "resume" else "3"] + (
        ["--finetune"] if mode == "finetune" else [])
    done = run_ranks("pretrain_gpt.py", flags, 1)
    assert done.returncode == 0, failure_report(done)
    assert "(from Megatron-LM's files, mcore key names)" in done.stdout
    losses = logged_values(done.stdout, "lm loss")
    assert sorted(losses) == ([8, 9, 10] if mode == "resume" else [1, 2, 3]), failure_report(done)
    assert all(0 < loss < 10 for loss in losses.values())
    fresh = "holds no optimizer state" in done.stdout or "fresh optimizer" in done.stdout
    assert not fresh if mode == "resume" else True
    if mode == "resume":     # its opt_param_scheduler (megatron-core's keys) is checked as ours is
        done = run_ranks("pretrain_gpt.py", flags + ["--lr-decay-iters", "50"], 1)
        error = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("error:")]
        assert done.returncode != 0 and len(error) == 1, failure_report(done)
        assert error[0].startswith(f"error: --lr-decay-iters 50 sets the learning-rate decay to 50 iterations "
                                   f"(100 samples), but the checkpoint in {directory} has 100 iterations "
                                   f"(200 samples); "), error[0]


def test_model_flags_that_disagree_with_the_megatron_lm_args_are_one_sentence_naming_both(tmp_path):
    directory = tmp_path / "megatron_llama"
    megatron_lm.save_checkpoint("llama", str(directory), tp=1, pp=1, fmt="torch", seed=1234, iteration=7)
    flags = null_tokenizer_run_flags(directory, tmp_path) + ["--hidden-size", "32", "--train-iters", "9"]
    done = run_ranks("pretrain_gpt.py", flags, 1)
    assert done.returncode != 0
    error = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "--hidden-size 64 in the checkpoint vs 32 here" in error[0], failure_report(done)


@pytest.mark.parametrize("name,fmt,distributed", [("llama", "torch", False), ("bert", "torch", False),
                                                  ("llama", "torch_dist", False), ("llama", "torch_dist", True),
                                                  ("gpt", "torch", True)])
def test_the_optimizer_state_goes_back_to_megatron_lm_so_it_resumes(tmp_path, name, fmt, distributed):
    """megatron-core's model with Adam state -> ours at TP=1 (change_mp keeps the state) -> --to-megatron-lm
    at TP=2: megatron-core's optimizer.load_state_dict takes it, and by parameter it holds exactly the
    moments and step it saved. distributed: saved by its DistributedOptimizer (distrib_optim.pt, DP=2),
    so the args say --use-distributed-optimizer: torch_dist gets the fully_reshardable layout and torch
    a distrib_optim.pt beside each rank file (megatron-core's grad-buffer order), which its
    DistributedOptimizer loads at DP=1 (load_parameter_state, as Megatron-LM's load_checkpoint)."""
    directory = tmp_path / "megatron"
    reference = megatron_lm.save_checkpoint(name, str(directory), tp=2, pp=1, dp=2 if distributed else 1, fmt="torch",
                                            seed=1234, iteration=7, with_optimizer=True, steps=2,
                                            distributed_optimizer=distributed)
    ours, exported = tmp_path / "ours", tmp_path / "exported"
    run_tool_main("change_mp.py", directory, "--target-tensor-parallel-size", 1, "--output", ours)
    run_tool_main("convert_checkpoint.py", "--to-megatron-lm", exported, "--load", ours,
                  "--tensor-model-parallel-size", 2, "--format", fmt)
    logits, optimizer = megatron_lm.load_with_optimizer(name, str(exported), tp=2, pp=1, fmt=fmt,
                                                        distributed_optimizer=distributed)
    _assert_logits(logits, reference.logits, name)
    assert optimizer.keys() == reference.optimizer.keys()
    for rank, by_name in reference.optimizer.items():
        assert optimizer[rank].keys() == by_name.keys()
        for parameter, fields in by_name.items():
            for field in ("exp_avg", "exp_avg_sq", "step"):
                torch.testing.assert_close(optimizer[rank][parameter][field].float(),
                                           fields[field].float(), rtol=0, atol=0, msg=lambda m: f"{rank} {parameter} {field}: {m}")


MASTER_OFFSET = 1e-3


def _as_bf16_run(ours, out):
    """Our TP=1 checkpoint `ours` as a bf16 run would save it: bf16 weights, and for every
    parameter an fp32 master, here its fp32 weight plus MASTER_OFFSET (so no master is its
    weight's upcast)."""
    shutil.copytree(ours, out)
    path = out / "iter_0000007" / "mp_rank_00" / "model_optim_rng.pt"
    state = torch.load(path, weights_only=False)
    for key, fields in state["optimizer"]["per_parameter"]["model"].items():
        fields["fp32_master"] = state["model"][key].float() + MASTER_OFFSET
    state["model"] = {key: weight.to(torch.bfloat16) for key, weight in state["model"].items()}
    state["model_config"]["params_dtype"] = "bfloat16"
    torch.save(state, path)


@pytest.mark.parametrize("name,dtype", [("llama", "fp32"), ("bert", "fp32"), ("t5", "fp32"), ("bert", "bf16")])
def test_legacy_key_names_carry_the_optimizer_state_in_the_legacy_models_parameter_order(tmp_path, name, dtype):
    """megatron-core's model with Adam state -> ours at TP=1 (bf16: cast, with fp32 masters) ->
    --to-megatron-lm --key-names legacy at TP=2. (a) Our reader gives back, for every parameter
    and rank, exactly our checkpoint's moments, step and masters. (b) In each rank file the model
    dict and the optimizer's positions follow the legacy model's named_parameters order
    (transcribed from Megatron-LM's legacy modules, not taken from our key mapping:
    harness/megatron_lm_legacy_order.py): the decayed group's positions, then the others', each
    holding the weight megatron-core saved and the moments and step its live optimizer held for
    that parameter (the fused QKV's rows included), and in bf16 its master at the same place."""
    directory = tmp_path / "megatron"
    reference = megatron_lm.save_checkpoint(name, str(directory), tp=2, pp=1, fmt="torch", seed=1234,
                                            iteration=7, with_optimizer=True, steps=2)
    ours, exported = tmp_path / "ours", tmp_path / "legacy"
    run_tool_main("change_mp.py", directory, "--target-tensor-parallel-size", 1, "--output", ours)
    if dtype == "bf16":
        _as_bf16_run(ours, tmp_path / "ours_bf16")
        ours = tmp_path / "ours_bf16"
    run_tool_main("convert_checkpoint.py", "--to-megatron-lm", exported, "--load", ours, "--key-names", "legacy",
                  "--tensor-model-parallel-size", 2)

    original, back = reshard.open_source(str(ours)), reshard.open_source(str(exported))
    assert back.has_optimizer() and set(back.owners) == set(original.owners)
    fields = {"exp_avg", "exp_avg_sq", "step"} | ({"fp32_master"} if dtype == "bf16" else set())
    smap = original.whole_model_map()
    for key in original.owners:
        for rank in range(2):
            want, got = (target_optimizer_state(source, key, smap.tensors[key], rank, 2, 128) for source in (original, back))
            assert set(got) == set(want) == fields, key
            assert all(torch.equal(got[field], want[field]) for field in want), (key, rank)

    for rank in range(2):
        raw = torch.load(exported / "iter_0000007" / f"mp_rank_{rank:02d}" / "model_optim_rng.pt", weights_only=False)
        megatron_core_file = torch.load(directory / "iter_0000007" / f"mp_rank_{rank:02d}" / "model_optim_rng.pt",
                                        weights_only=False)["model"]
        live = reference.optimizer[(rank, 0)]
        expected = [pair for pair in legacy_named_parameters(name) if pair[1] in live]
        assert {mcore for _, mcore in expected} == set(live)
        model = flattened(raw["model"])
        assert list(model) == [legacy for legacy, _ in expected]
        decayed = [pair for pair in expected if model[pair[0]].dim() > 1 and not pair[0].endswith(".bias")]
        others = [pair for pair in expected if pair not in decayed]
        optimizer = raw["optimizer"]["optimizer"] if dtype == "bf16" else raw["optimizer"]
        groups, state = optimizer["param_groups"], optimizer["state"]
        assert [group["wd_mult"] for group in groups] == [1.0, 0.0]
        assert [group["params"] for group in groups] == [list(range(len(decayed))),
                                                         list(range(len(decayed), len(expected)))]
        for position, (legacy, mcore) in enumerate(decayed + others):
            weight = megatron_core_file[mcore]
            assert torch.equal(model[legacy], weight.to(model[legacy].dtype)), legacy
            for field in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(state[position][field], live[mcore][field]), (position, legacy, field)
        if dtype == "bf16":
            masters = raw["optimizer"]["fp32_from_fp16_params"]
            for group, members in zip(masters, (decayed, others)):
                assert len(group) == len(members)
                for master, (legacy, mcore) in zip(group, members):
                    assert torch.equal(master, megatron_core_file[mcore] + MASTER_OFFSET), legacy
