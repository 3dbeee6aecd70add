"""tools/change_mp.py's resharding for every kind of tensor the families hold, from the
stored sharding maps alone: TP=2 x PP=2 checkpoints of GPT, Llama (grouped QKV, SwiGLU),
BERT, T5 (two stacks, split rank, tied decoder embedding) and Transformer-XL (shared
r_w_bias copies), written by real TP=2 ranks, are
  - resharded to TP=1 x PP=1: bit-equal to merging their shards and stages with
    mpu.sharding_map's merge functions (which tests/test_layout_sharding.py proves give
    the serial model's state and outputs), and the TP=1 model built from the result
    gives the outputs of the model built from that merge;
  - resharded to TP=4 (same stages) and back to TP=2: bit-equal to the original files;
  - for the single-stack families, re-cut to PP=4 and back to PP=1: the same whole model.
"""
import os

import pytest
import torch
import torch.distributed as dist

from megatron_core import mpu
from megatron_core.models.bert import BertModel
from megatron_core.models.gpt import GPTModel
from megatron_core.models.llama import llama_config
from megatron_core.models.t5 import T5Model
from megatron_core.models.transformer_xl import TransformerXLModel
from megatron_core.mpu.layout import PipelineStage
from megatron_core.mpu.sharding_map import ShardingMap, merge_pipeline_stages, merge_tensor_parallel
from tests.harness import run_distributed
from megatron_core.checkpoint.file_io import save_file
from megatron_core.checkpoint.megatron_layout import model_file
from megatron_core.checkpoint.reshard.rewrite import Target, reshard_checkpoint
from megatron_core.transformer import TransformerConfig
from tests.harness.model_checks import single_process_world

VOCAB, S, LAYERS = 64, 8, 4


def _base(**overrides):
    return dict(dict(num_layers=LAYERS, hidden_size=16, num_attention_heads=4, hidden_dropout=0.0,
                     attention_dropout=0.0, init_seed=13), **overrides)


FAMILIES = {
    "gpt": lambda c, stage: GPTModel(c, VOCAB, S, stage=stage),
    "llama_gqa_swiglu": lambda c, stage: GPTModel(c, VOCAB, S, stage=stage),
    "bert": lambda c, stage: BertModel(c, VOCAB, S, stage=stage),
    "t5": lambda c, stage: T5Model(c, VOCAB, max_sequence_length=S, stage=stage),
    "transformer_xl": lambda c, stage: TransformerXLModel(c, VOCAB, mem_length=4, stage=stage),
}
SINGLE_STACK = ["gpt", "llama_gqa_swiglu", "bert", "transformer_xl"]


def _config(family, tp):
    if family == "llama_gqa_swiglu":
        return llama_config(num_layers=LAYERS, hidden_size=32, num_attention_heads=8, num_query_groups=4,
                            ffn_hidden_size=24, init_seed=13, tensor_model_parallel_size=tp)
    fields = {"gpt": _base(), "bert": _base(layernorm_position="post"),
              "t5": _base(normalization="RMSNorm", add_bias_linear=False, position_embedding_type="t5_relative",
                          softmax_scale=1.0, activation="geglu_tanh", ffn_hidden_size=32,
                          relative_attention_num_buckets=8, relative_attention_max_distance=16),
              "transformer_xl": _base(position_embedding_type="relative_xl", activation="gelu_tanh",
                                      ffn_hidden_size=32)}[family]
    return TransformerConfig(**fields, tensor_model_parallel_size=tp)


def _stage(family, rank, size):
    return PipelineStage(rank, size, split_rank=1 if family == "t5" and size > 1 else None)


