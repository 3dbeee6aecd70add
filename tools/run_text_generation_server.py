#!/usr/bin/env python
"""Serve text generation from a checkpoint over Megatron-LM's REST interface.

    python tools/run_text_generation_server.py --load ckpt/ --port 5000
    torchrun --nproc-per-node 2 tools/run_text_generation_server.py --load ckpt_tp2/    # TP x PP ranks
    curl -X PUT localhost:5000/api -H 'Content-Type: application/json' \\
         -d '{"prompts": ["清华大学位于"], "tokens_to_generate": 32, "top_p": 0.9}'

PUT /api takes {"prompts": [...], "tokens_to_generate", "temperature", "top_k", "top_p",
"logprobs", "random_seed"} and answers {"text", "segments", "logprobs"}, as Megatron-LM's
server does (megatron_core/inference/rest_api.py). It listens on 127.0.0.1 unless --host
says otherwise (--host 0.0.0.0: every interface); --port 0 picks a free port; the
"serving on" line names the address.

Rank 0 reads requests on a thread per connection and checks each before any model work:
at most --max-batch-size prompts, each prompt's tokens plus tokens_to_generate within the
model's positions, a body of at most --max-request-bytes (400, or 411/413 for the body,
with one sentence). The model runs one request at a time in arrival order, and rank 0
hands each to the other ranks; a request that waits --request-timeout seconds for the
model is answered 503 (http_server.py, request_queue.py).
"""
import argparse

from megatron_core.cli import run
from megatron_core.errors import ConfigError, UserError
from megatron_core.inference.http_server import ServerConfig, start_http_server, stop_http_server
from megatron_core.inference.request_queue import RequestLine, follow, stop_followers
from megatron_core.inference.rest_api import admit, answer
from megatron_core.inference.tool_setup import add_checkpoint_arguments, is_first_rank, load_text_generator
from megatron_core.training.config import build

DEFAULTS = ServerConfig()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_arguments(p)
    g = p.add_argument_group("serving")
    g.add_argument("--host", default=DEFAULTS.host, help="address to listen on (0.0.0.0: every interface)")
    g.add_argument("--port", type=int, default=DEFAULTS.port, help="port to listen on (0: a free one)")
    g.add_argument("--max-batch-size", type=int, default=DEFAULTS.max_batch_size,
                   help="most prompts in one request")
    g.add_argument("--max-request-bytes", type=int, default=DEFAULTS.max_request_bytes,
                   help="largest request body, in bytes")
    g.add_argument("--request-timeout", type=float, default=DEFAULTS.request_timeout,
                   help="seconds a request may wait for the model (then 503), and a client may stay silent")
    args = p.parse_args(argv)
    for flag in ("max_batch_size", "max_request_bytes", "request_timeout"):
        if getattr(args, flag) <= 0:
            raise ConfigError(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}.")
    return args


def main(argv=None):
    args = parse_args(argv)
    config = build(ServerConfig, args)
    generator = load_text_generator(args)
    positions = generator.max_positions         # the same on every rank
    if positions is None:
        raise ConfigError(f"{args.load} records neither the model's positions nor --max-position-embeddings, so "
                          f"requests cannot be bounded; save the checkpoint with --max-position-embeddings.")
    if not is_first_rank():
        follow(lambda request: answer(generator, request))
        return 0
    line = RequestLine(lambda request: answer(generator, request), config.request_timeout)
    try:
        server = start_http_server(config, lambda body: admit(body, generator.tokenize_all, positions,
                                                              config.max_batch_size), line.submit)
    except OSError as error:
        stop_followers()
        raise UserError(f"cannot listen on {config.host}:{config.port} ({error.strerror}); choose another --port "
                        f"or --host.")
    host, port = server.server_address[:2]
    host = f"[{host}]" if ":" in host else host          # an IPv6 address in a URL
    print(f"serving on http://{host}:{port}/api ({generator.family} model from {args.load}; at most "
          f"{config.max_batch_size} prompts, {positions} positions, {config.max_request_bytes} bytes a request)",
          flush=True)
    try:
        line.serve()        # until Ctrl-C; then the other ranks stop too
    finally:
        stop_http_server(server)
    return 0


if __name__ == "__main__":
    run(main)
