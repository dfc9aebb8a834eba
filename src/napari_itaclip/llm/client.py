"""The HTTP side: one chat-completions request per class, with retries, on the standard library.

Why not the ``openai`` package: see docs/architecture.md ("The LLM client").
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from .answers import BadAnswer, parse_answer
from .prompts import build_messages
from .settings import DEFAULT_BASE_URL, ENV_API_KEY, ENV_BASE_URL, ENV_TIMEOUT, LLMError, LLMSettings

__all__ = ["ask", "post_chat"]

_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_MAX_RETRY_AFTER = 30.0


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _opener(url: str) -> urllib.request.OpenerDirector:
    # a local server is reached directly even when http_proxy is set for the internet
    if _is_loopback(url):
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener()


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
    """Send the request; HTTP and network failures become (transient) LLMErrors."""
    url = settings.endpoint
    try:
        with _opener(url).open(request, timeout=float(settings.timeout)) as response:
            status = response.status
            raw = response.read()
        return status, raw
    except urllib.error.HTTPError as exc:
        try:
            detail = _server_message(exc.read())
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
        raise fail(f"no answer within {settings.timeout:g} s",
                   f"check that the server is not overloaded, or raise the timeout "
                   f"(LLMSettings.timeout, {ENV_TIMEOUT})") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            raise fail(f"no answer within {settings.timeout:g} s",
                       f"raise the timeout (LLMSettings.timeout, {ENV_TIMEOUT})") from None
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
