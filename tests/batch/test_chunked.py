"""Chunked (bigger-than-memory) segmentation equals in-memory segmentation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from napari_itaclip.chunked import (
    ChunkingError,
    SegmenterSpec,
    check_config,
    plan_axis,
    plan_chunks,
    reach,
    segment_chunked,
)
from napari_itaclip.engine.sliding import window_grid

pytest.importorskip("dask")
zarr = pytest.importorskip("zarr")


def _covering(n, crop, stride, offset=0, length=None):
    """For each pixel of [offset, offset+length): the set of windows (start, stop) covering
    it, using the engine's own window grid on that region."""
    length = n if length is None else length
    wins = [(y1 + offset, y2 + offset) for y1, y2, _, _ in window_grid(length, 1, crop, stride)]
    out = [set() for _ in range(length)]
    for a, b in wins:
        for y in range(a, b):
            out[y - offset].add((a, b))
    return out


@pytest.mark.parametrize("crop,stride", [(32, 16), (32, 32), (224, 28), (224, 56), (30, 7)])
@pytest.mark.parametrize("n", [1, 31, 32, 33, 100, 257, 700])
def test_plan_regions_see_the_global_windows(n, crop, stride):
    halo = 13
    glob = _covering(n, crop, stride)
    for chunk in (17, 64, 100):
        items = plan_axis(n, chunk, crop, stride, halo)
        assert [i.core_start for i in items] == list(range(0, n, chunk))
        assert items[-1].core_stop == n
        for it in items:
            local = _covering(n, crop, stride, it.start, it.stop - it.start)
            lo, hi = max(it.core_start - halo, 0), min(it.core_stop + halo, n)
            assert it.start <= lo and hi <= it.stop
            for y in range(lo, hi):  # same windows cover every pixel the core depends on
                assert local[y - it.start] == glob[y]
            # a region edge that is not an image edge is at least `halo` from the core
            assert it.start == 0 or it.core_start - it.start >= halo
            assert it.stop == n or it.stop - it.core_stop >= halo


@pytest.mark.parametrize("crop,stride", [(32, 16), (32, 32), (224, 28), (30, 7), (5, 9)])
@pytest.mark.parametrize("n", [1, 31, 32, 100, 257, 700])
def test_windows_meeting_a_range_are_those_of_the_whole_axis(n, crop, stride):
    from napari_itaclip.chunked.plan import window_starts, windows_meeting

    c = min(crop, n)
    every = window_starts(n, crop, stride)
    for lo in range(0, n, 7):
        for hi in range(lo + 1, n + 1, 11):
            want = sorted({g for g in every if g < hi and g + c > lo})
            assert windows_meeting(n, crop, stride, lo, hi) == want, (lo, hi)


def test_conditions_are_refused_clearly(tiny_config):
    with pytest.raises(ChunkingError, match="short_side"):
        check_config(dataclasses.replace(tiny_config, short_side=336))
    with pytest.raises(ChunkingError, match="area_threshold"):
        check_config(dataclasses.replace(tiny_config, area_threshold=0.1))
    # one rule for memory and chunked mode: the configuration itself refuses the gaps
    with pytest.raises(ChunkingError, match=r"stride \(48\) must not exceed crop \(32\)"):
        plan_axis(100, 40, 32, 48, 5)
    with pytest.raises(ValueError, match=r"stride \(48\) must not exceed crop \(32\)"):
        dataclasses.replace(tiny_config, stride=48)
    cfg = dataclasses.replace(tiny_config, pamr_steps=10, pamr_dilations=(8, 16), close_size=3)
    assert reach(cfg) == 10 * 16 + 2


