r"""Definitions and synonyms of class names from a large language model.

ITACLIP's text enhancement (docs/engine.md, section "Text features"): an LLM writes a short definition, or a
few synonyms, for each class name, and the engine mixes the embedding of that
*auxiliary text* into the class's queries with weight ``aux_weight``. The authors used
LLaMA-3-8B-Instruct (temperature 0.6, top-p 0.9): definitions for VOC21, Context60 and
COCO-Stuff, synonyms for COCO-Object and Cityscapes.

This package talks to any server with an OpenAI-compatible chat-completions endpoint
(``POST {base_url}/chat/completions``): Ollama, vLLM, llama.cpp's server, LM Studio or
a hosted service. It uses only the standard library for HTTP and imports neither Qt
nor torch; open_clip's tokenizer is loaded on first use, to keep every text inside
CLIP's 77-token context.

Modules: :mod:`.settings` (where to ask), :mod:`.prompts` (what to ask),
:mod:`.answers` (cleaning, token limit), :mod:`.client` (HTTP, retries),
:mod:`.cache` (generated and edited texts on disk), :mod:`.generate` (the loop).

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

from . import prompts
from .answers import CONTEXT_LENGTH, aux_token_budget, count_template_tokens, fit_aux_text, parse_answer
from .cache import cached_aux, forget_aux, llm_cache_dir, remember_aux
from .generate import generate_aux, iter_generate_aux
from .prompts import KINDS, PROMPT_VERSION, build_messages
from .settings import (
    DEFAULT_BASE_URL,
    DEFAULT_MODEL,
    ENV_API_KEY,
    ENV_BASE_URL,
    ENV_CACHE_DIR,
    ENV_MODEL,
    ENV_TIMEOUT,
    LLMError,
    LLMSettings,
)

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
    "prompts",
    "remember_aux",
]
