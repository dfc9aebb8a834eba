"""The HTTP side: one chat-completions request per class, with retries, on the standard library.

Why not the ``openai`` package: see docs/architecture.md ("The LLM client").
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import ipaddress
import json
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from .answers import BadAnswer, parse_answer
from .prompts import build_messages
from .settings import DEFAULT_BASE_URL, ENV_API_KEY, ENV_BASE_URL, ENV_TIMEOUT, LLMError, LLMSettings

__all__ = ["MAX_ANSWER_BYTES", "ask", "post_chat"]

_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_MAX_RETRY_AFTER = 30.0
#: Largest answer body read from the server (4 MiB; a chat answer of a few sentences
#: is a few kB). A longer answer is refused with an :class:`LLMError` after reading
#: at most this much (and at once when its ``Content-Length`` says so).
MAX_ANSWER_BYTES = 4 * 1024 * 1024
_MAX_ERROR_BYTES = 64 * 1024  # of an HTTP error's body, for its message


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Deadline:
    """Bounds one whole request: at the deadline, its socket is shut down.

    A socket timeout only bounds each read, so a server trickling a byte at a time
    never trips it; this timer thread does, whatever phase the request is in.
    """

    def __init__(self, seconds: float):
        self.fired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            if self.fired:
                self._shutdown()

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            self._shutdown()

    def _shutdown(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):  # already closed
                self._sock.shutdown(socket.SHUT_RDWR)


class _Watched:
    """A connection whose socket the request's deadline can shut down (see _Deadline)."""

    def __init__(self, *args, deadline: _Deadline, **kwargs):
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def connect(self):
        super().connect()
        self._deadline.attach(self.sock)


class _WatchedHTTP(_Watched, http.client.HTTPConnection):
    pass


class _WatchedHTTPS(_Watched, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline):
        super().__init__()
        self._deadline = deadline

    def http_open(self, req):
        return self.do_open(functools.partial(_WatchedHTTP, deadline=self._deadline), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline):
        super().__init__()
        self._deadline = deadline

    def https_open(self, req):
        kwargs: dict[str, Any] = {"context": self._context}
        if hasattr(self, "_check_hostname"):  # Python < 3.12
            kwargs["check_hostname"] = self._check_hostname
        return self.do_open(functools.partial(_WatchedHTTPS, deadline=self._deadline), req,
                            **kwargs)


class _CrossOriginRedirect(Exception):
    def __init__(self, old: str, new: str, code: int):
        super().__init__(new)
        self.old, self.new, self.code = old, new, code


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme)


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to the same scheme, host and port (the key stays there)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if _origin(newurl) != _origin(req.full_url):
            fp.close()
            raise _CrossOriginRedirect(req.full_url, newurl, code)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener(url: str, deadline: _Deadline) -> urllib.request.OpenerDirector:
    handlers: list[Any] = [_HTTPHandler(deadline), _HTTPSHandler(deadline),
                           _SameOriginRedirects()]
    # a local server is reached directly even when http_proxy is set for the internet
    if _is_loopback(url):
        handlers.append(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener(*handlers)


class _Transient(Exception):
    """A failure worth retrying (internal)."""

    def __init__(self, error: LLMError, retry_after: float | None = None):
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


def _server_message(body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return " ".join(text.split())[:300]
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data.get("message")))
        if isinstance(err, dict):
            err = err.get("message") or err.get("msg") or json.dumps(err)
        if isinstance(err, list):
            err = "; ".join(str(e.get("msg", e)) if isinstance(e, dict) else str(e) for e in err)
        if err:
            return " ".join(str(err).split())[:300]
    return " ".join(text.split())[:300]


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    try:
        return max(0.0, min(float(value), _MAX_RETRY_AFTER))
    except ValueError:
        return None


def _http_hint(status: int, settings: LLMSettings) -> str:
    if status in (401, 403):
        return (f"check the API key (set {ENV_API_KEY}, or LLMSettings.api_key); local "
                f"servers such as Ollama need none")
    if status == 404:
        return (f"check the base URL (the API root, usually ending in /v1, e.g. "
                f"{DEFAULT_BASE_URL}) and that the server has the model "
                f"{settings.model!r} (for Ollama: `ollama pull {settings.model}`)")
    if status == 429:
        return "the server is rate-limiting; wait a while and try again"
    if status >= 500:
        return "the server failed; look at its log, or try again later"
    return "check the settings (base URL, model, API key)"