def _image(h, w, rgb=True, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    base = np.stack([(yy * 3) % 256, (xx * 5) % 256, ((yy + xx) * 2) % 256], -1)
    base[(yy // 23 + xx // 19) % 3 == 0] //= 3
    img = np.clip(base + rng.integers(0, 40, base.shape), 0, 255).astype(np.uint8)
    return img if rgb else img[..., 1]


@pytest.mark.parametrize(
    "changes,shape,chunk",
    [
        ({}, (100, 118), 40),                                     # tiny: halo 6
        ({"pamr_dilations": (8, 16), "pamr_steps": 2}, (150, 130), 48),  # halo 34 > chunk
        ({"image_engineering": False, "stride": 32, "close_size": 0}, (90, 70), 33),
    ],
)
def test_chunked_equals_in_memory(tiny_segmenter, tiny_config, changes, shape, chunk):
    cfg = dataclasses.replace(tiny_config, **changes)
    img = _image(*shape)
    vocab = "background: sky, wall\ncat, feline\ndog"
    ref = tiny_segmenter.segment(img, vocab, config=cfg)
    labels = np.full(shape, 99, np.uint8)
    sim = np.full((3, *shape), np.nan, np.float32)
    plan = segment_chunked(img, vocab, labels, sim, segmenter=tiny_segmenter, config=cfg,
                           chunk=chunk, scheduler="sync")
    assert len(plan) > 1 and max(plan.max_region) < max(shape) or len(plan) > 4
    np.testing.assert_array_equal(labels, ref.labels)
    np.testing.assert_allclose(sim, ref.similarity, rtol=0, atol=1e-5)
    assert len(np.unique(ref.labels)) > 1  # a non-trivial map


def test_chunked_zarr_threads_grey_stack(tiny_segmenter, tiny_config, tmp_path):
    import dask.array as da

    from napari_itaclip.chunked import open_outputs

    planes = np.stack([_image(70, 90, rgb=False, seed=s) for s in range(2)])
    src = zarr.create_array(store=str(tmp_path / "in.zarr"), shape=planes.shape,
                            chunks=(1, 32, 32), dtype=np.uint8)
    src[:] = planes
    labels, sim = open_outputs(tmp_path / "l.zarr", tmp_path / "s.zarr", (2,), (70, 90), 2, 30)
    assert labels.dtype == np.uint8  # the smallest dtype that holds the classes
    seen = []
    segment_chunked(da.from_zarr(src), "cell, nucleus", labels, sim, segmenter=tiny_segmenter,
                    config=tiny_config, chunk=30, rgb=False, scheduler="threads",
                    num_workers=2, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1][0] == seen[-1][1] == 2 * 3 * 3
    for i in range(2):
        ref = tiny_segmenter.segment(planes[i], "cell, nucleus", config=tiny_config)
        np.testing.assert_array_equal(labels[i], ref.labels)
        np.testing.assert_allclose(sim[i], ref.similarity, atol=1e-5)


def test_non_uint8_is_scaled_globally(tiny_segmenter, tiny_config):
    from napari_itaclip.chunked import to_uint8_global

    rng = np.random.default_rng(3)
    img = (rng.random((64, 80)) * 3000).astype(np.uint16)
    u8 = np.asarray(to_uint8_global(img))
    lo, hi = np.percentile(img, (0.5, 99.5))
    expect = np.clip(np.round((img.astype(float) - lo) * 255 / (hi - lo)), 0, 255)
    np.testing.assert_array_equal(u8, expect.astype(np.uint8))
    labels = np.zeros((64, 80), np.uint8)
    sim = np.zeros((2, 64, 80), np.float32)
    segment_chunked(img, "a, b", labels, sim, segmenter=tiny_segmenter, config=tiny_config,
                    chunk=24, scheduler="sync")
    ref = tiny_segmenter.segment(u8, "a, b", config=tiny_config)
    np.testing.assert_array_equal(labels, ref.labels)


def test_local_distributed_cluster_equals_single_process(tiny_model_json, tiny_checkpoint,
                                                         tiny_config, tmp_path):
    distributed = pytest.importorskip("distributed")
    from napari_itaclip import Segmenter
    from napari_itaclip.chunked import open_outputs

    img = _image(80, 96)
    spec = SegmenterSpec(model=str(tiny_model_json), pretrained=str(tiny_checkpoint),
                         device="cpu", config=tiny_config)
    ref = Segmenter(model=str(tiny_model_json), pretrained=str(tiny_checkpoint), device="cpu",
                    config=tiny_config).segment(img, "sky, grass, road")
    labels, sim = open_outputs(tmp_path / "l.zarr", tmp_path / "s.zarr", (), (80, 96), 3, 32)
    # ":0": a free port (None still serves /metrics on 8787, which another test
    # or process may hold: "Port 8787 is already in use", an error here)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        segment_chunked(img, "sky, grass, road", labels, sim, segmenter=spec,
                        config=tiny_config, chunk=32, scheduler=client)
    np.testing.assert_array_equal(labels[:], ref.labels)
    np.testing.assert_allclose(sim[:], ref.similarity, atol=1e-5)


def test_plan_chunks_grid(tiny_config):
    plan = plan_chunks((100, 50), tiny_config, 40)
    assert len(plan) == 3 * 2
    cores = {(r.core_start, c.core_start) for r, c in plan}
    assert cores == {(y, x) for y in (0, 40, 80) for x in (0, 40)}


def _engine_u8(plane):
    """The engine's conversion of one plane (prepare_image), rounded to uint8."""
    from napari_itaclip.engine.images import prepare_image

    out = prepare_image(plane)
    return np.round(out if np.ndim(plane) == 3 else out[..., 0]).astype(np.uint8)


def _sparse(h=64, w=80, seed=4):
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w), np.uint16)
    ys, xs = rng.integers(0, h, 12), rng.integers(0, w, 12)
    img[ys, xs] = rng.integers(200, 4000, 12)  # < 0.5% non-zero: both percentiles are 0
    img[20:23, 30:33] = 3000
    assert (img == 0).mean() > 0.995
    return img


