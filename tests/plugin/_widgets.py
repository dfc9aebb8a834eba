"""Driving the dock widget in tests as a user does: Run and wait, paint a stroke."""

from __future__ import annotations

RUN_TIMEOUT = 30_000


def open_widget(viewer):
    """The dock widget as the Plugins menu opens it: napari builds it with a proxy of the
    viewer (``add_plugin_dock_widget``), never ``ITACLIPWidget(viewer)``."""
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-itaclip",
                                                         "ITACLIP segmentation")
    return widget


def run(qtbot, widget, timeout: int = RUN_TIMEOUT) -> str:
    """Press Run, wait until the worker is done; the status line."""
    widget.run_btn.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)
    return widget.status_label.text()


def stroke(labels, value, centre=(10, 12), radius=3):
    """Paint a disk "as a user" (fires ``paint``); returns the mask of changed pixels."""
    before = labels.data.copy()
    labels.brush_size = 2 * radius + 1
    labels.paint(centre, value, refresh=True)
    return labels.data != before
