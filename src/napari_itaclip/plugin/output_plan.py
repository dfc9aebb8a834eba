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
- :func:`apply_plan` (GUI thread) assigns the plan and nothing else. It is a generator:
  each ``next()`` does one short piece and says how heavy it was (:data:`HEAVY`: one
  napari call that adds, removes, shows or redraws a layer; :data:`LIGHT`: a band of at
  most :data:`BAND_BYTES` of a plane), so a driver can give the event loop a turn in
  between (the widget's :class:`~napari_itaclip.plugin.widget.apply.Applier`) while
  :func:`apply_now` (the console's ``segment_layer``) runs it at once.

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

import contextlib
import weakref
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..stack import StackResult
from .edits import LabelsRecord, adopt, labels_target, ours_for, record_of, reset_undo, value_lut
from .layers import geometry_of, heatmaps_name, label_colormap, label_features, labels_name
from .refs import LayerRef, unwrap

__all__ = ["BAND_BYTES", "HEAVY", "LIGHT", "OutputError", "OutputPlan", "Targets", "apply_now",
           "apply_plan", "build_plan", "heat_target", "labels_dtype_for", "plane_bands", "plan_targets",
           "write_layers"]

HEAVY = "heavy"
LIGHT = "light"
#: bytes of a plane written per light step (a few ms of copying)
BAND_BYTES = 8 * 2**20

_HEAT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # our heatmap layers -> source


def labels_dtype_for(top: int) -> np.dtype:
    """The smallest Labels dtype holding values 0..``top`` (uint8 below 256)."""
    for dtype in (np.uint8, np.uint16):
        if top <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int32)


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
    diverted: bool = False  # ``<image> labels`` is not ours: the labels go elsewhere


def plan_targets(viewer, source, layout) -> Targets:
    """The targets of a run of ``source`` with this layout (GUI thread; reads no pixels)."""
    from napari.layers import Image, Labels

    layers = list(viewer.layers) if viewer is not None else []
    ref, shape = LayerRef(source), tuple(layout.out_shape)
    t = Targets(ref, str(source.name), geometry_of(source, layout))
    labels = ours_for(layers, ref, Labels, shape) or ours_for(layers, ref, Labels)
    if labels is None or (tuple(labels.data.shape) != shape
                          and next(record_of(labels).edited_planes(labels.data), None)):
        labels, t.labels_name = labels_target(layers, labels_name(source.name), Labels, shape)
    else:
        t.labels_name = str(labels.name)
    base = labels_name(source.name)
    t.diverted = any(layer.name == base for layer in layers) and t.labels_name != base
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

    @property
    def heat_shape(self) -> tuple[int, ...]:
        """(classes, *output shape) of the heatmap layer."""
        return (len(self.stack.class_names), *self.stack.layout.out_shape)

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
               *, prebuild: bool = True) -> OutputPlan:
    """The output plan of ``stack`` for these targets (any thread; see the module docstring).

    ``values``: the layer value of each class (default ``index + offset``); ``prebuild``:
    create the napari layers that are new here (off the GUI thread).
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
    heat_geo = _heat_geometry(targets.geometry)
    plan = OutputPlan(
        targets, stack, values, dtype, planes, zero, heat_zero, clim,
        label_features(names, stack.has_background, values),
        label_colormap(len(names), stack.has_background, values), {"itaclip": meta},
        {"itaclip": {"source": targets.source_name, "class_names": names, "axis": "class",
                     "has_background": stack.has_background, "kind": "similarity"}},
        heat_geo, _counts(planes, values, names, offset, stack.has_background), lut)
    if prebuild and not plan.labels_in_place:
        plan.need_labels_data()
        if targets.labels is None or targets.labels_ndim != len(layout.out_shape):
            plan.new_labels = _labels_layer(plan)
    if prebuild and not plan.heat_in_place:
        plan.need_heat_data()
        if targets.heat is None or len(targets.heat_shape) != len(plan.heat_shape):
            plan.new_heat = _heat_layer(plan)
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
    if not covers_all:
        lo, hi = (min(lo, old[0]), max(hi, old[1])) if old else (min(lo, 0.0), max(hi, 0.0))
    return (lo, hi if hi > lo else lo + 1e-6)


def _heat_geometry(geo: dict[str, Any]) -> dict[str, Any]:
    out = {"scale": (1.0, *geo["scale"]), "translate": (0.0, *geo["translate"])}
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


def _labels_layer(plan: OutputPlan):
    """A hidden Labels layer of the new array (``features`` are set once it is added)."""
    from napari.layers import Labels

    plan.need_labels_data()
    return Labels(plan.labels_data, name=plan.targets.labels_name, colormap=plan.colormap,
                  metadata=plan.labels_meta, visible=False, **plan.targets.geometry)


def _new_heat(plan: OutputPlan) -> np.ndarray:
    """A whole heatmap array (class axis first) holding the run's planes (0 elsewhere)."""
    data = np.zeros(plan.heat_shape, dtype=np.float32)
    for idx in plan.stack.results:
        data[(slice(None), *idx)] = plan.stack.heatmap_plane(idx)
    return data