def _request(settings: LLMSettings, messages: list[dict[str, str]]) -> urllib.request.Request:
    """The chat-completions POST (the key only in the Authorization header, when set)."""
    body: dict[str, Any] = {
        "model": settings.model,
        "messages": messages,
        "temperature": float(settings.temperature),
        "top_p": float(settings.top_p),
        "stream": False,
    }
    if settings.max_tokens is not None:
        body["max_tokens"] = int(settings.max_tokens)
    if settings.seed is not None:
        body["seed"] = int(settings.seed)
    headers = {"Content-Type": "application/json", "Accept": "application/json",
               "User-Agent": "napari-itaclip"}
    if settings.api_key:
        headers["Authorization"] = f"Bearer {settings.api_key}"
    return urllib.request.Request(settings.endpoint, data=json.dumps(body).encode("utf-8"),
                                  headers=headers, method="POST")


def post_chat(settings: LLMSettings, messages: list[dict[str, str]], name: str) -> str:
    """POST one chat-completions request and return the answer's text.

    Raises :class:`LLMError` with the endpoint, model, class, what went wrong and what
    to do; failures worth retrying come wrapped in ``_Transient``.
    """
    url = settings.endpoint
    where = f"{url} (model {settings.model!r}, class {name!r})"

    def fail(what: str, hint: str, status: int | None = None) -> LLMError:
        return LLMError(f"LLM request to {where} failed: {what}; {hint}.", endpoint=url,
                        model=settings.model, class_name=name, status=status)

    status, raw = _send(settings, _request(settings, messages), fail)
    return _answer_text(status, raw, fail)


def _send(settings: LLMSettings, request: urllib.request.Request, fail) -> tuple[int, bytes]:
    """Send the request; HTTP and network failures become (transient) LLMErrors.

    ``settings.timeout`` bounds the whole request (connecting, sending, the answer's
    headers and body); the body is read up to :data:`MAX_ANSWER_BYTES`.
    """
    with _Deadline(float(settings.timeout)) as deadline:
        try:
            return _send_within(settings, request, fail, deadline)
        except LLMError:
            raise
        except Exception:
            if deadline.fired:
                raise _timed_out(settings, fail) from None
            raise


def _timed_out(settings: LLMSettings, fail) -> LLMError:
    return fail(f"no complete answer within {settings.timeout:g} s",
                f"check that the server is not overloaded, or raise the timeout "
                f"(LLMSettings.timeout, {ENV_TIMEOUT})")


def _read_capped(response, fail) -> bytes:
    """The body, read piece by piece, refused past :data:`MAX_ANSWER_BYTES`."""
    cap = MAX_ANSWER_BYTES
    too_big = (f"the answer is larger than {cap // (1024 * 1024)} MiB",
               "the server does not answer like a chat-completions API; check the base URL")
    length = response.headers.get("Content-Length")
    if length is not None and length.strip().isdigit() and int(length) > cap:
        raise fail(*too_big)
    parts, total = [], 0
    while True:
        piece = response.read1(65536)
        if not piece:
            return b"".join(parts)
        total += len(piece)
        if total > cap:
            raise fail(*too_big)
        parts.append(piece)


