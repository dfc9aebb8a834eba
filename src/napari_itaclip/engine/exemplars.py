"""Exemplars: painted strokes turned into class prototypes (training-free).

An :class:`Exemplars` set holds, per class name, the coverage-weighted mean of the
image's dense ITACLIP patch features under the strokes (the very features the text
queries are scored against; see :mod:`.prototypes` for how they are pooled and scored),
plus the strokes themselves per source plane (keyed by the plane's content digest) so
that segmenting the same plane again keeps every stroke pixel's class.

It also records what the features depend on: the model's identity and the
configuration's image-side settings, so that a set is never scored against the
features of another model (:class:`~napari_itaclip.errors.ExemplarsError`).

This module needs numpy only (no torch): loading, saving and merging sets is cheap.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExemplarsError

__all__ = ["FILE_FORMAT", "FREE_IMAGE_SIDE", "SUFFIX", "Exemplars", "Strokes",
           "feature_space_items", "label_name", "masks_from_labels"]

#: Name and version written into every exemplar file.
FILE_FORMAT = "napari-itaclip-exemplars"
_VERSION = 1

#: Suggested file name ending (any name works; the content is a NumPy ``.npz`` archive).
SUFFIX = ".itaclip-exemplars"

#: Image-side configuration fields that may differ between the image the exemplars
#: were made on and the one they are used on: they move the windows, the resize or the
#: views, not what a patch feature means. Every other image-side field (attention,
#: intermediate layers, last-block surgery, ...) changes the feature space and must match.
FREE_IMAGE_SIDE = frozenset({"short_side", "crop", "stride", "image_engineering",
                             "pad_to_patch", "object_size"})


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def feature_space_items(image_side: dict[str, Any]) -> dict[str, Any]:
    """The image-side settings that must match for two sets of features to be comparable."""
    return {k: v for k, v in image_side.items() if k not in FREE_IMAGE_SIDE}


def label_name(value: int, class_names, has_background: bool, values: str = "index"
               ) -> str | None:
    """The class a painted label value stands for; ``None`` for unlabelled.

    ``values="index"`` (how ``segment`` writes label files): value ``N`` is the
    vocabulary's class ``N`` (``class_names``, in label order); ``0`` is unlabelled unless
    the vocabulary has a background class (label 0). ``values="layer"`` (the plugin's
    Labels layer, what napari saves): ``0`` is always unlabelled (erased), and without a
    background class value ``N`` is class ``N - 1`` (1 = the first class). Values beyond
    the vocabulary's classes are ``"class N"`` either way.
    """
    if values not in ("index", "layer"):
        raise ValueError(f"values must be 'index' or 'layer', got {values!r}")
    value = int(value)
    if value < 0 or (value == 0 and (values == "layer" or not has_background)):
        return None
    names = list(class_names or [])
    index = value - (1 if values == "layer" and not has_background else 0)
    return names[index] if index < len(names) else f"class {value}"


def masks_from_labels(labels, class_names=None, has_background: bool = False,
                      values: str = "index") -> dict[str, np.ndarray]:
    """``{class name: bool mask}`` of a painted label image (any shape), by
    :func:`label_name` (``values``: ``"index"`` or ``"layer"``); unlabelled values are
    left out.
    """
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ExemplarsError(f"labels must be integers, got dtype {labels.dtype}")
    out = {}
    for value in np.unique(labels):
        name = label_name(value, class_names, has_background, values)
        if name is not None:
            if name in out:
                raise ExemplarsError(f"two label values are both named {name!r}")
            out[name] = labels == value
    if not out:
        raise ExemplarsError("the labels hold no painted pixels")
    return out


@dataclass(frozen=True)
class Strokes:
    """The stroke pixels of one source plane: flat pixel indices and their class codes.

    Attributes
    ----------
    shape : tuple of int
        (H, W) of the plane.
    index : np.ndarray
        (k,) int64 flat (C order) indices of the stroke pixels, sorted, unique.
    code : np.ndarray
        (k,) int32 index into the owning set's ``names`` of each pixel's class.
    """

    shape: tuple[int, int]
    index: np.ndarray
    code: np.ndarray

    def remapped(self, table: np.ndarray) -> Strokes:
        """The same pixels with codes sent through ``table`` (old code -> new code)."""
        return Strokes(self.shape, self.index, table[self.code].astype(np.int32))

    def union(self, other: Strokes) -> Strokes:
        """Both planes' stroke pixels; where both hold a pixel, ``other``'s class wins."""
        index = np.concatenate([other.index, self.index])
        code = np.concatenate([other.code, self.code])
        uniq, first = np.unique(index, return_index=True)  # first occurrence = other's
        return Strokes(self.shape, uniq.astype(np.int64), code[first].astype(np.int32))


class Exemplars:
    """Class prototypes from painted strokes, with the strokes and their provenance.

    Made by :meth:`Segmenter.exemplars <napari_itaclip.Segmenter.exemplars>` and used
    by ``Segmenter.segment(image, vocabulary, exemplars=...)``: a name equal to a
    class's display name adds to that class, other names become exemplar-only classes
    appended after the vocabulary's, in this set's order. Immutable; ``a | b`` merges.

    Attributes
    ----------
    names : list of str
        The class names, in order.
    model : str
        Identity of the model whose features these are.
    image_side : dict
        The image-side configuration fields the features were computed with.
    """

    def __init__(self, names, weights, merged, flipped, *, model: str,
                 image_side: dict[str, Any], strokes: dict[str, Strokes] | None = None):
        names = tuple(str(n) for n in names)
        if not names or len(set(names)) != len(names) or not all(n.strip() for n in names):
            raise ExemplarsError(f"exemplar class names must be non-empty and distinct: {names}")
        self._names = names
        self._weights = np.asarray(weights, dtype=np.float64).reshape(len(names))
        self._merged = np.ascontiguousarray(merged, dtype=np.float32)
        self._flipped = None if flipped is None else np.ascontiguousarray(flipped, dtype=np.float32)
        if self._merged.ndim != 2 or self._merged.shape[0] != len(names) or (
                self._flipped is not None and self._flipped.shape != self._merged.shape):
            raise ExemplarsError("exemplar features do not match their names")
        if not (np.all(self._weights > 0) and np.isfinite(self._merged).all()):
            raise ExemplarsError("exemplar features must be finite with positive weights")
        self.model = str(model)
        self.image_side = {k: _jsonable(v) for k, v in dict(image_side).items()}
        self._strokes = dict(strokes or {})

    # -- reading -------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """The class names, in order."""
        return list(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return (f"Exemplars({list(self._names)!r}, planes={len(self._strokes)}, "
                f"model={self.model!r})")

    @property
    def dim(self) -> int:
        """Feature dimension D."""
        return int(self._merged.shape[1])

    @property
    def weights(self) -> np.ndarray:
        """(n,) total patch coverage behind each class's prototype (a copy)."""
        return self._weights.copy()

    @property
    def planes(self) -> list[str]:
        """Content digests of the planes the strokes were painted on."""
        return list(self._strokes)

    def strokes(self, digest: str) -> Strokes | None:
        """The strokes painted on the plane with this content digest, if any."""
        return self._strokes.get(digest)

    def prototypes(self, eng_weight: float | None) -> np.ndarray:
        """(n, D) float32 L2-normalised prototypes.

        ``normalise(α·merged + (1-α)·flipped)`` with ``α = eng_weight`` (the pooled
        un-flipped and flipped-back views, mixed as the scoring mixes them); the merged
        views alone for ``eng_weight=None`` (image engineering off) or when the set has
        no flipped views.
        """
        p = self._merged.astype(np.float64)
        if eng_weight is not None and self._flipped is not None:
            a = float(eng_weight)
            p = a * p + (1.0 - a) * self._flipped
        norm = np.linalg.norm(p, axis=1, keepdims=True)
        return (p / np.maximum(norm, 1e-12)).astype(np.float32)

    # -- checks --------------------------------------------------------------------
    def check_compatible(self, model: str, image_side: dict[str, Any]) -> None:
        """Raise :class:`ExemplarsError` unless features of ``model`` with these
        image-side settings are comparable with this set's.
        """
        if model != self.model:
            raise ExemplarsError(
                f"these exemplars were made with model {self.model!r}; this segmenter runs "
                f"{model!r}: make the exemplars again with this model")
        mine = feature_space_items(self.image_side)
        theirs = feature_space_items({k: _jsonable(v) for k, v in image_side.items()})
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if diff:
            detail = ", ".join(f"{k}: {mine.get(k)!r} here, {theirs.get(k)!r} now" for k in diff)
            raise ExemplarsError(
                "these exemplars were made with other image-side settings, whose features "
                f"are not comparable ({detail}): use the same settings or make them again")

    # -- merging -------------------------------------------------------------------
    def __or__(self, other: Exemplars) -> Exemplars:
        """Merge two sets: same-named classes pool their features (weighted by
        coverage), new names are appended; strokes are united (``other`` wins where
        both painted the same pixel of the same plane).
        """
        if not isinstance(other, Exemplars):
            return NotImplemented
        other.check_compatible(self.model, self.image_side)
        if other.dim != self.dim:
            raise ExemplarsError(f"feature dimensions differ: {self.dim} and {other.dim}")
        names = list(self._names) + [n for n in other._names if n not in self._names]
        pos = {n: i for i, n in enumerate(names)}
        n, d = len(names), self.dim
        w = np.zeros(n)
        m = np.zeros((n, d))
        both = self._flipped is not None and other._flipped is not None
        f = np.zeros((n, d)) if both else None
        for ex in (self, other):
            idx = np.array([pos[x] for x in ex._names])
            np.add.at(w, idx, ex._weights)
            np.add.at(m, idx, ex._weights[:, None] * ex._merged)
            if f is not None:
                np.add.at(f, idx, ex._weights[:, None] * ex._flipped)
        m /= w[:, None]
        if f is not None:
            f /= w[:, None]
        strokes = dict(self._strokes)
        table = np.array([pos[x] for x in other._names], dtype=np.int32)
        for digest, s in other._strokes.items():
            s = s.remapped(table)
            strokes[digest] = strokes[digest].union(s) if digest in strokes else s
        return Exemplars(names, w, m, f, model=self.model, image_side=self.image_side,
                         strokes=strokes)

    # -- files ---------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the set to ``path`` (a NumPy ``.npz`` archive, no pickle) and return it.

        The file holds the prototypes' pooled features, the strokes (flat pixel indices
        and class codes per source plane) and a JSON header with the names, the model
        identity and the image-side settings. ``np.savez`` would append ``.npz`` to a
        name without it; the exact ``path`` is written instead.
        """
        path = Path(path)
        digests = list(self._strokes)
        meta = {"format": FILE_FORMAT, "version": _VERSION, "names": list(self._names),
                "model": self.model, "image_side": self.image_side, "planes": digests,
                "shapes": [list(self._strokes[k].shape) for k in digests]}
        arrays = {"meta": np.array(json.dumps(meta)), "weights": self._weights,
                  "merged": self._merged}
        if self._flipped is not None:
            arrays["flipped"] = self._flipped
        sizes = [len(self._strokes[k].index) for k in digests]
        arrays["stroke_offsets"] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        arrays["stroke_index"] = np.concatenate(
            [self._strokes[k].index for k in digests] or [np.zeros(0, np.int64)]).astype(np.int64)
        arrays["stroke_code"] = np.concatenate(
            [self._strokes[k].code for k in digests] or [np.zeros(0, np.int32)]).astype(np.int32)
        with open(path, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Exemplars:
        """Read a set written by :meth:`save`.

        Raises
        ------
        ExemplarsError
            Missing, unreadable, corrupt or foreign file.
        """
        path = Path(path)
        if not path.is_file():
            raise ExemplarsError(f"exemplar file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
            meta = json.loads(str(data["meta"]))
            if not isinstance(meta, dict) or meta.get("format") != FILE_FORMAT:
                raise ExemplarsError(f"{path} is not a napari-itaclip exemplar file")
            if meta.get("version") != _VERSION:
                raise ExemplarsError(
                    f"{path} has exemplar file version {meta.get('version')!r}; this version "
                    f"of napari-itaclip reads version {_VERSION}")
            strokes = _read_strokes(meta, data, len(meta["names"]))
            return cls(meta["names"], data["weights"], data["merged"], data.get("flipped"),
                       model=meta["model"], image_side=meta["image_side"], strokes=strokes)
        except ExemplarsError:
            raise
        except (OSError, ValueError, KeyError, TypeError, IndexError, EOFError,
                zipfile.BadZipFile) as exc:
            raise ExemplarsError(f"cannot read exemplar file {path}: it is corrupt or not an "
                                 f"exemplar file ({type(exc).__name__}: {exc})") from exc


def _read_strokes(meta: dict, data: dict, n_names: int) -> dict[str, Strokes]:
    offsets, index, code = data["stroke_offsets"], data["stroke_index"], data["stroke_code"]
    digests, shapes = meta["planes"], meta["shapes"]
    if len(offsets) != len(digests) + 1 or len(shapes) != len(digests) or len(index) != len(code):
        raise ValueError("stroke tables do not match")
    out = {}
    for i, digest in enumerate(digests):
        h, w = (int(v) for v in shapes[i])
        idx = index[offsets[i]:offsets[i + 1]].astype(np.int64)
        cd = code[offsets[i]:offsets[i + 1]].astype(np.int32)
        if len(idx) and (idx.min() < 0 or idx.max() >= h * w or cd.min() < 0 or cd.max() >= n_names):
            raise ValueError("stroke indices out of range")
        out[str(digest)] = Strokes((h, w), idx, cd)
    return out
