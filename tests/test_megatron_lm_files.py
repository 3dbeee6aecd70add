"""Megatron-LM's `torch`-format files read as ours (checkpoint/megatron_lm/): the split rules
by module kind agree with our layers' own sharding maps; files written with megatron-core
names and with legacy nested names (every checkpoint_version's QKV order) give our weights at
any saved TP x PP through the resharder, and a legacy file's Adam state by the legacy model's
parameter order, its QKV moments in the weights' row order; the args Namespace is read under
its allowlist and nothing else unpickles; unsupported models are one sentence.

The files here are transcriptions of Megatron-LM's naming made from our own models; the
files of NVIDIA's megatron-core itself are read in test_megatron_lm_interop.py."""
import argparse
import os

import pytest
import torch

from megatron_core.checkpoint.megatron_lm.files import spec_of
from megatron_core.checkpoint.megatron_lm.key_names import legacy_from_ours, mcore_from_ours, nest, ours_from_legacy
from megatron_core.checkpoint.reshard import SavedCheckpoint
from megatron_core.checkpoint.reshard.targets import target_optimizer_state, target_weight
from megatron_core.checkpoint.weights_checkpoint import serial_world
from megatron_core.errors import CheckpointError
from megatron_core.models.registry import get_family
from megatron_core.mpu.layout import PipelineStage, shard_tensor
from megatron_core.mpu.parameter_device import parameters_on
from megatron_core.transformer.config import GATED_ACTIVATIONS, TransformerConfig
from tests.harness.megatron_lm_legacy_order import flattened, legacy_named_parameters

pytestmark = pytest.mark.quick

LLAMA = dict(normalization="RMSNorm", activation="swiglu", position_embedding_type="rope", num_query_groups=2,
             add_bias_linear=False, share_embeddings_and_output_weights=False)
BERT_OPTIONS = {"max_sequence_length": 16, "num_tokentypes": 2, "add_binary_head": True, "add_pooler": True}
CASES = {"gpt": ("gpt", {}, {"max_sequence_length": 16}), "llama": ("gpt", LLAMA, {"max_sequence_length": 16}),
         "bert": ("bert", dict(layernorm_position="pre"), BERT_OPTIONS)}
ARGS = {"gpt": dict(), "llama": dict(normalization="RMSNorm", swiglu=True, position_embedding_type="rope",
                                     group_query_attention=True, num_query_groups=2, add_bias_linear=False,
                                     untie_embeddings_and_output_weights=True),
        "bert": dict(bert_binary_head=True)}


def _config(case, tp=1):
    return TransformerConfig(num_layers=4, hidden_size=64, num_attention_heads=4, ffn_hidden_size=128,
                             tensor_model_parallel_size=tp, **CASES[case][1])


def _stage_model(case, stage=None, tp=1, meta=False):
    family, _, options = CASES[case]
    if meta:
        with parameters_on(torch.device("meta")):
            return get_family(family).build_model(_config(case, tp), 128, options, stage)
    return get_family(family).build_model(_config(case, tp), 128, options, stage)


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_split_rules_by_module_kind_are_our_layers_own_maps(case):
    gated = CASES[case][1].get("activation") in GATED_ACTIVATIONS
    with serial_world():
        for rank in range(2):
            smap = _stage_model(case, PipelineStage(rank, 2), meta=True).sharding_map()
            for key, spec in smap.tensors.items():
                mine = spec_of(key, gated)
                if spec.copy_of:        # a tied last stage's table: a copy by its name (files.py)
                    assert key == "word_embeddings.weight" and (mine.split_dim, mine.vocab) == (0, True)
                    continue
                assert (mine.split_dim, mine.stride, mine.vocab) == (spec.split_dim, spec.stride, spec.vocab), key


def _namespace(case, tp, pp):
    return argparse.Namespace(num_layers=4, hidden_size=64, num_attention_heads=4, ffn_hidden_size=128,
                              tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, padded_vocab_size=128,
                              max_position_embeddings=16, seq_length=16, params_dtype=torch.float32,
                              consumed_train_samples=96, iteration=7, **ARGS[case])


def _qkv_in_version_order(tensor, version, heads):
    """Our (>= 2.0) per-head [q, k, v] rows as an older legacy file held them."""
    if version >= 2.0:
        return tensor
    rest, dim = tuple(tensor.shape[1:]), tensor.shape[0] // (3 * heads)
    per_head = tensor.view(heads, 3, dim, *rest)
    older = per_head.transpose(0, 1) if version == 0 else per_head.transpose(1, 2)
    return older.contiguous().view(tensor.shape)


