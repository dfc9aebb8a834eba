"""Small helpers for the engine's progress generators."""

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
