"""tools/generate_text.py and tools/run_text_generation_server.py on a real training
checkpoint (pretrain_gpt.py, Llama-style, TP=2): merged on one process and at its own
size under torchrun they print the greedy tokens that recomputing the loaded model gives;
the server answers real HTTP PUTs with the same text, a bad request gets 400 and the
server keeps answering."""
import json
import re
import subprocess
import time
import urllib.error
import urllib.request

import pytest
import torch

from megatron_core.data.tokenizers import build_tokenizer
from megatron_core.checkpoint.saved_model import open_saved_model
from megatron_core.inference.checkpoint_model import load_checkpoint_model
from tests.harness.entry_points import (clean_env, corpus_flags, entry_point_command, failure_report,
                                                run_entry_point, run_forked, run_ranks, tiny_run_flags)
from tests.harness.inference_models import greedy_by_recomputation
from tests.harness.tiny_corpus import BERT_VOCAB, ROOT
from megatron_core import mpu
from tests.harness.model_checks import single_process_world

PROMPTS = ["清华大学位于北京", "今天"]
NEW = 6
LLAMA = ["--normalization", "RMSNorm", "--swiglu", "--position-embedding-type", "rope",
         "--untie-embeddings-and-output-weights", "--disable-bias-linear", "--group-query-attention",
         "--num-query-groups", "2"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    work = tmp_path_factory.mktemp("generate")
    data = corpus_flags(str(work))
    flags = tiny_run_flags(data[1], data[3], train_iters=2) + LLAMA + [
        "--tensor-model-parallel-size", "2", "--save", str(work / "ckpt"), "--save-interval", "2"]
    done = run_ranks("pretrain_gpt.py", flags, 2, timeout=600)
    assert done.returncode == 0, failure_report(done)
    prompts = work / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    return work


def _json_lines(done):
    assert done.returncode == 0, failure_report(done)
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def _expected_tokens(ckpt):
    tokenizer = build_tokenizer("BertWordPieceLowerCase", vocab_file=BERT_VOCAB)
    with single_process_world():
        mpu.destroy_model_parallel()        # the loader initializes model parallelism itself
        loaded = load_checkpoint_model(str(ckpt))
        with torch.no_grad():
            return [greedy_by_recomputation(lambda ids: loaded.model(ids)[0, -1], tokenizer.tokenize(p), NEW,
                                            loaded.vocab_size) for p in PROMPTS]


def test_the_training_checkpoint_records_its_family_and_the_builders_options(checkpoint):
    saved = open_saved_model(str(checkpoint / "ckpt"))   # pretrain_gpt.py with Llama's flags: a gpt
    assert saved.record["model_family"] == "gpt"
    assert saved.model_options == {"max_sequence_length": saved.args["max_position_embeddings"]}


def test_one_process_and_torchrun_print_the_recomputed_greedy_tokens(checkpoint):
    flags = ["--load", str(checkpoint / "ckpt"), "--input-file", str(checkpoint / "prompts.txt"), "--greedy",
             "--out-seq-length", str(NEW)]
    merged = _json_lines(run_forked("tools/generate_text.py", flags, timeout=300))    # torchrun's below starts fresh
    sharded = _json_lines(run_entry_point("tools/generate_text.py", flags, nproc=2, timeout=300))
    expected = _expected_tokens(checkpoint / "ckpt")
    assert [line["prompt"] for line in merged] == PROMPTS
    assert [line["tokens"] for line in merged] == expected
    assert [line["tokens"] for line in sharded] == expected


@pytest.mark.quick
def test_prompt_is_printed_then_the_new_text_and_a_missing_checkpoint_is_one_sentence(checkpoint, tmp_path):
    done = run_entry_point("tools/generate_text.py", ["--load", str(checkpoint / "ckpt"), "--prompt", PROMPTS[0],
                                                      "--greedy", "--out-seq-length", "4"], timeout=300)
    assert done.returncode == 0, failure_report(done)
    assert done.stdout.startswith(PROMPTS[0]) and len(done.stdout.strip()) > len(PROMPTS[0])
    missing = run_entry_point("tools/generate_text.py", ["--load", str(tmp_path / "nothing"), "--prompt", "x"])
    assert missing.returncode == 2 and missing.stderr.startswith("error: --load") and "Traceback" not in missing.stderr


def _put(port, body):
    data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api", data=data, method="PUT",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read().decode("utf-8"))


@pytest.mark.quick
def test_server_answers_http_puts_with_the_generated_text_and_survives_bad_requests(checkpoint):
    command = entry_point_command("tools/run_text_generation_server.py",
                                  ["--load", str(checkpoint / "ckpt"), "--host", "127.0.0.1", "--port", "0"])
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env(),
                              cwd=ROOT)
    try:
        port, deadline, seen = None, time.monotonic() + 240, []
        while port is None and time.monotonic() < deadline:
            line = server.stdout.readline()
            if not line:
                break
            seen.append(line)
            match = re.search(r"serving on http://[^:]+:(\d+)/api", line)
            port = int(match.group(1)) if match else None
        assert port is not None, "".join(seen)
        tokenizer = build_tokenizer("BertWordPieceLowerCase", vocab_file=BERT_VOCAB)
        expected = _expected_tokens(checkpoint / "ckpt")
        answer = _put(port, {"prompts": PROMPTS, "tokens_to_generate": NEW, "top_k": 1, "logprobs": True})
        texts = [tokenizer.detokenize(tokenizer.tokenize(p) + tokens) for p, tokens in zip(PROMPTS, expected)]
        assert answer["text"] == texts
        assert [len(s) for s in answer["segments"]] == [len(tokenizer.tokenize(p)) + NEW for p in PROMPTS]
        assert [len(lp) for lp in answer["logprobs"]] == [len(s) - 1 for s in answer["segments"]]
        for bad in ({"prompts": "not a list"}, {"prompts": ["x"], "top_k": 5, "top_p": 0.5}, b"{not json"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                _put(port, bad)
            assert refused.value.code == 400 and refused.value.read().decode().endswith(".")
        again = _put(port, {"prompts": PROMPTS[:1], "tokens_to_generate": NEW, "top_k": 1})
        assert again["text"] == texts[:1] and again["logprobs"] is None
    finally:
        server.terminate()
        server.wait(timeout=30)