def _write_megatron_lm(directory, case, full, tp, pp, style, version=3.0):
    """Our whole-model state `full`, cut as Megatron-LM cuts it and named as it names it."""
    heads = 4 // tp
    with serial_world():
        stage_maps = [_stage_model(case, PipelineStage(p, pp), meta=True).sharding_map() for p in range(pp)]
    for p, smap in enumerate(stage_maps):
        for t in range(tp):
            ours = {}
            for key, spec in smap.tensors.items():
                tensor = full[smap.global_key(key)]
                shard = tensor if spec.replicated else shard_tensor(tensor, spec.split_dim, t, tp, spec.stride)
                if ".query_key_value." in key and style == "legacy":
                    shard = _qkv_in_version_order(shard, version, heads)
                ours[key] = shard.clone()
            if style == "mcore":
                model = {mcore_from_ours(k): v for k, v in ours.items()}
                if "word_embeddings.weight" in model:
                    model["output_layer.weight"] = model.pop("word_embeddings.weight")
            else:
                model = nest({legacy_from_ours(k): v for k, v in ours.items()})
            rank_dir = f"mp_rank_{t:02d}" if pp == 1 else f"mp_rank_{t:02d}_{p:03d}"
            path = os.path.join(directory, "iter_0000007", rank_dir, "model_optim_rng.pt")
            os.makedirs(os.path.dirname(path))
            torch.save({"args": _namespace(case, tp, pp), "checkpoint_version": version, "iteration": 7,
                        "model": model, "rng_state": [], "opt_param_scheduler": {"num_steps": 96}}, path)
    with open(os.path.join(directory, "latest_checkpointed_iteration.txt"), "w") as f:
        f.write("7")


def _full_state(case):
    with serial_world():
        torch.manual_seed(0)
        model = _stage_model(case)
        return {k: torch.randn_like(v) for k, v in model.state_dict().items()}


def _assert_whole_model(source, full, tp):
    """Every tensor of `full`, joined from the source's `tp` ranks (a stride-2 split joined per half)."""
    for key, tensor in full.items():
        spec = source.owner(key).spec
        pieces = [source.weight(key, t) for t in range(tp)]
        whole = pieces[0] if spec.replicated else torch.cat(
            [c for chunks in zip(*(p.chunk(spec.stride, spec.split_dim) for p in pieces)) for c in chunks], spec.split_dim)
        assert torch.equal(whole, tensor), key


@pytest.mark.parametrize("case,tp,pp,style,version", [
    ("gpt", 2, 2, "mcore", 3.0), ("llama", 2, 2, "mcore", 3.0), ("llama", 1, 2, "legacy", 3.0),
    ("bert", 2, 2, "mcore", 3.0), ("bert", 2, 2, "legacy", 3.0),
    ("gpt", 2, 1, "legacy", 0), ("gpt", 2, 1, "legacy", 1.0), ("bert", 1, 2, "legacy", 2.0)])
def test_a_megatron_lm_checkpoint_reads_as_the_whole_model_at_any_saved_size(tmp_path, case, tp, pp, style, version):
    full = _full_state(case)
    _write_megatron_lm(tmp_path, case, full, tp, pp, style, version)
    source = SavedCheckpoint(str(tmp_path))
    assert (source.tp, source.pp) == (tp, pp) and source.head["model_family"] == CASES[case][0]
    assert source.head["iteration"] == 7 and source.head["consumed_train_samples"] == 96
    assert set(source.owners) == set(full)
    _assert_whole_model(source, full, tp)


def _add_legacy_optimizer(path, case, layers, first_stage, last_stage):
    """Adam's state as Megatron-LM's optimizer saves it for the legacy model: positions in
    named_parameters order (harness/megatron_lm_legacy_order.py), decayed group first; each
    parameter's exp_avg is twice its weight as the file holds it (so a QKV's rows in the file's
    version order), exp_avg_sq its square."""
    raw = torch.load(path, weights_only=False)
    model = flattened(raw["model"])
    order = [legacy for legacy, _ in legacy_named_parameters(case, layers, first_stage, last_stage) if legacy in model]
    assert set(order) == set(model)
    decayed = [name for name in order if model[name].dim() > 1 and not name.endswith(".bias")]
    members = decayed + [name for name in order if name not in decayed]
    state = {i: {"exp_avg": 2 * model[name], "exp_avg_sq": model[name] ** 2, "step": torch.tensor(5.0)}
             for i, name in enumerate(members)}
    raw["optimizer"] = {"state": state, "param_groups": [
        {"params": list(range(len(decayed))), "wd_mult": 1.0, "weight_decay": 0.01},
        {"params": list(range(len(decayed), len(members))), "wd_mult": 0.0, "weight_decay": 0.0}]}
    torch.save(raw, path)


