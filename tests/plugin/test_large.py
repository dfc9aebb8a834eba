"""Large, multiscale and lazy layers in the widget (issue 22): tiles, levels, object size.

Sizes are small (the tiny model) but the mechanisms are those of a whole slide: the
memory bound is lowered so that a few hundred pixels are "too large", and the tiles are
made small so that an image has many of them.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("qtpy")

from _widgets import RUN_TIMEOUT  # noqa: E402
from _widgets import run as _run  # noqa: E402
from _widgets import stroke as _stroke  # noqa: E402

VOCAB = "background: sky\ncell\nmembrane"


def _cells(h=192, w=256, seed=0, dtype=np.uint16):
    rng = np.random.default_rng(seed)
    img = rng.integers(100, 400, (h, w)).astype(np.float64)
    yy, xx = np.mgrid[:h, :w]
    for cy, cx in rng.integers(20, min(h, w) - 20, (12, 2)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 12**2] += 2000
    return img.astype(dtype)


@pytest.fixture
def small_tiles(monkeypatch):
    from napari_itaclip.plugin.widget import tiled

    monkeypatch.setattr(tiled, "DEFAULT_TILE", 48)


def _tiled(monkeypatch):
    """Every run is "too large for memory" (the decision itself: test_sources.py)."""
    from napari_itaclip.plugin.widget import runs

    monkeypatch.setattr(runs, "tiles_needed", lambda *args: True)


def test_a_layer_too_large_for_memory_is_tiled_with_the_in_memory_result(
        make_widget, qtbot, monkeypatch, small_tiles):
    viewer, widget = make_widget()
    viewer.add_image(_cells(), name="slide")
    widget.set_vocabulary(VOCAB)
    status = _run(qtbot, widget)  # in memory (no bound)
    assert status.startswith("Done: 1 plane"), status
    labels = viewer.layers["slide labels"]
    heat = viewer.layers["slide heatmaps"]
    ref_labels, ref_heat = labels.data.copy(), heat.data.copy()
    viewer.layers.remove(labels)
    viewer.layers.remove(heat)

    _tiled(monkeypatch)
    status = _run(qtbot, widget)
    assert "tile(s)" in status and status.startswith("Done"), status
    n_tiles = int(status.split(" of ")[1].split()[0])
    assert n_tiles > 4
    np.testing.assert_array_equal(viewer.layers["slide labels"].data, ref_labels)
    np.testing.assert_allclose(viewer.layers["slide heatmaps"].data, ref_heat, atol=1e-5)
    # relabelling works from the maps the tiles kept
    widget.threshold_panel.prob.setValue(0.9)
    qtbot.waitUntil(lambda: widget.status_label.text().startswith("Relabelled"), timeout=10000)


def test_tiles_keep_the_users_edits_and_cancel_keeps_finished_tiles(
        make_widget, qtbot, monkeypatch, small_tiles, tiny_segmenter):
    from test_session import Slow

    viewer, widget = make_widget()
    viewer.add_image(_cells(), name="slide")
    widget.set_vocabulary(VOCAB)
    _tiled(monkeypatch)
    _run(qtbot, widget)
    labels = viewer.layers["slide labels"]
    painted = _stroke(labels, 2, (100, 100), radius=4)
    widget.set_vocabulary("background: sky\ncell\nmembrane, wall")
    _run(qtbot, widget)  # a tiled re-run: the stroke stays
    assert viewer.layers["slide labels"] is labels
    np.testing.assert_array_equal(labels.data[painted], 2)

    before = labels.data.copy()
    widget.use_segmenter(Slow(tiny_segmenter, 0.05))
    widget.set_vocabulary("background: sky\ncell")
    widget.run_btn.click()
    qtbot.waitUntil(lambda: widget.tiles.written >= 2, timeout=RUN_TIMEOUT)
    widget.cancel_btn.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=RUN_TIMEOUT)
    status = widget.status_label.text()
    assert status.startswith("Cancelled after"), status
    done = int(status.split("after ")[1].split()[0])
    assert done >= 2
    changed = labels.data != before
    assert changed.any() and not changed.all()  # the finished tiles, not the rest
    np.testing.assert_array_equal(labels.data[painted], 2)


def test_progress_per_tile_with_time_left(make_widget, qtbot, monkeypatch, small_tiles):
    viewer, widget = make_widget()
    viewer.add_image(_cells(), name="slide")
    widget.set_vocabulary(VOCAB)
    _tiled(monkeypatch)
    seen = []
    widget.status_label.setText = (lambda set_text: lambda text: (seen.append(text),
                                                                  set_text(text)))(
        widget.status_label.setText)
    _run(qtbot, widget)
    tile_lines = [t for t in seen if t.startswith("tile ")]
    assert tile_lines and any("left" in t for t in tile_lines), seen[:10]


def test_object_size_reads_the_pyramid_level_that_serves(make_widget, qtbot):
    from napari_itaclip.plugin.sources import source_for

    viewer, widget = make_widget()
    base = _cells(384, 512, dtype=np.uint8)
    levels = [base, base[::2, ::2].copy(), base[::4, ::4].copy()]
    layer = viewer.add_image(levels, multiscale=True, name="pyr", scale=(0.5, 0.5),
                             translate=(10.0, 20.0))
    widget.set_vocabulary(VOCAB)
    widget.scale_panel.set_object_size_px(128)  # working factor 4: level 2 as it is
    source = source_for(layer, widget.config())
    assert source.level == 2 and source.factor == 1 and source.data is layer.data[2]
    assert "level 2" in widget.scale_panel.summary.text()
    assert "96 × 128" in widget.scale_panel.summary.text()
    widget.scale_panel.set_object_size_px(256)  # factor 8: level 2, reduced by 2
    source = source_for(layer, widget.config())
    assert (source.level, source.factor, source.work_shape) == (2, 2, (48, 64))
    widget.scale_panel.set_object_size_px(128)
    status = _run(qtbot, widget)
    assert status.startswith("Done"), status
    labels = viewer.layers["pyr labels"]
    assert labels.data.shape == (96, 128)
    np.testing.assert_allclose(labels.scale, (2.0, 2.0))  # 4 level-0 pixels of 0.5
    np.testing.assert_allclose(labels.translate, (10.0 + 0.5 * 1.5, 20.0 + 0.5 * 1.5))
    assert viewer.layers["pyr heatmaps"].data.shape[1:] == (96, 128)
    # the same as segmenting level 2 itself at its own resolution
    ref = widget._segmenter_override.segment(levels[2], VOCAB, config=widget.config().replace(
        object_size=None, short_side=None))
    np.testing.assert_array_equal(labels.data, ref.labels)


def test_object_size_reduces_a_plain_layer_and_maps_geometry(make_widget, qtbot):
    viewer, widget = make_widget()
    viewer.add_image(_cells(192, 256), name="img", scale=(0.25, 0.25), units=("um", "um"))
    widget.set_vocabulary(VOCAB)
    assert widget.scale_panel.object_size.suffix().strip() in ("µm", "μm")
    widget.scale_panel.object_size.setValue(24.0)  # 24 µm = 96 px -> factor 3
    assert widget.config().object_size == pytest.approx(96.0)
    status = _run(qtbot, widget)
    assert status.startswith("Done"), status
    labels = viewer.layers["img labels"]
    assert labels.data.shape == (64, 86)
    np.testing.assert_allclose(labels.scale, (0.75, 0.75))
    np.testing.assert_allclose(labels.translate, (0.25, 0.25))


def test_bad_scale_inputs_are_refused_before_any_work(make_widget, qtbot):
    viewer, widget = make_widget()
    viewer.add_image(_cells(), name="img")
    widget.set_vocabulary(VOCAB)
    widget.scale_panel.object_size.setValue(8)  # under one 16-px patch
    assert "smaller than one 16-px patch" in widget.scale_panel.summary.text()
    widget.run_btn.click()
    assert not widget.busy and "smaller than one 16-px patch" in widget.status_label.text()
    assert [layer.name for layer in viewer.layers] == ["img"]
    widget.scale_panel.object_size.setValue(0)

    bad = viewer.add_image([np.zeros((64, 64), np.uint8), np.zeros((128, 128), np.uint8)],
                           multiscale=True, name="bad")
    widget.image_panel.select(bad)
    widget.run_btn.click()
    assert not widget.busy and "not a pyramid" in widget.status_label.text()


def test_a_dask_layer_is_read_one_region_at_a_time(make_widget, qtbot, monkeypatch,
                                                   small_tiles):
    da = pytest.importorskip("dask.array")

    reads = []

    def count(block):
        if block.size:
            reads.append(block.shape)
        return block

    img = _cells(192, 256, dtype=np.uint8)
    viewer, widget = make_widget()
    viewer.add_image(da.from_array(img, chunks=(32, 32)).map_blocks(count, dtype=np.uint8),
                     name="lazy")
    widget.set_vocabulary(VOCAB)
    _tiled(monkeypatch)
    from napari_itaclip.chunked import tiles

    regions, reduce = [], tiles.block_mean_uint8
    monkeypatch.setattr(tiles, "block_mean_uint8",
                        lambda block, f: (regions.append(block.shape[:2]), reduce(block, f))[1])
    reads.clear()
    status = _run(qtbot, widget)
    assert status.startswith("Done"), status
    assert reads and set(reads) == {(32, 32)}  # dask's chunks ...
    # ... of one tile's region at a time: no region is the whole plane
    assert regions and max(r[0] * r[1] for r in regions) < 192 * 256 // 3, regions


def test_visible_region_only(make_napari_viewer, make_widget, qtbot, small_tiles):
    viewer, widget = make_widget(make_napari_viewer(show=True))
    layer = viewer.add_image(_cells(192, 256), name="img")
    widget.set_vocabulary(VOCAB)
    viewer.camera.center = (0, 30, 40)
    viewer.camera.zoom = 20  # a small corner of the image on the canvas
    time.sleep(0.05)
    qtbot.waitUntil(lambda: np.asarray(layer.corner_pixels)[1, -1] < 200, timeout=5000)
    widget.scale_panel.visible_only.setChecked(True)
    status = _run(qtbot, widget)
    assert status.startswith("Done"), status
    labels = viewer.layers["img labels"].data
    assert labels[:48, :48].any()  # where the canvas looks
    assert not labels[150:, 200:].any()  # far from it: not segmented


def test_visible_region_is_described_as_the_view_moves_and_refused_in_3d(
        make_napari_viewer, make_widget, qtbot, small_tiles):
    import re

    viewer, widget = make_widget(make_napari_viewer(show=True))
    layer = viewer.add_image(_cells(192, 256), name="img")
    widget.set_vocabulary(VOCAB)
    viewer.camera.center = (0, 30, 40)
    viewer.camera.zoom = 20
    qtbot.waitUntil(lambda: np.asarray(layer.corner_pixels)[1, -1] < 200, timeout=5000)
    widget.scale_panel.visible_only.setChecked(True)

    def region():
        found = re.search(r"the visible region only: (\d+) × (\d+) of it",
                          widget.scale_panel.summary.text())
        return None if found is None else (int(found[1]), int(found[2]))

    small = region()
    assert small is not None and small[0] * small[1] < 192 * 256 // 4, small
    viewer.camera.center = (0, 96, 128)  # the whole image: described again once the view
    viewer.camera.zoom = 0.5  # rests
    qtbot.waitUntil(lambda: region() == (192, 256), timeout=5000)
    viewer.dims.ndisplay = 3  # napari's corner pixels are the whole layer in 3D
    qtbot.waitUntil(lambda: "needs the 2D view" in widget.scale_panel.summary.text(),
                    timeout=5000)
    status = _run(qtbot, widget)
    assert "'visible region only' needs the 2D view" in status, status
    assert [lay.name for lay in viewer.layers] == ["img"]


def test_segment_layer_object_size_and_tiles(make_napari_viewer, tiny_segmenter, tiny_config,
                                             monkeypatch):
    from napari_itaclip import segment_layer
    from napari_itaclip.plugin import scripting, tiled_run

    viewer = make_napari_viewer()
    img = viewer.add_image(_cells(192, 256), name="img", scale=(0.5, 0.5), units=("um", "um"))
    labels, heat = segment_layer(img, VOCAB, viewer=viewer, segmenter=tiny_segmenter,
                                 config=tiny_config, object_size=48.0)  # 48 µm = 96 px
    assert labels.data.shape == (64, 86) and heat.data.shape == (3, 64, 86)
    np.testing.assert_allclose(labels.scale, (1.5, 1.5))
    ref = labels.data.copy()
    ref_heat = heat.data.copy()
    viewer.layers.remove(labels)
    viewer.layers.remove(heat)
    monkeypatch.setattr(scripting, "tiles_needed", lambda *args: True)
    monkeypatch.setattr(tiled_run, "DEFAULT_TILE", 24)
    seen = []
    labels2, heat2 = segment_layer(img, VOCAB, viewer=viewer, segmenter=tiny_segmenter,
                                   config=tiny_config, object_size=48.0, progress=seen.append)
    np.testing.assert_array_equal(labels2.data, ref)
    np.testing.assert_allclose(heat2.data, ref_heat, atol=1e-5)
    assert any(getattr(p, "n_tiles", 0) > 4 for p in seen)


def test_a_store_failing_mid_run_stops_with_its_message_and_keeps_finished_tiles(
        make_widget, qtbot, monkeypatch, small_tiles):
    da = pytest.importorskip("dask.array")

    state = {"reads": 0, "broken": False}

    def read(block):
        if state["broken"] and block.size:
            raise OSError("zarr store /data/slide.zarr: chunk 3.4 is gone")
        return block

    img = _cells(192, 256, dtype=np.uint8)
    viewer, widget = make_widget()
    viewer.add_image(da.from_array(img, chunks=(32, 32)).map_blocks(read, dtype=np.uint8),
                     name="lazy")
    widget.set_vocabulary(VOCAB)
    _tiled(monkeypatch)
    widget.run_btn.click()
    qtbot.waitUntil(lambda: widget.tiles.written >= 3, timeout=RUN_TIMEOUT)
    state["broken"] = True  # the store disappears mid-run
    qtbot.waitUntil(lambda: not widget.busy, timeout=RUN_TIMEOUT)
    status = widget.status_label.text()
    assert "chunk 3.4 is gone" in status and "finished before are written" in status, status
    labels = viewer.layers["lazy labels"].data
    assert (labels > 0).any() and not (labels > 0).all()  # the finished tiles stay
    assert widget.run_btn.isEnabled()


def test_costly_redraws_are_spaced_and_the_last_tile_is_drawn(qtbot, monkeypatch):
    """A layer napari redraws slowly (one too large for a texture) is redrawn every
    REDRAW_FACTOR times the redraw's cost, not after every tile; the end draws the rest."""
    from qtpy.QtCore import QObject

    from napari_itaclip.plugin.widget import tiled

    written, redrawn = [], []

    class Layer:
        def __init__(self, name, cost):
            self.name, self.cost = name, cost

        def refresh(self):
            time.sleep(self.cost)
            redrawn.append((self.name, len(written)))

    monkeypatch.setattr(tiled, "write_tile", lambda labels, heat, done, step: written.append(done))
    monkeypatch.setattr(tiled, "tile_bands", lambda done: [done])  # the tiles are numbers

    class Plan:
        heat_step = 1

    owner = QObject()
    writer = tiled.TileWriter(applier=None, viewer=None, parent=owner)
    writer.plan = Plan()
    writer._ready((Layer("labels", 0.12), Layer("heat", 0.03)))
    ended = []
    t0 = time.perf_counter()
    for k in range(40):  # a tile every 25 ms for a second
        writer.add(k)
        qtbot.wait(25)
    arriving = time.perf_counter() - t0  # about a second (more on a busy machine)
    writer.end(lambda: ended.append(True))
    qtbot.waitUntil(lambda: bool(ended), timeout=10000)
    labels_draws = [n for name, n in redrawn if name == "labels"]
    assert written == list(range(40))
    assert labels_draws[-1] == 40  # the last redraw shows every tile
    # each redraw costs >= 0.15 s: the next comes >= 0.75 s later (after every tile: 40)
    spacing = tiled.REDRAW_FACTOR * 0.15
    assert 2 <= len(labels_draws) <= arriving / spacing + 2, (arriving, redrawn)
    assert writer.redraw_every >= tiled.REDRAW_FACTOR * 0.15
    assert [name for name, _n in redrawn] == ["labels", "heat"] * len(labels_draws)


