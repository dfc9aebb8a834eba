"""Release check, run by .ci/run with the built wheel installed (not editable) in a fresh
venv, from a folder outside the source tree, under Xvfb: the package comes from
site-packages, its version from the wheel's metadata, and napari finds the plugin through
npe2 and opens its dock widget and sample data the way the Plugins menu does.
"""

from __future__ import annotations

import json
import os
import sys
from importlib.metadata import version
from pathlib import Path

import napari_itaclip

site = Path(napari_itaclip.__file__).resolve()
source_tree = Path(sys.argv[1]).resolve()
assert "site-packages" in site.parts, site
assert source_tree not in site.parents, f"imported from the source tree: {site}"
assert napari_itaclip.__version__ == version("napari-itaclip"), napari_itaclip.__version__
assert "torch" not in sys.modules
omp_before = os.environ.get("OMP_WAIT_POLICY")

import napari  # noqa: E402
from npe2 import PluginManager  # noqa: E402

pm = PluginManager.instance()
pm.discover()
manifest = pm.get_manifest("napari-itaclip")
assert manifest.package_metadata.version == napari_itaclip.__version__

viewer = napari.Viewer(show=False)
viewer.open_sample("napari-itaclip", "astronaut")
dock, widget = viewer.window.add_plugin_dock_widget("napari-itaclip", "ITACLIP segmentation")
assert type(widget).__name__ == "ITACLIPWidget", type(widget)
assert type(widget).__module__.startswith("napari_itaclip.plugin.widget")
report = {
    "package": str(site.parent),
    "version": napari_itaclip.__version__,
    "napari": napari.__version__,
    "widget": type(widget).__name__,
    "layers": [layer.name for layer in viewer.layers],
    "torch_loaded_by_opening_the_widget": "torch" in sys.modules,
    # opening the widget changes nothing in the process (docs/architecture.md)
    "process_changed_by_opening_the_widget": (
        os.environ.get("OMP_WAIT_POLICY") != omp_before
        or any(type(f).__name__ == "TritonGuard" for f in sys.meta_path)),
}
viewer.close()
assert report["layers"] == ["astronaut"], report
assert not report["torch_loaded_by_opening_the_widget"], report
assert not report["process_changed_by_opening_the_widget"], report
print(json.dumps(report, indent=1))