def test_uint8_conversion_equals_the_engine_per_plane():
    from napari_itaclip.chunked import to_uint8_global

    sparse = _sparse()
    np.testing.assert_array_equal(np.asarray(to_uint8_global(sparse)), _engine_u8(sparse))
    assert np.asarray(to_uint8_global(sparse)).max() == 255  # min/max fallback, not all 0
    rng = np.random.default_rng(5)
    rgba = (rng.random((30, 40, 4)) * 60000).astype(np.uint16)
    rgba[..., 3] = 65535  # alpha must not take part in the percentiles
    got = np.asarray(to_uint8_global(rgba, rgb=True))
    assert got.shape == (30, 40, 3)
    np.testing.assert_array_equal(got, _engine_u8(rgba))
    # a stack: each plane its own percentiles, as in-memory segmentation of each plane
    stack = np.stack([sparse, sparse * 10, (sparse > 0).astype(np.uint16) * 7])
    got = np.asarray(to_uint8_global(stack, rgb=False))
    for i in range(3):
        np.testing.assert_array_equal(got[i], _engine_u8(stack[i]))
    for img in (np.full((8, 9), True), rng.random((20, 30)) > 0.7,
                rng.normal(size=(20, 30)).astype(np.float32),
                rng.integers(-500, 500, (20, 30)).astype(np.int16)):
        np.testing.assert_array_equal(np.asarray(to_uint8_global(img)), _engine_u8(img))


def test_non_finite_values_are_refused_like_the_engine():
    from napari_itaclip.chunked import to_uint8_global
    from napari_itaclip.errors import ImageError

    img = np.ones((10, 12), np.float32)
    img[2, 3] = np.nan
    img[4, 4] = np.inf
    with pytest.raises(ImageError, match="2 NaN and inf pixel value"):
        to_uint8_global(img)


@pytest.mark.parametrize("kind", ["sparse", "rgba"])
def test_chunked_equals_in_memory_for_sparse_and_rgba(tiny_segmenter, tiny_config, kind):
    if kind == "sparse":
        img = _sparse()
    else:
        img = np.concatenate([_image(64, 80), np.full((64, 80, 1), 17, np.uint8)], -1)
        img = img.astype(np.uint16) * 200
        img[..., 3] = np.arange(80, dtype=np.uint16) * 800  # a varying alpha
    shape = img.shape[:2]
    labels = np.zeros(shape, np.uint8)
    sim = np.zeros((2, *shape), np.float32)
    segment_chunked(img, "a, b", labels, sim, segmenter=tiny_segmenter, config=tiny_config,
                    chunk=24, scheduler="sync")
    # in memory, the engine converts the raw plane; chunked mode only rounds to uint8
    ref = tiny_segmenter.segment(_engine_u8(img), "a, b", config=tiny_config)
    np.testing.assert_array_equal(labels, ref.labels)
    np.testing.assert_allclose(sim, ref.similarity, atol=1e-5)
    raw = tiny_segmenter.segment(img, "a, b", config=tiny_config)
    assert (labels == raw.labels).mean() > 0.99


def test_plan_is_pure_arithmetic_without_dask():
    from _imports import loaded_by

    code = ("from napari_itaclip.chunked.plan import plan_chunks; "
            "from napari_itaclip import ITACLIPConfig; "
            "p = plan_chunks((100, 90), ITACLIPConfig(short_side=None, crop=32, stride=16), 40); "
            "assert len(p) == 9, len(p)")
    assert loaded_by(code, ("dask", "torch", "zarr")) == []


@pytest.mark.parametrize("shape", [(150, 190), (97, 131)])
def test_chunked_at_an_object_size_equals_in_memory(tiny_segmenter, tiny_config, shape):
    """With object_size the tiles are planned on the working grid; the labels come back
    at the input's size, the similarity stays at the working resolution."""
    from napari_itaclip.engine.scale import working_shape

    cfg = dataclasses.replace(tiny_config, object_size=64, short_side=336)  # short_side unused
    img = _image(*shape)
    vocab = "background: sky, wall\ncat, feline\ndog"
    ref = tiny_segmenter.segment(img, vocab, config=cfg)
    assert ref.factor == 2
    work = working_shape(shape, 2)
    labels = np.full(shape, 99, np.uint8)
    sim = np.full((3, *work), np.nan, np.float32)
    plan = segment_chunked(img, vocab, labels, sim, segmenter=tiny_segmenter, config=cfg,
                           chunk=24, scheduler="sync")
    assert len(plan) > 4
    np.testing.assert_array_equal(labels, ref.labels)
    np.testing.assert_allclose(sim, ref.working.similarity, rtol=0, atol=1e-5)
