"""The widget as users open it (issue 21): through napari's viewer proxy, several layers.

The layer a user selects is the layer segmented; the outputs are written by a plan built
in the worker and assigned in short GUI-thread steps, all or none; closing the dock tears
the widget down; renames during a run keep the result; Measure reads the run's layer;
undo and the edit count agree; Run and the status stay visible.
"""

from __future__ import annotations

import gc
import time
import weakref

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("qtpy")

from _widgets import RUN_TIMEOUT, open_widget  # noqa: E402
from _widgets import run as _run  # noqa: E402
from _widgets import stroke as _stroke  # noqa: E402

VOCAB = "background: sky, wall\ncat, feline\ndog"


def _rgb(h=48, w=64, seed=0):
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2] = (200, 40, 40)
    img[h // 2:] = (40, 40, 200)
    return np.clip(img + rng.integers(0, 40, img.shape), 0, 255).astype(np.uint8)


class Slow:
    """A segmenter that sleeps between progress steps (a run one can act during)."""

    def __init__(self, inner, delay=0.05):
        self.inner, self.delay, self.config = inner, delay, inner.config

    def iter_segment(self, image, vocabulary, *, config=None):
        gen = self.inner.iter_segment(image, vocabulary, config=config)
        while True:
            try:
                p = next(gen)
            except StopIteration as stop:
                return stop.value
            time.sleep(self.delay)
            yield p


def _picked(widget):
    layer = widget.image_panel.layer
    return None if layer is None else layer.name


# -- picking through the proxy ------------------------------------------------------------
def test_new_and_selected_layers_are_picked_through_the_proxy(make_widget, qtbot):
    viewer, widget = make_widget()
    assert type(widget.viewer).__name__ == "PublicOnlyProxy"  # napari's door
    viewer.add_image(_rgb(seed=1), name="A")
    assert _picked(widget) == "A"
    viewer.add_image(_rgb(seed=2), name="B")
    assert _picked(widget) == "B"  # a new image layer becomes the picked one
    viewer.add_points(name="pts")  # not an image: the pick stays
    assert _picked(widget) == "B"
    viewer.layers.selection.active = viewer.layers["A"]  # the layer list
    assert _picked(widget) == "A"
    widget.set_vocabulary(VOCAB)
    status = _run(qtbot, widget)
    assert status.startswith("Done"), status
    assert "A labels" in viewer.layers and "B labels" not in viewer.layers
    # the heatmaps are images too, but never picked
    assert _picked(widget) == "A"
    viewer.layers.selection.active = viewer.layers["B"]
    assert _picked(widget) == "B"
    _run(qtbot, widget)  # B now, and its own features (not "reused")
    assert "B labels" in viewer.layers
    assert "image features reused" not in widget.status_label.text()


def test_the_widget_opens_on_the_selected_layer(make_napari_viewer, make_widget):
    viewer = make_napari_viewer()
    viewer.add_image(_rgb(seed=1), name="A")
    viewer.add_image(_rgb(seed=2), name="B")  # napari selects the newest: B
    viewer.add_image(_rgb(seed=3), name="C")
    viewer.layers.selection.active = viewer.layers["B"]  # the user picks B in the list
    _viewer, widget = make_widget(viewer)
    assert _picked(widget) == "B"
    assert "48 × 64" in widget.image_panel.shape_label.text()
    # a selected layer that is not an image: the first image in the list
    second = make_napari_viewer()
    second.add_image(_rgb(seed=1), name="A")
    second.add_image(_rgb(seed=2), name="B")
    second.add_points(name="pts")
    _v2, other = make_widget(second)
    assert _picked(other) == "A"


def test_opening_a_sample_picks_it_and_loads_its_vocabulary(make_widget):
    viewer, widget = make_widget()
    viewer.add_image(_rgb(), name="mine")
    viewer.open_sample("napari-itaclip", "astronaut")
    assert _picked(widget) == "astronaut"
    assert "rocket" in widget.vocab_panel.editor.toPlainText()
    assert "suggested" in widget.status_label.text()
    widget.set_vocabulary("my own\nwords")  # the user's text is never replaced
    viewer.open_sample("napari-itaclip", "coffee")
    assert _picked(widget) == "coffee"
    assert widget.vocab_panel.editor.toPlainText() == "my own\nwords"


def test_event_links_are_not_duplicated_through_the_proxy(make_widget):
    viewer, widget = make_widget()
    viewer.add_image(_rgb(), name="A")
    n = len(widget._links)
    for k in range(5):  # every change re-links the layers' name events: once each
        viewer.add_points(name=f"p{k}")
    assert len(widget._links) == n + 5


# -- the output plan: worker-built, GUI-assigned -----------------------------------------
def test_plan_is_built_off_the_gui_thread_and_applied_in_steps(make_widget, qtbot,
                                                              monkeypatch):
    import threading

    from napari_itaclip.plugin import assign, output_plan

    viewer, widget = make_widget()
    viewer.add_image(np.random.default_rng(0).integers(0, 255, (3, 96, 128), np.uint8),
                     name="stack")
    widget.image_panel.slices_combo.setCurrentText("all slices")
    widget.set_vocabulary(VOCAB)
    built_in = []
    build = output_plan.build_plan
    monkeypatch.setattr(assign, "BAND_BYTES", 96 * 128 // 4)  # several bands a plane

    def spy(*args, **kwargs):
        built_in.append(threading.current_thread() is threading.main_thread())
        return build(*args, **kwargs)

    import napari_itaclip.plugin.widget.runs as runs

    monkeypatch.setattr(runs, "build_plan", spy)
    _run(qtbot, widget)
    labels = viewer.layers["stack labels"]
    assert built_in == [False]  # in the worker
    assert labels.data.dtype == np.uint8 and labels.visible
    assert viewer.layers["stack heatmaps"].visible
    first = labels.data.copy()
    painted = _stroke(labels, 2, (1, 20, 20))
    widget.set_vocabulary("cat\ndog\nbird")  # a re-run: in place, band by band
    _run(qtbot, widget)
    assert viewer.layers["stack labels"] is labels
    np.testing.assert_array_equal(labels.data[painted], 2)  # the stroke kept
    assert (labels.data[~painted] != first[~painted]).any()


def test_heatmaps_larger_than_a_quick_draw_keep_every_nth_pixel(make_widget, qtbot, monkeypatch):
    from napari_itaclip.plugin import output_plan

    # planes over HEAT_DRAW_PX (here 24 x 32) keep every 2nd pixel: 48 x 64 -> 24 x 32
    monkeypatch.setattr(output_plan, "HEAT_DRAW_PX", 24 * 32)
    assert output_plan.heat_draw_step((48, 64)) == 2
    assert output_plan.heat_draw_step((49, 64)) == 3 and output_plan.heat_draw_step((4, 4)) == 1
    viewer, widget = make_widget()
    viewer.add_image(_rgb(), name="img", scale=(0.5, 0.25), translate=(3.0, 4.0))
    widget.set_vocabulary(VOCAB)
    assert _run(qtbot, widget).startswith("Done")
    heat, labels = viewer.layers["img heatmaps"], viewer.layers["img labels"]
    stack = widget.results.stack_of(viewer.layers["img"])
    assert labels.data.shape == (48, 64) and heat.data.shape == (3, 24, 32)
    np.testing.assert_allclose(heat.data, stack.heatmap_plane(())[:, ::2, ::2])
    # kept pixel (i, j) is the source's pixel (2i, 2j): same world position
    assert tuple(heat.scale) == (1.0, 1.0, 0.5) and tuple(heat.translate) == (0.0, 3.0, 4.0)
    np.testing.assert_allclose(heat.data_to_world((0, 5, 7))[1:],
                               viewer.layers["img"].data_to_world((10, 14)))
    # the sliders relabel from the full-size kept maps
    widget.threshold_panel.prob.setValue(0.7)
    qtbot.waitUntil(lambda: widget.status_label.text().startswith("Relabelled"), timeout=5000)
    assert labels.data.shape == (48, 64)


def test_a_failure_while_writing_leaves_no_half_outputs(make_widget, qtbot, monkeypatch):
    viewer, widget = make_widget()
    viewer.add_image(_rgb(), name="img")
    widget.set_vocabulary(VOCAB)
    real_add = type(widget.viewer.__wrapped__).add_layer
    calls = []

    def failing_add(self, layer):
        calls.append(layer.name)
        if len(calls) == 2:  # the heatmaps went in; the labels fail
            raise ValueError("len() of unsized object")
        return real_add(self, layer)

    monkeypatch.setattr(type(widget.viewer.__wrapped__), "add_layer", failing_add)
    errors = []
    from napari.utils import notifications

    monkeypatch.setattr(notifications, "show_error", errors.append)
    status = _run(qtbot, widget)
    assert "nothing was written" in status and "len() of unsized object" in status
    assert errors and "nothing was written" in errors[0]
    assert [layer.name for layer in viewer.layers] == ["img"]  # none of the outputs
    assert not widget.busy and widget.run_btn.isEnabled()
    monkeypatch.setattr(type(widget.viewer.__wrapped__), "add_layer", real_add)
    assert _run(qtbot, widget).startswith("Done")  # usable: the next Run works
    assert {"img labels", "img heatmaps"} <= {layer.name for layer in viewer.layers}


def _failing(message: str):
    """A worker job that fails as torch does: with a RuntimeError."""
    def job(*args, **kwargs):
        yield from ()
        raise RuntimeError(message)
    return job


def _after_a_run(make_widget, qtbot):
    """``(viewer, widget)`` after one Run of an image layer "img"."""
    viewer, widget = make_widget()
    viewer.add_image(_rgb(), name="img")
    widget.set_vocabulary(VOCAB)
    _run(qtbot, widget)
    return viewer, widget


@pytest.mark.filterwarnings("default::RuntimeWarning")  # as in napari (workers.py)
def test_a_runtime_error_in_a_run_is_reported_and_the_widget_stays_usable(make_widget, qtbot,
                                                                         monkeypatch):
    from napari_itaclip.plugin.widget import runs

    viewer, widget = make_widget()
    viewer.add_image(_rgb(), name="img")
    widget.set_vocabulary(VOCAB)
    real_job = runs.segmentation_job
    monkeypatch.setattr(runs, "segmentation_job",
                        _failing("CUDA out of memory. Tried to allocate 2.00 GiB"))
    status = _run(qtbot, widget)
    assert "ITACLIP failed: CUDA out of memory. Tried to allocate 2.00 GiB" in status
    assert [layer.name for layer in viewer.layers] == ["img"]
    assert not widget.busy and widget.run_btn.isEnabled()
    monkeypatch.setattr(runs, "segmentation_job", real_job)
    assert _run(qtbot, widget).startswith("Done")


@pytest.mark.filterwarnings("default::RuntimeWarning")
def test_a_runtime_error_while_relabelling_ends_the_relabel(make_widget, qtbot, monkeypatch):
    from napari.utils.notifications import notification_manager

    from napari_itaclip.plugin.widget import relabel

    _viewer, widget = _after_a_run(make_widget, qtbot)
    monkeypatch.setattr(relabel, "relabel_planes", _failing("DefaultCPUAllocator: can't "
                                                            "allocate memory"))
    widget.threshold_panel.prob.setValue(0.7)  # a slider move: a relabel in a worker

    def reported():
        return any("can't allocate memory" in str(n.message)
                   for n in notification_manager.records)

    qtbot.waitUntil(reported, timeout=5000)
    assert not widget.relabeller.running and widget.run_btn.isEnabled()
    assert "Relabelling failed: DefaultCPUAllocator: can't allocate memory" in \
        widget.status_label.text()


@pytest.mark.filterwarnings("default::RuntimeWarning")
def test_a_runtime_error_while_discarding_is_reported(make_widget, qtbot, monkeypatch):
    from napari_itaclip.plugin.widget import teach

    viewer, widget = _after_a_run(make_widget, qtbot)
    painted = _stroke(viewer.layers["img labels"], 2)
    assert painted.any()
    monkeypatch.setattr(teach, "model_planes", _failing("DefaultCPUAllocator: can't allocate "
                                                        "memory"))
    assert widget.teach.discard()
    qtbot.waitUntil(lambda: "Discarding the edits failed" in widget.status_label.text(),
                    timeout=5000)
    assert widget.teach.discard_btn.isEnabled()
    assert (viewer.layers["img labels"].data[painted] == 2).all()  # nothing given back


def test_replacing_an_images_data_forgets_its_maps_and_a_run_of_the_old_data(make_widget, qtbot,
                                                                           monkeypatch):
    import time as _time

    from napari_itaclip.plugin.widget import runs

    viewer, widget = make_widget()
    image = viewer.add_image(_rgb(), name="img")
    widget.set_vocabulary(VOCAB)
    _run(qtbot, widget)
    assert widget.results.has_last and "48 × 64" in widget.image_panel.shape_label.text()
    image.data = _rgb(32, 40)  # the user replaces the image (console, a plugin)
    assert not widget.results.has_last  # the kept maps described the old image
    assert "32 × 40" in widget.image_panel.shape_label.text()
    assert "32 × 40" in widget.scale_panel.summary.text()
    widget.threshold_panel.prob.setValue(0.7)  # nothing to relabel now
    assert "apply to the next Run" in widget.status_label.text()
    np.testing.assert_array_equal(viewer.layers["img labels"].data.shape, (48, 64))

    real_job = runs.segmentation_job

    def slow_job(*args, **kwargs):
        _time.sleep(0.5)
        return (yield from real_job(*args, **kwargs))

    monkeypatch.setattr(runs, "segmentation_job", slow_job)
    before = viewer.layers["img labels"].data.copy()
    widget.run_btn.click()
    image.data = _rgb(40, 40, seed=3)  # replaced again while the run reads the old one
    qtbot.waitUntil(lambda: not widget.busy, timeout=RUN_TIMEOUT)
    status = widget.status_label.text()
    assert "The data of the layer 'img' was replaced during the run; nothing was written" \
        in status, status
    np.testing.assert_array_equal(viewer.layers["img labels"].data, before)
    monkeypatch.setattr(runs, "segmentation_job", real_job)
    assert _run(qtbot, widget).startswith("Done")
    assert viewer.layers["img labels"].data.shape == (40, 40)


# -- lifecycle ----------------------------------------------------------------------------
def test_closing_the_dock_tears_down_and_reopening_works(make_widget, qtbot):
    viewer, widget = make_widget()
    viewer.add_image(_rgb(), name="img")
    widget.set_vocabulary(VOCAB)
    _run(qtbot, widget)
    assert len(widget.results) == 1 and len(widget._links) > 0
    viewer.window.remove_dock_widget(widget)  # what the dock's X does
    assert widget.closed and len(widget._links) == 0 and len(widget.results) == 0
    gone = weakref.ref(widget)
    del widget
    qtbot.wait(50)
    gc.collect()
    assert gone() is None  # nothing of napari's keeps the closed widget alive

    _viewer, again = make_widget(viewer)  # the Plugins menu again: one new widget
    again.set_vocabulary(VOCAB)
    assert _run(qtbot, again).startswith("Done")
    docks = [d for d in viewer.window._dock_widgets if "ITACLIP" in d]
    assert len(docks) == 1


def test_closing_the_viewer_tears_the_widget_down(make_widget, qtbot):
    from napari_itaclip.plugin import gc_pauses

    viewer, widget = make_widget()
    viewer.add_image(_rgb(), name="img")
    widget.set_vocabulary(VOCAB)
    _run(qtbot, widget)
    assert len(widget.results) == 1 and gc_pauses.stats().armed
    viewer.close()  # the window's X, File > Close Window, or a script
    qtbot.waitUntil(lambda: widget.closed, timeout=2000)
    assert len(widget._links) == 0 and len(widget.results) == 0
    assert not gc_pauses.stats().armed and gc.get_freeze_count() == 0


def test_a_refused_close_keeps_the_widget(make_widget, qtbot, monkeypatch):
    """napari asks before closing a window with layers; "Cancel" keeps everything."""
    from napari._qt.qt_main_window import _QtMainWindow

    from napari_itaclip.plugin import gc_pauses

    viewer, widget = make_widget()
    viewer.show()
    viewer.add_image(_rgb(), name="img")
    widget.set_vocabulary(VOCAB)
    _run(qtbot, widget)
    monkeypatch.setattr(_QtMainWindow, "closeEvent", lambda self, e: e.ignore())
    widget.window_watch.window().close()  # refused
    qtbot.wait(50)
    assert not widget.closed and len(widget.results) == 1 and len(widget._links) > 0
    assert gc_pauses.stats().armed
    monkeypatch.undo()
    viewer.close()
    qtbot.waitUntil(lambda: widget.closed, timeout=2000)
    assert not gc_pauses.stats().armed


def test_closing_during_a_run_touches_nothing(make_widget, qtbot, tiny_segmenter):
    viewer, widget = make_widget()
    widget.use_segmenter(Slow(tiny_segmenter, 0.1))
    viewer.add_image(_rgb(), name="img")
    widget.set_vocabulary(VOCAB)
    widget.run_btn.click()
    qtbot.waitUntil(lambda: "segmenting" in widget.status_label.text()
                    or "encoding" in widget.status_label.text(), timeout=RUN_TIMEOUT)
    viewer.window.remove_dock_widget(widget)
    qtbot.wait(1500)  # the cancelled worker ends; nothing of it is applied
    assert [layer.name for layer in viewer.layers] == ["img"]


# -- renames, Measure, undo ------------------------------------------------------------------
def test_renaming_the_source_during_a_run_keeps_the_result(make_widget, qtbot,
                                                           tiny_segmenter):
    viewer, widget = make_widget()
    widget.use_segmenter(Slow(tiny_segmenter, 0.05))
    viewer.add_image(_rgb(), name="stack")
    widget.set_vocabulary(VOCAB)
    widget.run_btn.click()
    qtbot.waitUntil(lambda: "segmenting" in widget.status_label.text(), timeout=RUN_TIMEOUT)
    viewer.layers["stack"].name = "renamed"
    qtbot.waitUntil(lambda: not widget.busy, timeout=RUN_TIMEOUT)
    assert widget.status_label.text().startswith("Done"), widget.status_label.text()
    assert "renamed labels" in viewer.layers and "renamed heatmaps" in viewer.layers
    assert widget.results.stack_of(viewer.layers["renamed"]) is not None
    # and after a rename of the source, its outputs are still its own on the next run
    viewer.layers["renamed"].name = "third"
    _run(qtbot, widget)
    assert "third labels" not in viewer.layers  # updated in place under its name
    assert viewer.layers["renamed labels"].metadata["itaclip"]["source"] == "third"


def test_measure_reads_the_labels_the_run_wrote(make_widget, qtbot):
    viewer, widget = make_widget()
    viewer.add_image(_rgb(), name="img")
    viewer.add_labels(np.full((48, 64), 1, np.int32), name="img labels")  # the user's file
    widget.image_panel.select(viewer.layers["img"])
    widget.set_vocabulary(VOCAB)
    _run(qtbot, widget)
    assert "img labels [2]" in viewer.layers and "img heatmaps [2]" in viewer.layers
    assert widget.measure_panel.layer_combo.currentText() == "img labels [2]"
    assert widget.measure_panel.measure()
    qtbot.waitUntil(lambda: not widget.measure_panel.busy, timeout=RUN_TIMEOUT)
    objects = viewer.layers["img objects"]
    assert objects.metadata["itaclip"]["labels"] == "img labels [2]"
    # the combo says which, and the user may pick another
    combo = widget.measure_panel.layer_combo
    combo.setCurrentIndex(combo.findText("img labels"))
    combo.activated.emit(combo.currentIndex())
    widget.measure_panel.reset_choices()
    assert combo.currentText() == "img labels"


def test_undo_after_a_rerun_agrees_with_the_edit_count(make_widget, qtbot):
    viewer, widget = make_widget()
    viewer.add_image(_rgb(), name="img")
    widget.set_vocabulary(VOCAB)
    _run(qtbot, widget)
    labels = viewer.layers["img labels"]
    model = labels.data.copy()
    painted = _stroke(labels, 2, (20, 20))
    qtbot.waitUntil(lambda: widget.teach.edits_label.text()
                    == f"Edited pixels: {int(painted.sum())}", timeout=5000)
    labels.undo()  # right after the stroke: the model's labels come back
    np.testing.assert_array_equal(labels.data, model)
    qtbot.waitUntil(lambda: widget.teach.edits_label.text() == "Edited pixels: 0",
                    timeout=5000)
    labels.redo()
    painted = labels.data != model
    widget.set_vocabulary("background: sky\ncat\ndog, puppy")
    _run(qtbot, widget)  # a re-run starts a new undo history
    after = labels.data.copy()
    labels.undo()  # nothing to undo: the stroke stays, and stays an edit
    np.testing.assert_array_equal(labels.data, after)
    np.testing.assert_array_equal(labels.data[painted], 2)
    assert widget.teach.edited_count() == int(painted.sum())


# -- always visible -------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(1280, 800), (1500, 950)])
def test_run_cancel_progress_and_status_are_always_visible(make_napari_viewer, qtbot, size):
    from qtpy.QtWidgets import QScrollArea

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(*size)
    widget = open_widget(viewer)
    qtbot.wait(100)
    for w in (widget.run_btn, widget.cancel_btn, widget.progress_bar, widget.status_label):
        parent = w.parentWidget()
        while parent is not None and parent is not widget:
            assert not isinstance(parent, QScrollArea), w  # never scrolled away
            parent = parent.parentWidget()
        assert w.isVisible() and not w.visibleRegion().isEmpty(), w


def test_a_layer_present_before_the_widget_opens_is_described(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((3, 64, 80), np.uint16), name="cells", axis_labels=("c", "y", "x"))
    widget = open_widget(viewer)
    panel = widget.image_panel
    assert _picked(widget) == "cells"
    assert panel.channel_axis_combo.count() == 2  # none, axis 0 (c, 3)
    assert panel.channel_axis_combo.currentData() == 0  # the axis labelled "c"
    assert panel.channel_combo.count() == 4  # composite and three channels
    assert panel.shape_label.text().startswith("multichannel, output 64 × 80")


# -- the 3D view ---------------------------------------------------------------------------
def _run_in_3d(make_widget, qtbot, image=None, name="A"):
    """``(viewer, widget, status)``: ``image`` (a 2D RGB one by default) as layer
    ``name``, the vocabulary, the 3D view, one Run."""
    viewer, widget = make_widget()
    viewer.add_image(_rgb() if image is None else image, name=name)
    widget.set_vocabulary(VOCAB)
    viewer.dims.ndisplay = 3
    return viewer, widget, _run(qtbot, widget)


def test_a_2d_images_heatmaps_wait_for_the_2d_view(make_widget, qtbot):
    viewer, widget, status = _run_in_3d(make_widget, qtbot)
    assert status.startswith("Done") and "hidden in the 3D view" in status, status
    heat, labels = viewer.layers["A heatmaps"], viewer.layers["A labels"]
    assert labels.visible and not heat.visible  # the labels are shown, complete
    assert "class_name" in labels.features
    assert viewer.text_overlay.text == "" or not viewer.text_overlay.visible
    viewer.dims.ndisplay = 2
    assert heat.visible
    qtbot.waitUntil(lambda: viewer.text_overlay.text == "heatmap: background", timeout=3000)
    # a re-run in 3D updates the visible layer in place: it stays as the user has it
    viewer.dims.ndisplay = 3
    status = _run(qtbot, widget)
    assert heat.visible and "hidden" not in status, status


def test_a_rerun_in_3d_keeps_the_hold(make_widget, qtbot):
    viewer, widget, _status = _run_in_3d(make_widget, qtbot)
    widget.set_vocabulary(VOCAB + "\nbird")
    _run(qtbot, widget)  # the same heatmap layer, or its data swapped
    heat = viewer.layers["A heatmaps"]
    assert not heat.visible
    viewer.dims.ndisplay = 2
    assert heat.visible


def test_every_held_heatmap_layer_is_shown_back_in_2d(make_widget, qtbot):
    viewer, widget = make_widget()
    viewer.add_image(_rgb(seed=1), name="A")
    viewer.add_image(_rgb(seed=2), name="B")
    widget.set_vocabulary(VOCAB)
    viewer.dims.ndisplay = 3
    for name in ("A", "B"):
        viewer.layers.selection.active = viewer.layers[name]
        _run(qtbot, widget)
    assert not viewer.layers["A heatmaps"].visible and not viewer.layers["B heatmaps"].visible
    viewer.dims.ndisplay = 2
    assert viewer.layers["A heatmaps"].visible and viewer.layers["B heatmaps"].visible


def test_the_users_choice_of_visibility_wins_over_the_hold(make_widget, qtbot):
    viewer, _widget, _status = _run_in_3d(make_widget, qtbot)
    heat = viewer.layers["A heatmaps"]
    heat.visible = True  # the user looks at them in 3D, then hides them again
    heat.visible = False
    viewer.dims.ndisplay = 2
    assert not heat.visible


def test_a_stacks_heatmaps_are_shown_in_3d(make_widget, qtbot):
    # the classes are a slider; the volume is a class's map
    stack = np.stack([_rgb(seed=z)[..., 0] for z in range(3)])
    viewer, _widget, status = _run_in_3d(make_widget, qtbot, stack, name="S")
    assert status.startswith("Done") and "hidden" not in status, status
    assert viewer.layers["S heatmaps"].visible


def test_the_console_shows_heatmaps_in_3d(make_napari_viewer, tiny_segmenter):
    from napari_itaclip.plugin.scripting import segment_layer

    viewer = make_napari_viewer()
    viewer.add_image(_rgb(), name="A")
    viewer.dims.ndisplay = 3
    segment_layer("A", VOCAB, viewer=viewer, segmenter=tiny_segmenter)
    assert viewer.layers["A heatmaps"].visible  # no widget to show them later: as asked


def _status_bar(viewer):
    """What napari's status bar computes for the active layer at the cursor (its
    ``StatusChecker`` thread; the same call in napari 0.5 to 0.9)."""
    cursor = viewer.cursor
    return viewer.layers.selection.active.get_status(
        cursor.position, view_direction=cursor._view_direction,
        dims_displayed=list(viewer.dims.displayed), world=True)


def _camera_direction(viewer):
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    return camera.calculate_nd_view_direction(viewer.dims.ndim, viewer.dims.displayed)


def test_the_status_bar_works_in_3d_before_the_mouse_moves(make_widget, qtbot):
    from napari_itaclip.plugin.refs import unwrap

    stack = np.stack([_rgb(seed=z)[..., 0] for z in range(3)])  # 3D labels: napari's 3D path
    viewer, widget, _status = _run_in_3d(make_widget, qtbot, stack, name="S")
    real = unwrap(viewer)
    labels = real.layers["S labels"]
    assert "class_name" in labels.features
    real.layers.selection.active = labels
    # the view direction napari sets on a mouse move over the canvas in 3D
    np.testing.assert_allclose(real.cursor._view_direction, _camera_direction(real))
    _status_bar(real)  # napari 0.9: "len() of unsized object" with no view direction
    # the view back in 2D and in 3D again, another layer's dimensions: filled again
    real.dims.ndisplay = 2
    real.cursor._view_direction = None  # a mouse move in 2D
    real.add_image(np.zeros((2, 3, 48, 64), np.uint8), name="4D")
    real.layers.selection.active = labels
    real.dims.ndisplay = 3
    assert len(real.cursor._view_direction) == real.dims.ndim == 4
    _status_bar(real)
    widget.close()  # the widget's connections go with it
    real.dims.ndisplay = 2
    real.cursor._view_direction = None
    real.dims.ndisplay = 3
    assert real.cursor._view_direction is None


def test_the_console_fills_the_view_direction_in_3d(make_napari_viewer, tiny_segmenter):
    from napari_itaclip.plugin.scripting import segment_layer

    viewer = make_napari_viewer()
    viewer.add_image(np.stack([_rgb(seed=z)[..., 0] for z in range(3)]), name="S")
    viewer.dims.ndisplay = 3
    labels, _heat = segment_layer("S", VOCAB, viewer=viewer, segmenter=tiny_segmenter)
    assert labels.ndim == 3 and "class_name" in labels.features
    viewer.layers.selection.active = labels
    np.testing.assert_allclose(viewer.cursor._view_direction, _camera_direction(viewer))
    _status_bar(viewer)


def test_progress_is_painted_later_not_at_once(qtbot):
    """A progress step schedules a paint; QProgressBar's own repaint at once composed
    napari's whole window, its canvas included (a frame per step)."""
    from napari_itaclip.plugin.widget.dock import ProgressBar

    class Counting(ProgressBar):
        paints = 0

        def paintEvent(self, event):  # noqa: N802
            Counting.paints += 1
            super().paintEvent(event)

    bar = Counting()
    bar.setRange(0, 1000)
    qtbot.addWidget(bar)
    bar.show()
    qtbot.waitExposed(bar)
    qtbot.wait(50)
    Counting.paints = 0
    bar.setValue(500)
    assert bar.value() == 500 and Counting.paints == 0  # nothing painted in the call
    qtbot.waitUntil(lambda: Counting.paints > 0, timeout=2000)  # the next paint shows it
