"""The output plan of a run: built in the worker, assigned on the GUI thread in short turns.

A run reaches napari in two halves:

- :func:`build_plan` (any thread: the widget's worker) turns a
  :class:`~napari_itaclip.stack.StackResult` into an :class:`OutputPlan`: the label
  values of every plane, already in the layer's dtype (the smallest that holds them,
  :func:`labels_dtype_for`), the heatmap planes and their contrast range, the
  ``features`` table, colours, names, geometry and metadata, the pixel counts of the
  status line and, when a layer must be created, the (hidden) napari layer itself with
  its data and the record of what the model owns (:mod:`.edits`). pandas and the layer
  constructors run here, not on the GUI thread.
- :func:`~napari_itaclip.plugin.assign.apply_plan` (GUI thread) assigns the plan and
  nothing else. It is a generator:
  each ``next()`` does one short piece and says how heavy it was (:data:`HEAVY`: one
  napari call that adds, removes, shows or redraws a layer; :data:`LIGHT`: a band of at
  most :data:`BAND_BYTES` of a plane), so a driver can give the event loop a turn in
  between (the widget's :class:`~napari_itaclip.plugin.widget.apply.Applier`) while
  :func:`~napari_itaclip.plugin.assign.apply_now` (the console's ``segment_layer``)
  runs it at once.

Which layers a run writes is decided on the GUI thread when it starts
(:func:`plan_targets`, cheap): the Labels layer the plugin wrote last for this image
(found through the records, whatever the layers are called now), else the first of
``<image> labels``, ``<image> labels [2]``, ... that is free or ours
(:func:`~napari_itaclip.plugin.edits.labels_target`); the same for the heatmaps. The
apply step checks again and adapts when the user removed, renamed or replaced a layer
during the run.

All or none: the steps that can fail (adding layers, setting ``features`` / colours /
metadata) come first and are undone if one of them raises; then the data is written
in place (numpy, which does not fail); then the layers are shown and redrawn. napari
0.9 raises when a Labels layer is *added* with ``features`` while the viewer is in 3D,
so ``features`` are set after the layer is added.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..stack import StackResult
from .edits import LabelsRecord, exemplar_values, labels_target, ours_for, record_of, value_lut
from .layers import geometry_of, heatmaps_name, label_colormap, label_features, labels_name
from .refs import LayerRef, unwrap

__all__ = ["HEAT_DRAW_PX", "HEAVY", "LIGHT", "EmptyStack", "OutputPlan", "Targets", "build_plan",
           "class_values", "heat_draw_step", "heat_layer", "heat_target", "holds",
           "labels_dtype_for", "labels_layer", "our_heatmaps", "plan_targets",
           "remember_heatmaps"]

HEAVY = "heavy"
LIGHT = "light"

#: the widget keeps every n-th pixel of heatmap planes larger than this (n = the
#: smallest that brings them under it): napari's first draw of a 3 x H x W float32
#: heatmap layer under software OpenGL took 174 ms at 6000², 318 ms at 8000² and
#: 422 ms at 10000² (docs/benchmarks.md, "GUI responsiveness")
HEAT_DRAW_PX = 6144 * 6144


def heat_draw_step(shape: Sequence[int]) -> int:
    """Every how many pixels the widget keeps of heatmap planes of ``(..., H, W)``."""
    h, w = int(shape[-2]), int(shape[-1])
    return max(1, math.ceil(math.sqrt(h * w / HEAT_DRAW_PX)))

_HEAT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # our heatmap layers -> source


def class_values(stack, n_text: int, known=None, preferred=None) -> list[int] | None:
    """The layer value of each class of ``stack`` (None: the default ``index + offset``).

    Exemplar-only classes (after the ``n_text`` text classes) keep a value the user
    painted them with (``preferred`` ``{name: value}``, else the value ``known``, the
    target Labels layer's features ``{name: value}``, gives the name;
    :func:`~napari_itaclip.plugin.edits.exemplar_values`).
    """
    names = stack.class_names
    if len(names) <= n_text:
        return None
    return exemplar_values(names, n_text, stack.offset, preferred, dict(known or {}))


def labels_dtype_for(top: int) -> np.dtype:
    """The smallest Labels dtype holding values 0..``top`` (uint8 below 256)."""
    for dtype in (np.uint8, np.uint16):
        if top <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int32)


def remember_heatmaps(layer, source: LayerRef) -> None:
    """Record ``layer`` as the plugin's heatmaps of ``source`` (for :func:`heat_target`)."""
    _HEAT[unwrap(layer)] = source


def our_heatmaps(layer) -> bool:
    """Whether the plugin wrote ``layer`` as heatmaps in this session."""
    return unwrap(layer) in _HEAT


