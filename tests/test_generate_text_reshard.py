"""tools/generate_text.py reads a checkpoint saved at one TP x PP at any other, through
resharding on load: a Llama-style (GQA) checkpoint saved at TP=2 generates, merged on one
process and at TP=1 x PP=2 under torchrun, the greedy tokens of the serial model built
from the same seed (recomputing the whole sequence each step). The run's layout rule
is checked without processes."""
import json

import pytest
import torch

from megatron_core.data.tokenizers import build_tokenizer
from megatron_core.errors import CheckpointError
from megatron_core.inference.checkpoint_model import inference_layout
from tests.harness.entry_points import failure_report, run_entry_point, run_ranks
from tests.harness.inference_checkpoints import tiny_serial_model, write_tiny_checkpoint
from tests.harness.inference_models import greedy_by_recomputation
from tests.harness.tiny_corpus import BERT_VOCAB
from tests.harness.model_checks import single_process_world

PROMPTS = ["清华大学位于北京", "今天"]
NEW = 6


def _tokens(done):
    assert done.returncode == 0, failure_report(done)
    return [json.loads(line)["tokens"] for line in done.stdout.splitlines() if line.startswith("{")]


def test_checkpoint_saved_at_tp2_generates_the_serial_tokens_merged_and_at_pp2(tmp_path):
    ckpt = write_tiny_checkpoint(str(tmp_path / "ckpt"), "llama", tensor_model_parallel_size=2)
    tokenizer = build_tokenizer("BertWordPieceLowerCase", vocab_file=BERT_VOCAB)
    with single_process_world(), torch.no_grad():
        model = tiny_serial_model("llama")
        expected = [greedy_by_recomputation(lambda ids: model(ids)[0, -1], tokenizer.tokenize(p), NEW,
                                            tokenizer.vocab_size) for p in PROMPTS]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    flags = ["--load", ckpt, "--input-file", str(prompts), "--greedy", "--out-seq-length", str(NEW)]
    merged = run_entry_point("tools/generate_text.py", flags, timeout=300)
    assert _tokens(merged) == expected
    assert "resharded checkpoint" in merged.stderr and "from TP=2 PP=1 to TP=1 PP=1" in merged.stderr
    pipelined = run_ranks("tools/generate_text.py", flags + ["--tensor-model-parallel-size", "1",
                                                             "--pipeline-model-parallel-size", "2"], 2, timeout=300)
    assert _tokens(pipelined) == expected
    assert "from TP=2 PP=1 to TP=1 PP=2" in pipelined.stderr


def test_the_layout_is_the_sizes_asked_for_else_the_checkpoints_else_one_process():
    assert inference_layout((2, 2), 4) == (2, 2)
    assert inference_layout((2, 2), 1) == (1, 1)
    assert inference_layout((2, 1), 2, 1, 2) == (1, 2)
    assert inference_layout((2, 1), 4, pipeline_model_parallel_size=2) == (2, 2)
    assert inference_layout((1, 1), 2, tensor_model_parallel_size=2) == (2, 1)
    with pytest.raises(CheckpointError, match="this run has 2 processes; give --tensor-model-parallel-size"):
        inference_layout((2, 2), 2)
    with pytest.raises(CheckpointError, match="does not equal the 2 processes"):
        inference_layout((1, 1), 2, 4, 1)