def _save_checkpoints(root):
    """Each TP=2 rank writes its file of each pipeline stage, weights moved off their init."""
    mpu.initialize_model_parallel(2)
    tp_rank = dist.get_rank()
    for family, build in FAMILIES.items():
        chunks = [build(_config(family, 2), _stage(family, stage_rank, 2)) for stage_rank in range(2)]
        maps = [chunk.sharding_map(VOCAB - 3) for chunk in chunks]
        owners = {}
        for stage_rank, (chunk, smap) in enumerate(zip(chunks, maps)):
            split = torch.Generator().manual_seed(1000 * tp_rank + stage_rank)
            replicated = torch.Generator().manual_seed(stage_rank)    # the same on every TP rank, as in training
            with torch.no_grad():
                for key, p in sorted(chunk.named_parameters()):
                    if smap[key].copy_of is None:
                        g = replicated if smap[key].replicated else split
                        p.add_(0.3 * torch.randn(p.shape, generator=g))
                        owners[smap.global_key(key)] = p
        with torch.no_grad():   # a stage's copy holds its original's values, as in training
            for chunk, smap in zip(chunks, maps):
                for key, p in chunk.named_parameters():
                    if smap[key].copy_of is not None:
                        p.copy_(owners[smap[key].copy_of])
        for stage_rank, chunk in enumerate(chunks):
            state = {"iteration": 3, "consumed_train_samples": 24, "consumed_valid_samples": 0,
                     "model_config": chunk.config.to_dict(), "args": {}, "vocab_size": VOCAB - 3,
                     "padded_vocab_size": VOCAB, "opt_param_scheduler": {"num_steps": 24}, "rng_state": [],
                     "parallel": {"tensor_model_parallel_size": 2, "pipeline_model_parallel_size": 2,
                                  "virtual_pipeline_model_parallel_size": None, "data_parallel_size": 1,
                                  "use_distributed_optimizer": False},
                     "model": chunk.state_dict(), "sharding_map": {"model": chunk.sharding_map(VOCAB - 3).to_dict()}}
            if family == "t5":
                state["args"]["pipeline_model_parallel_split_rank"] = 1
            path = model_file(os.path.join(root, family), 3, tp_rank, stage_rank, 2)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            save_file(state, path)
    if tp_rank == 0:
        for family in FAMILIES:
            with open(os.path.join(root, family, "latest_checkpointed_iteration.txt"), "w") as f:
                f.write("3\n")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("families"))
    run_distributed(_save_checkpoints, 2, root, timeout=300)
    return root


def _files(directory, tp, pp):
    return {(t, p): torch.load(model_file(directory, 3, t, p, pp), weights_only=True)
            for t in range(tp) for p in range(pp)}


def _merged(directory, tp, pp):
    files = _files(directory, tp, pp)
    stages = []
    for p in range(pp):
        smap = ShardingMap.from_dict(files[(0, p)]["sharding_map"]["model"])
        stages.append((merge_tensor_parallel([files[(t, p)]["model"] for t in range(tp)], smap), smap))
    return merge_pipeline_stages(stages)[0]


def _assert_equal_states(got, want, what):
    assert sorted(got) == sorted(want), what
    for key in want:
        assert torch.equal(got[key], want[key]), f"{what}: {key}"


def _inputs():
    g = torch.Generator().manual_seed(5)
    return {"ids": torch.randint(0, VOCAB - 3, (2, S), generator=g), "dec": torch.randint(0, VOCAB - 3, (2, S),
                                                                                         generator=g)}


