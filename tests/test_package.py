"""The package's public surface (the names users import) and its import cost."""

import subprocess
import sys

from _imports import loaded_by


def test_import_is_cheap_and_gui_free():
    assert loaded_by("import napari_itaclip") == []
    # the public names resolve lazily; the engine's pull in torch, never Qt or napari
    assert loaded_by("from napari_itaclip import ITACLIPConfig, Segmenter, Vocabulary, "
                     "SegmentationResult, segment", ("napari", "qtpy", "magicgui")) == []


def test_measure_import_is_cheap():
    assert loaded_by("from napari_itaclip import measure, Measurements",
                     ("pandas", "skimage", "torch", "napari")) == []


def test_public_names():
    import napari_itaclip as m
    from napari_itaclip.config import ITACLIPConfig
    from napari_itaclip.engine import registry, segmenter
    from napari_itaclip.engine.exemplars import Exemplars
    from napari_itaclip.measurements import Measurements, measure
    from napari_itaclip.plugin import scripting
    from napari_itaclip.vocabulary import Vocabulary

    homes = {"ITACLIPConfig": ITACLIPConfig, "Segmenter": segmenter.Segmenter,
             "Vocabulary": Vocabulary, "SegmentationResult": segmenter.SegmentationResult,
             "segment": registry.segment, "segment_layer": scripting.segment_layer,
             "Progress": segmenter.Progress, "measure": measure, "Measurements": Measurements,
             "measure_layer": scripting.measure_layer,
             "Exemplars": Exemplars,
             "exemplars_from_layers": scripting.exemplars_from_layers}
    for name, obj in homes.items():
        assert name in m.__all__ and getattr(m, name) is obj  # the real thing, lazily
    assert callable(m.Segmenter.iter_segment) and callable(m.SegmentationResult.relabel)
    assert callable(m.SegmentationResult.measure)


def test_exemplars_load_without_torch():
    assert loaded_by("from napari_itaclip import Exemplars\n"
                     "assert callable(Exemplars.load) and callable(Exemplars.save)") == []


def test_openmp_threads_sleep_unless_the_user_chose():
    """Set by the engine's torch modules before torch loads (tests/test_torch_setup.py: not
    by the package)."""
    import os

    code = "import os, napari_itaclip.engine.segmenter\nprint(os.environ['OMP_WAIT_POLICY'])\n"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env)
    assert out.stdout.strip() == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**env, "OMP_WAIT_POLICY": "ACTIVE"})
    assert out.stdout.strip() == "ACTIVE"


def test_version_comes_from_the_distribution_metadata():
    """pyproject.toml is the one place the version is written."""
    import tomllib
    from importlib.metadata import version
    from pathlib import Path

    import napari_itaclip

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if pyproject.is_file():
        declared = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"]
        assert version("napari-itaclip") == declared
    assert napari_itaclip.__version__ == version("napari-itaclip")
    assert "__version__" in dir(napari_itaclip) and "__version__" in napari_itaclip.__all__
    src = Path(napari_itaclip.__file__).read_text(encoding="utf-8")
    assert "__version__ = " not in src  # no second copy of the number
    assert loaded_by("import napari_itaclip", ("importlib.metadata",)) == []
