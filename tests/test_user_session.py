"""A whole napari session played as a user plays it, in a child process (issue 21).

napari first (its canvas before torch), the widget from the Plugins menu's door, two
samples, a pick in the layer list, Run, a brush stroke, the 3D view, a rename during a
run, an error, the dock's X and the menu again. The checks are what a user sees: the
picked layer, the layer names, the status line, napari's notifications, and a GUI
heartbeat (a 20 ms timer on the GUI thread).
"""

from __future__ import annotations

import textwrap

import pytest

from test_user_order import PRELUDE, _run_child

pytest.importorskip("napari")
pytest.importorskip("qtpy")

pytestmark = pytest.mark.gui

CFG = ("dict(short_side=96, crop=32, stride=16, mid_layers=(2, 3), pamr_steps=2, "
       "pamr_dilations=(1, 2))")

SESSION_CHILD = PRELUDE + textwrap.dedent(
    f"""
    import gc, weakref
    import napari, numpy as np
    from qtpy.QtCore import QTimer
    viewer = napari.Viewer()
    viewer.window._qt_window.resize(1500, 950)
    beats, last, phase, gaps = [], [time.perf_counter()], ["start"], []

    def beat():
        now = time.perf_counter()
        beats.append(now - last[0])
        gaps.append((round(now - last[0], 3), phase[0]))
        last[0] = now

    heart = QTimer()
    heart.setInterval(20)
    heart.timeout.connect(beat)
    heart.start()
    wait(lambda: True)
    report["torch_before_plugin"] = "torch" in sys.modules

    def open_widget():
        dock, widget = viewer.window.add_plugin_dock_widget("napari-itaclip",
                                                            "ITACLIP segmentation")
        from napari_itaclip import ITACLIPConfig
        widget.set_config(ITACLIPConfig(**{CFG}))
        widget.model_panel.model_combo.setCurrentText(MODEL_JSON)
        widget.model_panel.pretrained_combo.setCurrentText(CHECKPOINT)
        widget.model_panel.device_combo.setCurrentText("cpu")
        return dock, widget

    def run(widget):
        widget.run_btn.click()
        wait(lambda: not widget.busy)
        return widget.status_label.text()

    def picked(widget):
        return None if widget.image_panel.layer is None else widget.image_panel.layer.name

    phase[0] = "open widget"
    dock, widget = open_widget()
    phase[0] = "samples"
    viewer.open_sample("napari-itaclip", "astronaut")
    viewer.open_sample("napari-itaclip", "coffee")
    wait(lambda: True)
    report["picked_after_samples"] = picked(widget)
    report["vocab_after_samples"] = widget.vocab_panel.editor.toPlainText()
    viewer.layers.selection.active = viewer.layers["astronaut"]  # the layer list
    wait(lambda: True)
    report["picked_after_select"] = picked(widget)
    report["vocab_after_select"] = widget.vocab_panel.editor.toPlainText()
    beats.clear()
    phase[0] = "first run"
    report["status_run"] = run(widget)
    report["gap_run"] = max(beats)
    report["layers_run"] = [layer.name for layer in viewer.layers]

    labels = viewer.layers["astronaut labels"]
    before = labels.data.copy()
    labels.brush_size = 15
    labels.paint((100, 200), 1)  # a brush stroke
    wait(lambda: True)
    stroke = labels.data != before
    n = int(stroke.sum())
    try:
        wait(lambda: widget.teach.edits_label.text() == f"Edited pixels: {{n}}", timeout=10)
    except TimeoutError:
        pass
    report["edits"] = [n, widget.teach.edits_label.text()]

    phase[0] = "3D"
    viewer.dims.ndisplay = 3  # the 3D view, and another sample's vocabulary
    viewer.layers.selection.active = viewer.layers["coffee"]
    wait(lambda: True)
    report["picked_3d"] = picked(widget)
    report["status_3d"] = run(widget)
    report["coffee_outputs"] = [name for name in ("coffee labels", "coffee heatmaps")
                                if name in viewer.layers]
    report["coffee_features"] = ("coffee labels" in viewer.layers
                                 and "class_name" in viewer.layers["coffee labels"].features)
    report["coffee_heat_visible"] = [viewer.layers["coffee heatmaps"].visible]
    viewer.dims.ndisplay = 2
    wait(lambda: True)
    report["coffee_heat_visible"].append(viewer.layers["coffee heatmaps"].visible)

    phase[0] = "rename"
    # a rename during a run: the result goes to the renamed layer's outputs
    viewer.layers.selection.active = viewer.layers["astronaut"]
    widget.set_config(widget.config().replace(short_side=None))  # a longer run
    widget.run_btn.click()
    wait(lambda: "segmenting" in widget.status_label.text() or not widget.busy)
    viewer.layers["astronaut"].name = "astro"
    wait(lambda: not widget.busy)
    report["status_rename"] = widget.status_label.text()
    report["stroke_kept"] = bool((labels.data[stroke] == 1).all())
    report["sources"] = sorted(widget.results.sources())
    report["astro_meta"] = labels.metadata["itaclip"]["source"]

    # an error a user makes: an empty vocabulary
    from napari.utils.notifications import notification_manager
    widget.set_vocabulary("")
    layers_before = [layer.name for layer in viewer.layers]
    widget.run_btn.click()
    wait(lambda: True)
    report["error_status"] = widget.status_label.text()
    report["error_notified"] = [str(n.message) for n in notification_manager.records][-1:]
    report["error_changed_layers"] = [layer.name for layer in viewer.layers] != layers_before

    phase[0] = "close"
    # the dock's X, then the Plugins menu again
    old = weakref.ref(widget)
    close = getattr(getattr(dock, "title", None), "close_button", None)
    close.click() if close is not None else dock.destroyOnClose()
    wait(lambda: True)
    report["closed"] = widget.closed
    del widget, dock
    for _ in range(3):
        wait(lambda: True)
        gc.collect()
    report["old_widget_alive"] = old() is not None
    phase[0] = "reopen"
    dock, widget = open_widget()
    widget.set_vocabulary("cup\\nsaucer\\ntable")
    viewer.layers.selection.active = viewer.layers["coffee"]
    report["status_reopened"] = run(widget)
    docks = getattr(viewer.window, "dock_widgets", None)  # public from napari 0.6.2
    docks = viewer.window._dock_widgets if docks is None else docks
    report["docks"] = [name for name in docks if "ITACLIP" in name]
    report["gap_max"] = max(beats)
    report["gap_median"] = sorted(beats)[len(beats) // 2]
    report["gaps"] = sorted(gaps)[-5:]
    report["triton_loaded"] = "triton" in sys.modules
    save()
    viewer.close()
    """
)


