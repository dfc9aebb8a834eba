"""Measurements of a segmentation: class areas and objects in physical units.

:func:`measure` turns a label map (or a :class:`~napari_itaclip.SegmentationResult`)
into two pandas tables and an instance label map; :mod:`.outputs` writes them as CSV
files beside the command line's outputs. numpy only at import; pandas and
scikit-image load on the first measurement. See ``docs/measure.md``.
"""

from .core import Measurements, measure

__all__ = ["Measurements", "measure"]