def test_tiles_are_written_in_bands_and_whole_when_stopped(qtbot, monkeypatch):
    """A large tile is written in row bands (each a short piece of GUI-thread work) that
    together are the tile; stopping mid-tile (the widget closed) finishes that tile."""
    from qtpy.QtCore import QObject

    from napari_itaclip.chunked.tiles import TileDone
    from napari_itaclip.plugin.widget import tiled

    def tile(k, r0, h=64, w=40):
        rng = np.random.default_rng(k)
        return TileDone((), slice(r0, r0 + h), slice(8, 8 + w), rng.integers(0, 3, (h, w)),
                        rng.random((2, h, w), np.float32), None, ["a", "b"], False, k, 3)

    done = tile(0, 16)
    bands = tiled.tile_bands(done, max_px=40 * 10)
    assert [b.rows for b in bands] == [slice(r, min(r + 10, 80)) for r in range(16, 80, 10)]
    np.testing.assert_array_equal(np.concatenate([b.labels for b in bands]), done.labels)
    np.testing.assert_array_equal(np.concatenate([b.similarity for b in bands], axis=1),
                                  done.similarity)
    assert tiled.tile_bands(done, max_px=10**6) == [done]

    written = []
    monkeypatch.setattr(tiled, "write_tile",
                        lambda labels, heat, band, step: written.append((band.tile, band.rows)))
    monkeypatch.setattr(tiled, "TILE_BAND_PX", 40 * 8)
    monkeypatch.setattr(tiled, "TILE_TURN_S", 0.0)  # one band per turn

    class Layer:
        def refresh(self):
            pass

    class Plan:
        heat_step = 1

    owner = QObject()
    writer = tiled.TileWriter(applier=None, viewer=None, parent=owner)
    writer.plan = Plan()
    writer.add(tile(1, 0))
    writer.add(tile(2, 64))
    writer._ready((Layer(), Layer()))
    while len(written) < 3:  # the writer's turns, by hand: inside tile 1's 8 bands
        writer._step()
    writer.stop()
    assert [t for t, _rows in written] == [1] * 8  # tile 1 whole, tile 2 not begun
    assert written[-1][1] == slice(56, 64) and writer.written == 1
