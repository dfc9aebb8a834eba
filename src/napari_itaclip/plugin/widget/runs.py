"""What a Run does, outside the dock class: the worker's job and the GUI-thread reading.

:func:`plan_run` reads the panels and the viewer on the GUI thread at click time (cheap:
no pixel is read); :func:`segmentation_job` is the generator the worker runs: the model
from the registry, the planes through the engine, then the output plan
(:func:`~napari_itaclip.plugin.output_plan.build_plan`: label values in their final
dtype, heatmaps, tables, colours, new layers), so the GUI thread only assigns it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ...chunked.tiles import WorkingPlanes, inner_config, plan_tiles
from ...engine.memory import memory_limit
from ...progress import WRITE
from ...stack import RunProgress, iter_segment_slices, planes_cached
from ..layers import current_slice, labels_name, prepare_first_labels_layer, resolve_slices
from ..output_plan import (
    OutputPlan,
    Targets,
    build_plan,
    class_values,
    heat_draw_step,
    plan_targets,
)
from ..refs import LayerRef
from ..sources import source_for, tiles_needed
from . import tiled
from .panels import ModelSettings
from .teach import TeachRequest

__all__ = ["RunArgs", "applied", "done_text", "launch", "plan_run", "retarget", "returned",
           "run_ended", "segmentation_job"]


@dataclasses.dataclass
class RunArgs:
    """One run's plain values, read on the GUI thread and handed to the worker."""

    model: ModelSettings
    data: Any
    layout: Any
    vocab: Any
    config: Any
    indices: list
    targets: Targets | None = None
    teach: TeachRequest | None = None
    source: Any = None  # a LayerSource: a tiled run (None: in memory)
    region: Any = None  # (rows, cols) of the working grid: the visible region only
    live: bool = False


def segmentation_job(model: ModelSettings, segmenter, data, layout, indices, vocab, config,
                     cached_only: bool = False, teach: TeachRequest | None = None,
                     targets: Targets | None = None):
    """The worker's generator: get the model (from the registry), segment the planes.

    With ``cached_only`` (a live run), return ``None`` at once unless every plane's
    image features are cached (the planes holding strokes too). With ``teach``, its
    exemplars are built first and scored with the text. With ``targets``, return the
    :class:`~napari_itaclip.plugin.output_plan.OutputPlan` (built here, off the GUI
    thread), else the :class:`~napari_itaclip.stack.StackResult`.
    """
    from ...engine import registry

    yield RunProgress("load", 0, 0, 0, len(indices))
    prepare_first_labels_layer()  # napari's first Labels layer, lighter on the GUI thread
    seg = segmenter if segmenter is not None else registry.get_segmenter(model.key())
    planes = [*indices, *(teach.planes if teach is not None else ())]
    if cached_only and not planes_cached(seg, data, layout, planes, config):
        return None
    if teach is not None:
        seg = yield from teach.bind(seg, data, layout, config)
    stack = yield from iter_segment_slices(seg, data, layout, indices, vocab, config)
    if targets is None:
        return stack
    values = None
    if teach is not None:
        values = class_values(stack, teach.n_text, targets.feature_values, teach.preferred)
    yield RunProgress(WRITE, 0, 1, len(indices), len(indices))
    return build_plan(stack, targets, values, heat_step=heat_draw_step(layout.out_shape))


