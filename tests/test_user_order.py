"""End-to-end checks that start a fresh process the way each kind of user does.

napari users start napari first: its OpenGL canvas exists (and, on Mesa, Mesa's LLVM is
mapped) before anything of torch is imported. This test session imports torch first
(conftest.py), which hides every crash that depends on that order, so each check here
runs in a child process that begins exactly as the user's does and reports back as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("napari")
pytest.importorskip("qtpy")

pytestmark = pytest.mark.gui

TIMEOUT = 240  # s per child: napari start-up under Xvfb, the model stack import, a tiny run
VOCAB = "background: sky, wall\\nperson, astronaut\\nrocket"
TINY_CFG = "dict(short_side=None, crop=32, stride=16, mid_layers=(2, 3), pamr_steps=2, pamr_dilations=(1, 2))"

# Shared by the napari children: the image, a tiny local model, and a report at exit.
PRELUDE = textwrap.dedent(
    """
    import faulthandler, json, sys, time
    faulthandler.enable()
    MODEL_JSON, CHECKPOINT, REPORT = sys.argv[1], sys.argv[2], sys.argv[3]
    report = {}

    def save():
        with open(REPORT, "w") as fh:
            json.dump(report, fh)

    def llvm_mapped():
        with open("/proc/self/maps") as fh:
            return any("libLLVM" in line for line in fh)

    def wait(predicate, timeout=180.0):
        from qtpy.QtWidgets import QApplication
        end = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > end:
                raise TimeoutError("gave up waiting")
            QApplication.processEvents()
            time.sleep(0.02)

    def describe(viewer, name):
        labels, heat = viewer.layers[name + " labels"], viewer.layers[name + " heatmaps"]
        return {
            "labels_shape": list(labels.data.shape), "heat_shape": list(heat.data.shape),
            "labels_type": type(labels).__name__, "heat_type": type(heat).__name__,
            "labels_scale": [float(s) for s in labels.scale],
            "class_names": [str(c) for c in labels.features["class_name"]],
            "label_values": sorted(int(v) for v in set(labels.data.ravel().tolist())),
            "ids": [id(labels), id(heat)],
        }
    """
)

#: In a child, after the viewer has its image: open the widget from the plugin's manifest
#: (torch not loaded before) and set it to the tiny model on the CPU.
OPEN_WIDGET = textwrap.indent(textwrap.dedent(f"""\
    report["torch_before_plugin"] = "torch" in sys.modules
    dock, widget = viewer.window.add_plugin_dock_widget("napari-itaclip", "ITACLIP segmentation")
    from napari_itaclip import ITACLIPConfig
    widget.set_config(ITACLIPConfig(**{TINY_CFG}))
    widget.set_vocabulary("{VOCAB}")
    widget.model_panel.model_combo.setCurrentText(MODEL_JSON)
    widget.model_panel.pretrained_combo.setCurrentText(CHECKPOINT)
    widget.model_panel.device_combo.setCurrentText("cpu")
