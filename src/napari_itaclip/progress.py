"""Helpers for progress generators, used by the engine, the LLM helper, the plugin and the CLI.

Long work in napari-itaclip is written as a generator that yields progress items and
returns its result (``StopIteration.value``). :func:`drain` runs one to the end in the
calling thread; :func:`mapped` re-labels the items of an inner generator.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["drain", "mapped"]


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
    """``yield from gen`` with each yielded item passed through ``fn``."""
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value
        yield fn(item)
