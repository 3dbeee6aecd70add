#!/usr/bin/env python
"""Serve text generation from a checkpoint over Megatron-LM's REST interface.

    python tools/run_text_generation_server.py --load ckpt/ --port 5000
    torchrun --nproc-per-node 2 tools/run_text_generation_server.py --load ckpt_tp2/    # TP x PP ranks
    curl -X PUT localhost:5000/api -H 'Content-Type: application/json' \\
         -d '{"prompts": ["清华大学位于"], "tokens_to_generate": 32, "top_p": 0.9}'

PUT /api takes {"prompts": [...], "tokens_to_generate", "temperature", "top_k", "top_p",
"logprobs", "random_seed"} and answers {"text", "segments", "logprobs"}, as Megatron-LM's
server does (megatron_core/inference/rest_api.py). Rank 0 serves HTTP (one request at a
time) and hands each request to the other ranks, which run the model with it. A bad
request is answered 400 with one sentence; the server keeps serving. --port 0 picks a
free port; the "serving on" line names it.
"""
import argparse
import json
from http.server import BaseHTTPRequestHandler, HTTPServer

from megatron_core.cli import run
from megatron_core.errors import UserError
from megatron_core.inference.rest_api import BadRequest, parse_request, respond
from megatron_core.inference.tool_setup import (add_checkpoint_arguments, is_first_rank, load_text_generator,
                                                share_from_first_rank)

_STOP = "stop"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_arguments(p)
    p.add_argument("--host", default="0.0.0.0", help="address to listen on")
    p.add_argument("--port", type=int, default=5000, help="port to listen on (0: a free one)")
    return p.parse_args(argv)


def run_request(generator, request):
    """Every rank: (status, body)."""
    try:
        return 200, respond(generator, request)
    except UserError as error:      # e.g. a prompt longer than the model's positions: same on every rank
        return 400, str(error)


def make_handler(generator):
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status, body):
            payload = (json.dumps(body, ensure_ascii=False) if status == 200 else str(body)).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if status == 200 else "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_PUT(self):
            if self.path.rstrip("/") != "/api":
                self._send(404, f"no such resource {self.path}; PUT /api.")
                return
            try:
                length = int(self.headers.get("Content-Length", 0))
                try:
                    body = json.loads(self.rfile.read(length).decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    raise BadRequest("the request body is not JSON; send a JSON object with a \"prompts\" list.")
                request = parse_request(body)
            except BadRequest as error:
                self._send(400, str(error))
                return
            share_from_first_rank(request)
            self._send(*run_request(generator, request))

        do_POST = do_PUT

        def log_message(self, format, *args):
            print(f"request from {self.client_address[0]}: {format % args}", flush=True)

    return Handler


def follow(generator):
    """The other ranks: run each request rank 0 hands over, until it says stop."""
    while True:
        request = share_from_first_rank(None)
        if request == _STOP:
            return
        run_request(generator, request)


def main(argv=None):
    args = parse_args(argv)
    generator = load_text_generator(args)
    if not is_first_rank():
        follow(generator)
        return 0
    try:
        server = HTTPServer((args.host, args.port), make_handler(generator))
    except OSError as error:
        share_from_first_rank(_STOP)
        raise UserError(f"cannot listen on {args.host}:{args.port} ({error.strerror}); choose another --port.")
    print(f"serving on http://{args.host}:{server.server_address[1]}/api ({generator.family} model from "
          f"{args.load})", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        share_from_first_rank(_STOP)
    return 0


if __name__ == "__main__":
    run(main)