def holds(dtype, top: int) -> bool:
    """Whether an array of ``dtype`` holds label values 0..``top``."""
    return _holds(dtype, top)


def _holds(dtype, top: int) -> bool:
    dtype = np.dtype(dtype)
    return dtype.kind in "ui" and top <= np.iinfo(dtype).max


def heat_target(layers, base: str, source: LayerRef | None = None) -> tuple[Any, str]:
    """The heatmap layer to write for ``base`` and its name: ours for ``source`` (any
    name), else the first of ``base``, ``base [2]``, ... that is free or ours; a layer the
    plugin did not write is never overwritten.
    """
    layers = list(layers)
    if source is not None:
        for layer in layers:
            if _HEAT.get(unwrap(layer)) == source:
                return layer, str(layer.name)
    names = {layer.name: layer for layer in layers}
    k = 1
    while True:
        name = base if k == 1 else f"{base} [{k}]"
        layer = names.get(name)
        if layer is None or unwrap(layer) in _HEAT:
            return layer, name
        k += 1


@dataclass
class Targets:
    """Which layers a run writes, read on the GUI thread when it starts."""

    source: LayerRef
    source_name: str
    geometry: dict[str, Any]
    labels: LayerRef | None = None  # ours: updated in place, or replaced (``replace``)
    labels_name: str = ""
    replace: bool = False  # the labels target has another shape (and no edits)
    labels_dtype: Any = None
    labels_ndim: int = 0
    labels_meta: dict = field(default_factory=dict)
    feature_values: dict[str, int] = field(default_factory=dict)
    heat: LayerRef | None = None
    heat_name: str = ""
    heat_shape: tuple[int, ...] | None = None
    heat_meta: dict = field(default_factory=dict)
    heat_range: tuple[float, float] | None = None
    diverted: bool = False  # ``<image> labels`` is left as is: the labels go elsewhere
    diverted_why: str = ""  # why, in words (after "the layer '<image> labels' ")
    source_data: Any = None  # the source's data object when the run started


def plan_targets(viewer, source, layout, geometry: dict | None = None) -> Targets:
    """The targets of a run of ``source`` whose outputs have ``layout.out_shape`` (GUI
    thread; reads no pixels). ``geometry``: the outputs' (default: the source's).
    """
    from napari.layers import Image, Labels

    layers = list(viewer.layers) if viewer is not None else []
    ref, shape = LayerRef(source), tuple(layout.out_shape)
    t = Targets(ref, str(source.name),
                geometry if geometry is not None else geometry_of(source, layout),
                source_data=unwrap(getattr(source, "data", None)))
    labels = ours_for(layers, ref, Labels, shape) or ours_for(layers, ref, Labels)
    if labels is None or (tuple(labels.data.shape) != shape
                          and next(record_of(labels).edited_planes(labels.data), None)):
        labels, t.labels_name = labels_target(layers, labels_name(source.name), Labels, shape)
    else:
        t.labels_name = str(labels.name)
    base = labels_name(source.name)
    t.diverted = any(layer.name == base for layer in layers) and t.labels_name != base
    if t.diverted:
        t.diverted_why = _why_left(next(layer for layer in layers if layer.name == base),
                                   Labels, shape)
    if labels is not None:
        t.labels = LayerRef(labels)
        t.replace = tuple(labels.data.shape) != shape or not isinstance(labels.data, np.ndarray)
        t.labels_dtype = np.dtype(labels.data.dtype)
        t.labels_ndim = int(labels.data.ndim)
        t.labels_meta = dict(labels.metadata.get("itaclip", {}))
        feats = getattr(labels, "features", None)
        if feats is not None and "class_name" in feats:
            t.feature_values = {str(n): int(v) for n, v in zip(feats["class_name"], feats["index"])}
    suffix = t.labels_name[len(labels_name(source.name)):]
    if not suffix.startswith(" ["):
        suffix = ""
    wanted = heatmaps_name(source.name) + suffix
    heat, t.heat_name = heat_target(layers, wanted, ref)
    if heat is not None and t.heat_name.startswith(heatmaps_name(source.name)):
        t.heat_name = wanted  # ours under an automatic name: follow the labels' suffix
    if isinstance(heat, Image):
        t.heat, t.heat_shape = LayerRef(heat), tuple(heat.data.shape)
        t.heat_meta = dict(heat.metadata.get("itaclip", {}))
        t.heat_range = tuple(float(v) for v in heat.contrast_limits_range)
    return t


def _why_left(layer, kind: type, shape: tuple[int, ...]) -> str:
    """Why the layer named ``<image> labels`` is not written (see ``labels_target``)."""
    record = record_of(layer) if isinstance(layer, kind) else None
    if record is None:
        return ("was not written by this session's plugin (loaded from a file?), "
                "so it was left as is")
    shape_text = " × ".join(str(n) for n in layer.data.shape)
    return (f"holds your edits and is {shape_text}, not the run's "
            f"{' × '.join(str(n) for n in shape)}, so it was left as is")


