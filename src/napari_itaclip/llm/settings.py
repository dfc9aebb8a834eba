"""Where and how to ask the LLM: :class:`LLMSettings`, read from the environment, and :class:`LLMError`."""

from __future__ import annotations

import dataclasses
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import _env
from ..errors import ITACLIPError

__all__ = ["DEFAULT_BASE_URL", "DEFAULT_MODEL", "ENV_API_KEY", "ENV_BASE_URL", "ENV_CACHE_DIR",
           "ENV_MODEL", "ENV_TIMEOUT", "LLMError", "LLMSettings"]

ENV_BASE_URL = _env.LLM_BASE_URL
ENV_MODEL = _env.LLM_MODEL
ENV_API_KEY = _env.LLM_API_KEY
ENV_TIMEOUT = _env.LLM_TIMEOUT
ENV_CACHE_DIR = _env.CACHE_DIR

#: Ollama's OpenAI-compatible API on this machine.
DEFAULT_BASE_URL = "http://localhost:11434/v1"
#: Ollama's name of LLaMA-3-8B-Instruct (4-bit), the authors' model.
DEFAULT_MODEL = "llama3:8b"

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
        Seconds one whole request may take (connecting, sending, the complete answer),
        however the server paces its answer; each retry gets its own.
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