def _heat_layer(plan: OutputPlan):
    """A hidden heatmap Image layer of the new array."""
    from napari.layers import Image

    plan.need_heat_data()
    return Image(plan.heat_data, name=plan.targets.heat_name, colormap="inferno",
                 contrast_limits=plan.clim, metadata=plan.heat_meta, blending="translucent",
                 opacity=0.7, visible=False, **plan.heat_geometry)


# -- the GUI half ------------------------------------------------------------------------
class OutputError(RuntimeError):
    """The outputs could not be written (nothing was changed)."""


def apply_now(gen: Generator[str, None, Any]) -> Any:
    """Run an :func:`apply_plan` generator to its end at once; its return value."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def apply_plan(viewer, plan: OutputPlan) -> Generator[str, None, tuple[Any, Any]]:
    """Assign ``plan`` (GUI thread) in short pieces; returns ``(labels, heatmaps)`` layers.

    Raises :class:`OutputError` (after undoing what it did) when the source layer is
    gone or napari refuses a layer.
    """
    source = plan.targets.source.in_viewer(viewer) if viewer is not None else None
    if viewer is not None and source is None:
        raise OutputError(f"The layer '{plan.targets.source_name}' was removed during the "
                          "run; nothing was written.")
    if source is not None and str(source.name) != plan.targets.source_name:
        _follow_rename(viewer, plan, str(source.name))
    undo: list[Callable[[], None]] = []
    try:
        heat, heat_mode = yield from _place_heat(viewer, plan, undo)
        labels, labels_mode = yield from _place_labels(viewer, plan, undo)
    except Exception as exc:
        for restore in reversed(undo):
            with contextlib.suppress(Exception):
                restore()
        raise OutputError(f"napari refused the output layers ({type(exc).__name__}: "
                          f"{exc}); nothing was written.") from exc
    if labels_mode == IN_PLACE:
        yield from _write_labels(plan, labels)
    if heat_mode == IN_PLACE:
        yield from _write_heat(plan, heat)
    yield from _show(viewer, plan, labels, labels_mode, heat, heat_mode)
    return labels, heat


def _follow_rename(viewer, plan: OutputPlan, name: str) -> None:
    """The source layer was renamed during the run: new outputs take its new name."""
    from napari.layers import Labels

    t = plan.targets
    t.source_name = name
    for meta in (plan.labels_meta, plan.heat_meta):
        meta["itaclip"]["source"] = name
    if t.labels is None:
        _layer, t.labels_name = labels_target(viewer.layers, labels_name(name), Labels,
                                              plan.stack.layout.out_shape)
    if t.heat is None:
        suffix = t.labels_name[len(labels_name(name)):]
        _layer, t.heat_name = heat_target(viewer.layers, heatmaps_name(name) + (
            suffix if suffix.startswith(" [") else ""))
    for layer in (plan.new_labels, plan.new_heat):
        if layer is not None:
            layer.metadata = {**layer.metadata, "itaclip": {
                **layer.metadata.get("itaclip", {}), "source": name}}


#: how an output layer is written: its data in place (bands), a new array assigned to
#: the same layer, or a new layer
IN_PLACE, SWAP, NEW = "in place", "swap", "new"


def _free_name(viewer, name: str) -> str:
    taken = {layer.name for layer in viewer.layers} if viewer is not None else set()
    base, k = name, 2
    while name in taken:
        name, k = f"{base} [{k}]", k + 1
    return name


def _place_labels(viewer, plan: OutputPlan, undo: list):
    """Phase 1 for the Labels layer: properties of ours (its data swapped when its shape
    or dtype must change), or a new layer added.
    """
    t = plan.targets
    layer = t.labels.in_viewer(viewer) if t.labels is not None and viewer is not None else None
    record = record_of(layer)
    mode = None
    if record is not None and _same_ndim(layer, plan.stack.layout.out_shape):
        if plan.labels_in_place and _writable(layer, plan):
            mode = IN_PLACE
        elif tuple(layer.data.shape) == tuple(plan.stack.layout.out_shape):
            mode = IN_PLACE  # same shape, another dtype or array type: widen, keep edits
            old_data = layer.data
            undo.append(lambda: setattr(layer, "data", old_data))
            yield from _heavy(lambda: setattr(layer, "data", _widened(old_data, plan.dtype)))
        elif _unedited_ours(layer):
            mode = SWAP
            plan.need_labels_data()
            old_data, old_record = layer.data, record
            undo.append(lambda: (setattr(layer, "data", old_data), adopt(layer, t.source,
                                                                          old_record)))
            yield from _heavy(lambda: (adopt(layer, t.source, plan.new_record),
                                       setattr(layer, "data", plan.labels_data)))
    if mode is not None:
        old = (layer.features, layer.colormap, dict(layer.metadata),
               {k: getattr(layer, k) for k in t.geometry})
        undo.append(lambda: _set_labels(layer, *old))
        yield from _heavy(lambda: _set_labels(
            layer, plan.features, plan.colormap, {**layer.metadata, **plan.labels_meta},
            t.geometry))
        record = record_of(layer)
        record.lut, record.source = plan.lut, t.source
        record.touch()
        return layer, mode
    if plan.new_labels is None:  # the planned target went away or changed during the run
        yield HEAVY
        plan.new_labels = _labels_layer(plan)
    new = plan.new_labels
    if viewer is not None:
        new.name = _free_name(viewer, t.labels_name)
        yield from _heavy(lambda: viewer.add_layer(new))
        undo.append(lambda: viewer.layers.remove(new))
    new.features = plan.features  # after adding: napari 0.9 fails adding it in 3D
    adopt(new, t.source, plan.new_record)
    yield LIGHT
    return new, NEW


def _same_ndim(layer, shape) -> bool:
    return getattr(getattr(layer, "data", None), "ndim", -1) == len(shape)


def _widened(data, dtype) -> np.ndarray:
    """The layer's values (edits and other planes included) as a writable ``dtype`` array."""
    return np.asarray(data).astype(np.promote_types(np.asarray(data).dtype, dtype))


