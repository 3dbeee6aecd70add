"""The pure layout and sharding arithmetic, and every family's sharding map.

Pure (no process): shard_tensor / merge_shards are inverses and split fused weights the
way the attention and MLP docstrings lay them out; Megatron's stage layer ranges with
virtual stages; pipeline chunks built from explicit stages merge (by their maps) into the
whole model's state dict. Multi-process (gloo): for every family the TP=2 and TP=4
state dicts, saved with their maps and merged afterwards in this process with no
process group, give the TP=1 state dict exactly; splitting it gives the shards; and a
TP=1 model's weights split by the map, loaded at TP=k, give the TP=1 loss.
"""
import ast
import os

import pytest
import torch
import torch.distributed as dist

from megatron_core import mpu
from megatron_core.errors import CheckpointError, ConfigError
from megatron_core.models.bert import BertModel
from megatron_core.models.gpt import GPTModel
from megatron_core.models.llama import llama_config
from megatron_core.models.roformer import RoFormerModel
from megatron_core.models.t5 import T5Model
from megatron_core.models.transformer_xl import TransformerXLModel
from megatron_core.mpu.layout import (PipelineStage, merge_shards, pad_vocab_size, shard_tensor,
                                      stage_layer_range)
from megatron_core.mpu.sharding_map import (ShardingMap, ShardSpec, merge_pipeline_stages, merge_tensor_parallel,
                                            split_tensor_parallel)
from tests.harness import run_distributed
from megatron_core.transformer import TransformerConfig
from tests.harness.model_checks import single_process_world

VOCAB, B, S = 64, 2, 8