@pytest.mark.parametrize("case,tp,pp,version", [("bert", 1, 2, 3.0), ("gpt", 2, 2, 3.0), ("gpt", 2, 1, 0),
                                                ("gpt", 2, 1, 1.0)])
def test_a_legacy_files_optimizer_state_is_read_by_named_parameters_in_the_weights_row_order(
        tmp_path, case, tp, pp, version):
    """A legacy file's positions follow the legacy model's named_parameters, not its nested dict
    (a BERT last stage nests word_embeddings_for_head after its heads but registers it before
    them); an old file's (checkpoint_version 0, 1.0) QKV moments come in our row order, as its
    weights do: every parameter's exp_avg is twice its weight and exp_avg_sq its square."""
    full = _full_state(case)
    _write_megatron_lm(tmp_path, case, full, tp, pp, "legacy", version)
    for p in range(pp):
        for t in range(tp):
            rank_dir = f"mp_rank_{t:02d}" if pp == 1 else f"mp_rank_{t:02d}_{p:03d}"
            _add_legacy_optimizer(tmp_path / "iter_0000007" / rank_dir / "model_optim_rng.pt", case, 4 // pp,
                                  p == 0, p == pp - 1)
    source = SavedCheckpoint(str(tmp_path))
    assert source.has_optimizer(), source.parallel
    smap = source.whole_model_map()
    for key in full:
        for t in range(tp):
            weight = target_weight(source, key, smap.tensors[key], t, tp, 128)
            fields = target_optimizer_state(source, key, smap.tensors[key], t, tp, 128)
            assert torch.equal(fields["exp_avg"], 2 * weight) and torch.equal(fields["exp_avg_sq"], weight ** 2), key
            assert float(fields["step"]) == 5.0

def test_the_args_allowlist_refuses_any_other_class_and_runs_nothing(tmp_path):
    full = _full_state("gpt")
    _write_megatron_lm(tmp_path, "gpt", full, 1, 1, "mcore")
    path = tmp_path / "iter_0000007" / "mp_rank_00" / "model_optim_rng.pt"
    state = torch.load(path, weights_only=False)
    ran = tmp_path / "ran"
    state["args"].tokenizer = _Payload(str(ran))
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="model_optim_rng.pt"):
        SavedCheckpoint(str(tmp_path))
    assert not ran.exists()


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("flag,value,named", [("num_experts", 8, "MoE"), ("multi_latent_attention", True, "MLA"),
                                              ("hybrid_override_pattern", "M-M-", "Mamba"),
                                              ("apply_layernorm_1p", True, "weight \\+ 1"),
                                              ("use_rope_scaling", True, "rotary position scaling"),
                                              ("window_size", [128, 0], "sliding-window")])
def test_a_model_we_do_not_build_is_one_sentence_naming_it(tmp_path, flag, value, named):
    full = _full_state("gpt")
    _write_megatron_lm(tmp_path, "gpt", full, 1, 1, "mcore")
    path = tmp_path / "iter_0000007" / "mp_rank_00" / "model_optim_rng.pt"
    state = torch.load(path, weights_only=False)
    setattr(state["args"], flag, value)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=named) as error:
        SavedCheckpoint(str(tmp_path))
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_a_tensor_that_maps_to_nothing_is_one_sentence_naming_it(tmp_path):
    full = _full_state("gpt")
    _write_megatron_lm(tmp_path, "gpt", full, 1, 1, "mcore")
    path = tmp_path / "iter_0000007" / "mp_rank_00" / "model_optim_rng.pt"
    state = torch.load(path, weights_only=False)
    state["model"]["decoder.layers.0.self_attention.linear_gate.weight"] = torch.zeros(4, 4)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="decoder.layers.0.self_attention.linear_gate.weight") as error:
        SavedCheckpoint(str(tmp_path))
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_a_model_megatron_lm_cannot_build_is_not_exported_to_it(tmp_path):
    """A post-LN BERT (ours, e.g. imported from HF's BertModel) would load into Megatron-LM's pre-LN
    BertModel as another model: --to-megatron-lm refuses it in one sentence naming the reason."""
    from megatron_core.checkpoint.weights_checkpoint import serial_world, write_weights_checkpoint
    from megatron_core.convert.megatron_lm_export import export_megatron_lm

    config = TransformerConfig(num_layers=2, hidden_size=64, num_attention_heads=4, ffn_hidden_size=128,
                               layernorm_position="post")
    family = get_family("bert")
    with serial_world():
        state = family.build_model(config, 128, BERT_OPTIONS).state_dict()
        write_weights_checkpoint(str(tmp_path / "post_ln"), state, lambda stage: family.build_model(
            config, 128, BERT_OPTIONS, stage), {"bert_binary_head": True}, config, vocab_size=128,
            padded_vocab_size=128, tensor_model_parallel_size=1, family="bert", model_options=BERT_OPTIONS)
    with pytest.raises(CheckpointError, match="layer norms after each sublayer") as error:
        export_megatron_lm(str(tmp_path / "post_ln"), str(tmp_path / "out"), progress=lambda line: None)
    assert "\n" not in str(error.value)