def plan_run(widget, image) -> RunArgs:
    """What a Run does: the model, data, layout, vocabulary, config, planes, exemplars,
    output targets, and whether it runs in memory or in tiles (see
    :mod:`napari_itaclip.plugin.sources`). Raises ValueError / TypeError with what is
    wrong. New painted classes get their line in the vocabulary editor here.
    """
    vocab, cfg = widget.vocabulary(), widget.config()
    source = source_for(image.layer, cfg, image.channel_axis, image.channel)
    layout = source.layout
    mode = "all" if layout.n_slices <= 1 or image.all_slices else "current"
    indices = resolve_slices(image.layer, layout, mode, widget.viewer)
    region = visible_region(widget, image.layer, source) if widget.scale_panel.visible_only \
        .isChecked() else None
    tiled = region is not None or tiles_needed(
        source, cfg, len(vocab.queries), memory_limit()[0], len(indices),
        widget.advanced_panel.feature_cache_mb())
    if tiled:
        check_tiles(source, cfg, region is not None)
    kept = widget.results.stack_of(image.layer)
    editor = widget.vocab_panel.editor
    teach, text, indices = widget.teach.request(
        image.layer, vocab, editor.toPlainText(), indices,
        current_slice(image.layer, layout, widget.viewer),
        list(kept.results) if kept is not None and not tiled else [])
    if text != editor.toPlainText():  # new painted classes, for the user to name; not
        editor.blockSignals(True)  # an edit of the user's (no Live re-run for it)
        editor.setPlainText(text)
        editor.blockSignals(False)
        widget.vocab_panel.revalidate()
    model = dataclasses.replace(widget.model_panel.settings(),
                                feature_cache_mb=widget.advanced_panel.feature_cache_mb())
    data, run_layout, run_cfg = source.data, source.out_layout, cfg
    if cfg.object_size is not None:  # the working planes, segmented at their resolution
        run_cfg = inner_config(cfg)
        data = WorkingPlanes(source.data, layout, source.factor) if source.factor > 1 else data
    targets = plan_targets(widget.viewer, image.layer, run_layout, source.geometry)
    args = RunArgs(model, data, run_layout, vocab, cfg if tiled else run_cfg, indices,
                   targets, teach, source=source if tiled else None, region=region)
    if teach is not None:
        teach.args = args
    return args


def check_tiles(source, cfg, asked: bool) -> None:
    """Refuse (ValueError, with the reason) a tiled run that cannot be exact."""
    from ...chunked.plan import ChunkingError

    try:
        plan_tiles(source.layout.plane_shape, cfg, tiled.DEFAULT_TILE, factor=source.factor)
    except ChunkingError as exc:
        why = ("the visible region is segmented in tiles" if asked else
               f"'{source.layer.name}' at {source.describe()} does not fit in memory, and "
               "is segmented in tiles")
        raise ValueError(f"{why}, which this configuration cannot do exactly: {exc}. Set an "
                         "object size (Scale) to work at a reduced resolution.") from None


def visible_region(widget, layer, source) -> tuple[slice, slice]:
    """The part of the working grid the canvas shows: (rows, columns) in working pixels.

    Raises ValueError in the 3D view (napari's corner pixels are then the whole layer)
    and when the canvas shows no part of the layer.
    """
    if widget.viewer.dims.ndisplay == 3:
        raise ValueError("'visible region only' needs the 2D view (napari's 3D view does "
                         "not say which part of a layer it shows): switch to 2D, or untick "
                         "it to segment the whole layer")
    corners = np.asarray(layer.corner_pixels, dtype=float)[:, -2:]
    if getattr(layer, "multiscale", False):  # corners are in the shown level's pixels
        corners = corners * np.asarray(layer.downsample_factors[layer.data_level][-2:])
    f = np.asarray(source.level_factor) * source.factor
    lo = np.floor(corners[0] / f).astype(int)
    hi = np.ceil((corners[1] + 1) / f).astype(int)
    h, w = source.work_shape[-2:]
    rows = slice(int(np.clip(lo[0], 0, h)), int(np.clip(hi[0], 0, h)))
    cols = slice(int(np.clip(lo[1], 0, w)), int(np.clip(hi[1], 0, w)))
    if rows.stop <= rows.start or cols.stop <= cols.start:
        raise ValueError(f"the canvas shows no part of '{layer.name}'")
    return rows, cols


def retarget(widget, args: RunArgs, source: LayerRef | None) -> RunArgs:
    """``args`` with the output targets read again (a second run of the same exemplars)."""
    layer = source.in_viewer(widget.viewer) if source is not None else None
    if layer is None:
        raise ValueError("the segmented layer is gone")
    return dataclasses.replace(args, targets=plan_targets(widget.viewer, layer, args.layout))


