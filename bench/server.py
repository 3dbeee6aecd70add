#!/usr/bin/env python
"""The generation server under concurrent clients, good and bad requests mixed; prints JSON.

    python -m bench.server [--requests 400] [--clients 8] [--seed 0]

1. Writes a tiny random checkpoint (tests/harness/inference_checkpoints.py: a Llama-style
   GPT, 2 layers, hidden 32, 64 positions, the BERT Chinese vocabulary) and starts
   `tools/run_text_generation_server.py --load it --port 0 --max-batch-size 8` as a user
   does (127.0.0.1, the default 1 MiB body limit and 60 s request timeout, one thread).
2. Makes --requests requests, 10 % of them bad, shuffled: prompt tokens + tokens_to_generate
   past the 64 positions (two of them the issue's 200,000-character prompt), 9 prompts,
   a body over 1 MiB, malformed JSON, a field of the wrong type. A good one is 1 to 4
   prompts cut from the demo corpus, 4 to 16 new tokens, greedy (top_k 1).
3. The expected answer of every good request: TextGenerator.generate on the same prompts
   (the same batch) in this process, from the same checkpoint, greedy; timed one by one,
   which gives the direct-call rate.
4. --clients threads send all requests over HTTP at once, each as soon as its previous
   answer came. Every good answer must hold exactly the expected tokens (its segments are
   the tokens of prompt and generation), every bad one its status (400, or 413 for the
   body), and the server must answer a request afterwards. Any miss ends the bench with
   the first few.

Reported: requests/s over the whole run, latency p50/p99 (all, good, bad), and
good_over_direct: good requests/s through the server divided by the rate of the same
generations called directly one after another (the cost of HTTP, checks and the line,
with the clients and the server sharing the machine).
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import http.client
from concurrent.futures import ThreadPoolExecutor

from megatron_core.cli import run as run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_BATCH = 8
LONG_PROMPT = "天" * 200_000


def corpus_text():
    from tests.harness.tiny_corpus import ZH_NEWS
    with open(ZH_NEWS, encoding="utf-8") as f:
        return "".join(json.loads(line)["text"] for line in f)


def make_requests(count, seed):
    """[(kind, body bytes)]: kind "good" or the status a bad one must get."""
    rng, text = random.Random(seed), corpus_text()

    def prompt(low, high):
        start = rng.randrange(len(text) - high)
        return text[start:start + rng.randint(low, high)]

    def body(value):
        return json.dumps(value, ensure_ascii=False).encode("utf-8")

    bad_makers = [
        lambda: (400, body({"prompts": [prompt(50, 60)], "tokens_to_generate": 20, "top_k": 1})),
        lambda: (400, body({"prompts": [LONG_PROMPT], "tokens_to_generate": 8})),         # the prompt
        lambda: (400, body({"prompts": [prompt(2, 8) for _ in range(MAX_BATCH + 1)], "tokens_to_generate": 4})),
        lambda: (413, body({"prompts": [text[:1000] * 400], "tokens_to_generate": 4})),    # 1.2 MB
        lambda: (400, body({"prompts": [prompt(2, 8)], "tokens_to_generate": 4})[:-7]),   # cut short
        lambda: (400, body({"prompts": prompt(2, 8), "tokens_to_generate": 4})),          # a string, not a list
        lambda: (400, body({"prompts": [prompt(2, 8)], "tokens_to_generate": "8"})),
    ]
    bad_count = count // 10
    kinds = [1] * 2 + [k for k in range(len(bad_makers)) if k != 1] * bad_count
    requests = [bad_makers[k]() for k in kinds[:bad_count]]
    for _ in range(count - bad_count):
        prompts = [prompt(2, 24) for _ in range(rng.randint(1, 4))]
        requests.append(("good", body({"prompts": prompts, "tokens_to_generate": rng.randint(4, 16), "top_k": 1})))
    rng.shuffle(requests)
    return requests


def expected_answers(ckpt, requests):
    """{index: expected segments} of the good requests, and the seconds of each direct call."""
    import torch
    from megatron_core import mpu
    from megatron_core.data.tokenizers import build_tokenizer
    from megatron_core.inference.checkpoint_model import load_checkpoint_model
    from megatron_core.inference.sampling import SamplingParams
    from megatron_core.inference.text_generation import TextGenerator
    from tests.harness.model_checks import single_process_world
    from tests.harness.tiny_corpus import BERT_VOCAB
    torch.set_num_threads(1)
    tokenizer = build_tokenizer("BertWordPieceLowerCase", vocab_file=BERT_VOCAB)
    expected, seconds = {}, []
    with single_process_world():
        mpu.destroy_model_parallel()            # the loader initializes model parallelism itself
        generator = TextGenerator(load_checkpoint_model(ckpt), tokenizer)
        for index, (kind, raw) in enumerate(requests):
            if kind != "good":
                continue
            request = json.loads(raw)
            start = time.perf_counter()
            items = generator.generate(request["prompts"], request["tokens_to_generate"], SamplingParams(greedy=True))
            seconds.append(time.perf_counter() - start)
            expected[index] = [[tokenizer.detokenize([t]) for t in item.prompt_tokens + item.tokens
                                if t != generator.eos_id] for item in items]
    return expected, seconds


def start_server(ckpt):
    """(process, port) of the server, its log lines drained into a list by a thread."""
    command = [sys.executable, os.path.join(ROOT, "tools", "run_text_generation_server.py"), "--load", ckpt,
               "--port", "0", "--max-batch-size", str(MAX_BATCH)]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                              cwd=ROOT)
    log = []
    for line in server.stdout:
        log.append(line)
        if line.startswith("serving on http://127.0.0.1:"):
            port = int(line.split(":")[2].split("/")[0])
            threading.Thread(target=lambda: log.extend(server.stdout), daemon=True).start()
            return server, port
    raise SystemExit("the server did not start:\n" + "".join(log))


def put(port, raw):
    """(status, body text, seconds)."""
    start = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        try:
            connection.request("PUT", "/api", body=raw, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            status, text = response.status, response.read().decode("utf-8")
        except OSError as error:
            status, text = None, f"{type(error).__name__}: {error}"
    finally:
        connection.close()
    return status, text, time.perf_counter() - start


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def latency_ms(values):
    return {"p50": round(percentile(values, 0.5) * 1000, 1), "p99": round(percentile(values, 0.99) * 1000, 1)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from tests.harness.inference_checkpoints import write_tiny_checkpoint
    requests = make_requests(args.requests, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_tiny_checkpoint(os.path.join(tmp, "ckpt"), "llama")
        expected, direct = expected_answers(ckpt, requests)
        server, port = start_server(ckpt)
        try:
            start = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                results = list(pool.map(lambda item: put(port, item[1]), requests))
            wall = time.perf_counter() - start
            after = put(port, requests[next(iter(expected))][1])
            alive = server.poll() is None and after[0] == 200
        finally:
            server.terminate()
            server.wait(timeout=30)
    misses = []
    for index, ((kind, _), (status, text, _)) in enumerate(zip(requests, results)):
        if kind == "good":
            if status != 200 or json.loads(text)["segments"] != expected[index]:
                misses.append(f"request {index}: {status} {text[:200]}")
        elif status != kind:
            misses.append(f"request {index}: wanted {kind}, got {status} {text[:200]}")
    if misses or not alive:
        raise SystemExit(f"{len(misses)} requests answered wrongly (server alive after: {alive}):\n"
                         + "\n".join(misses[:10]))
    good = [r[2] for (kind, _), r in zip(requests, results) if kind == "good"]
    bad = [r[2] for (kind, _), r in zip(requests, results) if kind != "good"]
    long_prompt = [r[2] for (_, raw), r in zip(requests, results) if LONG_PROMPT.encode() in raw]
    statuses = {}
    for status, _, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    result = {"requests": len(requests), "clients": args.clients, "good": len(good), "bad": len(bad),
              "statuses": statuses, "all_good_answers_equal_direct_generation": True, "all_bad_refused": True,
              "server_alive_after": alive, "seconds": round(wall, 2),
              "requests_per_second": round(len(requests) / wall, 1),
              "latency_ms": latency_ms(good + bad), "good_latency_ms": latency_ms(good),
              "bad_latency_ms": latency_ms(bad),
              "long_prompt_refusal_ms": [round(t * 1000, 1) for t in long_prompt],
              "direct_call_ms_median": round(statistics.median(direct) * 1000, 1),
              "good_over_direct": round((len(good) / wall) / (len(direct) / sum(direct)), 3)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    run_cli(main)
