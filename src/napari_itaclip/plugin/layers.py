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
new layers ``img labels [2]`` / ``img heatmaps [2]`` instead. The Labels layer holds
the smallest unsigned type that holds its values (uint8 below 256 classes).

Writing them is :mod:`~napari_itaclip.plugin.output_plan`'s job (a plan built off the
GUI thread, assigned in short steps); this module has the names, colours, tables and
geometry they are made of.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..planes import COMPOSITE, ImageLayout

__all__ = [
    "MODEL_METADATA_KEY",
    "VOCAB_METADATA_KEY",
    "class_color",
    "current_slice",
    "find_layer",
    "geometry_of",
    "heatmaps_name",
    "label_colormap",
    "label_features",
    "labels_name",
    "layer_data",
    "layout_for_layer",
    "prepare_first_labels_layer",
    "resolve_slices",
    "suggested_model",
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


def geometry_of(layer, layout: ImageLayout, factor=(1.0, 1.0)) -> dict[str, Any]:
    """The source layer's scale, translate, axis labels and units for its outputs.

    ``factor``: source pixels per output pixel along the last two axes (a pyramid level
    and the working resolution): the outputs' pixels are that much larger, centred on
    the block of source pixels they stand for.
    """
    scale, translate = list(layout.keep(layer.scale)), list(layout.keep(layer.translate))
    for k, f in zip((-2, -1), factor):
        translate[k] = float(translate[k]) + float(scale[k]) * (float(f) - 1.0) / 2.0
        scale[k] = float(scale[k]) * float(f)
    geo: dict[str, Any] = {"scale": tuple(scale), "translate": tuple(translate)}
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


_first_labels_prepared = False


def prepare_first_labels_layer() -> None:
    """Fill, in the calling thread (a run's worker), the process-wide cache that napari's
    first Labels layer of a session otherwise fills on the GUI thread while it is added:
    vispy's dash patterns for antialiased lines (napari draws the Labels polygon tool with
    them), 60 to 100 ms of numpy on the project machine (docs/benchmarks.md, "GUI
    responsiveness"). Once per process; a vispy without that module is left alone.
    """
    global _first_labels_prepared
    if _first_labels_prepared:
        return
    _first_labels_prepared = True
    try:
        from vispy.visuals.line.dash_atlas import DashAtlas
    except ImportError:
        return
    DashAtlas()  # its patterns are cached by vispy (lru_cache), the atlas is dropped