def done_text(plan: OutputPlan, labels) -> str:
    """The status line after a run (says so when the labels went to a new layer)."""
    stack = plan.stack
    k, n = stack.n_cached, len(stack.results)
    reuse = "" if not k else ", image features reused" + ("" if k == n else f" for {k} of them")
    counts = ", ".join(f"{name}: {c}" for name, c in plan.counts.items())
    text = f"Done: {n} plane(s){reuse}. Pixels per class in them: {counts}"
    text += plan.held_text
    if plan.targets.diverted:
        base = labels_name(plan.targets.source_name)
        text += f". Wrote '{labels.name}': the layer '{base}' {plan.targets.diverted_why}"
    return text


def applied(widget, plan: OutputPlan, labels, heat) -> None:
    """A run's layers are written: keep its maps, tell the panels, say what was done."""
    source = plan.targets.source
    widget.results.keep(source, widget.results.merged(source, plan.stack), labels, heat)
    widget.teach.ran(widget._run.teach if widget._run is not None else None, labels)
    widget._prune_results()  # e.g. entries of layers replaced by this run
    widget.heatmaps.set_source(source, heat, plan.stack.class_names, held=plan.heat_held)
    widget.measure_panel.reset_choices()
    widget.progress_bar.setValue(1000)
    widget.status_label.setText(done_text(plan, labels))
    if widget._run is not None and _moved(widget._run.config, widget.thresholds()):
        widget.relabeller.schedule()  # a slider moved during the run: the labels follow it


def _moved(cfg, thresholds: tuple[float, float | None]) -> bool:
    """Whether the sliders' ``(prob, area)`` differ from those the run used."""
    prob, area = thresholds
    return (abs(prob - cfg.prob_threshold) > 1e-9
            or abs((area or 0.0) - (cfg.area_threshold or 0.0)) > 1e-9)


def run_ended(widget) -> None:
    """Nothing runs any more: start a stack's other planes (same exemplars), else tell
    Live (an edit made during the run is acted on now).
    """
    args, widget._run = widget._run, None
    teach, rest = widget.teach.take_followup()
    if teach is None or args is None:
        widget.live.run_finished()
        return
    try:  # a stack's other planes, with the same exemplars
        follow = retarget(widget, teach.args, widget.results.run_source)
    except ValueError as exc:
        widget._error(f"Not re-scoring the other planes: {exc}.")
        return
    follow.indices, follow.teach, follow.live = rest, teach, False
    widget._launch(follow)


def launch(widget, args: RunArgs) -> None:
    """Start ``widget``'s worker on ``args`` (a tiled run when ``args.source`` is set)."""
    from .tiled import tiled_item, tiled_job, tiled_returned

    widget._run = args
    if args.source is not None:
        widget.tiles.written = 0
        job = tiled_job(args.model, widget._segmenter_override, args.source, args.indices,
                        args.vocab, args.config, args.targets, args.teach,
                        chunk=tiled.DEFAULT_TILE, keep_budget=keep_budget(),
                        region=args.region)
        widget._start(job, returned=lambda done: tiled_returned(widget, done),
                      yielded=lambda item: tiled_item(widget, item), message="Starting…",
                      error_prefix="ITACLIP failed")
        return
    job = segmentation_job(args.model, widget._segmenter_override, args.data, args.layout,
                           args.indices, args.vocab, args.config, args.live, args.teach,
                           args.targets)
    widget._start(job, returned=widget._on_returned, yielded=widget._on_progress,
                  message="Starting…", error_prefix="ITACLIP failed")


def returned(widget, plan: OutputPlan | None) -> None:
    """The worker returned a run's output plan: assign it (None: a live run whose image
    features were not cached, so nothing was run).
    """
    from ..assign import apply_plan
    from .live import NOT_CACHED_TEXT

    if plan is None:
        widget.status_label.setText(NOT_CACHED_TEXT)
        return
    widget.relabeller.stop()  # a pending relabel would write stale planes
    widget._plan = plan
    widget.status_label.setText("Writing the layers…")
    widget.applier.start(apply_plan(widget.viewer, plan, hold_in_3d=True), widget._applied,
                         widget._apply_failed)


def keep_budget() -> int | None:
    """Bytes a tiled run may keep for relabelling (a share of the available memory)."""
    limit = memory_limit()[0]
    return None if limit is None else int(limit * tiled.KEEP_BUDGET_FRACTION)
