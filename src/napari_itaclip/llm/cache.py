"""The on-disk answer cache: generated and user-edited texts per model, kind and class."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .. import _env
from ..outputs import write_json_atomic
from ..vocabulary import Vocabulary
from . import prompts
from .prompts import check_kind
from .settings import LLMSettings

__all__ = ["AnswerCache", "cached_aux", "class_names", "forget_aux", "llm_cache_dir",
           "remember_aux"]

log = logging.getLogger(__name__)

def llm_cache_dir(settings: LLMSettings | None = None) -> Path:
    """Folder of the answer cache.

    ``settings.cache_dir`` if set, else ``$NAPARI_ITACLIP_CACHE_DIR/llm``, else
    ``platformdirs.user_cache_dir("napari-itaclip")/llm``.
    """
    if settings is not None and settings.cache_dir is not None:
        return Path(settings.cache_dir).expanduser()
    return _env.cache_root() / "llm"


def _name_key(name: str) -> str:
    return " ".join(str(name).lower().split())


class AnswerCache:
    """One JSON file per model: generated and user-edited texts per kind and class.

    Keys are ``"{kind}/p{PROMPT_VERSION}/{class}"`` for generated texts and
    ``"{kind}/edited/{class}"`` for the user's (which survive prompt changes).
    """

    def __init__(self, settings: LLMSettings, kind: str):
        self.settings = settings
        self.kind = kind
        model = settings.model
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("._")[:60] or "model"
        digest = hashlib.sha1(model.encode("utf-8")).hexdigest()[:8]
        self.path = llm_cache_dir(settings) / f"{slug}-{digest}.json"
        self._memory: dict[str, Any] = {}
        self.entries = self._load()

    def _load(self) -> dict[str, Any]:
        if not self.settings.use_cache:
            return self._memory
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable LLM cache %s (%s)", self.path, exc)
            return {}
        entries = data.get("entries") if isinstance(data, dict) else None
        return entries if isinstance(entries, dict) else {}

    def key(self, name: str, edited: bool) -> str:
        """The entry key of a class's generated (this prompt version) or edited text."""
        tag = "edited" if edited else f"p{prompts.PROMPT_VERSION}"
        return f"{self.kind}/{tag}/{_name_key(name)}"

    def get(self, name: str, edited: bool) -> str | None:
        """The cached text of a class, or None."""
        entry = self.entries.get(self.key(name, edited))
        text = entry.get("text") if isinstance(entry, dict) else None
        return text if isinstance(text, str) and text.strip() else None

    def update(self, changes: Mapping[str, dict[str, Any] | None]) -> None:
        """Apply ``key -> entry`` (``None`` deletes) and write the file atomically."""
        if not self.settings.use_cache:
            for key, entry in changes.items():
                if entry is None:
                    self._memory.pop(key, None)
                else:
                    self._memory[key] = entry
            return
        current = self._load()  # merge with what others wrote meanwhile
        for key, entry in changes.items():
            if entry is None:
                current.pop(key, None)
            else:
                current[key] = entry
        self.entries = current
        data = {"format": 1, "model": self.settings.model, "entries": current}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.path, data, indent=1, sort_keys=True, ensure_ascii=False)
        except OSError as exc:
            log.warning("could not write the LLM cache %s (%s)", self.path, exc)

    def entry(self, name: str, text: str, edited: bool) -> dict[str, Any]:
        """A new cache entry (with the time it was made)."""
        return {"name": name, "text": text, "edited": edited,
                "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}


def class_names(vocab: Vocabulary | str | Iterable[str]) -> list[str]:
    """The non-background class names of a vocabulary, or the given names."""
    if isinstance(vocab, str):
        vocab = Vocabulary.coerce(vocab)
    if isinstance(vocab, Vocabulary):
        return [c.name for c in vocab if not c.is_background]
    return [str(n) for n in vocab]


def cached_aux(vocab: Vocabulary | str | Iterable[str], kind: str = "definitions",
               settings: LLMSettings | None = None) -> dict[str, str]:
    """The cached texts for some classes, without asking the LLM.

    Parameters
    ----------
    vocab : Vocabulary, str or iterable of str
        A vocabulary (its non-background classes) or class names.
    kind : {"definitions", "synonyms"}
        Which texts.
    settings : LLMSettings or None
        Selects the model and cache; ``None`` uses :meth:`LLMSettings.from_env`.

    Returns
    -------
    dict
        Class name -> text, the user's edited text where there is one, else the
        generated one; classes with nothing cached are left out.
    """
    settings = settings or LLMSettings.from_env()
    cache = AnswerCache(settings, check_kind(kind))
    out = {}
    for name in class_names(vocab):
        text = cache.get(name, edited=True) or cache.get(name, edited=False)
        if text:
            out[name] = text
    return out


def remember_aux(vocab: Vocabulary | str, kind: str = "definitions",
                 settings: LLMSettings | None = None) -> dict[str, str]:
    """Record the vocabulary's auxiliary texts as the user's own.

    Call it after the user edited texts (in the widget or a file). Each class whose text
    differs from the generated one in the cache is stored as *edited*: from then on
    generation returns that text for the class (with this model and kind) and never asks
    the LLM about it again, even with ``overwrite=True`` or ``refresh=True``, until
    :func:`forget_aux`. A text equal to the generated one is not an edit; if the class
    had an edited text, that is dropped (the user went back to the generated text).
    Classes without a text are left alone.

    Parameters
    ----------
    vocab : Vocabulary or str
        The edited vocabulary (anything :meth:`Vocabulary.coerce` accepts).
    kind : {"definitions", "synonyms"}
        What the texts are.
    settings : LLMSettings or None
        Selects the model and cache; ``None`` uses :meth:`LLMSettings.from_env`.

    Returns
    -------
    dict
        Class name -> text recorded as edited.
    """
    vocab = Vocabulary.coerce(vocab)
    settings = settings or LLMSettings.from_env()
    cache = AnswerCache(settings, check_kind(kind))
    changes: dict[str, dict[str, Any] | None] = {}
    recorded = {}
    for c in vocab:
        if c.is_background or not c.aux:
            continue
        generated = cache.get(c.name, edited=False)
        edited = cache.get(c.name, edited=True)
        if c.aux == generated:
            if edited is not None:
                changes[cache.key(c.name, True)] = None
        elif c.aux != edited:
            changes[cache.key(c.name, True)] = cache.entry(c.name, c.aux, True)
            recorded[c.name] = c.aux
    if changes:
        cache.update(changes)
    return recorded


def forget_aux(vocab: Vocabulary | str | Iterable[str], kind: str = "definitions",
               settings: LLMSettings | None = None, *, generated: bool = True,
               edited: bool = True) -> int:
    """Remove cached texts, so that the next generation asks the LLM again.

    Parameters
    ----------
    vocab : Vocabulary, str or iterable of str
        A vocabulary (its non-background classes) or class names.
    kind : {"definitions", "synonyms"}
        Which texts.
    settings : LLMSettings or None
        Selects the model and cache; ``None`` uses :meth:`LLMSettings.from_env`.
    generated, edited : bool
        Which entries to remove.

    Returns
    -------
    int
        The number of entries removed.
    """
    settings = settings or LLMSettings.from_env()
    cache = AnswerCache(settings, check_kind(kind))
    keys = [cache.key(n, e) for n in class_names(vocab)
            for e, wanted in ((False, generated), (True, edited)) if wanted]
    gone = {k: None for k in keys if k in cache.entries}
    if gone:
        cache.update(gone)
    return len(gone)