def _writable(layer, plan: OutputPlan) -> bool:
    data = getattr(layer, "data", None)
    return (record_of(layer) is not None and isinstance(data, np.ndarray)
            and data.flags.writeable and tuple(data.shape) == tuple(plan.stack.layout.out_shape)
            and _holds(data.dtype, max([0, *plan.values])))


def _set_labels(layer, features, colormap, metadata, geometry) -> None:
    """Set what differs (a changed colormap or geometry makes napari redraw)."""
    layer.features = features
    if not _same_colormap(layer.colormap, colormap):
        layer.colormap = colormap
    layer.metadata = metadata
    _set_geometry(layer, geometry)


def _set_geometry(layer, geometry: dict) -> None:
    for key, value in geometry.items():
        if tuple(getattr(layer, key)) != tuple(value):
            setattr(layer, key, value)


def _same_colormap(a, b) -> bool:
    da, db = getattr(a, "color_dict", None), getattr(b, "color_dict", None)
    if da is None or db is None or set(da) != set(db):
        return False
    return all(np.allclose(np.asarray(da[k], float), np.asarray(db[k], float)) for k in da)


def _heavy(call: Callable[[], Any]):
    """One heavy napari call with a turn of its own (see :class:`~.widget.apply.Applier`)."""
    yield HEAVY
    call()
    yield HEAVY


def _place_heat(viewer, plan: OutputPlan, undo: list):
    """Phase 1 for the heatmaps: ours (in place, or its data swapped), or a new layer."""
    t = plan.targets
    layer = t.heat.in_viewer(viewer) if t.heat is not None and viewer is not None else None
    if layer is not None and _same_ndim(layer, plan.heat_shape):
        data = layer.data
        mode = SWAP
        if (isinstance(data, np.ndarray) and data.flags.writeable
                and data.dtype == np.float32 and tuple(data.shape) == plan.heat_shape):
            mode = IN_PLACE
        old = dict(layer.metadata), {k: getattr(layer, k) for k in plan.heat_geometry}, data
        undo.append(lambda: (setattr(layer, "metadata", old[0]), _set_geometry(layer, old[1]),
                             setattr(layer, "data", old[2])))
        if mode == SWAP:
            if plan.heat_data is None:
                yield HEAVY
                plan.need_heat_data()
            yield from _heavy(lambda: setattr(layer, "data", plan.heat_data))
        layer.metadata = {**layer.metadata, **plan.heat_meta}
        _set_geometry(layer, plan.heat_geometry)
        yield LIGHT
        return layer, mode
    if plan.new_heat is None:
        yield HEAVY
        plan.new_heat = _heat_layer(plan)
    new = plan.new_heat
    if viewer is not None:
        new.name = _free_name(viewer, t.heat_name)
        yield from _heavy(lambda: viewer.add_layer(new))
        undo.append(lambda: viewer.layers.remove(new))
    _HEAT[unwrap(new)] = t.source
    return new, NEW


