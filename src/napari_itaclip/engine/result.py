"""What one segmentation produces: :class:`SegmentationResult`, and its mapping from the
working resolution to the input's size (``object_size``; :mod:`.scale`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ..config import ITACLIPConfig
from ..identity import NOT_GIVEN
from ..vocabulary import Vocabulary
from .postprocess import labels_and_probabilities

__all__ = ["SegmentationResult", "at_input_size"]


@dataclass
class SegmentationResult:
    """What one ITACLIP run produces.

    Attributes
    ----------
    labels : np.ndarray
        (H, W) int32 class index per pixel; 0 = background when the vocabulary has one.
    probabilities : np.ndarray
        (C, H, W) float32 class probabilities (after the area threshold, if any).
    similarity : np.ndarray
        (C, H, W) float32 refined cosine similarity, max over each class's names.
    class_names : list of str
        Display name of each class, in label order.
    vocabulary : Vocabulary
        The vocabulary that was segmented.
    config : ITACLIPConfig
        The configuration used (thresholds as last applied by :meth:`relabel`).
    timings : dict
        Seconds per stage (``load``, ``text``, ``image``, ``refine``, ``post``), and
        ``image_cached``: 1.0 when the image features came from the feature cache (no
        ViT run), else 0.0.
    working : SegmentationResult or None
        With ``config.object_size``: the result at the working resolution (the image
        reduced by :attr:`factor`), which this one maps to the input's size: labels by
        the block each pixel falls in, maps by bilinear interpolation. None otherwise.
    factor : int
        The working resolution's reduction factor (1 without ``object_size``).
    """

    labels: np.ndarray
    probabilities: np.ndarray
    similarity: np.ndarray
    class_names: list[str]
    vocabulary: Vocabulary
    config: ITACLIPConfig
    _raw_probabilities: np.ndarray = field(repr=False, default=None)
    timings: dict[str, float] = field(default_factory=dict, repr=False)
    #: ``(flat indices, class)`` of exemplar stroke pixels that keep their class
    _keep: tuple | None = field(repr=False, default=None)
    working: SegmentationResult | None = field(repr=False, default=None)
    factor: int = 1

    @property
    def has_background(self) -> bool:
        """Whether label 0 is the vocabulary's background class."""
        return self.vocabulary.has_background

    @property
    def image_cached(self) -> bool:
        """Whether the image features were served from the feature cache (no ViT run)."""
        return bool(self.timings.get("image_cached", 0.0))

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the segmented image."""
        return tuple(self.labels.shape)

    def relabel(
        self, prob_threshold: float = NOT_GIVEN, area_threshold: float | None = NOT_GIVEN,
        close_size: int = NOT_GIVEN,
    ) -> SegmentationResult:
        """New labels from the kept maps with other thresholds; no model run.

        Arguments left out keep this result's values. With the configuration's
        ``renormalize_probs`` the new probabilities are renormalised again (after the
        labels, which use the un-normalised values).
        """
        changes = {}
        if prob_threshold is not NOT_GIVEN:
            changes["prob_threshold"] = prob_threshold
        if area_threshold is not NOT_GIVEN:
            changes["area_threshold"] = area_threshold
        if close_size is not NOT_GIVEN:
            changes["close_size"] = close_size
        cfg = dataclasses.replace(self.config, **changes) if changes else self.config
        if self.working is not None:  # object_size: relabel at the working resolution
            return at_input_size(self.working.relabel(**changes), self.shape, self.factor, cfg)
        raw = self._raw_probabilities if self._raw_probabilities is not None else self.probabilities
        labels, probs = labels_and_probabilities(raw, cfg)
        if self._keep is not None:
            from .prototypes import keep_strokes

            labels = keep_strokes(labels, self._keep)
        return SegmentationResult(labels, probs, self.similarity, list(self.class_names),
                                  self.vocabulary, cfg, raw, dict(self.timings), self._keep)

    def measure(self, class_names=None, **kwargs):
        """Class areas and objects of these labels: :func:`napari_itaclip.measure` of this result.

        Takes the same keywords (``spacing``, ``image``, ``min_size``, ``split`` ...);
        the background is the vocabulary's background class, if any.
        """
        from ..measurements import measure

        return measure(self, class_names, **kwargs)


def at_input_size(work: SegmentationResult, shape, factor: int, cfg: ITACLIPConfig
                  ) -> SegmentationResult:
    """A working-resolution result mapped to the input's ``shape`` (``object_size``).

    Labels: each input pixel takes the label of its block; probabilities and
    similarity: bilinear between block centres. ``work`` stays in ``.working``.
    """
    from . import _torch_ready  # noqa: F401  (before torch)

    # isort: split
    import torch

    from .scale import labels_to_input, maps_to_input

    def up(maps):
        return maps_to_input(torch.from_numpy(np.ascontiguousarray(maps)), shape,
                             factor).numpy()

    return SegmentationResult(
        labels_to_input(work.labels, shape, factor), up(work.probabilities), up(work.similarity),
        list(work.class_names), work.vocabulary, cfg, None, dict(work.timings), None,
        work, factor)
