"""The one cache of loaded Segmenters (engine/registry.py)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from napari_itaclip.engine import registry


@pytest.fixture
def fake_segmenter(monkeypatch):
    """Replace the Segmenter the registry builds by a recorder (no torch model)."""
    made = []

    class Fake:
        def __init__(self, **kw):
            time.sleep(0.01)  # widen the window for races
            made.append(kw)
            self.loads = 0

        def load(self):
            self.loads += 1
            if "broken" in str(made[-1]["model"]):
                raise OSError("cannot load")
            return self

    monkeypatch.setattr("napari_itaclip.engine.segmenter.Segmenter", Fake)
    registry.clear()
    yield made
    registry.clear()


def test_segmenter_cache(fake_segmenter):
    made = fake_segmenter
    a = registry.get_segmenter("ViT-B-16", "openai", "cpu")
    assert registry.get_segmenter("ViT-B-16", "openai", "cpu") is a
    b = registry.get_segmenter("ViT-B-16", "/x/ckpt.pt", "cpu")
    assert b is not a and len(made) == 2
    assert made[0] == {"model": "ViT-B-16", "pretrained": "openai", "device": "cpu",
                       "half": False, "batch_memory_mb": None}


def test_key_covers_precision_and_batch_bound(fake_segmenter):
    base = registry.get_segmenter("m", "w", "cuda")
    assert registry.get_segmenter("m", "w", "cuda", half=True) is not base
    assert registry.get_segmenter("m", "w", "cuda", batch_memory_mb=64) is not base
    assert fake_segmenter[1]["half"] is True and fake_segmenter[2]["batch_memory_mb"] == 64.0
    # spellings of "no weights" are one key
    assert registry.SegmenterKey("m", None) == registry.SegmenterKey("m", "none") == \
        registry.SegmenterKey("m", "")


def test_bounded_least_recently_used(fake_segmenter):
    assert registry.MAX_SEGMENTERS == 2
    a = registry.get_segmenter("a", None, "cpu")
    b = registry.get_segmenter("b", None, "cpu")
    assert registry.get_segmenter("a", None, "cpu") is a  # a is now the most recent
    registry.get_segmenter("c", None, "cpu")  # drops b, the least recently used
    assert registry.size() == 2
    assert registry.get_segmenter("a", None, "cpu") is a
    assert registry.get_segmenter("b", None, "cpu") is not b
    assert [m["model"] for m in fake_segmenter] == ["a", "b", "c", "b"]


def test_thread_safe_single_build(fake_segmenter):
    got = []
    barrier = threading.Barrier(8)

    def worker():
        barrier.wait()
        got.append(registry.get_segmenter("m", "w", "cpu", load=True))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fake_segmenter) == 1 and all(g is got[0] for g in got)


def test_failed_load_is_not_cached(fake_segmenter):
    with pytest.raises(OSError, match="cannot load"):
        registry.get_segmenter("broken", None, "cpu", load=True)
    assert registry.size() == 0


def test_run_lock_is_per_segmenter(fake_segmenter):
    a = registry.get_segmenter("a", None, "cpu")
    b = registry.get_segmenter("b", None, "cpu")
    assert registry.run_lock(a) is registry.run_lock(a)
    assert registry.run_lock(a) is not registry.run_lock(b)


def test_segment_uses_the_registry(tiny_model_json, tiny_checkpoint):
    from napari_itaclip import segment

    registry.clear()
    img = np.zeros((32, 32), np.uint8)
    kw = dict(model=str(tiny_model_json), pretrained=str(tiny_checkpoint), device="cpu",
              preset="fast", short_side=None, crop=32, stride=32, mid_layers=(2,))
    segment(img, ["cat", "dog"], **kw)
    seg = registry.get_segmenter(str(tiny_model_json), str(tiny_checkpoint), "cpu")
    assert seg.is_loaded  # the one segment() loaded
    with pytest.raises(ValueError, match="half precision"):
        segment(img, ["cat"], half=True, **kw)  # half is respected, not ignored
    registry.clear()


def test_factory_is_replaceable_and_feature_cache_bound_applies():
    from napari_itaclip.engine.features import FeatureCache

    built = []

    class Fake:
        def __init__(self, key):
            built.append(key)
            self.feature_cache = FeatureCache(5)

    previous = registry.set_factory(Fake)
    try:
        seg = registry.get_segmenter("m", None, "cpu")
        assert built == [registry.SegmenterKey("m", None, "cpu")]
        assert seg.feature_cache.max_bytes == 5 * 2**20
        assert registry.get_segmenter("m", None, "cpu", feature_cache_mb=0) is seg
        assert not seg.feature_cache.enabled  # resized, not rebuilt
        assert len(built) == 1
    finally:
        registry.set_factory(previous)
    assert registry.size() == 0  # nothing the fake built is served afterwards
