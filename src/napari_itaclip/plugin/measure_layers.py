"""Measuring a Labels layer: inputs read from the layers, the ``<image> objects`` layer.

:func:`measure_inputs` reads what a measurement needs from the layers (on the GUI
thread: the Labels layer's *current* data, a user's edits included, copied), the
measurement itself is :func:`napari_itaclip.measure` (any thread), and
:func:`write_objects_layer` adds or updates the objects layer. napari is imported
inside functions only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..measurements.units import unit_name
from .layers import layer_data

__all__ = ["layer_unit", "measure_inputs", "objects_features", "objects_name",
           "source_image", "write_objects_layer"]


def objects_name(base: str) -> str:
    """Name of the objects Labels layer of a source image called ``base``."""
    return f"{base} objects"


def _base_name(labels_layer) -> str:
    meta = labels_layer.metadata.get("itaclip", {})
    if meta.get("source"):
        return str(meta["source"])
    name = labels_layer.name
    return name[: -len(" labels")] if name.endswith(" labels") else name


def layer_unit(layer) -> str | None:
    """The last axis' unit of a layer (napari >= 0.5 ``units``), None for pixels/none.

    Spelt as the CSV files spell it (``µm`` with the micro sign, whatever Pint writes).
    """
    units = getattr(layer, "units", None)
    if not units:
        return None
    unit = units[-1]
    return None if str(unit) in ("pixel", "px", "") else unit_name(unit)


def source_image(labels_layer, viewer):
    """The image layer a Labels layer was segmented from (its metadata), or None."""
    from napari.layers import Image

    name = labels_layer.metadata.get("itaclip", {}).get("source")
    if viewer is None or name not in viewer.layers:
        return None
    layer = viewer.layers[name]
    return layer if isinstance(layer, Image) else None


def _class_names(labels_layer) -> list[str] | None:
    """Names per layer value from the layer's ``features`` (``index``, ``class_name``)."""
    feats = getattr(labels_layer, "features", None)
    if feats is None or "class_name" not in getattr(feats, "columns", ()):
        return None
    index = feats["index"] if "index" in feats.columns else np.arange(len(feats))
    top = int(max(index)) if len(index) else -1
    names = [f"label {v}" for v in range(top + 1)]
    for value, name in zip(index, feats["class_name"]):
        if int(value) >= 0:
            names[int(value)] = str(name)
    return names


def measure_inputs(labels_layer, image_layer=None, viewer=None, *,
                   strict_image: bool = False) -> dict[str, Any]:
    """Keyword arguments of :func:`napari_itaclip.measure` for a Labels layer.

    The labels are a copy of the layer's current data (edits included); the spacing and
    origin are the layer's scale and translate (last two axes), the unit its ``units``;
    0 (background, or "unlabelled" for a vocabulary without background) is never an
    object. The image (for intensities) is ``image_layer``, else the layer it was
    segmented from; an image whose shape does not fit is an error when ``strict_image``
    is set, else left out.
    """
    labels = np.array(layer_data(labels_layer), copy=True)
    if image_layer is None:
        image_layer, strict_image = source_image(labels_layer, viewer), False
    image = None
    if image_layer is not None:
        data = layer_data(image_layer)
        fits = tuple(data.shape) == labels.shape or (
            data.ndim == labels.ndim + 1 and tuple(data.shape[:-1]) == labels.shape)
        if fits:
            image = np.asarray(data)
        elif strict_image:
            raise ValueError(f"image layer '{image_layer.name}' {tuple(data.shape)} does not "
                             f"match labels layer '{labels_layer.name}' {labels.shape}")
    axes = None
    axis_labels = getattr(labels_layer, "axis_labels", None)
    if axis_labels is not None and labels.ndim > 2:
        lead = [str(a) for a in axis_labels[:-2]]
        if all(a and not a.lstrip("-").isdigit() for a in lead) and len(set(lead)) == len(lead):
            axes = lead
    return {"labels_or_result": labels, "class_names": _class_names(labels_layer),
            "spacing": tuple(float(s) for s in labels_layer.scale[-2:]),
            "origin": tuple(float(t) for t in labels_layer.translate[-2:]),
            "unit": layer_unit(labels_layer) or ("px" if np.allclose(
                labels_layer.scale[-2:], 1) else "units"),
            "image": image, "background": 0, "axes": axes}


def objects_features(measurements):
    """The objects layer's features: the object rows with napari's ``index`` column first."""
    table = measurements.objects.copy()
    table.insert(0, "index", table["id"].to_numpy())
    return table


def write_objects_layer(viewer, labels_layer, measurements, *, layer=None):
    """Add or update the ``<image> objects`` Labels layer (instances, object features)."""
    from napari.layers import Labels

    name = objects_name(_base_name(labels_layer))
    if layer is None and viewer is not None and name in viewer.layers:
        found = viewer.layers[name]
        layer = found if isinstance(found, Labels) else None
    features = objects_features(measurements)
    geo = {"scale": tuple(labels_layer.scale), "translate": tuple(labels_layer.translate)}
    for key in ("units", "axis_labels"):  # napari >= 0.5
        if getattr(labels_layer, key, None) is not None:
            geo[key] = tuple(getattr(labels_layer, key))
    meta = {"itaclip": {"kind": "objects", "labels": labels_layer.name,
                        "unit": measurements.unit}}
    data = measurements.instances
    if layer is None or layer.ndim != data.ndim:
        if layer is not None and viewer is not None:
            viewer.layers.remove(layer)
        layer = Labels(data, name=name, metadata=meta, opacity=0.6, **geo)
        if viewer is not None:
            viewer.add_layer(layer)
        layer.features = features  # after adding: napari 0.9 fails adding it in 3D
        return layer
    layer.data = data
    layer.features = features
    layer.metadata.update(meta)
    for key, value in geo.items():
        setattr(layer, key, value)
    return layer
