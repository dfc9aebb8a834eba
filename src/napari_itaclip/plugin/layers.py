"""The output layers: names, colours, features, writing them and finding layers.

:func:`~napari_itaclip.plugin.scripting.segment_layer` and the widget write their
output layers with the same functions. napari is imported inside functions only.

Output layers
-------------
For a source image layer named ``img`` the run writes

- ``img labels``: a :class:`napari.layers.Labels` layer with the source's shape
  without its colour / channel axis. Its ``features`` table has one row per layer
  value: ``index`` (the value stored in the layer), ``class_name`` and
  ``class_index`` (the engine's class index, -1 for "unlabelled"). With a
  background class the layer stores the engine's labels as they are (0 =
  background, drawn transparent). Without one, class 0 is a real class, so the
  layer stores ``labels + 1`` and value 0 means "unlabelled" (transparent; it only
  appears where a user erases). ``metadata["itaclip"]["label_offset"]`` says which.
  Each class has a fixed colour (a ``DirectLabelColormap``), the same on every run.
- ``img heatmaps``: a :class:`napari.layers.Image` with the raw refined cosine
  similarity of every class, class axis first (``(C, *labels.shape)``), axis label
  ``"class"``; ``metadata["itaclip"]["class_names"]`` names the classes along it.

Both carry the source's scale and translate (and axis labels / units); a re-run
updates them in place and never changes a pixel the user edited in the Labels layer
(:mod:`~napari_itaclip.plugin.edits`). When a layer of the output name exists that
the plugin did not write in this session (loaded from a file, say), the outputs go to
new layers ``img labels [2]`` / ``img heatmaps [2]`` instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..planes import COMPOSITE, ImageLayout
from ..stack import StackResult

__all__ = [
    "MODEL_METADATA_KEY",
    "VOCAB_METADATA_KEY",
    "class_color",
    "current_slice",
    "find_layer",
    "heatmaps_name",
    "label_colormap",
    "label_features",
    "labels_name",
    "labels_writable_in_place",
    "layer_data",
    "layout_for_layer",
    "output_names",
    "resolve_slices",
    "suggested_model",
    "write_heatmaps",
    "write_labels",
    "write_layers",
]

#: Layer metadata key holding a suggested vocabulary (text form); sample data sets it.
VOCAB_METADATA_KEY = "itaclip_vocabulary"
#: layer metadata key of a suggested model (a catalogue short name, docs/models.md)
MODEL_METADATA_KEY = "itaclip_model"

#: Distinct, colour-blind-friendlier colours (Tableau 20 order, strong tones first).
_PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
    "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896",
    "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
]
_UNLABELLED = "(unlabelled)"


def labels_name(layer_name: str) -> str:
    """Name of the Labels layer written for a source layer."""
    return f"{layer_name} labels"


def heatmaps_name(layer_name: str) -> str:
    """Name of the heatmap Image layer written for a source layer."""
    return f"{layer_name} heatmaps"


def _hex_rgba(color: str) -> np.ndarray:
    color = color.lstrip("#")
    return np.array([int(color[i:i + 2], 16) / 255 for i in (0, 2, 4)] + [1.0], np.float32)


def class_color(value: int) -> np.ndarray:
    """RGBA colour of a (non-zero) layer value: fixed, so a class keeps its colour."""
    return _hex_rgba(_PALETTE[(int(value) - 1) % len(_PALETTE)])


def label_colormap(n_classes: int, has_background: bool,
                   values: Sequence[int] | None = None):
    """The Labels colormap: 0 transparent, each class value its palette colour.

    ``values``: the layer value of each class (default ``index + offset``).
    """
    from napari.utils.colormaps import DirectLabelColormap

    offset = 0 if has_background else 1
    values = [v for v in (values if values is not None
                          else range(offset, n_classes + offset)) if int(v) != 0]
    colors: dict[int | None, Any] = {None: np.array([0.5, 0.5, 0.5, 1.0], np.float32),
                                     0: np.zeros(4, np.float32)}
    for v in values:
        colors[v] = class_color(v)
    return DirectLabelColormap(color_dict=colors)


def label_features(class_names: Sequence[str], has_background: bool,
                   values: Sequence[int] | None = None):
    """The Labels layer's features: one row per layer value (see the module docstring).

    ``values``: the layer value of each class (default ``index + offset``), e.g. the
    painted value of an exemplar-only class.
    """
    import pandas as pd

    names = list(class_names)
    offset = 0 if has_background else 1
    index = list(values) if values is not None else [i + offset for i in range(len(names))]
    if has_background:
        return pd.DataFrame({"index": np.asarray(index, dtype=np.int64), "class_name": names,
                             "class_index": np.arange(len(names))})
    return pd.DataFrame({"index": np.asarray([0, *index], dtype=np.int64),
                         "class_name": [_UNLABELLED, *names],
                         "class_index": np.arange(-1, len(names))})


def suggested_model(layer):
    """The catalogue entry a layer suggests (``metadata["itaclip_model"]``), or None."""
    name = layer.metadata.get(MODEL_METADATA_KEY)
    if not name:
        return None
    from ..catalogue import find_entry

    return find_entry(str(name))


def layer_data(layer) -> Any:
    """The array behind an image layer (the full resolution of a multiscale layer)."""
    data = layer.data
    if getattr(layer, "multiscale", False):
        data = data[0]
    return data


def layout_for_layer(layer, channel_axis: int | None = None,
                     channel: int | str = COMPOSITE) -> ImageLayout:
    """The :class:`ImageLayout` of an image layer (colour axis from ``layer.rgb``)."""
    data = layer_data(layer)
    return ImageLayout(tuple(data.shape), rgb=bool(getattr(layer, "rgb", False)),
                       channel_axis=channel_axis,
                       channel=channel if channel_axis is not None else COMPOSITE)


def current_slice(layer, layout: ImageLayout, viewer) -> tuple[int, ...]:
    """The slice index of ``layer`` that ``viewer`` currently shows."""
    if not layout.leading_shape:
        return ()
    point = layer.world_to_data(viewer.dims.point)
    return layout.slice_from_point(point)


def _geometry(layer, layout: ImageLayout) -> dict[str, Any]:
    geo: dict[str, Any] = {"scale": layout.keep(layer.scale),
                           "translate": layout.keep(layer.translate)}
    labels = getattr(layer, "axis_labels", None)
    if labels is not None:
        geo["axis_labels"] = layout.keep(labels)
    units = getattr(layer, "units", None)
    if units is not None:
        geo["units"] = layout.keep(units)
    return geo


def find_layer(viewer, name: str | None, kind: type):
    """The layer called ``name`` in ``viewer`` if it is a ``kind``, else None."""
    if viewer is None or name not in viewer.layers:
        return None
    layer = viewer.layers[name]
    return layer if isinstance(layer, kind) else None


def _same_classes(layer, stack: StackResult) -> bool:
    meta = layer.metadata.get("itaclip", {})
    return (meta.get("class_names") == stack.class_names
            and meta.get("has_background") == stack.has_background)


def _writable(layer, shape: tuple[int, ...], dtype) -> bool:
    """Whether ``layer.data`` is a writable numpy array of this shape and dtype."""
    data = getattr(layer, "data", None)
    return (isinstance(data, np.ndarray) and tuple(data.shape) == tuple(shape)
            and data.dtype == dtype and data.flags.writeable)


def labels_writable_in_place(layer, stack: StackResult) -> bool:
    """Whether ``stack``'s label planes can be written into ``layer.data`` directly.

    True when the layer holds an int32 array of the output shape; when ``stack``
    does not cover every plane the layer must also hold the same classes (else the
    other planes' values would mean other classes).
    """
    covers_all = len(stack.results) == stack.layout.n_slices
    return (layer is not None and _writable(layer, stack.layout.out_shape, np.int32)
            and (covers_all or _same_classes(layer, stack)))


def output_names(viewer, source_name: str, shape=None) -> tuple[str, str]:
    """The names the next run writes for ``source_name``: labels and heatmaps.

    ``<image> labels`` and ``<image> heatmaps``, or with a suffix `` [2]``, `` [3]``, ...
    when a layer of that name is not one the plugin wrote in this session (see
    :func:`~napari_itaclip.plugin.edits.labels_target`).
    """
    from napari.layers import Labels

    from .edits import labels_target

    base = labels_name(source_name)
    layers = viewer.layers if viewer is not None else []
    _layer, name = labels_target(layers, base, Labels, shape)
    return name, heatmaps_name(source_name) + name[len(base):]


def write_labels(viewer, source, stack: StackResult, *, layer=None,
                 values: Sequence[int] | None = None):
    """Create or update (in place) the Labels layer of ``stack``'s planes; edits are kept.

    The layer is the one :func:`output_names` names (``layer`` if given and written by
    the plugin). Pixels the user edited keep their values (see
    :mod:`~napari_itaclip.plugin.edits`). Planes not in ``stack`` keep their current
    values when the existing layer has the right shape and the same classes, else they
    are 0 (their edits kept). ``values``: the layer value of each class (default
    ``index + offset``; exemplar-only classes keep their painted values).
    """
    from napari.layers import Labels

    from .edits import LabelsRecord, adopt, labels_target, record_of, value_lut

    layout = stack.layout
    if record_of(layer) is None:
        layer, name = labels_target(viewer.layers if viewer is not None else [],
                                    labels_name(source.name), Labels, layout.out_shape)
    else:
        name = layer.name
    record = record_of(layer)
    values = list(values) if values is not None else [
        i + stack.offset for i in range(len(stack.class_names))]
    lut = value_lut(values, stack.offset)
    meta = {"itaclip": {"source": source.name, "class_names": stack.class_names,
                        "has_background": stack.has_background,
                        "label_offset": stack.offset, "values": values}}
    features = label_features(stack.class_names, stack.has_background, values)
    cmap = label_colormap(len(stack.class_names), stack.has_background, values)
    geo = _geometry(source, layout)
    if labels_writable_in_place(layer, stack):
        record.lut = lut
        for idx in stack.results:
            record.write(layer.data, idx, record.to_layer(stack.label_plane(idx)))
        _set_props(layer, features, cmap, meta, geo)
        layer.refresh()
        return layer
    data = np.zeros(layout.out_shape, dtype=np.int32)
    new = LabelsRecord(tuple(layout.out_shape), source.name, lut=lut)
    if record is not None and tuple(layer.data.shape) == tuple(layout.out_shape):
        _carry_edits(layer.data, record, data, new)
    for idx in stack.results:
        new.write(data, idx, new.to_layer(stack.label_plane(idx)))
    if layer is None or layer.ndim != data.ndim or layer.data.shape != data.shape:
        if layer is not None and viewer is not None:
            viewer.layers.remove(layer)  # ours, and without edits (labels_target)
        layer = Labels(data, name=name, features=features, colormap=cmap, metadata=meta,
                       **geo)
        adopt(layer, source.name, new)
        if viewer is not None:
            viewer.add_layer(layer)
        return layer
    adopt(layer, source.name, new)  # before the data: its events see the new record
    layer.data = data
    _set_props(layer, features, cmap, meta, geo)
    return layer


def _carry_edits(old_data, record, data: np.ndarray, new) -> None:
    """Copy the edited pixels of ``old_data`` into ``data``; they stay edits in ``new``."""
    from .edits import compact

    for idx, mask in record.edited_planes(old_data):
        plane = np.asarray(old_data[idx])
        data[idx][mask] = plane[mask]
        new.planes[idx] = compact(np.where(mask, record.written(idx), 0))


def _set_props(layer, features, cmap, meta, geo) -> None:
    layer.features = features
    layer.colormap = cmap
    layer.metadata.update(meta)
    for key, value in geo.items():
        setattr(layer, key, value)


def write_heatmaps(viewer, source, stack: StackResult, *, layer=None,
                   name: str | None = None):
    """Create or update (in place) the heatmap Image layer (class axis first).

    ``name``: default ``<image> heatmaps``.
    """
    from napari.layers import Image

    layout = stack.layout
    names = stack.class_names
    shape = (len(names), *layout.out_shape)
    name = name or heatmaps_name(source.name)
    layer = layer if layer is not None else find_layer(viewer, name, Image)
    covers_all = len(stack.results) == layout.n_slices
    in_place = (layer is not None and _writable(layer, shape, np.float32)
                and (covers_all or _same_classes(layer, stack)))
    data = layer.data if in_place else np.zeros(shape, dtype=np.float32)
    # contrast range from the written planes only (no scan of the whole volume)
    lo, hi = np.inf, -np.inf
    for idx in stack.results:
        plane = stack.heatmap_plane(idx)
        data[(slice(None), *idx)] = plane
        lo, hi = min(lo, float(plane.min())), max(hi, float(plane.max()))
    if not covers_all:
        if in_place and _same_classes(layer, stack):
            # the planes kept from earlier runs lie within the layer's range
            old_lo, old_hi = layer.contrast_limits_range
            lo, hi = min(lo, float(old_lo)), max(hi, float(old_hi))
        else:  # planes never segmented are 0
            lo, hi = min(lo, 0.0), max(hi, 0.0)
    if not hi > lo:
        hi = lo + 1e-6
    geo = _geometry(source, layout)
    geo["scale"] = (1.0, *geo["scale"])
    geo["translate"] = (0.0, *geo["translate"])
    if "axis_labels" in geo:
        geo["axis_labels"] = ("class", *geo["axis_labels"])
    if "units" in geo:
        geo["units"] = ("pixel", *geo["units"])
    meta = {"itaclip": {"source": source.name, "class_names": names, "axis": "class",
                        "has_background": stack.has_background, "kind": "similarity"}}
    if layer is None or layer.ndim != data.ndim:
        if layer is not None and viewer is not None:
            viewer.layers.remove(layer)
        layer = Image(data, name=name, colormap="inferno",
                      contrast_limits=(lo, hi), metadata=meta, blending="translucent",
                      opacity=0.7, visible=True, **geo)
        if viewer is not None:
            viewer.add_layer(layer)
        return layer
    if not in_place:
        layer.data = data
    layer.contrast_limits_range = (lo, hi)
    layer.contrast_limits = (lo, hi)
    layer.metadata.update(meta)
    for key, value in geo.items():
        setattr(layer, key, value)
    if in_place:
        layer.refresh()
    return layer


def write_layers(viewer, source, stack: StackResult, values: Sequence[int] | None = None):
    """Write both output layers; the Labels layer ends up above the heatmaps.

    The user's edits in the Labels layer are kept (:func:`write_labels`); ``values``:
    the layer value of each class.
    """
    _labels_name, heat_name = output_names(viewer, source.name, stack.layout.out_shape)
    heat = write_heatmaps(viewer, source, stack, name=heat_name)
    labels = write_labels(viewer, source, stack, values=values)
    return labels, heat


def resolve_slices(layer, layout: ImageLayout, slices, viewer) -> list[tuple[int, ...]]:
    """Turn ``"all"``, ``"current"`` or explicit indices into a list of slice indices."""
    if isinstance(slices, str):
        if slices == "all":
            return layout.all_slices()
        if slices == "current":
            if viewer is None and layout.leading_shape:
                raise ValueError("slices='current' needs a viewer")
            return [current_slice(layer, layout, viewer)]
        raise ValueError(f"slices must be 'all', 'current' or a list of indices, got {slices!r}")
    out = []
    for idx in slices:
        idx = (idx,) if np.isscalar(idx) else tuple(idx)
        if len(idx) != len(layout.leading_shape) or any(
                not 0 <= int(i) < n for i, n in zip(idx, layout.leading_shape)):
            raise ValueError(f"slice index {idx} is outside the slice grid {layout.leading_shape}")
        out.append(tuple(int(i) for i in idx))
    return out