"""), "    ").strip("\n").lstrip()

WIDGET_CHILD = PRELUDE + textwrap.dedent(
    f"""
    import napari, numpy as np, skimage
    viewer = napari.Viewer()
    viewer.add_image(skimage.data.astronaut()[::4, ::4], name="astronaut", scale=(2.0, 2.0))
    wait(lambda: True)
    report["llvm_before_plugin"] = llvm_mapped()
    {OPEN_WIDGET}
    runs = []
    for _ in range(2):  # the second run updates the layers in place
        widget.run_btn.click()
        wait(lambda: not widget.busy)
        runs.append(describe(viewer, "astronaut"))
    report["runs"] = runs
    report["status"] = widget.status_label.text()
    report["torch_after"] = "torch" in sys.modules
    report["triton_loaded"] = "triton" in sys.modules
    save()
    viewer.close()
    """
)

# Correct and teach as a user: Run, brush strokes, a slider, Run again; then Learn from edits.
TEACH_CHILD = PRELUDE + textwrap.dedent(
    f"""
    import napari, numpy as np, skimage
    viewer = napari.Viewer()
    viewer.add_image(skimage.data.astronaut()[::4, ::4], name="astronaut")
    wait(lambda: True)
    {OPEN_WIDGET}

    def run():
        widget.run_btn.click()
        wait(lambda: not widget.busy)
        return widget.status_label.text()

    run()
    labels = viewer.layers["astronaut labels"]
    start = labels.data.copy()
    labels.brush_size = 9
    for coord, value in [((20, 20), 1), ((90, 100), 2), ((60, 30), 0)]:
        labels.paint(coord, value)  # a brush stroke: fires paint
    wait(lambda: True)
    edited = labels.data != start
    painted = labels.data.copy()
    report["n_edited"] = int(edited.sum())
    try:  # counted after the paint events, on the next turns of the event loop
        wait(lambda: widget.teach.edits_label.text() == f"Edited pixels: {{int(edited.sum())}}",
             timeout=10)
    except TimeoutError:
        pass
    report["count_label"] = widget.teach.edits_label.text()
    widget.threshold_panel.prob.setValue(0.55)
    wait(lambda: widget.status_label.text().startswith("Relabelled"))
    report["kept_after_slider"] = bool((labels.data[edited] == painted[edited]).all())
    report["status_run2"] = run()
    report["kept_after_run"] = bool((labels.data[edited] == painted[edited]).all())
    report["same_layer"] = viewer.layers["astronaut labels"] is labels

    before = labels.data.copy()
    labels.paint((30, 100), 5)  # a value that is no class of the vocabulary
    wait(lambda: True)
    stroke = (labels.data == 5) & (before != 5)
    widget.teach.learn_check.setChecked(True)
    report["learn_text"] = widget.teach.learn_check.text()
    report["status_learn"] = run()
    report["features_index"] = [int(v) for v in labels.features["index"]]
    report["features_names"] = [str(v) for v in labels.features["class_name"]]
    report["stroke_kept"] = bool((labels.data[stroke] == 5).all())
    report["spread"] = int(((labels.data == 5) & ~stroke).sum())
    report["kept_after_learn"] = bool((labels.data[edited] == painted[edited]).all())
    report["editor"] = widget.vocab_panel.editor.toPlainText()
    report["triton_loaded"] = "triton" in sys.modules
    save()
    viewer.close()
    """
)

CONSOLE_CHILD = PRELUDE + textwrap.dedent(
    f"""
    import napari, numpy as np, skimage
    viewer = napari.Viewer()
    viewer.add_image(skimage.data.astronaut()[::4, ::4], name="astronaut")
    wait(lambda: True)
    report["llvm_before_plugin"] = llvm_mapped()
    report["torch_before_plugin"] = "torch" in sys.modules
    # typed in napari's console, after the viewer exists
    from napari_itaclip import ITACLIPConfig, segment_layer
    cfg = ITACLIPConfig(**{TINY_CFG})
    runs = []
    for _ in range(2):
        segment_layer(viewer.layers["astronaut"], "{VOCAB}", viewer=viewer, model=MODEL_JSON,
                      pretrained=CHECKPOINT, device="cpu", config=cfg)
        runs.append(describe(viewer, "astronaut"))
    report["runs"] = runs
    report["triton_loaded"] = "triton" in sys.modules
    try:
        import triton  # noqa: F401  (something that needs triton, later in the session)
        report["triton_import"] = "ok"
    except ImportError as exc:
        report["triton_import"] = type(exc).__name__ + ": " + str(exc)
    save()
    viewer.close()
    """
)

# `napari image.png -w napari-itaclip`: the console script itself, run in this process
# with a check scheduled once napari's event loop starts: look at the window, press Run, quit.
NAPARI_CLI_CHILD = PRELUDE + textwrap.dedent(
    f"""
    import runpy
    from napari._qt.qt_event_loop import get_qapp
    from qtpy.QtCore import QTimer
    app = get_qapp()
    IMAGE, NAPARI = sys.argv[4], sys.argv[5]

    def check():
        import napari
        try:
            viewer = napari.current_viewer()
            report["layers"] = [layer.name for layer in viewer.layers]
            docks = getattr(viewer.window, "dock_widgets", None)  # public from napari 0.6.2
            docks = viewer.window._dock_widgets if docks is None else docks
            report["docks"] = list(docks)
            report["llvm_before_plugin"] = llvm_mapped()
            report["torch_before_plugin"] = "torch" in sys.modules
            widget = next(w for name, w in docks.items() if "ITACLIP" in name)
            widget = getattr(widget, "widget", lambda: widget)() if not hasattr(widget, "run_btn") else widget
            from napari_itaclip import ITACLIPConfig
            widget.set_config(ITACLIPConfig(**{TINY_CFG}))
            widget.set_vocabulary("{VOCAB}")
            widget.model_panel.model_combo.setCurrentText(MODEL_JSON)
            widget.model_panel.pretrained_combo.setCurrentText(CHECKPOINT)
            widget.model_panel.device_combo.setCurrentText("cpu")
            widget.run_btn.click()
            wait(lambda: not widget.busy)
            report["runs"] = [describe(viewer, report["layers"][0])]
        except Exception as exc:
            report["error"] = repr(exc)
        save()
        viewer.close()
        app.quit()

    from napari._qt import qt_event_loop
    _napari_run = qt_event_loop.run  # what napari's main() calls once the viewer is built

    def run_then_check(*args, **kwargs):
        QTimer.singleShot(500, check)
        return _napari_run(*args, **kwargs)

    qt_event_loop.run = run_then_check
    sys.argv = [NAPARI, IMAGE, "-w", "napari-itaclip"]
    runpy.run_path(NAPARI, run_name="__main__")
    """
)


def _display_or_skip():
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        pytest.skip("needs a display (Xvfb): the user-order checks open a real napari window")


def _run_child(script: str, args, tmp_path: Path) -> dict:
    _display_or_skip()
    code = tmp_path / "child.py"
    code.write_text(script)
    report = tmp_path / "report.json"
    env = dict(os.environ, NAPARI_ITACLIP_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run(
        [sys.executable, str(code), *map(str, args[:2]), str(report), *map(str, args[2:])],
        capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=tmp_path,
    )
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, f"child exited with {proc.returncode} (-11 = SIGSEGV):\n{tail}"
    assert report.exists(), f"child wrote no report:\n{tail}"
    return json.loads(report.read_text())


def _check_outputs(run: dict, shape=(128, 128)):
    assert run["labels_type"] == "Labels" and run["heat_type"] == "Image"
    assert run["labels_shape"] == list(shape)
    assert run["heat_shape"] == [3, *shape]
    assert run["class_names"] == ["background", "person", "rocket"]
    assert set(run["label_values"]) <= {0, 1, 2}


def test_widget_run_after_viewer(tiny_model_json, tiny_checkpoint, tmp_path):
    """napari first, an image layer, the dock widget from the manifest, Run (twice)."""
    rep = _run_child(WIDGET_CHILD, [tiny_model_json, tiny_checkpoint], tmp_path)
    assert rep["torch_before_plugin"] is False
    first, second = rep["runs"]
    _check_outputs(first)
    assert first["labels_scale"] == [2.0, 2.0]
    assert second["ids"] == first["ids"], "a re-run must update the layers in place"
    assert rep["status"].startswith("Done"), rep["status"]
    if rep["llvm_before_plugin"]:  # Mesa's OpenGL: triton must have been kept out
        assert rep["triton_loaded"] is False


def test_widget_correct_and_teach_after_viewer(tiny_model_json, tiny_checkpoint, tmp_path):
    """napari first, Run, brush strokes, a slider move, Run again: every edited pixel is
    unchanged. Then Learn from edits: a new value gets a features row and spreads.
    """
    rep = _run_child(TEACH_CHILD, [tiny_model_json, tiny_checkpoint], tmp_path)
    assert rep["torch_before_plugin"] is False
    assert rep["n_edited"] > 0
    assert rep["count_label"] == f"Edited pixels: {rep['n_edited']}"
    assert rep["kept_after_slider"] and rep["kept_after_run"] and rep["same_layer"]
    assert rep["status_run2"].startswith("Done"), rep["status_run2"]
    assert rep["learn_text"] == "Learn from edits"
    assert rep["status_learn"].startswith("Done"), rep["status_learn"]
    assert 5 in rep["features_index"]
    assert rep["features_names"][rep["features_index"].index(5)] == "class 5"
    assert "5: class 5" in rep["editor"]
    assert rep["stroke_kept"] and rep["spread"] > 0 and rep["kept_after_learn"]


def test_console_segment_layer_after_viewer(tiny_model_json, tiny_checkpoint, tmp_path):
    """segment_layer imported and called from napari's console after the viewer exists."""
    rep = _run_child(CONSOLE_CHILD, [tiny_model_json, tiny_checkpoint], tmp_path)
    assert rep["torch_before_plugin"] is False
    first, second = rep["runs"]
    _check_outputs(first)
    assert second["ids"] == first["ids"]
    if rep["llvm_before_plugin"]:
        assert rep["triton_loaded"] is False
        # a later triton import in the same session: a clear error, not a crash
        assert rep["triton_import"].startswith("TritonUnavailableError")
        assert "libLLVM" in rep["triton_import"] and "separate Python process" in rep["triton_import"]


