"""Class areas and connected objects of a label map, in physical units.

Built on :func:`skimage.measure.label` (the objects: connected regions of one class)
and :func:`skimage.measure.regionprops_table` (their area, centroid, bounding box and
intensities); areas per class are a ``bincount``. A stack (``(..., Y, X)``) is measured
plane by plane, each row carrying its plane's index. pandas and scikit-image are
imported on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .units import unit_name

__all__ = ["SPLIT_METHODS", "Measurements", "measure", "plane_columns"]

#: ways of splitting touching objects of one class (``split=``); None = no split
SPLIT_METHODS = ("distance", "probability")
_AUTO = "auto"


@dataclass
class Measurements:
    """What :func:`measure` returns.

    Attributes
    ----------
    classes : pandas.DataFrame
        One row per class (per plane of a stack): ``class`` (the label value),
        ``class_name``, ``pixels``, ``area`` (pixels times the pixel area, in
        ``unit`` squared), ``fraction_image`` (of all pixels), ``fraction_labelled``
        (of the pixels not in the background class; empty for the background itself),
        ``objects`` (how many objects the class has; 0 for the background and classes
        not split into objects), ``mean_intensity`` of the source image when one was
        given (``mean_intensity_0``, ``_1``, ... per channel of a colour image), and
        ``unit``.
    objects : pandas.DataFrame
        One row per object, a connected region of one class: ``id`` (its value in
        :attr:`instances`), ``class``, ``class_name``, ``pixels``, ``area``,
        ``centroid_y``, ``centroid_x``, ``bbox_min_y``, ``bbox_min_x``, ``bbox_max_y``,
        ``bbox_max_x`` (physical coordinates: pixel index times spacing plus origin;
        the bounding box's maximum is exclusive, as skimage's), ``mean_intensity``,
        ``min_intensity``, ``max_intensity`` (per channel: ``mean_intensity_0`` ...)
        when an image was given, and ``unit``. Stacks add the plane's index columns
        first.
    instances : numpy.ndarray
        int32, the labels' shape: each object's ``id`` on its pixels, 0 elsewhere.
        Ids are unique over a whole stack.
    spacing : tuple of float
        ``(y, x)`` pixel size used.
    unit : str
        Length unit of the spacing (``"px"`` without one).
    class_names : list of str
        Name of each label value.
    """

    classes: Any
    objects: Any
    instances: np.ndarray
    spacing: tuple[float, float] = (1.0, 1.0)
    unit: str = "px"
    class_names: list[str] = field(default_factory=list)

    def to_csv(self, classes_path: str | Path, objects_path: str | Path | None = None
               ) -> list[Path]:
        """Write :attr:`classes` (and :attr:`objects`) as CSV files; returns the paths."""
        paths = [Path(classes_path)]
        self.classes.to_csv(paths[0], index=False)
        if objects_path is not None:
            paths.append(Path(objects_path))
            self.objects.to_csv(paths[1], index=False)
        return paths

    def __repr__(self) -> str:
        return (f"Measurements({len(self.classes)} class rows, {len(self.objects)} objects, "
                f"spacing={self.spacing}, unit={self.unit!r})")


# ------------------------------------------------------------------------------ inputs
def _is_result(obj) -> bool:
    return hasattr(obj, "labels") and hasattr(obj, "class_names") and hasattr(obj, "probabilities")


def _labels_array(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype == bool:
        labels = labels.astype(np.int32)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be an integer array, got {labels.dtype}")
    if labels.ndim < 2 or min(labels.shape) == 0:
        raise ValueError(f"labels must be a (..., Y, X) array, got shape {labels.shape}")
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise ValueError("labels must not be negative")
    return labels


def _inputs(obj, class_names, background, probabilities, split):
    """(labels, names, background value, probabilities or None)."""
    if _is_result(obj):
        labels = _labels_array(obj.labels)
        names = list(obj.class_names if class_names is None else class_names)
        if background == _AUTO:
            background = 0 if getattr(obj, "has_background", True) else None
        if probabilities is None and split == "probability":
            probabilities = obj.probabilities
    else:
        labels = _labels_array(obj)
        if background == _AUTO:
            background = 0
        names = None if class_names is None else [str(n) for n in class_names]
    top = int(labels.max()) if labels.size else 0
    if names is None:
        names = [f"class {v}" for v in range(top + 1)]
        if background is not None and background <= top:
            names[background] = "background"
    names = [str(n) for n in names] + [f"label {v}" for v in range(len(names), top + 1)]
    if background is not None and not 0 <= int(background) < len(names):
        raise ValueError(f"background={background} is not a label value (0..{len(names) - 1})")
    return labels, names, None if background is None else int(background), probabilities


def _spacing(spacing) -> tuple[float, float]:
    if spacing is None:
        return 1.0, 1.0
    values = np.atleast_1d(np.asarray(spacing, dtype=float))
    if values.ndim != 1 or values.size < 1:
        raise ValueError(f"spacing must be a number or a (y, x) pair, got {spacing!r}")
    values = values[-2:] if values.size >= 2 else np.repeat(values, 2)
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"spacing must be positive, got {spacing!r}")
    return float(values[0]), float(values[1])


def _image(image, shape: tuple[int, ...]) -> tuple[np.ndarray | None, int]:
    """The image as an array and its channel count (0: one grey channel)."""
    if image is None:
        return None, 0
    image = np.asarray(image)
    if image.dtype.kind not in "uifb":
        raise TypeError(f"image must be numeric, got {image.dtype}")
    if tuple(image.shape) == tuple(shape):
        return image, 0
    if image.ndim == len(shape) + 1 and tuple(image.shape[:-1]) == tuple(shape):
        return image, int(image.shape[-1])
    raise ValueError(f"image shape {image.shape} does not match the labels {shape} "
                     "(same shape, or with a colour/channel axis last)")


def _object_classes(object_classes, names: list[str], background: int | None) -> list[int]:
    if object_classes is None:
        return [v for v in range(len(names)) if v != background]
    if isinstance(object_classes, (str, int, np.integer)):
        object_classes = [object_classes]
    out = []
    for c in object_classes:
        if isinstance(c, (int, np.integer)):
            if not 0 <= int(c) < len(names):
                raise ValueError(f"object class {c} is not a label value (0..{len(names) - 1})")
            value = int(c)
        elif c in names:
            value = names.index(c)
        else:
            raise ValueError(f"object class {c!r} is not one of {names}")
        if value == background:
            raise ValueError(f"{names[value]!r} is the background class, which is never an object")
        out.append(value)
    return sorted(set(out))


def plane_columns(leading: tuple[int, ...], axes: Sequence[str] | str | None) -> list[str]:
    """Names of the index columns of a stack's leading axes.

    ``axes`` names them (e.g. ``"TZ"`` gives ``t``, ``z``); default ``plane`` for one
    leading axis, ``plane_0``, ``plane_1``, ... for more.
    """
    if not leading:
        return []
    if axes is not None:
        names = [str(a).lower() for a in axes]
        if len(names) != len(leading) or len(set(names)) != len(names):
            raise ValueError(f"axes {axes!r} must name the {len(leading)} leading axes once each")
        return names
    return ["plane"] if len(leading) == 1 else [f"plane_{i}" for i in range(len(leading))]


# ---------------------------------------------------------------------------- measure
def measure(labels_or_result, class_names: Sequence[str] | None = None, *,
            spacing: float | Sequence[float] | None = None, image=None, unit: str | None = None,
            background: int | None | str = _AUTO, connectivity: int = 1, min_size: int = 1,
            object_classes: Sequence[str | int] | None = None, split: str | None = None,
            probabilities: np.ndarray | None = None, split_min_distance: int = 5,
            axes: Sequence[str] | str | None = None,
            origin: Sequence[float] | None = None) -> Measurements:
    """Measure a segmentation: area per class and one row per connected object.

    Parameters
    ----------
    labels_or_result : SegmentationResult or array of int
        A result (its labels, class names and background), or a label map ``(Y, X)``
        or a stack ``(..., Y, X)`` of label values ``0 .. len(class_names) - 1``.
    class_names : list of str, optional
        Name of each label value (default: the result's; for an array ``class 0``,
        ``class 1``, ... with ``background`` for the background value). Values above
        the list are named ``label N``.
    spacing : float or (y, x), optional
        Pixel size in physical units (a longer sequence: its last two entries, e.g. a
        napari layer's ``scale``). Default 1 (pixels).
    image : array, optional
        The source image, same shape as the labels or with a channel axis last (RGB):
        adds mean/min/max intensities per object (per channel) and a mean per class.
    unit : str, optional
        Name of the spacing's length unit (default ``"px"`` without a spacing, else
        ``"units"``); written in the tables' ``unit`` column, spelt as
        :func:`~.units.unit_name` spells it (``um``, ``micron``, ``μm``: ``µm``).
    background : int or None
        The background value: counted in the class table, never an object, left out of
        ``fraction_labelled``. Default: 0 for arrays and for results whose vocabulary
        has a background class; None for a result without one.
    connectivity : int
        1 (4-connected, the default) or 2 (8-connected pixels make one object).
    min_size : int
        Objects with fewer pixels are dropped (not in the table, 0 in ``instances``).
    object_classes : list of str or int, optional
        Classes split into objects (default: all but the background).
    split : {None, "distance", "probability"}
        Split touching objects of a class by a watershed seeded at the maxima of the
        distance transform or of the class probability map (``probabilities``, or the
        result's). Off by default; see :func:`~.split.split_touching` for its limits.
    probabilities : array, optional
        ``(C, ..., Y, X)`` class probabilities for ``split="probability"``.
    split_min_distance : int
        Minimum distance in pixels between two seeds of a split.
    axes : str or list of str, optional
        Names of a stack's leading axes (index columns); see :func:`plane_columns`.
    origin : (y, x), optional
        Physical coordinate of pixel (0, 0), added to centroids and boxes (e.g. a napari
        layer's ``translate``). Default 0.

    Returns
    -------
    Measurements
    """
    labels, names, bg, probs = _inputs(labels_or_result, class_names, background,
                                       probabilities, split)
    if split not in (None, *SPLIT_METHODS):
        raise ValueError(f"split must be None or one of {SPLIT_METHODS}, got {split!r}")
    if connectivity not in (1, 2):
        raise ValueError(f"connectivity must be 1 or 2, got {connectivity!r}")
    if int(min_size) < 1:
        raise ValueError(f"min_size must be at least 1, got {min_size!r}")
    if split == "probability":
        probs = _check_probabilities(probs, len(names), labels.shape)
    sy, sx = _spacing(spacing)
    oy, ox = (0.0, 0.0) if origin is None else (float(origin[-2]), float(origin[-1]))
    img, channels = _image(image, labels.shape)
    unit = unit_name(unit) or ("px" if spacing is None else "units")
    objects_of = _object_classes(object_classes, names, bg)
    leading = labels.shape[:-2]
    cols = plane_columns(leading, axes)
    opts = dict(classes=objects_of, connectivity=connectivity, min_size=int(min_size),
                split=split, min_distance=int(split_min_distance))
    instances = np.zeros(labels.shape, dtype=np.int32)
    class_rows, object_rows, next_id = [], [], 0
    for idx in np.ndindex(*leading):
        lab = labels[idx]
        plane_img = None if img is None else img[idx]
        plane_probs = None if probs is None else probs[(slice(None), *idx)]
        inst, table = _plane_objects(lab, plane_img, plane_probs, **opts)
        inst[inst > 0] += next_id
        instances[idx] = inst
        table["label"] = table["label"] + next_id
        next_id += len(table["label"])
        where = dict(zip(cols, idx))
        class_rows.append((where, _plane_classes(lab, len(names), bg, plane_img, channels,
                                                 table["class"])))
        object_rows.append((where, table))
    geometry = (sy, sx, oy, ox, unit, channels)
    return Measurements(_classes_frame(class_rows, names, geometry, cols),
                        _objects_frame(object_rows, names, geometry, cols),
                        instances, (sy, sx), unit, names)


def _check_probabilities(probs, n_classes: int, shape: tuple[int, ...]) -> np.ndarray:
    if probs is None:
        raise ValueError("split='probability' needs the class probabilities (a result, or "
                         "probabilities=...)")
    probs = np.asarray(probs)
    if probs.shape[1:] != tuple(shape) or probs.shape[0] < n_classes - 1:
        raise ValueError(f"probabilities of shape {probs.shape} do not match labels {shape} "
                         f"with {n_classes} classes (expected (C, *labels.shape))")
    return probs


def _plane_classes(lab: np.ndarray, n: int, bg: int | None, img, channels: int,
                   object_class: np.ndarray) -> dict[str, np.ndarray]:
    flat = lab.ravel()
    pixels = np.bincount(flat, minlength=n)[:n].astype(np.int64)
    total = flat.size
    labelled = total - (pixels[bg] if bg is not None else 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac_lab = pixels / labelled if labelled else np.full(n, np.nan)
    if bg is not None:
        frac_lab = frac_lab.astype(float)
        frac_lab[bg] = np.nan
    out = {"pixels": pixels, "fraction_image": pixels / total,
           "fraction_labelled": frac_lab,
           "objects": np.bincount(object_class, minlength=n)[:n].astype(np.int64)}
    if img is not None:
        for name, values in _channel_planes(img, channels):
            sums = np.bincount(flat, weights=values.ravel().astype(np.float64), minlength=n)[:n]
            with np.errstate(invalid="ignore", divide="ignore"):
                out[f"mean_intensity{name}"] = np.where(pixels > 0, sums / np.maximum(pixels, 1),
                                                        np.nan)
    return out


def _channel_planes(img: np.ndarray, channels: int):
    if channels == 0:
        return [("", img)]
    return [(f"_{k}", img[..., k]) for k in range(channels)]


def _plane_objects(lab: np.ndarray, img, probs, *, classes: list[int], connectivity: int,
                   min_size: int, split: str | None, min_distance: int):
    """Instances of one plane (ids 1..K) and their regionprops in pixel units."""
    from skimage.measure import label, regionprops_table

    chosen = np.isin(lab, classes)
    # +1: class 0 may be an object class (no background); 0 is skimage's background
    inst = label(np.where(chosen, lab.astype(np.int64) + 1, 0), background=0,
                 connectivity=connectivity)
    if split is not None and inst.any():
        from .split import split_touching

        inst = split_touching(inst, lab, classes, split, probs, min_distance, connectivity)
    counts = np.bincount(inst.ravel())
    cls = np.zeros(counts.size, dtype=np.int64)
    cls[inst.ravel()] = lab.ravel()
    keep = counts >= min_size
    keep[0] = False
    lut = np.zeros(counts.size, dtype=np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    inst = lut[inst]
    props = ["label", "area", "centroid", "bbox"]
    if img is not None:
        props += ["intensity_mean", "intensity_min", "intensity_max"]
    table = regionprops_table(inst, intensity_image=img, properties=props)
    table["class"] = cls[keep]
    return inst, table


def _classes_frame(rows, names: list[str], geometry, cols: list[str]):
    import pandas as pd

    sy, sx, _, _, unit, channels = geometry
    frames = []
    for where, data in rows:
        n = len(names)
        frame = {c: np.full(n, v, dtype=np.int64) for c, v in where.items()}
        frame.update({"class": np.arange(n), "class_name": names, "pixels": data["pixels"],
                      "area": data["pixels"] * (sy * sx),
                      "fraction_image": data["fraction_image"],
                      "fraction_labelled": data["fraction_labelled"],
                      "objects": data["objects"]})
        frame.update({k: v for k, v in data.items() if k.startswith("mean_intensity")})
        frame["unit"] = unit
        frames.append(pd.DataFrame(frame))
    return pd.concat(frames, ignore_index=True)


def _objects_frame(rows, names: list[str], geometry, cols: list[str]):
    import pandas as pd

    sy, sx, oy, ox, unit, channels = geometry
    frames = []
    for where, t in rows:
        k = len(t["label"])
        frame = {c: np.full(k, v, dtype=np.int64) for c, v in where.items()}
        frame.update({
            "id": np.asarray(t["label"], dtype=np.int64), "class": t["class"],
            "class_name": [names[c] for c in t["class"]],
            "pixels": np.asarray(t["area"], dtype=np.int64),
            "area": np.asarray(t["area"], dtype=float) * (sy * sx),
            "centroid_y": oy + sy * np.asarray(t["centroid-0"], float),
            "centroid_x": ox + sx * np.asarray(t["centroid-1"], float),
            "bbox_min_y": oy + sy * np.asarray(t["bbox-0"], float),
            "bbox_min_x": ox + sx * np.asarray(t["bbox-1"], float),
            "bbox_max_y": oy + sy * np.asarray(t["bbox-2"], float),
            "bbox_max_x": ox + sx * np.asarray(t["bbox-3"], float),
        })
        for stat in ("mean", "min", "max"):
            if channels == 0 and f"intensity_{stat}" in t:
                frame[f"{stat}_intensity"] = t[f"intensity_{stat}"]
            for c in range(channels):
                frame[f"{stat}_intensity_{c}"] = t[f"intensity_{stat}-{c}"]
        frame["unit"] = unit
        frames.append(pd.DataFrame(frame))
    return pd.concat(frames, ignore_index=True)
