"""Regenerate the widget screenshots of docs/widget.md (headless: run under xvfb-run).

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/images/make_screenshots.py

The run uses a tiny randomly initialised CLIP (no download), so the segmentation in
the pictures shows the widget and the output layers, not ITACLIP's quality.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch  # before Qt

HERE = Path(__file__).resolve().parent
TINY = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def tiny_segmenter():
    """A CPU Segmenter around a seeded tiny random CLIP, and a config that fits it."""
    import open_clip

    from napari_itaclip import ITACLIPConfig, Segmenter

    path = Path(tempfile.mkdtemp()) / "itaclip-tiny.json"
    path.write_text(json.dumps(TINY))
    open_clip.add_model_config(path)
    torch.manual_seed(0)
    model = open_clip.create_model(path.stem, pretrained=None).eval()
    cfg = ITACLIPConfig(short_side=None, crop=32, stride=16, mid_layers=(2, 3), pamr_steps=2,
                        pamr_dilations=(1, 2))
    return Segmenter(model=model, pretrained=None, device="cpu", config=cfg), cfg


def save(viewer, name, max_side=1000):
    """Screenshot of the whole window as a small palette PNG (< 300 KB)."""
    from PIL import Image

    shot = np.ascontiguousarray(viewer.screenshot(canvas_only=False, flash=False)[..., :3])
    img = Image.fromarray(shot)
    scale = min(1.0, max_side / max(img.size))
    if scale < 1:
        img = img.resize((round(img.width * scale), round(img.height * scale)),
                         Image.Resampling.LANCZOS)
    img = img.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    path = HERE / name
    img.save(path, optimize=True)
    print(path, path.stat().st_size // 1024, "KB")


def main() -> int:
    """Open the widget on the astronaut sample, run it, save three screenshots."""
    import napari
    from qtpy.QtWidgets import QApplication

    seg, cfg = tiny_segmenter()
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-itaclip",
                                                         "ITACLIP segmentation")
    viewer.open_sample("napari-itaclip", "astronaut")
    app = QApplication.instance()
    for _ in range(20):
        app.processEvents()
    save(viewer, "widget-start.png")

    widget.use_segmenter(seg)
    widget.set_config(cfg.replace(prob_threshold=0.0))
    widget.run()
    while widget.busy:
        app.processEvents()
    for _ in range(20):
        app.processEvents()
    viewer.layers["astronaut heatmaps"].visible = False
    save(viewer, "widget-result.png")

    viewer.layers["astronaut heatmaps"].visible = True
    viewer.layers["astronaut labels"].visible = False
    widget.heatmaps.combo.setCurrentText("person")
    widget.advanced_panel.expand()
    for _ in range(20):
        app.processEvents()
    save(viewer, "widget-heatmap.png")
    teach_screenshot(viewer, widget, app)
    fold_screenshots(viewer, app)
    viewer.close()
    return 0


def teach_screenshot(viewer, widget, app) -> None:
    """Strokes on the labels (a new value 5, and class 1), Learn from edits, Run."""
    from qtpy.QtWidgets import QScrollArea

    viewer.layers["astronaut heatmaps"].visible = False
    labels = viewer.layers["astronaut labels"]
    labels.visible = True
    labels.brush_size = 25
    for coord in [(170, 420), (230, 400), (300, 380)]:  # over the rocket
        labels.paint(coord, 5)
    labels.brush_size = 15
    labels.paint((110, 200), 1)  # the face
    widget.teach.learn_check.setChecked(True)
    widget.run()
    while widget.busy:
        app.processEvents()
    viewer.layers.selection.active = labels
    widget.findChild(QScrollArea).ensureWidgetVisible(widget.teach)
    for _ in range(20):
        app.processEvents()
    save(viewer, "widget-teach.png")

def fold_screenshots(viewer, app) -> None:
    """The window at laptop sizes: Run, Cancel, the progress bar and the status line are
    pinned below the dock's scroll area, so they are visible without scrolling."""
    viewer.layers["astronaut labels"].visible = True
    for w, h in [(1280, 800), (1500, 950)]:
        viewer.window.resize(w, h)
        for _ in range(30):
            app.processEvents()
        save(viewer, f"widget-{w}x{h}.png", max_side=max(w, h))



if __name__ == "__main__":
    sys.exit(main())
