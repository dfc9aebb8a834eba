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

__all__ = ["AuxFill", "aux_job", "llm_settings", "start_aux"]


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


def start_aux(widget, kind: str) -> None:
    """Start the LLM fill of ``widget``'s vocabulary in its worker (errors on its status)."""
    try:
        vocab = widget.vocabulary()
        settings = llm_settings()
    except (ValueError, TypeError, ImportError) as exc:
        widget._error(str(exc))
        return
    widget._aux_pending = (kind, settings)

    def progress(p: tuple[int, int, str]) -> None:
        if not widget.closed:
            widget.progress_bar.setValue(int(1000 * p[0] / max(p[1], 1)))
            widget.status_label.setText(f"{kind}: {p[0]}/{p[1]} ({p[2]})")

    def returned(filled: Vocabulary) -> None:
        if widget.closed:
            return
        widget._aux = AuxFill(kind, settings, filled)
        widget.set_vocabulary(filled)
        widget.progress_bar.setValue(1000)
        widget.status_label.setText(f"Filled {len(filled.aux_texts)} {kind}: review "
                                    "and edit them, then Run.")

    widget._start(aux_job(vocab, kind, settings), returned=returned, yielded=progress,
                  message=f"Asking the LLM for {kind}…", error_prefix=f"Generating {kind} failed")
