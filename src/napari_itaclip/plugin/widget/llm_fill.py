"""The "Generate definitions / synonyms" buttons: an LLM fill as a worker job.

The job drains nothing itself: the dock runs :func:`aux_job` in its worker like a
segmentation, so Cancel stops between classes. :class:`AuxFill` remembers the last
fill, so that texts the user edits afterwards are recorded as theirs
(:func:`napari_itaclip.llm.remember_aux`) when the next run starts.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from ...vocabulary import Vocabulary

__all__ = ["AuxFill", "aux_job", "llm_settings"]


def llm_settings():
    """The LLM settings from the environment; ValueError/ImportError with the reason."""
    try:
        from ...llm import LLMSettings
    except ImportError as exc:
        raise ImportError(f"The LLM helper is not available ({exc}).") from None
    try:
        return LLMSettings.from_env()
    except Exception as exc:  # the module's own errors carry the reason
        raise ValueError(f"LLM settings: {exc}") from None


def aux_job(vocab: Vocabulary, kind: str, settings) -> Generator[Any, None, Vocabulary]:
    """Fill ``vocab``'s auxiliary texts (a generator for the worker)."""
    from ...llm import iter_generate_aux

    return (yield from iter_generate_aux(vocab, kind=kind, settings=settings))


@dataclass
class AuxFill:
    """The last LLM fill: what was asked, with which settings, and what came back."""

    kind: str
    settings: Any
    generated: Vocabulary

    def edited(self, vocab: Vocabulary) -> bool:
        """Whether the user changed the filled texts since."""
        return vocab.aux_texts != self.generated.aux_texts

    def remember_edits(self, vocab: Vocabulary) -> None:
        """Record the user's edits, if any; a failure is a napari warning, never an error.

        A notification, because the status line is overwritten as soon as a run starts;
        a cache problem must never stop a run.
        """
        if not self.edited(vocab):
            return
        try:
            self.remember(vocab)
        except Exception as exc:
            from napari.utils.notifications import show_warning

            show_warning(f"Could not record the edited {self.kind}: {exc}")

    def remember(self, vocab: Vocabulary) -> None:
        """Record the user's edited texts; from now on ``vocab`` counts as the fill.

        Raises whatever the cache raises (the caller reports it as a warning).
        """
        try:
            from ...llm import remember_aux

            remember_aux(vocab, self.kind, self.settings)
        finally:
            self.generated = vocab
