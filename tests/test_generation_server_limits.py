"""The generation server's limits and its line in front of the model, over real HTTP in this
process: each refusal is its status with one sentence naming the numbers, it listens on
127.0.0.1 by default, a client stalled after its headers (or one that never reads its
answer) does not delay another client's answer, and a request that waits longer than
--request-timeout for the model gets 503 and never reaches it (so no rank runs it).

The model here is a stand-in that records the requests it runs and answers with their
prompts: what is tested is the HTTP side and the line. Real generation through the same
server is tests/test_generate_text_tools.py's and bench/server.py's."""
import http.client
import json
import socket
import threading
import time
from contextlib import contextmanager

import pytest

from megatron_core.data.tokenizers import build_tokenizer
from megatron_core.inference.http_server import ServerConfig, start_http_server, stop_http_server
from megatron_core.inference.request_queue import RequestLine
from megatron_core.inference.rest_api import admit
from megatron_core.training.config import build
from tests.harness.tiny_corpus import BERT_VOCAB
from tests.harness.tool_main import load_tool

pytestmark = pytest.mark.quick

POSITIONS = 64


class RecordingModel:
    """Answers a request with its prompts; `hold` keeps the model busy until released."""

    def __init__(self):
        self.ran, self.hold = [], threading.Event()
        self.hold.set()
        self.started = threading.Event()

    def __call__(self, request):
        self.ran.append(request["prompts"])
        self.started.set()
        self.hold.wait(30)
        return 200, {"text": request["prompts"]}


@contextmanager
def serving(model, **config):
    """The server's HTTP side and line over `model`, on a free port of 127.0.0.1: yields the port."""
    config = ServerConfig(port=0, **config)
    tokenizer = build_tokenizer("BertWordPieceLowerCase", vocab_file=BERT_VOCAB)
    line = RequestLine(model, config.request_timeout)
    serve = threading.Thread(target=line.serve)
    serve.start()
    server = start_http_server(config, lambda body: admit(body, tokenizer.tokenize_batch, POSITIONS,
                                                          config.max_batch_size), line.submit)
    try:
        yield server.server_address[1]
    finally:
        stop_http_server(server)
        line.close()
        serve.join(30)


def put(port, body, timeout=10.0):
    """(status, body text) of PUT /api."""
    data = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode("utf-8")
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("PUT", "/api", body=data, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8")
    finally:
        connection.close()


def raw_exchange(port, head: bytes, timeout=10.0) -> str:
    """The status line and body the server answers to bytes sent as they are."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    return reply.decode("utf-8")


def test_each_refusal_is_its_status_with_a_sentence_naming_the_numbers():
    model = RecordingModel()
    with serving(model, max_batch_size=4, max_request_bytes=4096) as port:
        # Every Chinese character is one token of the BERT vocabulary: 40 + 30 > 64 positions.
        status, text = put(port, {"prompts": ["今天", "天" * 40], "tokens_to_generate": 30})
        assert status == 400 and text.count(".") == 1 and text.endswith(".")
        assert "prompt 1 has 40 tokens" in text and "tokens_to_generate is 30" in text
        assert "70 tokens" in text and "64 positions" in text

        status, text = put(port, {"prompts": ["今天"] * 5, "tokens_to_generate": 2})
        assert status == 400 and "5 prompts" in text and "limit of 4 (--max-batch-size)" in text

        status, text = put(port, {"prompts": ["天" * 2000], "tokens_to_generate": 2})   # 6,000+ bytes of UTF-8
        declared = len(json.dumps({"prompts": ["天" * 2000], "tokens_to_generate": 2}, ensure_ascii=False).encode())
        assert status == 413 and f"body of {declared} bytes" in text and "limit of 4096 bytes" in text

        status, text = put(port, b'{"prompts": ["\xe4\xbb\x8a\xe5\xa4\xa9"], "tokens_to_generate": ')
        assert status == 400 and text == 'the request body is not JSON; send a JSON object with a "prompts" list.'
        status, text = put(port, {"prompts": ["今天"], "tokens_to_generate": "8"})
        assert status == 400 and "tokens_to_generate must be an integer" in text
        status, text = put(port, b"[" * 2000 + b"]" * 2000)        # deeper than the JSON parser recurses
        assert status == 400 and text.startswith("the request body is not JSON")

        reply = raw_exchange(port, b"PUT /api HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reply.startswith("HTTP/1.0 411") and reply.endswith("send the JSON body with its length.")
        reply = raw_exchange(port, b"PUT /api HTTP/1.1\r\nHost: x\r\nContent-Length: 9999999\r\n\r\n")
        assert reply.startswith("HTTP/1.0 413") and "body of 9999999 bytes" in reply

        assert model.ran == []               # nothing refused reached the model
        assert put(port, {"prompts": ["今天"], "tokens_to_generate": 62}) == (200, '{"text": ["今天"]}')


def test_the_server_listens_on_the_loopback_address_unless_told_otherwise():
    tool = load_tool("run_text_generation_server.py")
    assert build(ServerConfig, tool.parse_args(["--load", "ckpt"])).host == "127.0.0.1"
    assert tool.parse_args(["--load", "ckpt", "--host", "0.0.0.0"]).host == "0.0.0.0"
    server = start_http_server(ServerConfig(port=0), lambda body: body, lambda request: (200, {}))
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        stop_http_server(server)


def test_a_client_stalled_after_its_headers_or_not_reading_does_not_delay_another_answer():
    with serving(RecordingModel(), request_timeout=60) as port:
        stalled = socket.create_connection(("127.0.0.1", port))
        stalled.sendall(b"PUT /api HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"prompts\"")
        deaf = socket.create_connection(("127.0.0.1", port))     # sends a whole request, never reads
        body = json.dumps({"prompts": ["今天"], "tokens_to_generate": 4}).encode()
        deaf.sendall(b"PUT /api HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        try:
            start = time.monotonic()
            assert put(port, {"prompts": ["清华"], "tokens_to_generate": 4}, timeout=20) == (200, '{"text": ["清华"]}')
            assert time.monotonic() - start < 5     # not the stalled client's 60 s
        finally:
            stalled.close()
            deaf.close()


def test_a_request_waiting_past_the_timeout_gets_503_and_never_reaches_the_model():
    model = RecordingModel()
    model.hold.clear()
    with serving(model, request_timeout=0.5) as port:
        answers = {}

        def send(name):
            answers[name] = put(port, {"prompts": [name], "tokens_to_generate": 4}, timeout=30)

        first = threading.Thread(target=send, args=("first",))
        first.start()
        assert model.started.wait(10)        # the model is busy with "first"
        send("second")                       # waits 0.5 s in the line
        model.hold.set()
        first.join(30)
        send("third")
    assert answers["first"] == (200, '{"text": ["first"]}')
    status, text = answers["second"]
    assert status == 503 and "waited 0.5 s (--request-timeout)" in text and text.endswith("try again later.")
    assert answers["third"] == (200, '{"text": ["third"]}')
    assert model.ran == [["first"], ["third"]]
