"""From refined logits to probabilities, labels and the closing (docs/engine.md, section "Outputs")."""

from __future__ import annotations

import numpy as np

from . import _torch_ready  # noqa: F401  (prepares the process: before torch)

# isort: split
import torch

from ..vocabulary import Vocabulary

__all__ = ["area_filter", "closing", "labels_and_probabilities", "labels_from_probabilities",
           "query_to_class", "renormalize_probabilities", "row_bands", "vocabulary_for"]

#: Values (classes x rows x columns) a banded operation touches at a time.
BAND_VALUES = 4 * 2**20


def row_bands(classes: int, height: int, width: int) -> list[slice]:
    """Row slices of a (classes, height, width) stack, about :data:`BAND_VALUES` values
    each: per-pixel reductions done band by band keep their temporaries small.
    """
    rows = max(1, BAND_VALUES // max(1, int(classes) * int(width)))
    return [slice(r, min(r + rows, height)) for r in range(0, int(height), rows)]


def query_to_class(
    logits: torch.Tensor, query_class: list[int], n_classes: int, logit_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class (similarity, probabilities) from per-query logits (Q, H, W).

    similarity: max over a class's names of the logits; probabilities: softmax of
    ``logit_scale * logits`` over all queries, then max over a class's names.
    """
    probs_q = torch.softmax(logits * logit_scale, dim=0)
    if len(query_class) == n_classes:
        return logits, probs_q
    idx = torch.as_tensor(query_class, device=logits.device)
    sim = torch.stack([logits[idx == c].amax(dim=0) for c in range(n_classes)])
    prob = torch.stack([probs_q[idx == c].amax(dim=0) for c in range(n_classes)])
    return sim, prob


def area_filter(probabilities: np.ndarray, area_threshold: float | None) -> np.ndarray:
    """Zero the maps of classes (other than 0) whose argmax area is too small.

    A class ``c >= 1`` is kept when its pixel count in the argmax map is larger than
    ``area_threshold`` times the number of pixels assigned to classes ``>= 1``.
    Returns ``probabilities`` itself when nothing changes.
    """
    if area_threshold is None or probabilities.shape[0] < 2:
        return probabilities
    arg = probabilities.argmax(axis=0)
    counts = np.bincount(arg.ravel(), minlength=probabilities.shape[0]).astype(np.float64)
    rest = counts[1:]
    keep = rest > area_threshold * rest.sum()
    if keep.all():
        return probabilities
    out = probabilities.copy()
    out[1:][~keep] = 0.0
    return out


def closing(labels: np.ndarray, size: int) -> np.ndarray:
    """Grey-level closing with a ``size`` x ``size`` square; border pixels see only
    in-image neighbours (edge replication, which leaves max and min unchanged).
    """
    if size <= 1:
        return labels
    lo, hi = size // 2, size - 1 - size // 2

    def _filter(a: np.ndarray, op) -> np.ndarray:
        h, w = a.shape
        p = np.pad(a, ((lo, hi), (lo, hi)), mode="edge")
        out = p[0:h, 0:w].copy()
        for dy in range(size):
            for dx in range(size):
                if dy or dx:
                    op(out, p[dy : dy + h, dx : dx + w], out=out)
        return out

    return _filter(_filter(labels, np.maximum), np.minimum)


def labels_from_probabilities(
    probabilities: np.ndarray, prob_threshold: float, close_size: int
) -> np.ndarray:
    """Argmax over classes; label 0 where the best probability is below the threshold;
    then the closing.
    """
    labels = np.empty(probabilities.shape[1:], np.int32)
    for rows in row_bands(*probabilities.shape):  # numpy's argmax copies what it reduces
        labels[rows] = probabilities[:, rows].argmax(axis=0)
    if prob_threshold > 0:
        labels[probabilities.max(axis=0) < prob_threshold] = 0
    return closing(labels, close_size)


def renormalize_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """NACLIP's output probabilities: each pixel's class probabilities divided by their
    sum over the classes (a new array; pixels whose sum is 0 stay 0).

    Applied after the labels are taken (docs/engine.md, section "Outputs"): the labels and the
    probability threshold use the values before this step.
    """
    total = probabilities.sum(axis=0, keepdims=True)
    out = np.zeros_like(probabilities)
    np.divide(probabilities, total, out=out, where=total > 0)
    return out


def labels_and_probabilities(raw: np.ndarray, cfg) -> tuple[np.ndarray, np.ndarray]:
    """(labels, probabilities) from the grouped probabilities ``raw`` (C, H, W).

    docs/engine.md, section "Outputs": the area threshold, the labels with
    the probability threshold and the closing, then, with ``cfg.renormalize_probs``,
    NACLIP's renormalisation of the returned probabilities (the labels use the values
    before it).
    """
    probs = area_filter(raw, cfg.area_threshold)
    labels = labels_from_probabilities(probs, cfg.prob_threshold, cfg.close_size)
    if cfg.renormalize_probs:
        probs = renormalize_probabilities(probs)
    return labels, probs


def vocabulary_for(vocabulary, exemplars) -> Vocabulary | None:
    """The vocabulary to segment (:meth:`Vocabulary.coerce`); ``None`` only for
    exemplar-only segmentation (``vocabulary=None`` with exemplars).
    """
    if vocabulary is None:
        if exemplars is None:
            raise TypeError("vocabulary is None: give a vocabulary, or exemplars to segment "
                            "with exemplar-only classes")
        return None
    return Vocabulary.coerce(vocabulary)
