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
    """``make(viewer=None) -> (viewer, widget)``: the dock widget with the tiny model and
    configuration, Live's debounce shortened for tests."""
    from napari_itaclip.plugin.widget import ITACLIPWidget

    def make(viewer=None):
        viewer = viewer or make_napari_viewer()
        widget = ITACLIPWidget(viewer)
        viewer.window.add_dock_widget(widget)
        widget.use_segmenter(tiny_segmenter)
        widget.set_config(tiny_config)
        widget.live.timer.setInterval(30)
        return viewer, widget

    return make
