r"""Definitions and synonyms of class names from a large language model.

ITACLIP's text enhancement (spec section 2): an LLM writes a short definition, or a
few synonyms, for each class name, and the engine mixes the embedding of that
*auxiliary text* into the class's queries with weight ``aux_weight``. The authors used
LLaMA-3-8B-Instruct (temperature 0.6, top-p 0.9): definitions for VOC21, Context60 and
COCO-Stuff, synonyms for COCO-Object and Cityscapes.

This module talks to any server with an OpenAI-compatible chat-completions endpoint
(``POST {base_url}/chat/completions``): Ollama, vLLM, llama.cpp's server, LM Studio or
a hosted service. It uses only the standard library for HTTP and imports neither Qt
nor torch; open_clip's tokenizer is loaded on first use, to keep every text inside
CLIP's 77-token context.

Answers are cached on disk (see :func:`llm_cache_dir`), so a class is asked about
once per model, kind and prompt version. Texts the user edited are recorded with
:func:`remember_aux` and are never replaced by generated ones.

Examples
--------
>>> from napari_itaclip.llm import LLMSettings, generate_aux
>>> settings = LLMSettings.from_env()          # doctest: +SKIP
>>> vocab = generate_aux("background: sky\ncat\ncar", "definitions", settings)  # doctest: +SKIP
>>> print(vocab.format())                      # doctest: +SKIP
background: sky
cat >= a small domesticated carnivorous mammal with soft fur and whiskers
car >= a road vehicle with four wheels and an engine that carries a few people
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import hashlib
import http.client
import ipaddress
import json
import logging
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _env
from .errors import ITACLIPError
from .files import write_json_atomic
from .progress import drain
from .vocabulary import BACKGROUND, Vocabulary

__all__ = [
    "CONTEXT_LENGTH",
    "DEFAULT_BASE_URL",
    "DEFAULT_MODEL",
    "ENV_API_KEY",
    "ENV_BASE_URL",
    "ENV_CACHE_DIR",
    "ENV_MODEL",
    "ENV_TIMEOUT",
    "KINDS",
    "PROMPT_VERSION",
    "LLMError",
    "LLMSettings",
    "aux_token_budget",
    "build_messages",
    "cached_aux",
    "count_template_tokens",
    "fit_aux_text",
    "forget_aux",
    "generate_aux",
    "iter_generate_aux",
    "llm_cache_dir",
    "parse_answer",
    "remember_aux",
]

log = logging.getLogger(__name__)

#: The two kinds of auxiliary text.
KINDS = ("definitions", "synonyms")
#: Bumped whenever the prompts or the answer parsing change, so that generated texts
#: cached under an older prompt are asked for again (user-edited texts are kept).
PROMPT_VERSION = 1
#: CLIP's text context, start- and end-of-text tokens included.
CONTEXT_LENGTH = 77

ENV_BASE_URL = _env.LLM_BASE_URL
ENV_MODEL = _env.LLM_MODEL
ENV_API_KEY = _env.LLM_API_KEY
ENV_TIMEOUT = _env.LLM_TIMEOUT
ENV_CACHE_DIR = _env.CACHE_DIR

#: Ollama's OpenAI-compatible API on this machine.
DEFAULT_BASE_URL = "http://localhost:11434/v1"
#: Ollama's name of LLaMA-3-8B-Instruct (4-bit), the authors' model.
DEFAULT_MODEL = "llama3:8b"

#: Longest answer (in words, after cleaning) taken as a definition; the prompt asks
#: for at most 50. Longer answers are rejected as rambling.
MAX_DEFINITION_WORDS = 60
#: Longest single synonym, in words; longer items are explanations, not synonyms.
MAX_SYNONYM_WORDS = 6
#: Most synonyms kept per class.
MAX_SYNONYMS = 5

_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_MAX_RETRY_AFTER = 30.0


class LLMError(ITACLIPError, RuntimeError):
    """A definition or synonym could not be obtained from the LLM.

    The message names the endpoint, the model and the class, says what went wrong
    and what to do about it.

    Attributes
    ----------
    endpoint : str or None
        The chat-completions URL that was asked.
    model : str or None
        The model name sent.
    class_name : str or None
        The class being asked about.
    status : int or None
        The HTTP status of the failed request, if the server answered.
    """

    def __init__(self, message: str, *, endpoint: str | None = None, model: str | None = None,
                 class_name: str | None = None, status: int | None = None):
        super().__init__(message)
        self.endpoint = endpoint
        self.model = model
        self.class_name = class_name
        self.status = status


# -- settings ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LLMSettings:
    """Where and how to ask the LLM.

    Parameters
    ----------
    base_url : str
        Root of the OpenAI-compatible API, the part before ``/chat/completions``:
        ``http://localhost:11434/v1`` (Ollama), ``http://localhost:8000/v1`` (vLLM),
        ``http://localhost:8080/v1`` (llama.cpp), ``http://localhost:1234/v1``
        (LM Studio), ``https://api.openai.com/v1``. A URL ending in
        ``/chat/completions`` is accepted and trimmed.
    model : str
        Model name as the server knows it (``llama3:8b`` for Ollama,
        ``meta-llama/Meta-Llama-3-8B-Instruct`` for vLLM).
    api_key : str or None
        Sent as ``Authorization: Bearer ...`` when given. Not shown in ``repr``.
    timeout : float
        Seconds to wait for each answer.
    temperature, top_p : float
        Sampling parameters (the authors': 0.6 and 0.9).
    max_tokens : int or None
        Longest answer the server may produce; ``None`` leaves it to the server.
    max_retries : int
        How often a request is repeated after a transient failure (HTTP 408, 429, 5xx,
        a dropped connection) or an unusable answer.
    retry_delay : float
        Seconds before the first retry, doubled for each further one (a server's
        ``Retry-After`` is honoured up to 30 s).
    seed : int or None
        Sampling seed, sent when given (servers that support it answer reproducibly).
    cache_dir : str, Path or None
        Folder of the answer cache; ``None`` uses :func:`llm_cache_dir`.
    use_cache : bool
        Read and write the on-disk cache.
    """

    base_url: str = DEFAULT_BASE_URL
    model: str = DEFAULT_MODEL
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 60.0
    temperature: float = 0.6
    top_p: float = 0.9
    max_tokens: int | None = 256
    max_retries: int = 2
    retry_delay: float = 1.0
    seed: int | None = None
    cache_dir: str | Path | None = None
    use_cache: bool = True

    def __post_init__(self) -> None:
        base = str(self.base_url or "").strip().rstrip("/")
        for suffix in ("/chat/completions", "/completions"):
            if base.endswith(suffix):
                base = base[: -len(suffix)].rstrip("/")
        parts = urllib.parse.urlsplit(base)
        errors = []
        if parts.scheme not in ("http", "https") or not parts.netloc:
            errors.append(f"base_url must be an http:// or https:// URL such as "
                          f"{DEFAULT_BASE_URL!r}, got {self.base_url!r}")
        model = str(self.model or "").strip()
        if not model:
            errors.append("model must name the LLM, e.g. 'llama3:8b'")
        if not float(self.timeout) > 0:
            errors.append(f"timeout must be > 0 seconds, got {self.timeout!r}")
        if not 0.0 <= float(self.temperature) <= 2.0:
            errors.append(f"temperature must lie in [0, 2], got {self.temperature!r}")
        if not 0.0 < float(self.top_p) <= 1.0:
            errors.append(f"top_p must lie in (0, 1], got {self.top_p!r}")
        if self.max_tokens is not None and int(self.max_tokens) < 1:
            errors.append(f"max_tokens must be >= 1 or None, got {self.max_tokens!r}")
        if int(self.max_retries) < 0:
            errors.append(f"max_retries must be >= 0, got {self.max_retries!r}")
        if float(self.retry_delay) < 0:
            errors.append(f"retry_delay must be >= 0, got {self.retry_delay!r}")
        if errors:
            raise ValueError("invalid LLMSettings: " + "; ".join(errors))
        object.__setattr__(self, "base_url", base)
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "api_key", (self.api_key or "").strip() or None)

    @classmethod
    def from_env(cls, **overrides: Any) -> LLMSettings:
        """Settings from environment variables, then ``overrides``, then defaults.

        ``NAPARI_ITACLIP_LLM_BASE_URL`` (else ``OPENAI_BASE_URL``, else
        :data:`DEFAULT_BASE_URL`), ``NAPARI_ITACLIP_LLM_MODEL`` (else
        :data:`DEFAULT_MODEL`), ``NAPARI_ITACLIP_LLM_API_KEY`` and
        ``NAPARI_ITACLIP_LLM_TIMEOUT`` (seconds). ``OPENAI_API_KEY`` is used only
        together with ``OPENAI_BASE_URL``, i.e. when ``NAPARI_ITACLIP_LLM_BASE_URL``
        is unset and ``OPENAI_BASE_URL`` is set, so an OpenAI key is never sent to
        another server by accident.

        Parameters
        ----------
        **overrides
            Fields to set regardless of the environment.
        """
        values: dict[str, Any] = {}
        own_base, openai_base = _env.get(ENV_BASE_URL), _env.get(_env.OPENAI_BASE_URL)
        if own_base or openai_base:
            values["base_url"] = own_base or openai_base
        if _env.get(ENV_MODEL):
            values["model"] = _env.get(ENV_MODEL)
        if _env.get(ENV_API_KEY):
            values["api_key"] = _env.get(ENV_API_KEY)
        elif not own_base and openai_base and _env.get(_env.OPENAI_API_KEY):
            # the OpenAI key only ever goes to the OpenAI base URL it came with
            values["api_key"] = _env.get(_env.OPENAI_API_KEY)
        timeout = _env.get(ENV_TIMEOUT)
        if timeout:
            try:
                values["timeout"] = float(timeout)
            except ValueError:
                raise ValueError(f"{ENV_TIMEOUT} must be a number of seconds, "
                                 f"got {timeout!r}") from None
        values.update(overrides)
        return cls(**values)

    @property
    def endpoint(self) -> str:
        """The chat-completions URL."""
        return f"{self.base_url}/chat/completions"

    def replace(self, **changes: Any) -> LLMSettings:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


# -- prompts ------------------------------------------------------------------------------
_SYSTEM = {
    "definitions": (
        "You write short definitions of visual categories (objects, animals, plants, "
        "materials, places, parts of scenes) for an image recognition system. You are given "
        "one category name followed by '>='. Reply with its definition only: a plain English "
        "noun phrase in lower case that says what the thing is and what it looks like, no "
        "more than 50 words (10 to 25 words is best). Do not repeat the name, and write "
        "nothing but the definition: no greeting, preamble, quotes, notes, lists or formatting."
    ),
    "synonyms": (
        "You list synonyms of visual category names for an image recognition system. You are "
        "given one category name followed by '>='. Reply with up to three other common English "
        "words or short phrases that name the same kind of thing, most common first, separated "
        "by commas. If there is no exact synonym, give the closest everyday names. Write nothing "
        "but the synonyms: no greeting, preamble, numbering, quotes, explanations or formatting."
    ),
}

_EXAMPLES = {
    "definitions": (
        ("house", "a building that people, usually one family, live in"),
        ("bicycle", "a vehicle with two wheels, a frame, handlebars and pedals that a person "
                    "rides by pushing the pedals with the feet"),
        ("grass", "low green plants with thin narrow leaves that cover lawns, fields and "
                  "the ground of parks"),
    ),
    "synonyms": (
        ("house", "home, dwelling, residence"),
        ("bicycle", "bike, cycle, pushbike"),
        ("grass", "lawn, turf, sward"),
    ),
}


def _check_kind(kind: str) -> str:
    k = str(kind).strip().lower()
    k = {"definition": "definitions", "synonym": "synonyms"}.get(k, k)
    if k not in KINDS:
        raise ValueError(f"kind must be 'definitions' or 'synonyms', got {kind!r}")
    return k


def build_messages(name: str, kind: str = "definitions") -> list[dict[str, str]]:
    """The chat messages that ask for one class's definition or synonyms.

    A system instruction, three worked examples as user/assistant turns in the paper's
    form (``house >=`` answered by ``a building that people, usually one family, live
    in``), then ``"{name} >="``.

    Parameters
    ----------
    name : str
        The class name.
    kind : {"definitions", "synonyms"}
        What to ask for.

    Returns
    -------
    list of dict
        ``[{"role": ..., "content": ...}, ...]``, ready for the request body.
    """
    kind = _check_kind(kind)
    messages = [{"role": "system", "content": _SYSTEM[kind]}]
    for example, answer in _EXAMPLES[kind]:
        messages.append({"role": "user", "content": f"{example} >="})
        messages.append({"role": "assistant", "content": answer})
    messages.append({"role": "user", "content": f"{' '.join(str(name).split())} >="})
    return messages


# -- answer parsing -----------------------------------------------------------------------
class _BadAnswer(ValueError):
    """An answer that holds no usable definition or synonyms (internal)."""


_THINK = re.compile(r"<(think|thinking|reasoning)>.*?</\1>", re.S | re.I)
_FENCE = re.compile(r"^\s*(```|~~~)[\w+-]*\s*$")
_LIST_MARK = re.compile(r"^\s*(?:[-*+\u2022>]+|\d+[.)]|[a-z][.)](?=\s))\s*", re.I)
_HEADING = re.compile(r"^\s*#+\s*")
_EMPHASIS = re.compile(r"(\*\*|__|\*|`)")
_QUOTES = "\"'\u201c\u201d\u2018\u2019\u00ab\u00bb`"
# a greeting counts only when punctuation follows ("Great!", not "great white shark")
_GREETING = (r"(?:sure|certainly|of course|okay|ok|absolutely|great|alright|gladly|happy to help"
             r"|no problem)(?:\s+thing)?[!.,]+")
_PREAMBLE = re.compile(
    r"^(?:" + _GREETING + r"|here(?:'s|\u2019s| is| are| you go)\b|below is\b"
    r"|the following\b)", re.I)
_INLINE_PREAMBLE = re.compile(
    r"^(?:" + _GREETING + r"\s*)?(?:here(?:'s|\u2019s| is| are)\b[^:]{0,80}:\s*)?", re.I)
_LABEL = re.compile(r"^(?:definition|synonyms?|answer|output|response)\b[^:]{0,40}:\s*", re.I)
_REFUSAL = re.compile(
    r"^(?:i'm sorry|i am sorry|sorry|i cannot|i can't|i can\u2019t|i'm not sure|i am not sure"
    r"|i don't know|i do not know|as an ai|unfortunately|i'm unable|i am unable"
    r"|could you|can you|please provide|i need more)\b", re.I)
_DANGLING = frozenset((
    "a", "an", "the", "and", "or", "of", "with", "to", "in", "on", "for", "from", "by", "at",
    "as", "that", "which", "who", "whose", "is", "are", "such", "like", "including", "e.g.",
    "i.e.", "etc", "but"))


def _strip_quotes(text: str) -> str:
    text = text.strip()
    while len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    if text.count('"') == 1:
        text = text.replace('"', "")
    return text.strip()


def _clean_line(line: str) -> str:
    line = _HEADING.sub("", line)
    line = _LIST_MARK.sub("", line)
    line = _EMPHASIS.sub("", line)
    return " ".join(line.replace("#", " ").split())


def _strip_echo(text: str, name: str, kind: str) -> str:
    """Remove ``name >=``-style echoes, labels, preambles and quotes, repeatedly."""
    words = [re.escape(w) for w in name.split()]
    pat_name = r"[\"'\u201c\u2018]?" + r"[\s_-]+".join(words) + r"s?[\"'\u201d\u2019]?"
    echo = re.compile(r"^(?:the\s+)?" + pat_name + r"\s*(?:>=|=>|->|:|=|\u2013|\u2014|-(?=\s))\s*",
                      re.I)
    copula = re.compile(r"^(?:an?\s+|the\s+)?" + pat_name + r"\s+(?:is|are|means|refers to)\s+",
                        re.I)
    for _ in range(4):
        before = text
        text = _INLINE_PREAMBLE.sub("", text, count=1)
        text = _LABEL.sub("", text, count=1)
        text = echo.sub("", text, count=1)
        if kind == "definitions":
            text = copula.sub("", text, count=1)
        text = _strip_quotes(text)
        if text == before:
            break
    return text


def _content_lines(answer: str) -> list[str]:
    text = _THINK.sub("\n", answer)
    if re.search(r"<(think|thinking|reasoning)>", text, re.I):
        raise _BadAnswer("the answer holds only the model's reasoning, no result "
                         "(raise max_tokens, or use a model that does not think aloud)")
    lines = []
    for raw in text.replace("\r", "\n").split("\n"):
        if _FENCE.match(raw):
            continue
        line = _clean_line(raw)
        if line:
            lines.append(line)
    # drop preamble lines ("Sure! Here is the definition:"), keep the rest
    while len(lines) > 1 and (lines[0].endswith(":") or _PREAMBLE.match(lines[0])):
        lines.pop(0)
    return lines


def _lower_first(text: str) -> str:
    """Lower-case a capitalised first word ("A", "Small"), not an acronym ("DNA")."""
    first = text.split(" ", 1)[0]
    if first[:1].isupper() and (len(first) == 1 or first[1:].islower()):
        return text[0].lower() + text[1:]
    return text


def _finish_definition(text: str) -> str:
    return _lower_first(text.strip().rstrip(".;:,!").strip())


def parse_answer(answer: str, name: str, kind: str = "definitions", *,
                 context_length: int = CONTEXT_LENGTH) -> str:
    """Keep only the definition or synonyms from a model's answer.

    Removes reasoning blocks (``<think>...</think>``), markdown (fences, headings,
    emphasis, list markers), preambles ("Sure! Here is the definition:"), labels
    ("Definition:"), echoes of the name ("cat >= ...", "A cat is ..."), quotes and
    any further lines (definitions keep the first line; synonyms given one per line
    are joined). The result is shortened at a word boundary to fit CLIP's context
    inside every prompt template (:func:`fit_aux_text`).

    Parameters
    ----------
    answer : str
        The model's reply.
    name : str
        The class name that was asked about.
    kind : {"definitions", "synonyms"}
        What was asked for.
    context_length : int
        The text encoder's context, start and end tokens included.

    Returns
    -------
    str
        A definition (lower-case first letter, no final period) or a comma-separated
        list of at most five synonyms.

    Raises
    ------
    ValueError
        The answer is empty, a refusal or question, longer than
        ``MAX_DEFINITION_WORDS`` words (rambling), or holds no synonym.
    """
    kind = _check_kind(kind)
    name = " ".join(str(name).split())
    if not isinstance(answer, str) or not answer.strip():
        raise _BadAnswer("the answer is empty")
    lines = _content_lines(answer)
    if len(lines) > 1:  # a heading that only names the class ("# Cat")
        lines = [ln for ln in lines if _strip_quotes(ln).rstrip(":").lower() != name.lower()]
    if not lines:
        raise _BadAnswer("the answer is empty once formatting is removed")
    if kind == "definitions":
        text = _finish_definition(_strip_echo(lines[0], name, kind))
        if not text:
            raise _BadAnswer(f"the answer holds no definition: {answer.strip()[:120]!r}")
        if _REFUSAL.match(text) or text.endswith("?"):
            raise _BadAnswer(f"the answer is not a definition: {text[:120]!r}")
        if text.lower() == name.lower():
            raise _BadAnswer(f"the answer only repeats the class name: {text!r}")
        n_words = len(text.split())
        if n_words > MAX_DEFINITION_WORDS:
            raise _BadAnswer(f"the answer is too long for a definition ({n_words} words, "
                             f"at most {MAX_DEFINITION_WORDS}): {text[:80]!r}...")
    else:
        items_src = lines if len(lines) > 1 and all(
            len(ln.split()) <= MAX_SYNONYM_WORDS for ln in lines) else lines[:1]
        items: list[str] = []
        seen = {name.lower()}
        too_long = []
        first = _strip_echo(items_src[0], name, kind)
        if _REFUSAL.match(first) or first.endswith("?"):
            raise _BadAnswer(f"the answer is not a list of synonyms: {first[:120]!r}")
        for i, src in enumerate(items_src):
            src = first if i == 0 else _strip_echo(src, name, kind)
            for item in re.split(r"[,;/|]", src):
                item = _strip_quotes(_clean_line(item)).rstrip(".!").strip()
                if not item:
                    continue
                if len(item.split()) > MAX_SYNONYM_WORDS:
                    too_long.append(item)
                    continue
                key = item.lower()
                if key not in seen:
                    seen.add(key)
                    items.append(_lower_first(item))
        if not items or len(too_long) >= len(items):
            what = (f"an explanation instead of synonyms: {too_long[0][:120]!r}" if too_long
                    else f"no synonym other than the name itself: {answer.strip()[:120]!r}")
            raise _BadAnswer(f"the answer holds {what}")
        text = ", ".join(items[:MAX_SYNONYMS])
    fitted = fit_aux_text(text, context_length=context_length)
    if not fitted:
        raise _BadAnswer(f"the answer does not fit CLIP's context: {text[:80]!r}")
    return fitted


# -- token budget -----------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _tokenizer_and_templates() -> tuple[Any, tuple[Any, ...]]:
    """open_clip's CLIP tokenizer and the 80 OpenAI templates, loaded once."""
    try:
        from open_clip.tokenizer import SimpleTokenizer
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
    except ImportError as exc:  # pragma: no cover - open_clip is a dependency
        raise ImportError("napari_itaclip.llm needs open_clip_torch to count CLIP tokens: "
                          "pip install open_clip_torch") from exc
    return SimpleTokenizer(), tuple(OPENAI_IMAGENET_TEMPLATES)


def count_template_tokens(text: str) -> int:
    """Tokens of the longest prompt made from ``text``, start and end tokens included.

    The text is placed in each of the 80 OpenAI ImageNet templates (``"a photo of a
    {}."``, ..., spec section 2) and tokenised with open_clip's CLIP tokenizer (the one
    ``open_clip.get_tokenizer("ViT-B-16")`` returns); the largest count is returned.
    """
    tok, templates = _tokenizer_and_templates()
    return 2 + max(len(tok.encode(t(text))) for t in templates)


def aux_token_budget(context_length: int = CONTEXT_LENGTH) -> int:
    """How many CLIP tokens an auxiliary text may have.

    ``context_length`` minus the start and end tokens minus the longest template
    (``"a jpeg corrupted photo of the {}."``: 9 tokens). For CLIP's 77-token context
    that is 66 tokens, about 45 to 55 ordinary English words.
    """
    tok, templates = _tokenizer_and_templates()
    overhead = max(len(tok.encode(t("x"))) for t in templates) - len(tok.encode("x"))
    return context_length - 2 - overhead


def fit_aux_text(text: str, context_length: int = CONTEXT_LENGTH) -> str:
    """Shorten ``text`` at a word boundary so every template prompt fits the context.

    Text that fits is returned unchanged (whitespace collapsed). Otherwise the longest
    fitting run of leading words is kept; if a sentence ends in its second half the text
    is cut there, else trailing connectors ("and", "of", "with", ...) and punctuation are
    dropped. Returns ``""`` when not even one word fits.
    """
    text = " ".join(str(text).split())
    if not text or count_template_tokens(text) <= context_length:
        return text
    words = text.split(" ")

    def fits(n: int) -> bool:
        return count_template_tokens(" ".join(words[:n])) <= context_length

    lo, hi = 0, len(words) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    kept = words[:lo]
    for j in range(len(kept) - 1, max(len(kept) // 2, 1) - 1, -1):
        if kept[j].endswith((".", "!", ";")):
            kept = kept[: j + 1]
            break
    while kept:
        last = kept[-1].rstrip(".,;:!-\u2013\u2014(")
        if not last or last.lower() in _DANGLING:
            kept.pop()
            continue
        kept[-1] = last
        break
    return " ".join(kept)


# -- HTTP ---------------------------------------------------------------------------------
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


def _post_chat(settings: LLMSettings, messages: list[dict[str, str]], name: str) -> str:
    """POST one chat-completions request and return the answer's text."""
    url = settings.endpoint
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
    request = urllib.request.Request(url, data=json.dumps(body).encode("utf-8"),
                                     headers=headers, method="POST")
    where = f"{url} (model {settings.model!r}, class {name!r})"

    def fail(what: str, hint: str, status: int | None = None) -> LLMError:
        return LLMError(f"LLM request to {where} failed: {what}; {hint}.", endpoint=url,
                        model=settings.model, class_name=name, status=status)

    try:
        with _opener(url).open(request, timeout=float(settings.timeout)) as response:
            status = response.status
            raw = response.read()
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


def _ask(settings: LLMSettings, name: str, kind: str) -> str:
    """Ask for one class, retrying transient failures and unusable answers."""
    messages = build_messages(name, kind)
    attempts = int(settings.max_retries) + 1
    for attempt in range(attempts):
        delay = float(settings.retry_delay) * 2.0**attempt
        try:
            answer = _post_chat(settings, messages, name)
            return parse_answer(answer, name, kind)
        except _Transient as exc:
            last = exc.error
            if exc.retry_after is not None:
                delay = max(delay, exc.retry_after)
        except _BadAnswer as exc:
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


# -- cache ----------------------------------------------------------------------------------
def llm_cache_dir(settings: LLMSettings | None = None) -> Path:
    """Folder of the answer cache.

    ``settings.cache_dir`` if set, else ``$NAPARI_ITACLIP_CACHE_DIR/llm``, else
    ``platformdirs.user_cache_dir("napari-itaclip")/llm``.
    """
    if settings is not None and settings.cache_dir is not None:
        return Path(settings.cache_dir).expanduser()
    return _env.cache_root() / "llm"


def _name_key(name: str) -> str:
    return " ".join(str(name).lower().split())


class _Cache:
    """One JSON file per model: generated and user-edited texts per kind and class.

    Keys are ``"{kind}/p{PROMPT_VERSION}/{class}"`` for generated texts and
    ``"{kind}/edited/{class}"`` for the user's (which survive prompt changes).
    """

    def __init__(self, settings: LLMSettings, kind: str):
        self.settings = settings
        self.kind = kind
        model = settings.model
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("._")[:60] or "model"
        digest = hashlib.sha1(model.encode("utf-8")).hexdigest()[:8]
        self.path = llm_cache_dir(settings) / f"{slug}-{digest}.json"
        self._memory: dict[str, Any] = {}
        self.entries = self._load()

    def _load(self) -> dict[str, Any]:
        if not self.settings.use_cache:
            return self._memory
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable LLM cache %s (%s)", self.path, exc)
            return {}
        entries = data.get("entries") if isinstance(data, dict) else None
        return entries if isinstance(entries, dict) else {}

    def _key(self, name: str, edited: bool) -> str:
        tag = "edited" if edited else f"p{PROMPT_VERSION}"
        return f"{self.kind}/{tag}/{_name_key(name)}"

    def get(self, name: str, edited: bool) -> str | None:
        entry = self.entries.get(self._key(name, edited))
        text = entry.get("text") if isinstance(entry, dict) else None
        return text if isinstance(text, str) and text.strip() else None

    def update(self, changes: Mapping[str, dict[str, Any] | None]) -> None:
        """Apply ``key -> entry`` (``None`` deletes) and write the file atomically."""
        if not self.settings.use_cache:
            for key, entry in changes.items():
                if entry is None:
                    self._memory.pop(key, None)
                else:
                    self._memory[key] = entry
            return
        current = self._load()  # merge with what others wrote meanwhile
        for key, entry in changes.items():
            if entry is None:
                current.pop(key, None)
            else:
                current[key] = entry
        self.entries = current
        data = {"format": 1, "model": self.settings.model, "entries": current}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.path, data, indent=1, sort_keys=True, ensure_ascii=False)
        except OSError as exc:
            log.warning("could not write the LLM cache %s (%s)", self.path, exc)

    def entry(self, name: str, text: str, edited: bool) -> dict[str, Any]:
        return {"name": name, "text": text, "edited": edited,
                "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def _names(vocab: Vocabulary | str | Iterable[str]) -> list[str]:
    if isinstance(vocab, str):
        vocab = Vocabulary.coerce(vocab)
    if isinstance(vocab, Vocabulary):
        return [c.name for c in vocab if not c.is_background]
    return [str(n) for n in vocab]


def cached_aux(vocab: Vocabulary | str | Iterable[str], kind: str = "definitions",
               settings: LLMSettings | None = None) -> dict[str, str]:
    """The cached texts for some classes, without asking the LLM.

    Parameters
    ----------
    vocab : Vocabulary, str or iterable of str
        A vocabulary (its non-background classes) or class names.
    kind : {"definitions", "synonyms"}
        Which texts.
    settings : LLMSettings or None
        Selects the model and cache; ``None`` uses :meth:`LLMSettings.from_env`.

    Returns
    -------
    dict
        Class name -> text, the user's edited text where there is one, else the
        generated one; classes with nothing cached are left out.
    """
    settings = settings or LLMSettings.from_env()
    cache = _Cache(settings, _check_kind(kind))
    out = {}
    for name in _names(vocab):
        text = cache.get(name, edited=True) or cache.get(name, edited=False)
        if text:
            out[name] = text
    return out


def remember_aux(vocab: Vocabulary | str, kind: str = "definitions",
                 settings: LLMSettings | None = None) -> dict[str, str]:
    """Record the vocabulary's auxiliary texts as the user's own.

    Call it after the user edited texts (in the widget or a file). Each class whose text
    differs from the generated one in the cache is stored as *edited*: from then on
    generation returns that text for the class (with this model and kind) and never asks
    the LLM about it again, even with ``overwrite=True`` or ``refresh=True``, until
    :func:`forget_aux`. A text equal to the generated one is not an edit; if the class
    had an edited text, that is dropped (the user went back to the generated text).
    Classes without a text are left alone.

    Parameters
    ----------
    vocab : Vocabulary or str
        The edited vocabulary (anything :meth:`Vocabulary.coerce` accepts).
    kind : {"definitions", "synonyms"}
        What the texts are.
    settings : LLMSettings or None
        Selects the model and cache; ``None`` uses :meth:`LLMSettings.from_env`.

    Returns
    -------
    dict
        Class name -> text recorded as edited.
    """
    vocab = Vocabulary.coerce(vocab)
    settings = settings or LLMSettings.from_env()
    cache = _Cache(settings, _check_kind(kind))
    changes: dict[str, dict[str, Any] | None] = {}
    recorded = {}
    for c in vocab:
        if c.is_background or not c.aux:
            continue
        generated = cache.get(c.name, edited=False)
        edited = cache.get(c.name, edited=True)
        if c.aux == generated:
            if edited is not None:
                changes[cache._key(c.name, True)] = None
        elif c.aux != edited:
            changes[cache._key(c.name, True)] = cache.entry(c.name, c.aux, True)
            recorded[c.name] = c.aux
    if changes:
        cache.update(changes)
    return recorded


def forget_aux(vocab: Vocabulary | str | Iterable[str], kind: str = "definitions",
               settings: LLMSettings | None = None, *, generated: bool = True,
               edited: bool = True) -> int:
    """Remove cached texts, so that the next generation asks the LLM again.

    Parameters
    ----------
    vocab : Vocabulary, str or iterable of str
        A vocabulary (its non-background classes) or class names.
    kind : {"definitions", "synonyms"}
        Which texts.
    settings : LLMSettings or None
        Selects the model and cache; ``None`` uses :meth:`LLMSettings.from_env`.
    generated, edited : bool
        Which entries to remove.

    Returns
    -------
    int
        The number of entries removed.
    """
    settings = settings or LLMSettings.from_env()
    cache = _Cache(settings, _check_kind(kind))
    keys = [cache._key(n, e) for n in _names(vocab)
            for e, wanted in ((False, generated), (True, edited)) if wanted]
    gone = {k: None for k in keys if k in cache.entries}
    if gone:
        cache.update(gone)
    return len(gone)


# -- generation -----------------------------------------------------------------------------
def iter_generate_aux(vocab: Vocabulary | str | Iterable[str], kind: str = "definitions",
                      settings: LLMSettings | None = None, overwrite: bool = False, *,
                      refresh: bool = False
                      ) -> Generator[tuple[int, int, str], None, Vocabulary]:
    """Fill in the auxiliary texts of a vocabulary's classes, one class at a time.

    For each non-background class, in order: a class that already has a text keeps it
    (unless ``overwrite``); otherwise the user's edited text from the cache is used if
    there is one, else the cached generated text (unless ``refresh``), else the LLM is
    asked and its answer cached at once. The background class is never touched.

    Parameters
    ----------
    vocab : Vocabulary, str or iterable of str
        Anything :meth:`Vocabulary.coerce` accepts.
    kind : {"definitions", "synonyms"}
        What to generate (the presets' ``aux_kind``).
    settings : LLMSettings or None
        The LLM to ask; ``None`` uses :meth:`LLMSettings.from_env`.
    overwrite : bool
        Replace texts the vocabulary already has.
    refresh : bool
        Ask the LLM again instead of using cached generated texts (edited texts are
        still kept).

    Yields
    ------
    tuple of (int, int, str)
        ``(done, total, class_name)`` after each class; ``total`` counts the
        non-background classes. Stop iterating to cancel: answers received so far are
        in the cache.

    Returns
    -------
    Vocabulary
        A new vocabulary with the texts filled in (``StopIteration.value``).

    Raises
    ------
    LLMError
        A class's text could not be obtained; nothing is returned, answers already
        received stay in the cache.
    """
    vocab = Vocabulary.coerce(vocab)
    kind = _check_kind(kind)
    settings = settings or LLMSettings.from_env()
    cache = _Cache(settings, kind)
    # the background class, or a class merely called "background", is never asked about
    targets = [c for c in vocab if not c.is_background and c.name.lower() != BACKGROUND]
    total = len(targets)
    new: dict[str, str] = {}
    for done, c in enumerate(targets, start=1):
        if overwrite or not c.aux:
            text = cache.get(c.name, edited=True)
            if text is None and not refresh:
                text = cache.get(c.name, edited=False)
            if text is None:
                text = _ask(settings, c.name, kind)
                cache.update({cache._key(c.name, False): cache.entry(c.name, text, False)})
            new[c.name] = text
        yield done, total, c.name
    changed = {n: t for n, t in new.items() if vocab[vocab.class_names.index(n)].aux != t}
    return vocab.with_aux(changed) if changed else vocab


def generate_aux(vocab: Vocabulary | str | Iterable[str], kind: str = "definitions",
                 settings: LLMSettings | None = None, overwrite: bool = False, *,
                 refresh: bool = False, progress: Any = None) -> Vocabulary:
    """Fill in auxiliary texts and return the new vocabulary (drains :func:`iter_generate_aux`).

    Parameters
    ----------
    vocab, kind, settings, overwrite, refresh
        As for :func:`iter_generate_aux`.
    progress : callable or None
        Called with ``(done, total, class_name)`` after each class.

    Returns
    -------
    Vocabulary
        The vocabulary with texts filled in.

    Raises
    ------
    LLMError
        See :func:`iter_generate_aux`.
    """
    gen = iter_generate_aux(vocab, kind, settings, overwrite, refresh=refresh)
    return drain(gen, None if progress is None else (lambda step: progress(*step)))
