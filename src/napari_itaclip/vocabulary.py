"""Vocabularies: ordered classes with synonyms, an optional background class and
optional auxiliary texts (definitions or synonym phrases), and their text form.

The text form (one class per line, ``#`` starts a comment)::

    background: sky, wall, tree, floor
    cat, feline >= a small domesticated carnivorous mammal
    person, body >= a human being
    carpet
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

__all__ = ["BACKGROUND", "VocabClass", "Vocabulary", "VocabularyError"]

BACKGROUND = "background"
_AUX_SEP = ">="
_COMMENT = re.compile(r"(^|\s)#.*$")


class VocabularyError(ValueError):
    """A vocabulary that cannot be used, with the reason and the offending line."""


@dataclass(frozen=True)
class VocabClass:
    """One class of a :class:`Vocabulary`.

    Attributes
    ----------
    names : tuple of str
        The text queries of the class (synonyms). For an ordinary class the first
        one is the display name.
    aux : str or None
        Auxiliary text mixed into every query of the class (docs/engine.md, section "Text features").
    is_background : bool
        Whether this is the background class (index 0, never has ``aux``).
    """

    names: tuple[str, ...]
    aux: str | None = None
    is_background: bool = False

    @property
    def name(self) -> str:
        """Display name: ``"background"`` for the background class, else ``names[0]``."""
        return BACKGROUND if self.is_background else self.names[0]

    def format(self) -> str:
        """This class as one line of the text form."""
        names = ", ".join(self.names)
        if self.is_background:
            return f"{BACKGROUND}: {names}"
        return f"{names} {_AUX_SEP} {self.aux}" if self.aux else names


class Vocabulary(Sequence[VocabClass]):
    """An ordered, validated list of classes.

    Build one with :meth:`parse` (the text form), :meth:`from_names` or
    :meth:`coerce` (anything the public functions accept). Instances are immutable;
    :meth:`with_aux` returns a new vocabulary.
    """

    def __init__(self, classes: Iterable[VocabClass]):
        classes = tuple(classes)
        _validate(classes)
        self._classes = classes

    # -- construction -------------------------------------------------------------
    @classmethod
    def parse(cls, text: str) -> Vocabulary:
        """Parse the text form (see the module docstring).

        Raises
        ------
        VocabularyError
            Empty vocabulary, empty or duplicate names, a background class that is
            not the first class or that has an auxiliary text.
        """
        if not isinstance(text, str):
            raise TypeError(f"Vocabulary.parse needs a str, got {type(text).__name__}")
        classes = []
        for lineno, raw in enumerate(text.splitlines(), start=1):
            line = _COMMENT.sub("", raw).strip()
            if not line:
                continue
            classes.append(_parse_line(line, lineno, first=not classes))
        if not classes:
            raise VocabularyError("empty vocabulary: give at least one class name")
        return cls(classes)

    @classmethod
    def from_names(cls, names: Iterable[str]) -> Vocabulary:
        """One class per name, no synonyms or auxiliary texts.

        A name that is exactly ``"background"`` (any case) becomes the background
        class and is moved to index 0; otherwise there is no background class.
        """
        if isinstance(names, str):
            raise TypeError("from_names needs a list of names; use Vocabulary.parse for text")
        names = [str(n).strip() for n in names]
        if not names:
            raise VocabularyError("empty vocabulary: give at least one class name")
        bg = [n for n in names if n.lower() == BACKGROUND]
        rest = [VocabClass((n,)) for n in names if n.lower() != BACKGROUND]
        classes = ([VocabClass((BACKGROUND,), is_background=True)] if bg else []) + rest
        if len(bg) > 1:
            raise VocabularyError("duplicate name 'background'")
        return cls(classes)

    @classmethod
    def coerce(cls, vocab: Vocabulary | str | Iterable[str]) -> Vocabulary:
        """Accept a Vocabulary, its text form, a comma-separated one-liner or a list.

        - a :class:`Vocabulary` is returned as is; a :class:`~pathlib.Path` is loaded;
        - a string with several lines, or with ``:`` or ``>=``, is :meth:`parse`\\ d;
        - a one-line string without those (``"cell, nucleus, background"``) is one
          class per comma-separated item, as :meth:`from_names`;
        - a list of strings: each item is one line of the text form (so
          ``["cat, feline", "dog"]`` gives two classes, the first with a synonym).
        """
        if isinstance(vocab, Vocabulary):
            return vocab
        if isinstance(vocab, Path):
            return cls.load(vocab)
        if isinstance(vocab, str):
            text = vocab
            if "\n" not in text.strip() and ":" not in text and _AUX_SEP not in text:
                items = [s.strip() for s in _COMMENT.sub("", text).split(",")]
                if not any(items):
                    raise VocabularyError("empty vocabulary: give at least one class name")
                if "" in items:
                    raise VocabularyError(f"empty class name in {text!r} (two commas in a row?)")
                return cls.from_names(items)
            return cls.parse(text)
        if isinstance(vocab, Iterable):
            items = list(vocab)
            if not all(isinstance(i, str) for i in items):
                raise TypeError("a vocabulary list must hold strings (one class per item)")
            if any("\n" in i for i in items):
                raise VocabularyError("a vocabulary list item must be a single line")
            return cls.parse("\n".join(items))
        raise TypeError(f"cannot make a Vocabulary from {type(vocab).__name__}")

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """Read the text form from a file (UTF-8)."""
        return cls.parse(Path(path).read_text(encoding="utf-8"))

    def save(self, path: str | Path) -> None:
        """Write the text form to a file (UTF-8)."""
        Path(path).write_text(self.format() + "\n", encoding="utf-8")

    # -- views --------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._classes)

    def __getitem__(self, index):  # type: ignore[override]
        return self._classes[index]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self._classes == other._classes

    def __hash__(self) -> int:
        return hash(self._classes)

    def __repr__(self) -> str:
        return f"Vocabulary.parse({self.format()!r})"

    @property
    def classes(self) -> tuple[VocabClass, ...]:
        """The classes, in label order."""
        return self._classes

    @property
    def class_names(self) -> list[str]:
        """Display name of each class, in label order."""
        return [c.name for c in self._classes]

    @property
    def has_background(self) -> bool:
        """Whether class 0 is a background class."""
        return self._classes[0].is_background

    @property
    def queries(self) -> list[str]:
        """Every name of every class, in class order (one text query each)."""
        return [n for c in self._classes for n in c.names]

    @property
    def query_class(self) -> list[int]:
        """For each of :attr:`queries`, the index of its class."""
        return [i for i, c in enumerate(self._classes) for _ in c.names]

    @property
    def aux_texts(self) -> dict[str, str]:
        """Display name -> auxiliary text, for the classes that have one."""
        return {c.name: c.aux for c in self._classes if c.aux}

    def format(self) -> str:
        """The text form; ``Vocabulary.parse(v.format()) == v``."""
        return "\n".join(c.format() for c in self._classes)

    def with_aux(self, aux: Mapping[str, str | None]) -> Vocabulary:
        """A copy whose auxiliary texts are replaced for the named classes.

        ``aux`` maps display names to texts; ``None`` or ``""`` removes a class's
        text. Unknown names and the background class are errors.
        """
        by_name = {c.name: i for i, c in enumerate(self._classes)}
        classes = list(self._classes)
        for name, text in aux.items():
            if name not in by_name:
                raise VocabularyError(f"no class named {name!r} in the vocabulary")
            i = by_name[name]
            if classes[i].is_background and text:
                raise VocabularyError("the background class cannot have an auxiliary text")
            text = _clean_aux(text) if text else None
            classes[i] = replace(classes[i], aux=text)
        return Vocabulary(classes)

    def without_aux(self) -> Vocabulary:
        """A copy with every auxiliary text removed."""
        return Vocabulary(replace(c, aux=None) for c in self._classes)


def _clean_aux(text: str) -> str:
    text = " ".join(str(text).split())
    if "\n" in text or "#" in text:
        text = text.replace("#", "")
    return text


def _parse_line(line: str, lineno: int, first: bool) -> VocabClass:
    names_part, sep, aux = line.partition(_AUX_SEP)
    aux = " ".join(aux.split()) if sep else None
    if sep and not aux:
        raise VocabularyError(f"line {lineno}: nothing after '{_AUX_SEP}' in {line!r}")
    is_background = False
    head, colon, tail = names_part.partition(":")
    if colon and head.strip().lower() == BACKGROUND:
        if not first:
            raise VocabularyError(
                f"line {lineno}: the background class must be the first class ({line!r})"
            )
        if aux:
            raise VocabularyError(
                f"line {lineno}: the background class cannot have an auxiliary text ({line!r})"
            )
        is_background = True
        names_part = tail if tail.strip() else BACKGROUND
    names = tuple(" ".join(n.split()) for n in names_part.split(","))
    if any(not n for n in names):
        raise VocabularyError(f"line {lineno}: empty class name in {line!r} (stray comma?)")
    return VocabClass(names, aux, is_background)


def _validate(classes: tuple[VocabClass, ...]) -> None:
    if not classes:
        raise VocabularyError("empty vocabulary: give at least one class name")
    seen: dict[str, int] = {}
    for i, c in enumerate(classes):
        if not isinstance(c, VocabClass):
            raise TypeError(f"class {i} is a {type(c).__name__}, not a VocabClass")
        if not c.names or any(not isinstance(n, str) or not n.strip() for n in c.names):
            raise VocabularyError(f"class {i} has an empty name")
        if c.is_background and i != 0:
            raise VocabularyError("the background class must be the first class")
        if c.is_background and c.aux:
            raise VocabularyError("the background class cannot have an auxiliary text")
        for n in c.names:
            key = n.strip().lower()
            if key in seen:
                where = (f"class {seen[key]} and class {i}" if seen[key] != i else f"class {i}")
                raise VocabularyError(f"duplicate name {n!r} ({where}); names must be unique")
            seen[key] = i
