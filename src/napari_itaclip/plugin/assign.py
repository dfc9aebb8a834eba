"""Assigning an output plan to napari on the GUI thread, in short steps, all or none.

:func:`apply_plan` is the GUI half of :mod:`.output_plan`: a generator whose every
``next()`` does one short piece (see :data:`~.output_plan.HEAVY` / ``LIGHT``). The steps
that can fail come first and are undone if one of them raises (adding layers, setting
``features``, colours, metadata; ``features`` only once a layer is added: napari 0.9
fails adding a Labels layer with ``features`` in the 3D view); then the data is written
in place, in row bands of at most :data:`BAND_BYTES` (numpy, which does not fail); then
the layers are shown and redrawn.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Sequence
from typing import Any

import numpy as np

from ..stack import StackResult
from .edits import adopt, labels_target, record_of, reset_undo
from .layers import heatmaps_name, labels_name
from .output_plan import (
    HEAVY,
    LIGHT,
    OutputPlan,
    build_plan,
    heat_layer,
    heat_target,
    holds,
    labels_layer,
    our_heatmaps,
    plan_targets,
    remember_heatmaps,
)
from .refs import LayerRef, unwrap
from .view3d import fill_view_direction

__all__ = ["BAND_BYTES", "OutputError", "apply_now", "apply_plan", "class_axis_shown",
           "plane_bands", "write_layers", "write_tile"]

#: bytes of a plane written per light step (a few ms of copying)
BAND_BYTES = 8 * 2**20


class OutputError(RuntimeError):
    """The outputs could not be written (nothing was changed)."""


def apply_now(gen: Generator[str, None, Any]) -> Any:
    """Run an :func:`apply_plan` generator to its end at once; its return value."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def apply_plan(viewer, plan: OutputPlan, *, hold_in_3d: bool = False,
               ) -> Generator[str, None, tuple[Any, Any]]:
    """Assign ``plan`` (GUI thread) in short pieces; returns ``(labels, heatmaps)`` layers.

    With ``hold_in_3d`` (the widget, which shows them when the view is 2D again), new
    heatmaps whose class axis the viewer displays stay hidden (:func:`class_axis_shown`;
    ``plan.heat_held`` says so).

    Raises :class:`OutputError` (after undoing what it did) when the source layer is
    gone or napari refuses a layer.
    """
    source = plan.targets.source.in_viewer(viewer) if viewer is not None else None
    if viewer is not None and source is None:
        raise OutputError(f"The layer '{plan.targets.source_name}' was removed during the "
                          "run; nothing was written.")
    if (source is not None and plan.targets.source_data is not None
            and unwrap(source.data) is not plan.targets.source_data):
        raise OutputError(f"The data of the layer '{source.name}' was replaced during the "
                          "run; nothing was written (Run again to segment the new data).")
    if source is not None and str(source.name) != plan.targets.source_name:
        _follow_rename(viewer, plan, str(source.name))
    if viewer is not None:
        fill_view_direction(viewer)  # napari 0.9's status bar in 3D (view3d.py)
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
    yield from _show(viewer, plan, labels, labels_mode, heat, heat_mode, hold_in_3d)
    if viewer is not None:
        fill_view_direction(viewer)  # again: new heatmaps may add the class axis
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
        plan.new_labels = labels_layer(plan)
    new = plan.new_labels
    if viewer is not None:
        new.name = _free_name(viewer, t.labels_name)
        if getattr(viewer.dims, "ndisplay", 2) == 3:  # shown before it is added: napari 0.5
            # keeps the 2D slice of a Labels layer added hidden in 3D, and its thumbnail
            # (drawn when the layer controls set the opacity) then fails
            yield from _heavy(lambda: setattr(new, "visible", True))
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
            and holds(data.dtype, max([0, *plan.values])))


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
        plan.new_heat = heat_layer(plan)
    new = plan.new_heat
    if viewer is not None:
        new.name = _free_name(viewer, t.heat_name)
        yield from _heavy(lambda: viewer.add_layer(new))
        undo.append(lambda: viewer.layers.remove(new))
    remember_heatmaps(new, t.source)
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
    if not holds(data.dtype, max([0, *plan.values])):  # pragma: no cover - _writable
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
    s = plan.heat_step
    for idx in [*stack.results, *plan.heat_zero_planes]:
        plane = stack.heatmap_plane(idx)[:, ::s, ::s] if idx in stack.results else None
        for rows in plane_bands(data.shape[:1] + data.shape[-2:], 4):
            data[(slice(None), *idx, rows)] = 0.0 if plane is None else plane[:, rows]
            yield LIGHT


def _show(viewer, plan: OutputPlan, labels, labels_mode: str, heat, heat_mode: str,
          hold_in_3d: bool):
    """Phase 3: replace, name, order, show and redraw (the data is complete by now)."""
    t = plan.targets
    if heat_mode != NEW:
        yield from _heavy(lambda: _redraw_heat(heat, plan.clim))
    if viewer is not None:
        if heat_mode == NEW:
            yield from _replace(viewer, t.heat, heat, our_heatmaps)
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
        if hold_in_3d and class_axis_shown(viewer, heat):
            plan.heat_held = True  # the widget shows them when the view is 2D again
        else:
            yield from _heavy(lambda: setattr(heat, "visible", True))


def class_axis_shown(viewer, heat) -> bool:
    """Whether the viewer displays the heatmaps' class axis (the 3D view of a 2D image's
    heatmaps: the classes as depth, a volume that means nothing and costs a software
    renderer 0.3 to 0.6 s a frame; docs/widget.md, "The 3D view").
    """
    dims = getattr(viewer, "dims", None)
    if dims is None or heat is None:
        return False
    axis = dims.ndim - heat.ndim  # the heatmaps' leading (class) axis in the viewer
    return axis >= 0 and axis in tuple(dims.displayed)


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


def write_tile(labels, heat, done, step: int = 1) -> None:
    """One finished tile into the output layers (GUI thread): its labels where the user
    did not edit (``done.labels`` already in the layer's values), its similarity at every
    ``step``-th pixel. ``done`` is a :class:`~napari_itaclip.chunked.tiles.TileDone`.
    """
    record = record_of(labels) if labels is not None else None
    if record is not None:
        record.write_band(labels.data, done.index, done.rows, done.labels, done.cols)
    if heat is not None:
        r0 = -(-done.rows.start // step) * step - done.rows.start
        c0 = -(-done.cols.start // step) * step - done.cols.start
        sim = done.similarity[:, r0::step, c0::step]
        ys = slice(-(-done.rows.start // step), -(-done.rows.start // step) + sim.shape[1])
        xs = slice(-(-done.cols.start // step), -(-done.cols.start // step) + sim.shape[2])
        heat.data[(slice(None), *done.index, ys, xs)] = sim