def test_legacy_t5_decoder_norms_are_named_by_what_they_follow():
    """Megatron-LM's legacy ParallelTransformerLayer of a decoder runs input_norm, self-attention,
    post_attention_norm, inter_attention, post_inter_attention_norm, MLP (megatron/legacy/model/
    transformer.py): its post_attention_layernorm is the norm before cross-attention, megatron-core's
    pre_cross_attn_layernorm, and its post_inter_attention_layernorm the one before the MLP,
    pre_mlp_layernorm. Both ways; the encoder's layers keep their names."""
    layer = "language_model.decoder.layers.1."
    for legacy, mcore in (("post_attention_layernorm.weight", "pre_cross_attn_layernorm.weight"),
                          ("post_inter_attention_layernorm.bias", "pre_mlp_layernorm.bias"),
                          ("input_layernorm.weight", "input_layernorm.weight")):
        ours = ours_from_legacy(layer + legacy, "encoder", "t5")
        assert mcore_from_ours(ours) == "decoder.layers.1." + mcore
        assert legacy_from_ours(ours, "t5") == layer + legacy
    encoder = "language_model.encoder.layers.0.post_attention_layernorm.weight"
    assert mcore_from_ours(ours_from_legacy(encoder, "encoder", "t5")) == "encoder.layers.0.pre_mlp_layernorm.weight"


_NEWER = {"input_layernorm": "input_norm", "post_attention_layernorm": "post_attention_norm",
          "final_layernorm": "final_norm"}


def _with_newer_norm_names(nested, parent=""):
    """A legacy model dict as Megatron-LM's legacy models save it since their 2023 norm rename."""
    out = {}
    for key, value in nested.items():      # keys may be dotted (the legacy encoder's are)
        parts = key.split(".")
        new = ".".join("norm" if part == "layernorm" and (parts[i - 1] if i else parent) == "lm_head"
                       else _NEWER.get(part, part) for i, part in enumerate(parts))
        out[new] = _with_newer_norm_names(value, parts[-1]) if isinstance(value, dict) else value
    return out


def _dotted(nested, prefix=""):
    """The dotted keys of a nested dict, as they are (no renaming)."""
    return [name for key, value in nested.items()
            for name in (_dotted(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"])]


@pytest.mark.parametrize("case,tp,pp", [("bert", 1, 2), ("gpt", 2, 1)])
def test_legacy_files_with_the_newer_norm_names_read_as_the_same_model(tmp_path, case, tp, pp):
    """`input_norm`, `post_attention_norm`, `final_norm` (and BERT's `lm_head.norm`) are read as the
    older `*_layernorm` names: the same whole model, with the optimizer's positions in order."""
    full = _full_state(case)
    _write_megatron_lm(tmp_path, case, full, tp, pp, "legacy", 3.0)
    renamed = 0
    for path in (tmp_path / "iter_0000007").glob("*/model_optim_rng.pt"):
        raw = torch.load(path, weights_only=False)
        newer = _with_newer_norm_names(raw["model"])
        renamed += len(set(_dotted(raw["model"])) - set(_dotted(newer)))
        raw["model"] = newer
        torch.save(raw, path)
    assert renamed
    source = SavedCheckpoint(str(tmp_path))
    assert set(source.owners) == set(full)
    _assert_whole_model(source, full, tp)