def _send_within(settings: LLMSettings, request: urllib.request.Request, fail,
                 deadline: _Deadline) -> tuple[int, bytes]:
    url = settings.endpoint
    try:
        with _opener(url, deadline).open(request, timeout=float(settings.timeout)) as response:
            status = response.status
            raw = _read_capped(response, fail)
        if deadline.fired:  # the socket was shut down under a read
            raise _timed_out(settings, fail)
        return status, raw
    except _CrossOriginRedirect as exc:
        old, new = _origin(exc.old), _origin(exc.new)
        raise fail(f"HTTP {exc.code} redirect from {old[0]}://{old[1]}:{old[2]} to another "
                   f"host, {new[0]}://{new[1]}:{new[2]} ({exc.new}); refused, so the API key "
                   "is never sent to another host",
                   "set the base URL to the server that answers") from None
    except urllib.error.HTTPError as exc:
        try:
            detail = _server_message(exc.read(_MAX_ERROR_BYTES))
        except (OSError, http.client.HTTPException):
            detail = ""
        finally:
            exc.close()
        what = f"HTTP {exc.code} {exc.reason}" + (f": {detail}" if detail else "")
        error = fail(what, _http_hint(exc.code, settings), exc.code)
        if exc.code in _RETRY_STATUS:
            raise _Transient(error, _retry_after(exc.headers)) from None
        raise error from None
    except TimeoutError:
        raise _timed_out(settings, fail) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError) or deadline.fired:
            raise _timed_out(settings, fail) from None
        if isinstance(reason, ConnectionRefusedError):
            raise fail("connection refused, nothing is listening there",
                       f"start the LLM server (e.g. `ollama serve`) or set the base URL "
                       f"({ENV_BASE_URL})") from None
        if isinstance(reason, socket.gaierror):
            raise fail(f"unknown host ({reason})", f"check the base URL ({ENV_BASE_URL})") \
                from None
        raise _Transient(fail(f"cannot reach the server ({reason})",
                              f"check the base URL ({ENV_BASE_URL}) and the network")) from None
    except (ConnectionError, http.client.HTTPException, OSError) as exc:
        if deadline.fired:
            raise _timed_out(settings, fail) from None
        raise _Transient(fail(f"the connection broke ({type(exc).__name__}: {exc})",
                              "check that the server is running and reachable")) from None


def _answer_text(status: int, raw: bytes, fail) -> str:
    """``choices[0].message.content`` of a chat-completions response, checked."""
    text = raw.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        start = " ".join(text.split())[:120]
        raise fail(f"the answer is not JSON (HTTP {status}, starts with {start!r})",
                   "is the base URL the root of an OpenAI-compatible API, usually ending in "
                   "/v1?") from None
    if isinstance(data, dict) and data.get("error") and not data.get("choices"):
        raise fail(f"the server reported an error: {_server_message(raw)}",
                   "check the settings (base URL, model, API key)")
    try:
        choice = data["choices"][0]
        message = choice["message"]
        content = message["content"]
    except (KeyError, IndexError, TypeError):
        raise fail(f"the answer lacks choices[0].message.content: {' '.join(text.split())[:160]}",
                   "the server does not speak the OpenAI chat-completions protocol; check "
                   "the base URL") from None
    if isinstance(content, list):  # content given as parts
        content = "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    if content is not None and not isinstance(content, str):
        raise fail(f"choices[0].message.content is a {type(content).__name__}, not text",
                   "the server does not speak the OpenAI chat-completions protocol")
    if not content or not content.strip():
        hint = ("raise max_tokens (the model stopped at the length limit)"
                if isinstance(choice, dict) and choice.get("finish_reason") == "length"
                else "try again, or try another model")
        raise _Transient(fail("the model's answer is empty", hint))
    return content


def ask(settings: LLMSettings, name: str, kind: str) -> str:
    """Ask for one class, retrying transient failures and unusable answers."""
    messages = build_messages(name, kind)
    attempts = int(settings.max_retries) + 1
    for attempt in range(attempts):
        delay = float(settings.retry_delay) * 2.0**attempt
        try:
            answer = post_chat(settings, messages, name)
            return parse_answer(answer, name, kind)
        except _Transient as exc:
            last = exc.error
            if exc.retry_after is not None:
                delay = max(delay, exc.retry_after)
        except BadAnswer as exc:
            what = "definition" if kind == "definitions" else "synonyms"
            last = LLMError(
                f"LLM at {settings.endpoint} (model {settings.model!r}) gave no usable {what} "
                f"for class {name!r}: {exc}; try again, try another model, or write the text "
                f"yourself (class {'>='} text).", endpoint=settings.endpoint,
                model=settings.model, class_name=name)
        if attempt + 1 < attempts and delay > 0:
            time.sleep(delay)
    if attempts > 1:
        raise LLMError(f"{last} (gave up after {attempts} attempts)", endpoint=last.endpoint,
                       model=last.model, class_name=last.class_name, status=last.status)
    raise last