def _outputs(family, model):
    x = _inputs()
    with torch.no_grad():
        model.eval()
        if family == "t5":
            out = model(x["ids"], x["dec"], torch.ones(2, S, dtype=torch.long))
        elif family == "bert":
            out = model(x["ids"], torch.ones(2, S, dtype=torch.long), torch.zeros(2, S, dtype=torch.long))
        else:
            out = model(x["ids"])
    return [t for t in (out if isinstance(out, tuple) else (out,)) if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_tp2_pp2_to_one_stage_is_the_merge_by_the_map_and_gives_its_outputs(checkpoints, family, tmp_path):
    source = os.path.join(checkpoints, family)
    reshard_checkpoint(source, str(tmp_path), Target(1, 1, keep_optimizer=False), progress=lambda _: None)
    got = _files(str(tmp_path), 1, 1)[(0, 0)]
    merged = _merged(source, 2, 2)
    _assert_equal_states(got["model"], merged, family)
    assert got["iteration"] == 3 and got["padded_vocab_size"] == VOCAB and got["parallel"][
        "tensor_model_parallel_size"] == 1
    with single_process_world():
        from_tool, from_merge = (FAMILIES[family](_config(family, 1), None) for _ in range(2))
        from_tool.load_state_dict(got["model"], strict=True)
        from_merge.load_state_dict(merged, strict=True)
        for a, b in zip(_outputs(family, from_tool), _outputs(family, from_merge)):
            assert torch.equal(a, b), family


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_tp2_to_tp4_and_back_gives_the_original_files(checkpoints, family, tmp_path):
    source = os.path.join(checkpoints, family)
    reshard_checkpoint(source, str(tmp_path / "tp4"), Target(4, 2, keep_optimizer=False), progress=lambda _: None)
    tp4 = _files(str(tmp_path / "tp4"), 4, 2)
    assert tp4[(3, 1)]["sharding_map"]["model"]["tensor_model_parallel_size"] == 4
    reshard_checkpoint(str(tmp_path / "tp4"), str(tmp_path / "tp2"), Target(2, 2, keep_optimizer=False),
                       progress=lambda _: None)
    original, back = _files(source, 2, 2), _files(str(tmp_path / "tp2"), 2, 2)
    for where in original:
        _assert_equal_states(back[where]["model"], original[where]["model"], f"{family} {where}")
        assert back[where]["sharding_map"] == original[where]["sharding_map"], (family, where)


@pytest.mark.parametrize("family", SINGLE_STACK)
def test_single_stack_pipelines_recut_to_four_stages_hold_the_same_model(checkpoints, family, tmp_path):
    source = os.path.join(checkpoints, family)
    reshard_checkpoint(source, str(tmp_path / "pp4"), Target(2, 4, keep_optimizer=False), progress=lambda _: None)
    files = _files(str(tmp_path / "pp4"), 2, 4)
    assert all(len([k for k in files[(0, p)]["model"] if ".layers.0." in k or k.startswith("layers.0.")]) > 0
               for p in range(4))
    _assert_equal_states(_merged(str(tmp_path / "pp4"), 2, 4), _merged(source, 2, 2), family)
    # each stage's keys are what the model builds for that stage
    with single_process_world():
        for p in range(4):
            built = FAMILIES[family](_config(family, 1), _stage(family, p, 4))
            assert sorted(files[(0, p)]["model"]) == sorted(built.state_dict()), (family, p)


def _assert_stage_maps_are_the_models(directory, family, tp, pp, split):
    """Each written stage's map (keys, splits, copies, layer offsets) is the one the model
    builds for that stage: an independent reference for the offline stage plan."""
    files = _files(directory, tp, pp)
    with single_process_world():
        for p in range(pp):
            built = FAMILIES[family](_config(family, 1), PipelineStage(p, pp, split_rank=split)).sharding_map(VOCAB - 3)
            saved = ShardingMap.from_dict(files[(0, p)]["sharding_map"]["model"])
            assert saved.tensors == built.tensors, (family, p)
            assert saved.layer_offsets == built.layer_offsets, (family, p)
            assert sorted(files[(0, p)]["model"]) == sorted(built.tensors), (family, p)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_one_stage_checkpoints_cut_into_four_stages_hold_the_models_stages_and_the_same_model(
        checkpoints, family, tmp_path):
    source = os.path.join(checkpoints, family)
    reshard_checkpoint(source, str(tmp_path / "pp1"), Target(1, 1, keep_optimizer=False), progress=lambda _: None)
    split = 2 if family == "t5" else None
    reshard_checkpoint(str(tmp_path / "pp1"), str(tmp_path / "pp4"),
                       Target(2, 4, keep_optimizer=False, pipeline_split_rank=split), progress=lambda _: None)
    _assert_stage_maps_are_the_models(str(tmp_path / "pp4"), family, 2, 4, split)
    _assert_equal_states(_merged(str(tmp_path / "pp4"), 2, 4), _merged(source, 2, 2), family)
    args = _files(str(tmp_path / "pp4"), 2, 4)[(0, 0)]["args"]
    assert args.get("pipeline_model_parallel_split_rank") == split


@pytest.mark.parametrize("pipeline_size,split", [(3, 1), (3, 2), (4, 2)])
def test_t5_pipelines_recut_to_other_encoder_decoder_splits_hold_the_same_model(checkpoints, tmp_path,
                                                                              pipeline_size, split):
    source = os.path.join(checkpoints, "t5")
    out = str(tmp_path / "t5")
    reshard_checkpoint(source, out, Target(1, pipeline_size, keep_optimizer=False, pipeline_split_rank=split),
                       progress=lambda _: None)
    _assert_stage_maps_are_the_models(out, "t5", 1, pipeline_size, split)
    _assert_equal_states(_merged(out, 1, pipeline_size), _merged(source, 2, 2), "t5")


def test_t5_cut_into_stages_without_a_split_rank_is_one_sentence(checkpoints, tmp_path):
    from megatron_core.errors import CheckpointError
    with pytest.raises(CheckpointError, match="--target-pipeline-model-parallel-split-rank"):
        reshard_checkpoint(os.path.join(checkpoints, "t5"), str(tmp_path / "t5"), Target(1, 4, keep_optimizer=False),
                           progress=lambda _: None)