def test_a_whole_session_as_a_user(tiny_model_json, tiny_checkpoint, tmp_path):
    rep = _run_child(SESSION_CHILD, [tiny_model_json, tiny_checkpoint], tmp_path)
    assert rep["torch_before_plugin"] is False
    # picking follows the user; a sample's suggested vocabulary is loaded
    assert rep["picked_after_samples"] == "coffee"
    assert "cup" in rep["vocab_after_samples"]
    assert rep["picked_after_select"] == "astronaut"
    assert "rocket" in rep["vocab_after_select"]
    assert rep["status_run"].startswith("Done"), rep["status_run"]
    assert "image features reused" not in rep["status_run"]
    assert {"astronaut labels", "astronaut heatmaps"} <= set(rep["layers_run"])
    assert rep["edits"][1] == f"Edited pixels: {rep['edits'][0]}" and rep["edits"][0] > 0
    # the 3D view: complete outputs, features set
    assert rep["picked_3d"] == "coffee"
    assert rep["status_3d"].startswith("Done"), rep["status_3d"]
    assert rep["coffee_outputs"] == ["coffee labels", "coffee heatmaps"]
    assert rep["coffee_features"]
    # a 2D image's heatmaps wait for the 2D view (in 3D their classes would be the depth)
    assert rep["coffee_heat_visible"] == [False, True]
    assert "hidden in the 3D view" in rep["status_3d"]
    # a rename during the run keeps the result, and the user's stroke
    assert rep["status_rename"].startswith("Done"), rep["status_rename"]
    assert "astro" in rep["sources"] and rep["astro_meta"] == "astro"
    assert rep["stroke_kept"]
    # a refusal says what and why, on the status line and as a notification; no layer
    assert "vocabulary" in rep["error_status"].lower()
    assert rep["error_notified"] and "vocabulary" in rep["error_notified"][0].lower()
    assert rep["error_changed_layers"] is False
    # the dock's X tears the widget down; the menu gives one working widget
    assert rep["closed"] and rep["old_widget_alive"] is False
    assert rep["status_reopened"].startswith("Done"), rep["status_reopened"]
    assert len(rep["docks"]) == 1
    # the GUI thread kept ticking all along: no freeze. The precise stalls are measured by
    # benchmarks/bench_gui.py on a quiet machine; here the bound only catches a hang, as
    # the machine running the suite may be busy (seconds-long gaps were seen under load)
    assert rep["gap_median"] < 0.1 and rep["gap_max"] < 10.0, rep["gaps"]
