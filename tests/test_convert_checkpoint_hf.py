"""tools/convert_checkpoint.py between HF directories and our TP x PP checkpoints keeps the logits.

For every family a small random HF model (testing/hf_models.py) goes HF -> our checkpoint at
TP=2 or PP=2 (split by the sharding maps of the model's own stages) -> HF again -> our
checkpoint at TP=1 in the DeepSpeed layout. transformers' from_pretrained loads the exported
directory offline with no missing or unexpected keys and gives the original HF model's
logits; our model built from each checkpoint (its shards merged one tensor at a time) gives
them too. Transformer-XL is one sentence; a pickle payload is refused with no code run.
"""
import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built locally; never reach the hub
transformers = pytest.importorskip("transformers")

from megatron_core.errors import CheckpointError, ConversionError  # noqa: E402
from megatron_core.convert.checkpoint_spec import spec_of_saved  # noqa: E402
from megatron_core.models.hf.registry import get_mapping  # noqa: E402
from tests.harness.entry_points import failure_report, run_entry_point  # noqa: E402
from tests.harness.hf_models import CASES, VOCAB, hf_batch, logits_of, saved_hf_model  # noqa: E402
from tests.harness.tool_main import run_tool_main  # noqa: E402
from megatron_core.checkpoint.saved_model import open_saved_model  # noqa: E402
from megatron_core.transformer import TransformerConfig  # noqa: E402
from tests.harness.model_checks import single_process_world  # noqa: E402

TOL = dict(rtol=1e-4, atol=1e-4)


def convert(*flags):
    """tools/convert_checkpoint.py's main in this process."""
    run_tool_main("convert_checkpoint.py", *flags)


def our_logits(case, checkpoint, x):
    """Our serial model built from a checkpoint's merged shards, on the batch."""
    saved = open_saved_model(str(checkpoint))
    config = TransformerConfig.from_dict(saved.model_config).replace(tensor_model_parallel_size=1)
    spec = spec_of_saved(saved.state, config, saved.vocab_size, saved.padded_vocab_size, saved.args,
                         family=saved.family)
    with single_process_world():
        model = get_mapping(spec.family).build_model(spec).eval()
        model.load_state_dict(dict(saved.state), strict=True)
        with torch.no_grad():
            got = logits_of(case, None, model, x)
    return got[..., :VOCAB] if got.dim() > 1 else got


@pytest.mark.parametrize("case,tp,pp", [("gpt", 2, 2), ("llama_gqa", 2, 1), ("bert", 2, 1), ("megatron_bert", 1, 2),
                                        ("roformer", 2, 1), ("t5_v1_0", 2, 1), ("t5_v1_1", 1, 1)])
