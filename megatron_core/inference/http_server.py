"""The HTTP side of the text generation server: a thread per connection, and every limit
checked before the request costs more than its bytes.

    server = start_http_server(ServerConfig(port=0), admit, line.submit)   # serves in a thread
    server.server_address                                                  # (host, port)
    stop_http_server(server)

A connection's thread reads the headers, refuses a body it will not read (no
Content-Length: 411; larger than max_request_bytes: 413) and reads the rest with a
deadline; `admit(body)` parses and checks it (400 with one sentence, rest_api.py); then
`submit(request)` waits for the model's answer in the line (request_queue.py). A client
silent for `request_timeout` seconds while sending or reading is dropped, so a slow or
stalled client holds only its own thread.

After refusing a body it has not read the server still reads and drops what the client
sends (up to the declared length, for a few seconds) before closing: closing a socket
with unread data resets the connection, and the client would see a reset instead of
the 413.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Tuple

from .rest_api import MEGATRON_MAX_PROMPTS, BadRequest

DRAIN_SECONDS = 5.0
_CHUNK = 1 << 16


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"             # only this machine, unless --host says otherwise
    port: int = 5000                    # 0: a free one
    max_batch_size: int = MEGATRON_MAX_PROMPTS    # prompts per request
    max_request_bytes: int = 1 << 20    # request body
    request_timeout: float = 60.0       # seconds waiting for the model, or for a silent client


class _Refusal(Exception):
    def __init__(self, status: int, sentence: str, unread: int = 0):
        super().__init__(sentence)
        self.status, self.sentence, self.unread = status, sentence, unread


class _Server(ThreadingHTTPServer):
    daemon_threads = True               # a stalled client's thread does not hold up shutdown
    request_queue_size = 128            # connections waiting to be accepted (socketserver's default: 5)

    def __init__(self, config: ServerConfig, handler):
        if ":" in config.host:
            self.address_family = socket.AF_INET6
        super().__init__((config.host, config.port), handler)


def _handler(config: ServerConfig, admit: Callable[[bytes], Any], submit: Callable[[Any], Tuple[int, Any]]):
    class Handler(BaseHTTPRequestHandler):
        timeout = config.request_timeout     # every read and write of the connection

        def do_PUT(self):
            try:
                if self.path.rstrip("/") != "/api":
                    raise _Refusal(404, f"no such resource {self.path}; PUT /api.", unread=self._declared_length())
                request = admit(self._read_body())
            except _Refusal as refusal:
                self._send(refusal.status, refusal.sentence)
                self._drain(refusal.unread)
                return
            except BadRequest as error:
                self._send(400, str(error))
                return
            self._send(*submit(request))

        do_POST = do_PUT

        def _declared_length(self) -> int:
            """What the client says it sends (0 when it does not say), at most max_request_bytes."""
            declared = (self.headers.get("Content-Length") or "").strip()
            return min(int(declared), config.max_request_bytes) if declared.isdigit() else 0

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding"):
                raise _Refusal(411, "the request body has no length (chunked); send it with a Content-Length "
                                    "header.", unread=config.max_request_bytes)
            declared = self.headers.get("Content-Length")
            if declared is None:
                raise _Refusal(411, "the request has no Content-Length header; send the JSON body with its length.")
            if not declared.strip().isdigit():
                raise _Refusal(400, f"Content-Length {declared!r} is not a number of bytes.")
            length = int(declared)
            if length > config.max_request_bytes:
                raise _Refusal(413, f"the request body of {length} bytes is larger than the server's limit of "
                                    f"{config.max_request_bytes} bytes (--max-request-bytes); send fewer or shorter "
                                    f"prompts.", unread=length)
            deadline, parts, got = time.monotonic() + config.request_timeout, [], 0
            try:
                while got < length:
                    if time.monotonic() > deadline:
                        raise TimeoutError
                    part = self.rfile.read1(min(_CHUNK, length - got))
                    if not part:
                        raise _Refusal(400, f"the request body ended after {got} of its {length} bytes.")
                    parts.append(part)
                    got += len(part)
            except TimeoutError:
                raise _Refusal(408, f"the request body ({got} of {length} bytes) did not arrive within "
                                    f"{config.request_timeout:g} s (--request-timeout).") from None
            return b"".join(parts)

        def _send(self, status: int, body: Any) -> None:
            ok = status == 200
            payload = (json.dumps(body, ensure_ascii=False) if ok else str(body)).encode("utf-8")
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json" if ok else "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                self.wfile.flush()
            except OSError:         # the client left or stopped reading: its loss only
                self.close_connection = True

        def _drain(self, unread: int) -> None:
            """Read and drop up to `unread` bytes the client still sends (module doc)."""
            if not unread:
                return
            try:
                self.connection.shutdown(socket.SHUT_WR)
                self.connection.settimeout(1.0)
                deadline = time.monotonic() + DRAIN_SECONDS
                while unread > 0 and time.monotonic() < deadline:
                    part = self.rfile.read1(min(_CHUNK, unread))
                    if not part:
                        return
                    unread -= len(part)
            except OSError:
                pass

        def log_message(self, format, *args):
            print(f"request from {self.client_address[0]}: {format % args}", flush=True)

    return Handler


def start_http_server(config: ServerConfig, admit: Callable[[bytes], Any],
                      submit: Callable[[Any], Tuple[int, Any]]) -> ThreadingHTTPServer:
    """Listening on config.host:config.port and serving in a background thread (OSError if it cannot listen)."""
    server = _Server(config, _handler(config, admit, submit))
    # Polling for shutdown every 0.1 s instead of 0.5 s: stopping takes no longer than that.
    threading.Thread(target=server.serve_forever, args=(0.1,), name="http", daemon=True).start()
    return server


def stop_http_server(server: ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()
