"""Helpers for progress generators, used by the engine, the LLM helper, the plugin and the CLI.

Long work in napari-itaclip is written as a generator that yields progress items and
returns its result (``StopIteration.value``). :func:`drain` runs one to the end in the
calling thread; :func:`mapped` re-labels the items of an inner generator.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["IMAGE", "IMAGE_CACHED", "LOAD", "POST", "REFINE", "STAGES", "STAGE_SPAN",
           "STAGE_TEXT", "TEXT", "WRITE", "drain", "mapped"]

# -- the engine's stages, written once -------------------------------------------------
#: Stage names of the engine's ``Progress.stage``, in run order. ``image-cached``
#: replaces ``image`` when a plane's image features come from the feature cache.
LOAD, TEXT, IMAGE, IMAGE_CACHED, REFINE, POST = (
    "load", "text", "image", "image-cached", "refine", "post")
STAGES = (LOAD, TEXT, IMAGE, IMAGE_CACHED, REFINE, POST)
#: Not the engine's: the napari plugin preparing its output layers after the planes.
WRITE = "write"
#: Human-readable stage names (status lines, progress bars).
STAGE_TEXT = {
    LOAD: "loading model",
    TEXT: "encoding text",
    IMAGE: "segmenting",
    IMAGE_CACHED: "image features reused",
    REFINE: "refining (PAMR)",
    POST: "post-processing",
    WRITE: "preparing the layers",
}
#: Each stage's share of one plane's work, as (start, end) fractions (the ViT dominates).
STAGE_SPAN = {
    LOAD: (0.0, 0.0),
    TEXT: (0.0, 0.05),
    IMAGE: (0.05, 0.85),
    IMAGE_CACHED: (0.05, 0.85),
    REFINE: (0.85, 0.95),
    POST: (0.95, 1.0),
    WRITE: (1.0, 1.0),
}


def drain(gen: Generator[Any, None, T], callback: Callable[[Any], Any] | None = None) -> T:
    """Run a generator to the end, passing each yielded item to ``callback``; return
    its return value.
    """
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(item)


def mapped(gen: Generator[Any, None, T], fn: Callable[[Any], Any]) -> Generator[Any, None, T]:
    """``yield from gen`` with each yielded item passed through ``fn``.

    Closing this generator closes ``gen`` (cancelling stops the inner work too).
    """
    try:
        while True:
            try:
                item = next(gen)
            except StopIteration as stop:
                return stop.value
            yield fn(item)
    finally:
        gen.close()
