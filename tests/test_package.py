"""The package's public surface (spec/api.md) and its import cost."""

import subprocess
import sys


def test_import_is_cheap_and_gui_free():
    code = (
        "import sys, napari_itaclip as m\n"
        "mods = ('torch', 'open_clip', 'napari', 'qtpy', 'PyQt6', 'magicgui')\n"
        "heavy = [x for x in mods if x in sys.modules]\n"
        "print(','.join(heavy))\n"
        "from napari_itaclip import ITACLIPConfig, Segmenter, Vocabulary, SegmentationResult, segment\n"
        "assert 'napari' not in sys.modules and 'qtpy' not in sys.modules\n"

    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_measure_import_is_cheap():
    code = (
        "import sys\n"
        "from napari_itaclip import measure, Measurements\n"
        "print(','.join(x for x in ('pandas', 'skimage', 'torch', 'napari') if x in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_names():
    import napari_itaclip as m

    for name in ("ITACLIPConfig", "Segmenter", "Vocabulary", "SegmentationResult", "segment",
                 "segment_layer", "Progress", "Exemplars", "measure", "Measurements",
                 "measure_layer", "exemplars_from_layers"):
        assert name in m.__all__ and getattr(m, name) is not None
    assert callable(m.Segmenter.iter_segment) and callable(m.SegmentationResult.relabel)
    assert callable(m.SegmentationResult.measure)


def test_exemplars_load_without_torch():
    code = (
        "import sys\n"
        "from napari_itaclip import Exemplars\n"
        "assert callable(Exemplars.load) and callable(Exemplars.save)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_openmp_threads_sleep_unless_the_user_chose():
    import os

    code = "import os, napari_itaclip\nprint(os.environ['OMP_WAIT_POLICY'])\n"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env)
    assert out.stdout.strip() == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**env, "OMP_WAIT_POLICY": "ACTIVE"})
    assert out.stdout.strip() == "ACTIVE"