def plane_bands(shape: tuple[int, ...], itemsize: int) -> list[slice]:
    """Row bands of a ``(..., H, W)`` plane, each at most :data:`BAND_BYTES`."""
    h = shape[-2]
    row_bytes = max(int(np.prod(shape[:-2], dtype=np.int64)) * shape[-1] * itemsize, 1)
    step = max(1, BAND_BYTES // row_bytes)
    return [slice(r, min(r + step, h)) for r in range(0, h, step)]


def _write_labels(plan: OutputPlan, layer):
    """Phase 2: the model's values into the Labels layer, edits kept, band by band."""
    record = record_of(layer)
    data = layer.data
    if not _holds(data.dtype, max([0, *plan.values])):  # pragma: no cover - _writable
        raise OutputError("internal: the Labels layer cannot hold the values")
    zeros = np.zeros(data.shape[-2:], data.dtype)
    work = [*plan.label_planes.items(), *((idx, zeros) for idx in plan.zero_planes)]
    for idx, values in work:
        for rows in plane_bands(values.shape, data.itemsize * 3):
            record.write_band(data, idx, rows, values[rows])
            yield LIGHT


def _write_heat(plan: OutputPlan, layer):
    """Phase 2: the similarity planes into the heatmap layer, band by band."""
    data = layer.data
    stack = plan.stack
    for idx in [*stack.results, *plan.heat_zero_planes]:
        plane = stack.heatmap_plane(idx) if idx in stack.results else None
        for rows in plane_bands(data.shape[:1] + data.shape[-2:], 4):
            data[(slice(None), *idx, rows)] = 0.0 if plane is None else plane[:, rows]
            yield LIGHT


def _show(viewer, plan: OutputPlan, labels, labels_mode: str, heat, heat_mode: str):
    """Phase 3: replace, name, order, show and redraw (the data is complete by now)."""
    t = plan.targets
    if heat_mode != NEW:
        yield from _heavy(lambda: _redraw_heat(heat, plan.clim))
    if viewer is not None:
        if heat_mode == NEW:
            yield from _replace(viewer, t.heat, heat, lambda old: unwrap(old) in _HEAT)
        if labels_mode == NEW:
            yield from _replace(viewer, t.labels, labels, _unedited_ours)
        _rename(viewer, labels, t.labels_name)
        _rename(viewer, heat, t.heat_name)
        if heat_mode == NEW and labels_mode != NEW:
            _below(viewer, heat, labels)
    if labels_mode == NEW:
        yield from _heavy(lambda: setattr(labels, "visible", True))
    else:
        reset_undo(labels)
        yield from _heavy(labels.refresh)
    if heat_mode == NEW:
        yield from _heavy(lambda: setattr(heat, "visible", True))


def _redraw_heat(layer, clim: tuple[float, float]) -> None:
    layer.contrast_limits_range = clim
    layer.contrast_limits = clim
    layer.refresh()


def _unedited_ours(layer) -> bool:
    record = record_of(layer)
    return record is not None and next(record.edited_planes(layer.data), None) is None


def _replace(viewer, target: LayerRef | None, new, may_remove):
    """Remove the layer ``new`` replaces, when ``may_remove`` says it is ours and holds
    nothing of the user's.
    """
    old = target.in_viewer(viewer) if target is not None else None
    if old is not None and not _is(old, new) and may_remove(old):
        yield from _heavy(lambda: viewer.layers.remove(old))


def _rename(viewer, layer, name: str) -> None:
    """Give ``layer`` its planned name when that name is free (it may be taken now)."""
    if layer.name != name and name not in viewer.layers:
        layer.name = name


def _is(a, b) -> bool:
    return unwrap(a) is unwrap(b)


def _below(viewer, layer, anchor) -> None:
    """Move ``layer`` just below ``anchor`` in the layer list."""
    layers = list(viewer.layers)
    i = next((k for k, x in enumerate(layers) if _is(x, layer)), None)
    j = next((k for k, x in enumerate(layers) if _is(x, anchor)), None)
    if i is not None and j is not None and i > j:
        viewer.layers.move(i, j)


def write_layers(viewer, source, stack: StackResult, values: Sequence[int] | None = None):
    """Write both output layers at once (the console's ``segment_layer``); the user's
    edits in the Labels layer are kept. Returns ``(labels, heatmaps)``; without a viewer
    the layers are made and returned without being added anywhere.
    """
    targets = plan_targets(viewer, source, stack.layout)
    return apply_now(apply_plan(viewer, build_plan(stack, targets, values)))
