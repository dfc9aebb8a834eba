"""Filling a vocabulary's auxiliary texts, class by class, from the cache or the LLM."""

from __future__ import annotations

from collections.abc import Generator, Iterable
from typing import Any

from ..progress import drain
from ..vocabulary import BACKGROUND, Vocabulary
from .cache import AnswerCache
from .client import ask
from .prompts import check_kind
from .settings import LLMSettings

__all__ = ["generate_aux", "iter_generate_aux"]

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
    kind = check_kind(kind)
    settings = settings or LLMSettings.from_env()
    cache = AnswerCache(settings, kind)
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
                text = ask(settings, c.name, kind)
                cache.update({cache.key(c.name, False): cache.entry(c.name, text, False)})
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