@dataclass
class EmptyStack:
    """A run's classes before any plane is done (a tiled run's empty layers): what
    :func:`build_plan` reads of a :class:`~napari_itaclip.stack.StackResult`.
    """

    layout: Any
    class_names: list[str]
    has_background: bool
    results: dict = field(default_factory=dict)

    @property
    def offset(self) -> int:
        """What is added to the engine's labels in the layer (1 without background)."""
        return 0 if self.has_background else 1


@dataclass
class OutputPlan:
    """Everything a run writes into napari (see the module docstring)."""

    targets: Targets
    stack: StackResult
    values: list[int]
    dtype: np.dtype
    label_planes: dict[tuple[int, ...], np.ndarray]
    zero_planes: list[tuple[int, ...]]
    heat_zero_planes: list[tuple[int, ...]]
    clim: tuple[float, float]
    features: Any
    colormap: Any
    labels_meta: dict
    heat_meta: dict
    heat_geometry: dict
    counts: dict[str, int]
    lut: np.ndarray | None = None
    labels_data: np.ndarray | None = None  # a whole new Labels array and its record,
    new_record: LabelsRecord | None = None  # when the target is new or replaced
    new_labels: Any = None  # the hidden Labels layer holding it, when none can take it
    heat_data: np.ndarray | None = None  # a whole new heatmap array ...
    new_heat: Any = None  # ... and its hidden layer
    heat_step: int = 1  # heatmaps keep every heat_step-th pixel (large runs)
    heat_held: bool = False  # the new heatmaps were left hidden (3D view: class_axis_shown)

    @property
    def heat_shape(self) -> tuple[int, ...]:
        """(classes, *output shape) of the heatmap layer (every ``heat_step``-th pixel)."""
        *lead, h, w = self.stack.layout.out_shape
        s = self.heat_step
        return (len(self.stack.class_names), *lead, -(-h // s), -(-w // s))

    @property
    def held_text(self) -> str:
        """What the status line adds when the heatmaps were left hidden in the 3D view."""
        return (". The heatmaps stay hidden in the 3D view (their class axis would be its "
                "depth); they appear in 2D" if self.heat_held else "")

    @property
    def heat_in_place(self) -> bool:
        """Whether the planned heatmap target can be written in place."""
        return self.targets.heat is not None and self.targets.heat_shape == self.heat_shape

    @property
    def labels_in_place(self) -> bool:
        """Whether the planned Labels target is updated in place (not replaced)."""
        return self.targets.labels is not None and not self.targets.replace

    def need_labels_data(self) -> None:
        """Build the whole new Labels array and its record (if not built yet)."""
        if self.labels_data is None:
            self.labels_data, self.new_record = _new_labels(self)

    def need_heat_data(self) -> None:
        """Build the whole new heatmap array (if not built yet)."""
        if self.heat_data is None:
            self.heat_data = _new_heat(self)


def build_plan(stack: StackResult, targets: Targets, values: Sequence[int] | None = None,
               *, prebuild: bool = True, heat_step: int = 1) -> OutputPlan:
    """The output plan of ``stack`` for these targets (any thread; see the module docstring).

    ``values``: the layer value of each class (default ``index + offset``); ``prebuild``:
    create the napari layers that are new here (off the GUI thread); ``heat_step``: the
    heatmaps keep every ``heat_step``-th row and column (a large tiled run; their layer
    scale says so). ``stack`` may hold no plane yet (a tiled run's empty layers).
    """
    layout, offset = stack.layout, stack.offset
    names = stack.class_names
    values = [int(v) for v in values] if values is not None else [
        i + offset for i in range(len(names))]
    lut = value_lut(values, offset)
    top = max([0, *values])
    dtype = labels_dtype_for(top)
    if targets.labels is not None and not targets.replace and _holds(targets.labels_dtype, top):
        dtype = np.dtype(targets.labels_dtype)
    planes = {idx: _layer_values(stack.label_plane(idx), lut, dtype) for idx in stack.results}
    same = _same_classes(targets.labels_meta, stack)
    covers_all = len(stack.results) == layout.n_slices
    others = [idx for idx in layout.all_slices() if idx not in stack.results]
    zero = [] if covers_all or same or targets.labels is None else others
    heat_same = _same_classes(targets.heat_meta, stack)
    heat_zero = [] if covers_all or heat_same or targets.heat is None else others
    clim = _heat_range(stack, covers_all, targets.heat_range if heat_same else None)
    meta = {"source": targets.source_name, "class_names": names,
            "has_background": stack.has_background, "label_offset": offset, "values": values}
    heat_geo = _heat_geometry(targets.geometry, heat_step)
    plan = OutputPlan(
        targets, stack, values, dtype, planes, zero, heat_zero, clim,
        label_features(names, stack.has_background, values),
        label_colormap(len(names), stack.has_background, values), {"itaclip": meta},
        {"itaclip": {"source": targets.source_name, "class_names": names, "axis": "class",
                     "has_background": stack.has_background, "kind": "similarity"}},
        heat_geo, _counts(planes, values, names, offset, stack.has_background), lut,
        heat_step=heat_step)
    if prebuild and not plan.labels_in_place:
        plan.need_labels_data()
        if targets.labels is None or targets.labels_ndim != len(layout.out_shape):
            plan.new_labels = labels_layer(plan)
    if prebuild and not plan.heat_in_place:
        plan.need_heat_data()
        if targets.heat is None or len(targets.heat_shape) != len(plan.heat_shape):
            plan.new_heat = heat_layer(plan)
    return plan


def _layer_values(labels: np.ndarray, lut: np.ndarray | None, dtype) -> np.ndarray:
    if lut is not None:
        if labels.size and int(labels.max()) >= len(lut):
            lut = np.concatenate([lut, np.arange(len(lut), int(labels.max()) + 1)])
        labels = lut[labels]
    return labels.astype(dtype, copy=False)


def _same_classes(meta: dict, stack: StackResult) -> bool:
    return (meta.get("class_names") == stack.class_names
            and meta.get("has_background") == stack.has_background)


def _heat_range(stack: StackResult, covers_all: bool, old: tuple[float, float] | None):
    """Contrast range from the written planes (no scan of the rest of the volume)."""
    lo, hi = np.inf, -np.inf
    for idx in stack.results:
        plane = stack.heatmap_plane(idx)
        lo, hi = min(lo, float(plane.min())), max(hi, float(plane.max()))
    if not stack.results:  # a tiled run's empty layers: the tiles widen the range
        return old if old else (0.0, 1.0)
    if not covers_all:
        lo, hi = (min(lo, old[0]), max(hi, old[1])) if old else (min(lo, 0.0), max(hi, 0.0))
    return (lo, hi if hi > lo else lo + 1e-6)


def _heat_geometry(geo: dict[str, Any], step: int = 1) -> dict[str, Any]:
    scale = (*geo["scale"][:-2], *(float(v) * step for v in geo["scale"][-2:]))
    out = {"scale": (1.0, *scale), "translate": (0.0, *geo["translate"])}
    if "axis_labels" in geo:
        out["axis_labels"] = ("class", *geo["axis_labels"])
    if "units" in geo:
        out["units"] = ("pixel", *geo["units"])
    return out


def _counts(planes, values, names, offset: int, has_background: bool) -> dict[str, int]:
    """Pixels per class (as the model labelled them) over the run's planes."""
    n = max([0, *values]) + 1
    hist = np.zeros(n, np.int64)
    for plane in planes.values():
        hist += np.bincount(plane.ravel(), minlength=n)[:n]
    return {name: int(hist[v]) for name, v in zip(names, values) if v != 0 or has_background}


def _new_labels(plan: OutputPlan) -> tuple[np.ndarray, LabelsRecord]:
    """A whole Labels array holding the run's planes (0 elsewhere), and its record."""
    layout = plan.stack.layout
    data = np.zeros(layout.out_shape, dtype=plan.dtype)
    record = LabelsRecord(tuple(layout.out_shape), plan.targets.source, lut=plan.lut)
    for idx, values in plan.label_planes.items():
        data[idx] = values
        record.planes[idx] = values.copy()
    return data, record


def labels_layer(plan: OutputPlan):
    """A hidden Labels layer of the new array (``features`` are set once it is added)."""
    from napari.layers import Labels

    plan.need_labels_data()
    return Labels(plan.labels_data, name=plan.targets.labels_name, colormap=plan.colormap,
                  metadata=plan.labels_meta, visible=False, **plan.targets.geometry)


def _new_heat(plan: OutputPlan) -> np.ndarray:
    """A whole heatmap array (class axis first) holding the run's planes (0 elsewhere)."""
    data = np.zeros(plan.heat_shape, dtype=np.float32)
    s = plan.heat_step
    for idx in plan.stack.results:
        data[(slice(None), *idx)] = plan.stack.heatmap_plane(idx)[:, ::s, ::s]
    return data


def heat_layer(plan: OutputPlan):
    """A hidden heatmap Image layer of the new array."""
    from napari.layers import Image

    plan.need_heat_data()
    return Image(plan.heat_data, name=plan.targets.heat_name, colormap="inferno",
                 contrast_limits=plan.clim, metadata=plan.heat_meta, blending="translucent",
                 opacity=0.7, visible=False, **plan.heat_geometry)
