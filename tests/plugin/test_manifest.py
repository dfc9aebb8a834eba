"""The npe2 manifest: valid, and the widget reachable from Plugins and Layers > Segment."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("napari")

MANIFEST = Path(__file__).resolve().parents[2] / "src" / "napari_itaclip" / "napari.yaml"


def test_manifest_is_valid_and_contributes_to_layers_segment():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(MANIFEST)  # validates against npe2's schema
    assert manifest.name == "napari-itaclip"
    items = manifest.contributions.menus["napari/layers/segment"]
    assert [item.command for item in items] == ["napari-itaclip.widget"]
    assert [w.command for w in manifest.contributions.widgets] == ["napari-itaclip.widget"]
    ids = {c.id: c.python_name for c in manifest.contributions.commands}
    assert ids["napari-itaclip.widget"] == "napari_itaclip.plugin.widget:ITACLIPWidget"


def test_layers_segment_menu_opens_the_widget(make_napari_viewer):
    """Issue #8 (d): the widget is in napari's Layers > Segment menu, and the item works."""
    from napari._app_model import get_app_model

    from napari_itaclip.plugin.widget import ITACLIPWidget

    viewer = make_napari_viewer()
    app = get_app_model()
    items = [getattr(i, "command", None) for i in app.menus.get_menu("napari/layers/segment")]
    ids = [c.id for c in items if c is not None]
    # newer napari lists the contributed command; napari 0.5 its "<plugin>:<widget>" action
    ours = [i for i in ids if i in ("napari-itaclip.widget", "napari-itaclip:ITACLIP segmentation")]
    assert ours, ids
    app.commands.execute_command(ours[0]).result()
    docks = [d.widget() for d in viewer.window._dock_widgets.values()]
    assert any(isinstance(w, ITACLIPWidget) or w.findChild(ITACLIPWidget) for w in docks)
