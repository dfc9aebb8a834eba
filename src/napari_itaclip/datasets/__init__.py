"""Class-name files of the five benchmarks of the ITACLIP paper.

Each ``<name>.txt`` is a vocabulary in the text form of :mod:`napari_itaclip.vocabulary`
whose class order is the dataset's label order (class ``i`` is label value ``i``).
"""

from __future__ import annotations

from importlib import resources

__all__ = ["BENCHMARKS", "class_names_path", "load_vocabulary"]

#: The benchmarks, in the paper's table order.
BENCHMARKS = ("voc21", "context60", "coco_object", "coco_stuff", "cityscapes")


def class_names_path(name: str):
    """The packaged class-name file of benchmark ``name`` (a ``Traversable``)."""
    key = name.lower().replace("-", "_")
    if key not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    return resources.files(__name__).joinpath(f"{key}.txt")


def load_vocabulary(name: str):
    """The :class:`~napari_itaclip.vocabulary.Vocabulary` of benchmark ``name``."""
    from ..vocabulary import Vocabulary

    return Vocabulary.parse(class_names_path(name).read_text(encoding="utf-8"))