def test_napari_command_with_widget(tiny_model_json, tiny_checkpoint, tmp_path):
    """`napari image.png -w napari-itaclip` starts, shows the widget, and Run works."""
    import skimage.io
    from skimage import data

    image = tmp_path / "astronaut.png"
    skimage.io.imsave(image, data.astronaut()[::4, ::4], check_contrast=False)
    napari_script = Path(sys.executable).with_name("napari")
    if not napari_script.exists():
        pytest.skip("the napari console script is not installed beside this Python")
    rep = _run_child(NAPARI_CLI_CHILD, [tiny_model_json, tiny_checkpoint, image, napari_script],
                     tmp_path)
    assert "error" not in rep, rep.get("error")
    assert rep["layers"] == ["astronaut"]
    assert any("ITACLIP" in name for name in rep["docks"]), rep["docks"]
    assert rep["torch_before_plugin"] is False
    _check_outputs(rep["runs"][0])


def test_cli_from_a_shell(tiny_model_json, tiny_checkpoint, tmp_path):
    """`napari-itaclip segment` as a console script in a fresh process."""
    import skimage.io
    import tifffile
    from skimage import data

    skimage.io.imsave(tmp_path / "astronaut.png", data.astronaut()[::4, ::4], check_contrast=False)
    script = Path(sys.executable).with_name("napari-itaclip")
    if not script.exists():
        pytest.skip("the napari-itaclip console script is not installed beside this Python")
    env = dict(os.environ, NAPARI_ITACLIP_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run(
        [str(script), "segment", str(tmp_path / "astronaut.png"), "--vocab",
         "background: sky, wall\nperson, astronaut\nrocket", "--model", str(tiny_model_json),
         "--pretrained", str(tiny_checkpoint), "--device", "cpu", "--short-side", "none",
         "--set", "crop=32", "--set", "stride=16", "--set", "mid_layers=[2,3]",
         "--set", "pamr_dilations=[1,2]", "--set", "pamr_steps=2", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    outs = sorted(p.name for p in (tmp_path / "out").iterdir())
    labels = next(p for p in (tmp_path / "out").iterdir() if "labels" in p.name)
    arr = tifffile.imread(labels)
    assert arr.shape == (128, 128), outs
    assert set(arr.ravel().tolist()) <= {0, 1, 2}


MEASURE_CHILD = PRELUDE + textwrap.dedent(
    f"""
    import napari, numpy as np, skimage
    viewer = napari.Viewer()
    viewer.add_image(skimage.data.astronaut()[::4, ::4], name="astronaut", scale=(0.5, 0.5),
                     units="um")
    wait(lambda: True)
    {OPEN_WIDGET}
    widget.run_btn.click()
    wait(lambda: not widget.busy)
    labels = viewer.layers["astronaut labels"]
    labels.brush_size = 9
    labels.paint((20, 20), 2, refresh=True)  # the user's edit, as a brush stroke
    edited = labels.data.copy()
    widget.measure_panel.measure_btn.click()
    wait(lambda: not widget.measure_panel.busy)
    objects = viewer.layers["astronaut objects"]
    from napari_itaclip import measure
    ref = measure(edited, [str(c) for c in labels.features["class_name"]], spacing=(0.5, 0.5))
    table = widget.measure_panel.table
    report.update({{
        "objects_type": type(objects).__name__,
        "feature_rows": len(objects.features), "ref_rows": len(ref.objects),
        "features_index_is_id": objects.features["index"].tolist() == ref.objects["id"].tolist(),
        "instances_equal": bool(np.array_equal(objects.data, ref.instances)),
        "areas_equal": bool(np.allclose(objects.features["area"], ref.objects["area"])),
        "units": sorted(set(objects.features["unit"])),
        "table_rows": table.rowCount(),
        "table_pixels": [int(table.item(r, 2).text()) for r in range(table.rowCount())],
        "edited_pixels": np.bincount(edited.ravel(), minlength=3).tolist(),
        "status": widget.status_label.text(),
    }})
    save()
    viewer.close()
    """
)


def test_widget_measure_after_run(tiny_model_json, tiny_checkpoint, tmp_path):
    """napari first, the widget from the manifest, Run, a brush edit, Measure."""
    rep = _run_child(MEASURE_CHILD, [tiny_model_json, tiny_checkpoint], tmp_path)
    assert rep["torch_before_plugin"] is False
    assert rep["objects_type"] == "Labels"
    assert rep["feature_rows"] == rep["ref_rows"] >= 1
    assert rep["features_index_is_id"] and rep["instances_equal"] and rep["areas_equal"]
    assert rep["units"] == ["µm"]
    assert rep["table_rows"] == 3 and rep["table_pixels"] == rep["edited_pixels"]
    assert rep["status"].startswith("Measured"), rep["status"]