# --- shard / merge ------------------------------------------------------------------------------------
@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("dim", [0, 1])
def test_merge_shards_inverts_shard_tensor(stride, dim):
    full = torch.randn(24, 36) if dim == 0 else torch.randn(36, 24)
    for size in (1, 2, 4):
        shards = [shard_tensor(full, dim, r, size, stride) for r in range(size)]
        assert all(s.shape[dim] == 24 // size for s in shards)
        assert torch.equal(merge_shards(shards, dim, stride), full)
        # and the other way round: shards of a merge are the shards
        again = merge_shards(shards, dim, stride)
        assert all(torch.equal(shard_tensor(again, dim, r, size, stride), s) for r, s in enumerate(shards))


def test_stride_two_gives_each_rank_its_rows_of_gate_and_up():
    """The GLU's fused [gate; up] (transformer/mlp.py): rank r holds [gate_r; up_r]."""
    gate, up = torch.randn(12, 5), torch.randn(12, 5)
    for tp in (2, 3):
        for r in range(tp):
            rows = slice(r * 12 // tp, (r + 1) * 12 // tp)
            assert torch.equal(shard_tensor(torch.cat([gate, up]), 0, r, tp, 2), torch.cat([gate[rows], up[rows]]))


def test_grouped_qkv_split_hands_each_rank_whole_query_groups():
    """The fused QKV laid out group by group (transformer/attention.py): a stride-1 split
    gives rank r its groups' query heads, key and value; a [q | k | v] layout (Chinese-
    Transformer-XL's) needs stride 3 for the same heads."""
    heads, groups, d, hidden, tp = 8, 4, 2, 3, 2
    q = torch.randn(groups, heads // groups, d, hidden)
    k, v = torch.randn(groups, 1, d, hidden), torch.randn(groups, 1, d, hidden)
    grouped = torch.cat([q, k, v], dim=1).reshape(-1, hidden)
    per_rank = groups // tp
    for r in range(tp):
        mine = slice(r * per_rank, (r + 1) * per_rank)
        expected = torch.cat([q[mine], k[mine], v[mine]], dim=1).reshape(-1, hidden)
        assert torch.equal(shard_tensor(grouped, 0, r, tp), expected)
    q_mha, k_mha, v_mha = (torch.randn(heads, d, hidden) for _ in range(3))
    qkv = torch.cat([q_mha, k_mha, v_mha]).reshape(-1, hidden)
    for r in range(tp):
        mine = slice(r * heads // tp, (r + 1) * heads // tp)
        expected = torch.cat([q_mha[mine], k_mha[mine], v_mha[mine]]).reshape(-1, hidden)
        assert torch.equal(shard_tensor(qkv, 0, r, tp, stride=3), expected)


def test_a_dimension_that_does_not_split_is_one_sentence():
    with pytest.raises(ValueError, match=r"dimension 10 cannot be split into 2 ranks x stride 3"):
        shard_tensor(torch.zeros(10), 0, 0, 2, 3)
    with pytest.raises(ValueError, match="one shape"):
        merge_shards([torch.zeros(2), torch.zeros(3)], 0)


# --- stages and vocabulary -------------------------------------------------------------------------------
def test_stage_layer_range_is_megatrons_even_split():
    assert [stage_layer_range(8, 4, r) for r in range(4)] == [(0, 2), (2, 2), (4, 2), (6, 2)]
    # interleaved: rank 0 holds [0,1] and [4,5], rank 1 holds [2,3] and [6,7]
    assert [stage_layer_range(8, 2, r, 2, v) for r in range(2) for v in range(2)] == [(0, 2), (4, 2), (2, 2), (6, 2)]
    assert stage_layer_range(12, 2, 1, 3, 2) == (10, 2)
    with pytest.raises(ConfigError, match=r"num_layers \(6\) is not divisible by pipeline_model_parallel_size \(4\)"):
        stage_layer_range(6, 4, 0)


@pytest.mark.parametrize("layers,size,virtual", [(8, 2, None), (8, 4, 2), (12, 2, 3), (6, 3, None), (16, 4, 4)])
def test_pipeline_stages_cover_every_layer_once_in_model_order(layers, size, virtual):
    chunks = [PipelineStage(r, size, v, virtual) for r in range(size) for v in (range(virtual) if virtual else [None])]
    ranges = sorted(chunk.layer_range(layers) for chunk in chunks)
    held = [offset + i for offset, count in ranges for i in range(count)]
    assert held == list(range(layers))
    assert [c.is_first for c in chunks].count(True) == 1 and [c.is_last for c in chunks].count(True) == 1
    first = next(c for c in chunks if c.is_first)
    last = next(c for c in chunks if c.is_last)
    assert first.layer_range(layers)[0] == 0
    assert sum(last.layer_range(layers)) == layers


def test_split_pipeline_gives_each_stack_its_own_stages():
    stages = [PipelineStage(r, 4, split_rank=1) for r in range(4)]
    assert [s.stack_stage("encoder") for s in stages] == [PipelineStage(0, 1), None, None, None]
    assert [s.stack_stage("decoder") for s in stages] == [None, PipelineStage(0, 3), PipelineStage(1, 3),
                                                         PipelineStage(2, 3)]
    assert PipelineStage().stack_stage("encoder") == PipelineStage().stack_stage("decoder") == PipelineStage()


@pytest.mark.parametrize("kwargs,message", [
    (dict(rank=2, size=2), "outside a pipeline of 2 stages"),
    (dict(rank=0, size=2, virtual_rank=1), "together"),
    (dict(rank=0, size=2, virtual_rank=2, virtual_size=2), "outside 2 virtual stages"),
    (dict(rank=0, size=2, split_rank=2), "0 < split_rank < pipeline size"),
    (dict(rank=0, size=4, virtual_rank=0, virtual_size=2, split_rank=2), "cannot use virtual stages"),
])
def test_impossible_stages_are_one_sentence(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PipelineStage(**kwargs)


def test_pad_vocab_size_is_megatrons_rule():
    assert pad_vocab_size(21128, 128, 1) == 21248
    assert pad_vocab_size(21128, 128, 2) == 21248
    assert pad_vocab_size(21128, 128, 4) == 21504
    assert pad_vocab_size(50257, 128, 8) == 51200
    assert pad_vocab_size(1024, 128, 8) == 1024


def test_layout_modules_import_only_torch_stdlib_and_errors():
    """The pure modules stay usable by tools that start no world."""
    allowed = {"__future__", "dataclasses", "re", "typing", "torch", "errors", "layout"}
    for name in ("layout.py", "sharding_map.py"):
        path = os.path.join(os.path.dirname(mpu.__file__), name)
        source = open(path).read()
        assert "distributed" not in source and "parallel_state" not in source, name
        tree = ast.parse(source)
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                imported.add((node.module or "").split(".")[0])
        assert imported <= allowed, (name, imported - allowed)


# --- maps ---------------------------------------------------------------------------------------------------
def test_sharding_map_round_trips_through_torch_save_weights_only(tmp_path):
    smap = ShardingMap({"decoder.layers.1.mlp.weight": ShardSpec(0, 2), "decoder.layers_x.1.w": ShardSpec(),
                        "emb": ShardSpec(0, 1, vocab=True), "copy": ShardSpec(0, 1, vocab=True, copy_of="emb")},
                       tensor_model_parallel_size=2,
                       padded_vocab_size=256, vocab_size=250, layer_offsets={"decoder.layers": 4})
    torch.save({"map": smap.to_dict()}, tmp_path / "map.pt")
    back = ShardingMap.from_dict(torch.load(tmp_path / "map.pt", weights_only=True)["map"])
    assert back == smap
    assert back.global_key("decoder.layers.1.mlp.weight") == "decoder.layers.5.mlp.weight"
    assert back.global_key("decoder.layers_x.1.w") == "decoder.layers_x.1.w"
    assert back.global_key("copy") == "emb"
    with pytest.raises(CheckpointError, match="version 7"):
        ShardingMap.from_dict({**smap.to_dict(), "version": 7})


def test_merging_needs_every_shard_and_the_saved_keys():
    smap = ShardingMap({"w": ShardSpec(0)}, tensor_model_parallel_size=2)
    with pytest.raises(CheckpointError, match="2 tensor-parallel shards but 1 were given"):
        merge_tensor_parallel([{"w": torch.zeros(2)}], smap)
    with pytest.raises(CheckpointError, match=r"missing \['w'\], unexpected \['v'\]"):
        merge_tensor_parallel([{"v": torch.zeros(2)}] * 2, smap)
    with pytest.raises(ConfigError, match="re-pad"):
        split_tensor_parallel({"w": torch.zeros(6)}, ShardingMap({"w": ShardSpec(0, vocab=True)}, 1, 6), 4)


# --- the families -----------------------------------------------------------------------------------------------
def _base(**overrides):
    values = dict(num_layers=2, hidden_size=16, num_attention_heads=4, hidden_dropout=0.0, attention_dropout=0.0,
                  init_seed=13)
    values.update(overrides)
    return values


def _t5(tied, activation):
    return _base(normalization="RMSNorm", add_bias_linear=False, position_embedding_type="t5_relative",
                 softmax_scale=1.0, activation=activation, ffn_hidden_size=32, relative_attention_num_buckets=8,
                 relative_attention_max_distance=16, share_embeddings_and_output_weights=tied)


def _xl(**overrides):
    return _base(**{"position_embedding_type": "relative_xl", "activation": "gelu_tanh", "ffn_hidden_size": 32,
                    **overrides})


# family -> (model builder(config, stage), config fields, forward(model, inputs) -> tensors to compare)
FAMILIES = {
    "gpt": (lambda c, stage: GPTModel(c, VOCAB, S, stage=stage), _base(),
            lambda m, x: m(x["ids"], labels=x["labels"])),
    "llama_gqa_swiglu": (lambda c, stage: GPTModel(c, VOCAB, S, stage=stage), None,
                         lambda m, x: m(x["ids"], labels=x["labels"])),
    "bert": (lambda c, stage: BertModel(c, VOCAB, S, stage=stage), _base(layernorm_position="post"),
             lambda m, x: m(x["ids"], x["padding"], x["types"], x["labels"])),
    "megatron_bert": (lambda c, stage: BertModel(c, VOCAB, S, stage=stage), _base(layernorm_position="pre"),
                      lambda m, x: m(x["ids"], x["padding"], x["types"], x["labels"])),
    "roformer": (lambda c, stage: RoFormerModel(c, VOCAB, S, stage=stage),
                 _base(layernorm_position="pre", position_embedding_type="rope", rotary_interleaved=True),
                 lambda m, x: m(x["ids"], x["padding"], x["types"], x["labels"])[0]),
    "t5_v1_0": (lambda c, stage: T5Model(c, VOCAB, max_sequence_length=S, stage=stage), _t5(True, "relu"),
                lambda m, x: m(x["ids"], x["dec"], x["padding"], labels=x["labels"])),
    "t5_v1_1_untied": (lambda c, stage: T5Model(c, VOCAB, max_sequence_length=S, stage=stage),
                       _t5(False, "geglu_tanh"), lambda m, x: m(x["ids"], x["dec"], x["padding"], labels=x["labels"])),
    "transformer_xl": (lambda c, stage: TransformerXLModel(c, VOCAB, mem_length=4, stage=stage), _xl(),
                       lambda m, x: m(x["ids"], labels=x["labels"])[0]),
    "transformer_xl_untie_r_untied": (
        lambda c, stage: TransformerXLModel(c, VOCAB, mem_length=4, untie_r=True, stage=stage),
        _xl(share_embeddings_and_output_weights=False, normalization="RMSNorm", activation="swiglu",
            ffn_hidden_size=24), lambda m, x: m(x["ids"], labels=x["labels"])[0]),
}


def _config(family, tp):
    fields = FAMILIES[family][1]
    if family == "llama_gqa_swiglu":  # 8 heads in 4 groups: TP=4 still holds whole groups
        return llama_config(num_layers=2, hidden_size=32, num_attention_heads=8, num_query_groups=4,
                            ffn_hidden_size=24, init_seed=13, tensor_model_parallel_size=tp)
    return TransformerConfig(**fields, tensor_model_parallel_size=tp)


def _stage(family, rank, size, virtual_rank=None, virtual_size=None):
    split = 1 if family.startswith("t5") and size > 1 else None
    return PipelineStage(rank, size, virtual_rank, virtual_size, split)


def _build(family, tp, stage=None):
    return FAMILIES[family][0](_config(family, tp), stage)


def _inputs():
    g = torch.Generator().manual_seed(5)
    padding = torch.ones(B, S, dtype=torch.long)
    padding[1, -3:] = 0
    return {"ids": torch.randint(0, VOCAB, (B, S), generator=g), "labels": torch.randint(0, VOCAB, (B, S), generator=g),
            "types": torch.randint(0, 2, (B, S), generator=g), "dec": torch.randint(0, VOCAB, (B, S), generator=g),
            "padding": padding}


def _randomized_state(model):
    """Every tensor of a TP=1 state dict moved off its init (zero biases, unit norms, zero
    r_w_bias would hide a wrong split), from a seed per key."""
    state = {}
    for key, value in model.state_dict().items():
        seed = sum(ord(c) * (i + 1) for i, c in enumerate(key)) % 100003
        state[key] = value + 0.3 * torch.randn(value.shape, generator=torch.Generator().manual_seed(seed))
    return state


def _outputs(family, model):
    with torch.no_grad():
        out = FAMILIES[family][2](model.eval(), _inputs())
    return [t for t in (out if isinstance(out, tuple) else (out,)) if t is not None]


# Per test (0.06 s), not per module: run_distributed forks its workers only from a process without a
# process group, and a world kept to the end of the module made its later tests spawn them (~5 s each).
@pytest.fixture
def single_rank():
    with single_process_world():
        yield


# Virtual stages: the families whose chunks are one stack's layers (T5 splits by stack).
VIRTUAL = {"gpt", "llama_gqa_swiglu", "bert", "roformer", "transformer_xl"}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_pipeline_chunks_merge_by_their_maps_into_the_whole_model(single_rank, family):
    """Chunks built from explicit stages (no pipeline groups needed) hold exactly the whole
    model's tensors: merged by layer offset, copies dropped, they give its state dict,
    and the merged map is the whole model's map."""
    whole = _build(family, 1)
    layouts = [[_stage(family, r, 2) for r in range(2)]]
    if family in VIRTUAL:
        whole = FAMILIES[family][0](_config(family, 1).replace(num_layers=4), None)
        layouts.append([_stage(family, r, 2, v, 2) for r in range(2) for v in range(2)])
    for stages in layouts:
        chunks = [FAMILIES[family][0](whole.config, stage) for stage in stages]
        maps = [chunk.sharding_map() for chunk in chunks]
        copies = {key for m in maps for key, spec in m.tensors.items() if spec.copy_of is not None}
        tied = whole.config.share_embeddings_and_output_weights
        if family.startswith("t5"):  # the decoder stage's embedding; the tied head shares it
            assert copies == {"embedding.word_embeddings.weight"}
        elif family.startswith("transformer_xl"):
            assert copies == ({"word_embeddings.weight"} if tied else set()) | \
                (set() if family.endswith("untied") else {"r_w_bias", "r_r_bias"})
        else:
            assert copies == ({"word_embeddings.weight"} if tied else set())
        merged, merged_map = merge_pipeline_stages(list(zip([c.state_dict() for c in chunks], maps)))
        expected = whole.state_dict()
        assert sorted(merged) == sorted(expected)
        for key, value in expected.items():
            assert torch.equal(merged[key], value), key
        assert merged_map == whole.sharding_map()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_maps_copies_are_the_chunks_non_owning_stage_copies_named_by_their_whole_model_key(single_rank, family):
    """One marking (mark_stage_copy) serves the pipeline and the map: in every chunk the
    keys the map calls copies are exactly the non-owning stage copies, each copy_of is the
    key its copy was marked with, and that key is the owner's key in the whole model and
    the owning chunk's own key. T5 also with two stages per stack (relative-bias copies)."""
    whole = _build(family, 1)
    layouts = [[_stage(family, r, 2) for r in range(2)]]
    if family.startswith("t5"):
        whole = FAMILIES[family][0](_config(family, 1).replace(num_layers=2), None)
        layouts.append([PipelineStage(r, 4, split_rank=2) for r in range(4)])
    whole_keys = set(whole.state_dict())
    for stages in layouts:
        owners, copies = {}, {}
        for stage in stages:
            chunk = FAMILIES[family][0](whole.config, stage)
            smap, params = chunk.sharding_map(), dict(chunk.named_parameters())
            marked = {name: p.stage_copy for name, p in params.items() if getattr(p, "shared", False)}
            assert {k: spec.copy_of for k, spec in smap.tensors.items() if spec.copy_of is not None} == marked
            copies.update({(stage.rank, name): key for name, key in marked.items()})
            owners.update({key: name for key, p in chunk.stage_copies().items()
                           for name, q in params.items() if q is p and not getattr(p, "shared", False)})
        assert all(key in whole_keys and owners[key] == key for key in copies.values()), (copies, owners)
        if len(stages) == 4:  # each stack's later stage holds a copy of its relative-bias table
            assert {"encoder_relative_bias.weight", "decoder_relative_bias.weight"} <= set(copies.values())


def test_a_shared_parameter_that_names_no_original_is_refused():
    layer = torch.nn.Linear(2, 2)
    layer.weight.shared = True  # a copy, but of what?
    with pytest.raises(ValueError, match="mark_stage_copy"):
        mpu.sharding_map_of(layer, 1)
    mpu.mark_stage_copy(layer.weight, "encoder.weight", owner=False)
    assert mpu.sharding_map_of(layer, 1)["weight"].copy_of == "encoder.weight"


def test_vocabulary_splits_are_marked_and_sized(single_rank):
    model = _build("t5_v1_1_untied", 1)
    smap = model.sharding_map(vocab_size=60)
    assert smap.padded_vocab_size == VOCAB and smap.vocab_size == 60
    assert {k for k, s in smap.tensors.items() if s.vocab} == {"embedding.word_embeddings.weight", "output_layer.weight"}
    bert = _build("bert", 1).sharding_map()
    assert {k for k, s in bert.tensors.items() if s.vocab} == {"embedding.word_embeddings.weight", "lm_head.bias"}
    mlp = _build("llama_gqa_swiglu", 1).sharding_map()["decoder.layers.0.mlp.dense_h_to_4h.weight"]
    assert (mlp.split_dim, mlp.stride) == (0, 2)


def test_a_pipeline_without_an_explicit_stage_is_refused():
    run_distributed(_check_stage_is_required, 2)


def _check_stage_is_required():
    mpu.initialize_model_parallel(1, 2, 2)
    with pytest.raises(ConfigError, match="stage=mpu.get_pipeline_stage"):
        _build("gpt", 1)
    with pytest.raises(ConfigError, match="pass the chunk's virtual_rank"):
        mpu.get_pipeline_stage()
    rank = mpu.get_pipeline_model_parallel_rank()
    assert mpu.get_pipeline_stage(1) == PipelineStage(rank, 2, 1, 2)
    chunk = GPTModel(_config("gpt", 1).replace(num_layers=4), VOCAB, S, stage=mpu.get_pipeline_stage(1))
    assert chunk.layer_offset == 2 + rank and chunk.post_process == (rank == 1) and not chunk.pre_process


# --- tensor parallelism, in real groups ---------------------------------------------------------------------------
def _save_tensor_parallel_states(tp, out_dir):
    """Phase 1 (TP=1): each family's init state, its randomized state and outputs. Phase 2
    (TP=tp): each rank's init state and map, also for the two PP=2 chunks; the randomized
    TP=1 state split by the map and loaded here gives the TP=1 outputs."""
    rank = dist.get_rank()
    mpu.initialize_model_parallel(1)
    serial = {}
    for family in FAMILIES:
        model = _build(family, 1)
        init = {key: value.clone() for key, value in model.state_dict().items()}
        randomized = _randomized_state(model)
        model.load_state_dict(randomized)
        serial[family] = (randomized, _outputs(family, model))
        if rank == 0:
            torch.save(init, os.path.join(out_dir, f"{family}_tp1.pt"))
            torch.save({str(r): _build(family, 1, _stage(family, r, 2)).state_dict() for r in range(2)},
                       os.path.join(out_dir, f"{family}_tp1_pp2.pt"))
    mpu.destroy_model_parallel()
    mpu.initialize_model_parallel(tp)
    for family in FAMILIES:
        model = _build(family, tp)
        smap = model.sharding_map()
        stages = [_build(family, tp, _stage(family, r, 2)) for r in range(2)]
        torch.save({"state": model.state_dict(), "map": smap.to_dict(),
                    "stages": [{"state": s.state_dict(), "map": s.sharding_map().to_dict()} for s in stages]},
                   os.path.join(out_dir, f"{family}_tp{tp}_rank{rank}.pt"))
        randomized, expected = serial[family]
        model.load_state_dict(split_tensor_parallel(randomized, smap, tp)[rank])
        for got, want in zip(_outputs(family, model), expected):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=lambda m: f"{family}: {m}")


def _load(out_dir, name):
    return torch.load(os.path.join(out_dir, name), weights_only=True)


def _assert_same_state(got, want, what):
    assert sorted(got) == sorted(want), what
    for key, value in want.items():
        assert torch.equal(got[key], value), f"{what}: {key}"


@pytest.mark.parametrize("tp", [2, 4])
def test_tensor_parallel_shards_merge_by_the_map_alone_into_the_serial_state(tp, tmp_path):
    run_distributed(_save_tensor_parallel_states, tp, tp, str(tmp_path), timeout=300)
    # What follows runs in this process from the saved files and maps only (the sharding
    # code never touches torch.distributed: test_layout_modules_import_only_...).
    for family in FAMILIES:
        serial = _load(tmp_path, f"{family}_tp1.pt")
        saved = [_load(tmp_path, f"{family}_tp{tp}_rank{r}.pt") for r in range(tp)]
        smap = ShardingMap.from_dict(saved[0]["map"])
        assert smap.tensor_model_parallel_size == tp and smap.padded_vocab_size == VOCAB
        shards = [s["state"] for s in saved]
        _assert_same_state(merge_tensor_parallel(shards, smap), serial, f"{family} TP={tp} merged")
        for r, split in enumerate(split_tensor_parallel(serial, smap, tp)):
            _assert_same_state(split, shards[r], f"{family} TP=1 split for rank {r}")
        # TP=tp x PP=2: merge each stage's shards, then the stages.
        stage_states = []
        for stage in range(2):
            stage_map = ShardingMap.from_dict(saved[0]["stages"][stage]["map"])
            merged = merge_tensor_parallel([s["stages"][stage]["state"] for s in saved], stage_map)
            _assert_same_state(merged, _load(tmp_path, f"{family}_tp1_pp2.pt")[str(stage)],
                               f"{family} TP={tp} stage {stage} merged")
            stage_states.append((merged, stage_map))
        _assert_same_state(merge_pipeline_stages(stage_states)[0], serial, f"{family} TP={tp} x PP=2 merged")
