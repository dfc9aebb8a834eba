"""Regenerate docs/images/widget-measure.png of docs/measure.md (headless: under xvfb-run).

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/images/make_measure_screenshot.py

The segmentation is run with the tiny random CLIP of make_screenshots.py (no download);
its labels mean nothing, so the picture's labels are then replaced by a threshold of
the coins image written into the Labels layer, the way a user's edits land there.
Measure measures whatever the Labels layer holds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_screenshots import save, tiny_segmenter  # noqa: E402  (imports torch before Qt)


def coin_labels(image: np.ndarray) -> np.ndarray:
    """0 = background, 1 = coin: a watershed of the Sobel edges from dark/bright seeds."""
    from scipy import ndimage
    from skimage import filters, segmentation

    markers = np.zeros(image.shape, np.int32)
    markers[image < 30] = 1
    markers[image > 150] = 2
    mask = segmentation.watershed(filters.sobel(image), markers) == 2
    return ndimage.binary_fill_holes(mask).astype(np.int32)


def main() -> int:
    """Segment skimage's coins, write thresholded labels, press Measure, save a screenshot."""
    import napari
    from qtpy.QtWidgets import QApplication
    from skimage import data

    seg, cfg = tiny_segmenter()
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 980)
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-itaclip",
                                                         "ITACLIP segmentation")
    coins = data.coins()
    viewer.add_image(coins, name="coins", scale=(0.1, 0.1), units="mm")
    widget.use_segmenter(seg)
    widget.set_config(cfg)
    widget.set_vocabulary("background: table\ncoin")
    widget.run()
    app = QApplication.instance()
    while widget.busy:
        app.processEvents()
    labels = viewer.layers["coins labels"]
    labels.data = coin_labels(coins)
    widget.measure_panel.measure()
    while widget.measure_panel.busy:
        app.processEvents()
    viewer.layers["coins heatmaps"].visible = False
    labels.visible = False
    from qtpy.QtWidgets import QScrollArea

    for _ in range(30):
        app.processEvents()
    bar = widget.findChild(QScrollArea).verticalScrollBar()
    bar.setValue(bar.maximum())
    first = widget.measure_panel.measurements.objects.iloc[3]
    # over a coin: the status bar shows its features row
    viewer.layers.selection.active = viewer.layers["coins objects"]
    viewer.cursor.position = (0.0, first["centroid_y"], first["centroid_x"])
    for _ in range(30):
        app.processEvents()
    save(viewer, "widget-measure.png")
    print(widget.measure_panel.measurements.classes.to_string())
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
