"""Generator jobs in napari's thread workers, with their RuntimeErrors reported.

napari's ``create_worker`` of a generator function is superqt's ``GeneratorWorker``,
which takes a RuntimeError raised by the generator for a sign that the worker object
was deleted: it warns ("RuntimeError in aborted thread") and emits neither ``errored``
nor ``finished``. torch reports most failures as RuntimeError (out of memory, a state
dict that does not fit a model, an unsupported operation), Python does so for
NotImplementedError and RecursionError, and so does the LLM client; a job that failed
that way would leave the widget busy, and its status line unchanged, for good.
:func:`shielded` re-raises them as :class:`JobFailed`, with the same message.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

__all__ = ["JobFailed", "shielded"]


class JobFailed(Exception):
    """A job's RuntimeError (``__cause__``), re-raised as an exception superqt reports."""


def shielded(make: Callable[..., Generator], *args, **kwargs) -> Generator[Any, Any, Any]:
    """``yield from make(*args, **kwargs)``, a RuntimeError re-raised as :class:`JobFailed`.

    A generator function itself, so ``create_worker(shielded, job_function, ...)``
    makes a generator worker (yields, Cancel between steps) as ``job_function`` would.
    """
    try:
        return (yield from make(*args, **kwargs))
    except RuntimeError as exc:
        raise JobFailed(str(exc) or type(exc).__name__) from exc
