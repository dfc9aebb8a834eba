"""Everything in tests/plugin needs napari and a Qt display: marked ``gui`` here, in one place."""

from __future__ import annotations

from pathlib import Path

import pytest

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.gui)


@pytest.fixture
def make_widget(make_napari_viewer, tiny_segmenter, tiny_config):
    """``make(viewer=None) -> (viewer, widget)``: the dock widget opened as the Plugins
    menu opens it (through napari's viewer proxy), with the tiny model and configuration,
    Live's debounce shortened for tests."""
    from _widgets import open_widget

    def make(viewer=None):
        viewer = viewer or make_napari_viewer()
        widget = open_widget(viewer)
        widget.use_segmenter(tiny_segmenter)
        widget.set_config(tiny_config)
        widget.live.timer.setInterval(30)
        return viewer, widget

    return make