def test_hf_round_trip_through_our_tp_pp_checkpoint_keeps_logits(case, tp, pp, tmp_path):
    family, model_cls, _, _, _ = CASES[case]
    hf = saved_hf_model(case, tmp_path / "hf")
    x = hf_batch()
    with torch.no_grad():
        expected = logits_of(case, hf, None, x)

    convert("--from-hf", tmp_path / "hf", "--output", tmp_path / "ours", "--tensor-model-parallel-size", tp,
            "--pipeline-model-parallel-size", pp)
    saved = open_saved_model(str(tmp_path / "ours"))
    assert (saved.tensor_model_parallel_size, saved.pipeline_model_parallel_size) == (tp, pp)
    # our family is recorded beside args; the HF mapping (llama, megatron_bert) is one of its architectures
    assert saved.record["model_family"] == {"llama": "gpt", "megatron_bert": "bert"}.get(family, family)
    assert saved.args["hf_mapping"] == family and saved.padded_vocab_size == 128 * tp
    torch.testing.assert_close(our_logits(case, tmp_path / "ours", x), expected, **TOL)

    convert("--to-hf", "--load", tmp_path / "ours", "--output", tmp_path / "back")
    with open(tmp_path / "back" / "config.json") as f:
        assert json.load(f)["architectures"] == [model_cls.__name__]
    reloaded, info = model_cls.from_pretrained(str(tmp_path / "back"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    with torch.no_grad():
        torch.testing.assert_close(logits_of(case, reloaded.eval(), None, x), expected, **TOL)

    convert("--from-hf", tmp_path / "back", "--output", tmp_path / "again", "--ckpt-format", "deepspeed")
    assert os.path.isfile(tmp_path / "again" / "global_step0" / "mp_rank_00_model_states.pt")
    torch.testing.assert_close(our_logits(case, tmp_path / "again", x), expected, **TOL)


def test_shards_are_the_tp1_tensors_split_as_the_model_splits_them(tmp_path):
    """The TP=2 files hold exactly the slices a TP=2 layer holds: merging them by the stored map
    gives the TP=1 checkpoint's tensors bit for bit, and a fused QKV shard is not a plain half."""
    saved_hf_model("llama_gqa", tmp_path / "hf")
    convert("--from-hf", tmp_path / "hf", "--output", tmp_path / "tp1")
    convert("--from-hf", tmp_path / "hf", "--output", tmp_path / "tp2", "--tensor-model-parallel-size", 2)
    one, two = open_saved_model(str(tmp_path / "tp1")), open_saved_model(str(tmp_path / "tp2"))
    assert sorted(one.state) == sorted(two.state)
    vocab = "embedding.word_embeddings.weight"
    for key in one.state:
        a, b = one.state[key], two.state[key]
        if key == vocab or key == "output_layer.weight":   # padded to 128 x TP rows: the real rows are equal
            assert torch.equal(a[:VOCAB], b[:VOCAB]) and not b[VOCAB:].any(), key
        else:
            assert torch.equal(a, b), key
    qkv = "decoder.layers.0.self_attention.query_key_value.weight"
    shard0 = torch.load(tmp_path / "tp2" / "release" / "mp_rank_00" / "model_optim_rng.pt", weights_only=True)
    assert torch.equal(shard0["model"][qkv], one.state[qkv][:one.state[qkv].shape[0] // 2])  # whole query groups
    assert shard0["sharding_map"]["model"]["tensors"][qkv]["split_dim"] == 0


def test_exported_tokenizer_gives_our_ids_offline(tmp_path):
    from megatron_core.data.tokenizers.factory import build_tokenizer
    from tests.harness.tiny_corpus import BERT_VOCAB
    saved_hf_model("gpt", tmp_path / "hf")
    convert("--from-hf", tmp_path / "hf", "--output", tmp_path / "ours")
    convert("--to-hf", "--load", tmp_path / "ours", "--output", tmp_path / "back", "--tokenizer-type",
            "BertWordPieceLowerCase", "--vocab-file", BERT_VOCAB)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "back"))
    ours = build_tokenizer("BertWordPieceLowerCase", vocab_file=BERT_VOCAB)
    for text in ("清华大学位于北京。", "Megatron converts 2 checkpoints, OK?"):
        assert hf_tokenizer(text, add_special_tokens=False)["input_ids"] == ours.tokenize(text)


def test_transformer_xl_to_hf_is_one_sentence(tmp_path):
    from megatron_core.models.transformer_xl import TransformerXLModel
    from megatron_core.checkpoint.weights_checkpoint import write_weights_checkpoint
    config = TransformerConfig(num_layers=2, hidden_size=16, num_attention_heads=2,
                               position_embedding_type="relative_xl", activation="gelu_tanh")
    with single_process_world():
        full = TransformerXLModel(config, 64, 8).state_dict()
        write_weights_checkpoint(str(tmp_path / "txl"), full, lambda stage: TransformerXLModel(config, 64, 8,
                                                                                              stage=stage),
                                 {}, config, 60, 64, 1, family="transformer_xl", model_options={"mem_length": 8})
    with pytest.raises(ConversionError) as caught:
        convert("--to-hf", "--load", tmp_path / "txl", "--output", tmp_path / "hf")
    message = str(caught.value)
    assert message.startswith("Transformer-XL has no HuggingFace class") and "\n" not in message
    done = run_entry_point("tools/convert_checkpoint.py", ["--to-hf", "--load", str(tmp_path / "txl"), "--output",
                                                           str(tmp_path / "hf")], timeout=120)
    assert done.returncode == 2, failure_report(done)
    assert done.stderr.strip().splitlines()[-1].startswith("error: Transformer-XL has no HuggingFace class")
    assert not os.path.exists(tmp_path / "hf" / "model.safetensors")


class _Payload:
    """Unpickling this would run os.system (writing a marker file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_payload_in_an_hf_bin_or_our_checkpoint_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    hf_dir = tmp_path / "hf"
    saved_hf_model("gpt", hf_dir)
    weights = transformers.GPT2LMHeadModel.from_pretrained(str(hf_dir)).state_dict()
    os.remove(hf_dir / "model.safetensors")
    torch.save({**weights, "trap": _Payload(marker)}, hf_dir / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle payload that safe loading refuses"):
        convert("--from-hf", hf_dir, "--output", tmp_path / "ours")
    assert not marker.exists() and not os.path.exists(tmp_path / "ours" / "latest_checkpointed_iteration.txt")

    saved_hf_model("gpt", tmp_path / "hf2")
    convert("--from-hf", tmp_path / "hf2", "--output", tmp_path / "ours2")
    path = tmp_path / "ours2" / "release" / "mp_rank_00" / "model_optim_rng.pt"
    state = torch.load(path, weights_only=True)
    state["args"] = _Payload(marker)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="pickle payload that safe loading refuses"):
        convert("--to-hf", "--load", tmp_path / "ours2", "--output", tmp_path / "out")
    assert not marker.exists()
