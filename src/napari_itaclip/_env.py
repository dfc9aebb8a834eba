"""Every ``NAPARI_ITACLIP_*`` environment variable, and the cache root, read in one place.

Package-internal: the engine (text-embedding cache), the LLM helper (settings, answer
cache) and the CLI read the environment through these names only.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "ALLOW_TRITON",
    "CACHE_DIR",
    "GC_FREEZE",
    "GPU_MEMORY_LIMIT",
    "LLM_API_KEY",
    "LLM_BASE_URL",
    "LLM_MODEL",
    "LLM_TIMEOUT",
    "MEMORY_LIMIT",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OMP_WAIT_POLICY",
    "cache_root",
    "get",
    "prefer_passive_openmp",
]

#: Root of every on-disk cache (text embeddings, LLM answers).
CACHE_DIR = "NAPARI_ITACLIP_CACHE_DIR"
#: The LLM helper's server, model, key and per-answer timeout (see docs/llm.md).
LLM_BASE_URL = "NAPARI_ITACLIP_LLM_BASE_URL"
LLM_MODEL = "NAPARI_ITACLIP_LLM_MODEL"
LLM_API_KEY = "NAPARI_ITACLIP_LLM_API_KEY"
LLM_TIMEOUT = "NAPARI_ITACLIP_LLM_TIMEOUT"
#: "1" switches off the guard that keeps triton out of a process holding Mesa's LLVM
#: (see _triton_guard and docs/architecture.md).
ALLOW_TRITON = "NAPARI_ITACLIP_ALLOW_TRITON"
#: Overrides, in MB, of the memory a segmentation may use: the host's available memory
#: and a CUDA device's free memory (``none``: no check; see engine/memory.py).
MEMORY_LIMIT = "NAPARI_ITACLIP_MEMORY_LIMIT_MB"
GPU_MEMORY_LIMIT = "NAPARI_ITACLIP_GPU_MEMORY_LIMIT_MB"
#: "0" switches off the dock widget's garbage-collection policy (plugin/gc_pauses.py).
GC_FREEZE = "NAPARI_ITACLIP_GC_FREEZE"
#: OpenAI's own variables, used by the LLM helper only as a pair (see LLMSettings.from_env).
OPENAI_BASE_URL = "OPENAI_BASE_URL"
OPENAI_API_KEY = "OPENAI_API_KEY"
#: The OpenMP runtime's waiting policy (read by libgomp once, when torch loads).
OMP_WAIT_POLICY = "OMP_WAIT_POLICY"


def get(name: str) -> str:
    """The variable's value with surrounding whitespace removed; ``""`` when unset."""
    return os.environ.get(name, "").strip()


def cache_root() -> Path:
    """Root of the on-disk caches: ``$NAPARI_ITACLIP_CACHE_DIR``, else the user cache dir."""
    root = get(CACHE_DIR)
    if root:
        return Path(root).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("napari-itaclip"))


def prefer_passive_openmp() -> None:
    """``OMP_WAIT_POLICY=PASSIVE`` unless the user set a value (theirs is never changed).

    torch's OpenMP threads otherwise spin between parallel regions; with another
    process on a core (napari's GUI thread, a busy machine) small-op-heavy work such as
    PAMR then ran 2 (one core busy) to 5-8 (loaded machine) times slower
    (docs/benchmarks.md, "Exemplars"). The runtime
    reads the variable once, when torch is first imported, so this must run before
    that: :func:`napari_itaclip._torch_setup.before_torch` calls it when the engine is
    first imported, if torch is not loaded yet (importing the package alone does not).
    Processes started afterwards inherit it.
    """
    os.environ.setdefault(OMP_WAIT_POLICY, "PASSIVE")
