"""LLM requests are bounded (whole-request timeout, answer size) and keys stay with their host.

Each test runs a small hostile HTTP server on 127.0.0.1 in a thread.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from napari_itaclip.llm import LLMError, LLMSettings, generate_aux
from napari_itaclip.llm.client import MAX_ANSWER_BYTES

ANSWER = json.dumps({"choices": [{"message": {"content": "A small domesticated feline."},
                                  "finish_reason": "stop"}]}).encode()


class Server:
    """``answer(handler)`` writes the whole reply; requests (path, headers) are recorded."""

    def __init__(self, answer):
        self.requests = []
        self.sent = 0
        self.finished = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append((self.path, dict(self.headers)))
                try:
                    answer(self, outer)
                except (BrokenPipeError, ConnectionResetError, OSError):
                    pass
                finally:
                    outer.finished.set()

            do_GET = do_POST

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def port(self):
        return self.httpd.server_address[1]

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    made = []

    def make(answer):
        made.append(Server(answer))
        return made[-1]

    yield make
    for s in made:
        s.close()


def _settings(server, **kw):
    base = {"model": "m", "timeout": 5.0, "max_retries": 0, "retry_delay": 0.0}
    return LLMSettings(base_url=server.url, **{**base, **kw})


def _error(settings):
    with pytest.raises(LLMError) as info:
        generate_aux(["cat"], "definitions", settings)
    return str(info.value)


def _trickle_body(h, server):
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(ANSWER)))
    h.end_headers()
    for byte in ANSWER:  # one byte per 0.5 s: every socket read succeeds in time
        h.wfile.write(bytes([byte]))
        h.wfile.flush()
        time.sleep(0.5)


def _trickle_headers(h, server):
    for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n":
        h.wfile.write(bytes([byte]))
        h.wfile.flush()
        time.sleep(0.5)


@pytest.mark.parametrize("answer", [_trickle_body, _trickle_headers], ids=["body", "headers"])
def test_timeout_bounds_the_whole_request(serve, answer):
    server = serve(answer)
    t0 = time.monotonic()
    msg = _error(_settings(server, timeout=2.0))
    elapsed = time.monotonic() - t0
    assert "no complete answer within 2 s" in msg and "timeout" in msg
    assert 1.8 < elapsed < 4.0, elapsed  # ~ the timeout, not the ~60 s the trickle takes


def test_a_slow_but_complete_answer_within_the_timeout_is_accepted(serve):
    def answer(h, server):
        h.send_response(200)
        h.send_header("Content-Length", str(len(ANSWER)))
        h.end_headers()
        for i in range(0, len(ANSWER), 20):
            h.wfile.write(ANSWER[i: i + 20])
            h.wfile.flush()
            time.sleep(0.01)

    server = serve(answer)
    aux = generate_aux(["cat"], "definitions", _settings(server, timeout=5.0))
    assert "small domesticated feline" in aux.format().lower()


def _huge(declare_length):
    def answer(h, server):
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        if declare_length:
            h.send_header("Content-Length", str(1 << 30))
        else:
            h.send_header("Connection", "close")  # body delimited by closing
        h.end_headers()
        block = b"[" * 65536
        while server.sent < (1 << 30):
            h.wfile.write(block)
            server.sent += len(block)
    return answer


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "streamed"])
def test_answer_size_is_capped(serve, declare_length):
    server = serve(_huge(declare_length))
    t0 = time.monotonic()
    msg = _error(_settings(server, timeout=30.0))
    elapsed = time.monotonic() - t0
    assert f"larger than {MAX_ANSWER_BYTES // (1 << 20)} MiB" in msg
    assert server.finished.wait(10)  # the server gave up: the client closed the connection
    assert server.sent < 64 * (1 << 20), server.sent  # far from the 1 GiB it offered
    assert elapsed < 10


def test_key_is_never_sent_to_another_host(serve):
    other = serve(lambda h, s: (h.send_response(200),
                                h.send_header("Content-Length", str(len(ANSWER))),
                                h.end_headers(), h.wfile.write(ANSWER)))

    def redirect(h, server):
        h.send_response(302)
        h.send_header("Location", f"{other.url}/chat/completions")
        h.send_header("Content-Length", "0")
        h.end_headers()

    first = serve(redirect)
    settings = _settings(first, api_key="sk-secret-key")
    msg = _error(settings)
    assert first.requests and first.requests[0][1]["Authorization"] == "Bearer sk-secret-key"
    assert other.requests == []  # neither the key nor the request reached it
    assert f"127.0.0.1:{first.port}" in msg and f"127.0.0.1:{other.port}" in msg
    assert "redirect" in msg and "sk-secret-key" not in msg
