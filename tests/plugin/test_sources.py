"""What a run reads from a layer (plugin/sources.py): levels, working grid, geometry."""

from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from napari_itaclip import ITACLIPConfig  # noqa: E402
from napari_itaclip.plugin.sources import (  # noqa: E402
    choose_level,
    describe_run,
    level_factors,
    plane_memory,
    source_for,
    tiles_needed,
    window_count,
)


def _pyramid(side=1024, levels=4, dtype=np.uint16):
    base = np.zeros((side, side), dtype)
    return [base[:: 2**k, :: 2**k] for k in range(levels)]


@pytest.mark.parametrize("object_size, level, factor", [
    (None, 0, 1),  # native resolution: level 0
    (40, 0, 1),  # factor 1
    (64, 1, 1),  # factor 2: level 1 as it is
    (128, 2, 1),
    (256, 3, 1),
    (512, 3, 2),  # factor 16: the coarsest level (8), reduced by 2
    (200, 1, 3),  # factor 6: level 1 (2) divides it, level 2 (4) does not
])
def test_the_level_that_serves(object_size, level, factor):
    layer = napari.layers.Image(_pyramid(), multiscale=True)
    cfg = ITACLIPConfig(short_side=None, object_size=object_size)
    assert choose_level(layer, cfg) == (level, factor)


def test_short_side_reads_the_smallest_level_at_least_that_large():
    layer = napari.layers.Image(_pyramid(), multiscale=True)
    assert choose_level(layer, ITACLIPConfig(short_side=336)) == (1, 1)  # 512 >= 336 > 256
    assert choose_level(layer, ITACLIPConfig(short_side=2000)) == (0, 1)  # none is: level 0
    plain = napari.layers.Image(np.zeros((100, 100), np.uint8))
    assert choose_level(plain, ITACLIPConfig(short_side=336)) == (0, 1)


def test_levels_that_are_not_a_pyramid_are_refused():
    layer = napari.layers.Image([np.zeros((64, 64)), np.zeros((128, 128))], multiscale=True,
                                name="bad")
    with pytest.raises(ValueError, match="not a pyramid: level 1"):
        level_factors(layer)


def test_outputs_overlay_the_blocks_they_stand_for():
    layer = napari.layers.Image(_pyramid(dtype=np.uint8), multiscale=True, scale=(0.5, 0.25),
                                translate=(3.0, 4.0))
    src = source_for(layer, ITACLIPConfig(short_side=None, object_size=384))  # factor 12
    assert (src.level, src.factor, src.work_shape) == (2, 3, (86, 86))
    # one output pixel = 12 x 12 level-0 pixels, centred on them
    np.testing.assert_allclose(src.geometry["scale"], (6.0, 3.0))
    np.testing.assert_allclose(src.geometry["translate"], (3.0 + 0.5 * 5.5, 4.0 + 0.25 * 5.5))
    assert "level 2 (1/4), working 1/12: 86 × 86" in src.describe()


def test_windows_and_description():
    cfg = ITACLIPConfig(short_side=None, crop=224, stride=112, image_engineering=False)
    assert window_count((2048, 2048), cfg) == 18 * 18
    assert window_count((2048, 2048), cfg.replace(crop=None)) == 1
    layer = napari.layers.Image(np.zeros((2048, 2048), np.uint8))
    text = describe_run(source_for(layer, cfg.replace(object_size=128)), cfg.replace(
        object_size=128), n_queries=3, n_planes=1, tiled=False)
    assert "working 1/4: 512 × 512" in text and "16 window(s) × 1 view(s)" in text
    assert "GB in memory" in text
    assert "in tiles" in describe_run(source_for(layer, cfg), cfg, 3, 1, tiled=True)
    assert "larger than napari draws" not in text


def test_outputs_larger_than_one_texture_are_named():
    import dask.array as da

    cfg = ITACLIPConfig(short_side=None, crop=224, stride=112, image_engineering=False)
    big = [da.zeros((2**k, 2**k), np.uint8, chunks=4096) for k in range(17, 11, -1)]
    layer = napari.layers.Image(big, multiscale=True)
    at = cfg.replace(object_size=64)  # factor 2: level 1, 65536² outputs
    text = describe_run(source_for(layer, at), at, 3, 1, tiled=True)
    assert "outputs 65536 × 65536: larger than napari draws in one texture" in text
    fine = cfg.replace(object_size=512)  # factor 16: 8192² outputs
    assert "larger than napari" not in describe_run(source_for(layer, fine), fine, 3, 1, True)


def test_what_fits_runs_in_memory_and_what_does_not_is_tiled():
    """The plugin's estimate is the engine's model (no torch) plus what the plugin holds."""
    layer = napari.layers.Image(np.broadcast_to(np.zeros((1, 1), np.uint8), (6000, 6000)))
    balanced = ITACLIPConfig.preset("balanced")
    src = source_for(layer, balanced)
    est = plane_memory(src, balanced, 3)
    # measured for the engine alone, 6000² balanced: 7.5 GB peak RSS (issue 22); the
    # plugin holds the results and the output plan on top, a few GB, not 48
    assert 4 * 2**30 < est.host < 16 * 2**30
    assert not tiles_needed(src, balanced, 3, 23 * 10**9)  # a 23 GB machine runs it whole
    assert tiles_needed(src, balanced, 3, 2 * 2**30)  # a 2 GB one in tiles
    assert not tiles_needed(src, balanced, 3, None)  # no limit known: no tiles
    # more planes hold more results; an object size runs (and holds) less
    assert plane_memory(src, balanced, 3, n_planes=4).host > est.host
    small = balanced.replace(object_size=128)
    assert plane_memory(source_for(layer, small), small, 3).host < est.host / 4


def test_the_estimate_does_not_import_torch(tmp_path):
    """The Scale panel's line is computed on the GUI thread when the widget opens."""
    import subprocess
    import sys

    code = ("import sys, numpy as np\n"
            "from napari_itaclip import ITACLIPConfig\n"
            "from napari_itaclip.plugin.sources import source_for, describe_run\n"
            "from napari.layers import Image\n"
            "cfg = ITACLIPConfig.preset('balanced')\n"
            "src = source_for(Image(np.zeros((300, 400), np.uint16)), cfg)\n"
            "print(describe_run(src, cfg, 3, 1, False))\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "GB in memory" in out.stdout
