"""The exact image-feature cache (issue #11): hits equal misses, misses when they must,
the bound, and the reporting.
"""

import dataclasses

import numpy as np
import pytest
import torch

from napari_itaclip import ITACLIPConfig, Segmenter, Vocabulary
from napari_itaclip.engine import features as featmod
from napari_itaclip.engine.features import (
    NOT_IMAGE_SIDE,
    FeatureCache,
    ImageFeatures,
    image_digest,
    image_side_items,
)
from napari_itaclip.engine.sliding import window_grid

VOCAB_A = Vocabulary.parse(
    "background: sky, wall\ncat, feline >= a small pet animal\ndog >= a loyal animal\ncar, vehicle"
)


def _img(seed=1, shape=(48, 64, 3)):
    return (np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)


def _run(seg, img, vocab, cfg=None):
    steps = []
    res = seg.segment(img, vocab, config=cfg, progress=steps.append)
    return res, [p.stage for p in steps]


def _assert_same(a, b):
    assert a.class_names == b.class_names
    np.testing.assert_allclose(a.similarity, b.similarity, rtol=0, atol=1e-6)
    np.testing.assert_allclose(a.probabilities, b.probabilities, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(a.labels, b.labels)


@pytest.fixture
def pair(tiny_clip, tiny_config):
    """A caching segmenter and a reference without the cache, same model."""
    cached = Segmenter(tiny_clip, None, "cpu", tiny_config)
    plain = Segmenter(tiny_clip, None, "cpu", tiny_config, feature_cache_mb=0)
    return cached, plain


def _text_side_variants(cfg):
    dropped = Vocabulary.parse("background: sky, wall\ncat, feline\ndog >= a loyal animal")
    new = Vocabulary.parse(VOCAB_A.format() + "\nbird >= a feathered animal that flies")
    return [
        ("class and definition dropped", dropped, cfg),
        ("new class with a definition", new, cfg),
        ("aux texts changed", Vocabulary.parse(
            "background: sky, wall\ncat, feline >= a whiskered pet\ndog\ncar, vehicle >= a machine"), cfg),
        ("aux_weight", VOCAB_A, cfg.replace(aux_weight=0.4)),
        ("eng_weight", VOCAB_A, cfg.replace(eng_weight=0.3)),
        ("logit_scale", VOCAB_A, cfg.replace(logit_scale=20)),
        ("pamr_steps", VOCAB_A, cfg.replace(pamr_steps=5)),
        ("no pamr", VOCAB_A, cfg.replace(pamr_steps=0)),
        ("pamr_dilations", VOCAB_A, cfg.replace(pamr_dilations=(2, 3))),
        ("thresholds and closing", VOCAB_A,
         cfg.replace(prob_threshold=0.4, area_threshold=0.2, close_size=0)),
    ]


@pytest.mark.parametrize("engineering", [True, False])
def test_cache_hit_equals_miss_across_text_side_changes(pair, tiny_config, engineering):
    cached, plain = pair
    cfg = tiny_config.replace(image_engineering=engineering)
    img = _img()
    first, stages = _run(cached, img, VOCAB_A, cfg)
    assert "image" in stages and "image-cached" not in stages
    assert not first.image_cached and first.timings["image_cached"] == 0.0
    _assert_same(first, plain.segment(img, VOCAB_A, config=cfg))
    for what, vocab, c in _text_side_variants(cfg):
        hit, stages = _run(cached, img, vocab, c)
        assert hit.image_cached, what
        assert "image-cached" in stages and "image" not in stages, what
        _assert_same(hit, plain.segment(img, vocab, config=c))
    assert len(cached.feature_cache) == 1
    assert cached.feature_cache.info()["hits"] == len(_text_side_variants(cfg))


def test_hit_with_one_window_per_batch(tiny_clip, tiny_config):
    # scoring runs in the ViT's batch groups on a hit too: bit-for-bit the miss
    seg = Segmenter(tiny_clip, None, "cpu", tiny_config, batch_memory_mb=1e-6)
    plain = Segmenter(tiny_clip, None, "cpu", tiny_config, batch_memory_mb=1e-6, feature_cache_mb=0)
    img = _img(2, (50, 70, 3))
    seg.segment(img, VOCAB_A)
    plain.segment(img, VOCAB_A)  # same text history: text batches (and rounding) alike
    hit = seg.segment(img, "cat\ndog\nbird")
    assert hit.image_cached
    ref = plain.segment(img, "cat\ndog\nbird")
    np.testing.assert_array_equal(hit.similarity, ref.similarity)
    np.testing.assert_array_equal(hit.labels, ref.labels)


def test_progress_totals_match_and_cached_stage_is_one_report(pair):
    cached, _ = pair
    img = _img(3)
    _, first = _run(cached, img, "cat\ndog")
    steps = []
    cached.segment(img, "cat\nbird", progress=steps.append)
    reused = [p for p in steps if p.stage == "image-cached"]
    assert len(reused) == 1
    n = len(window_grid(48, 64, 32, 16)) * 5
    assert tuple(reused[0]) == ("image-cached", n, n)
    stage_order = [p.stage for p in steps]
    assert stage_order.index("text") < stage_order.index("image-cached") < stage_order.index("refine")


def test_in_place_edit_misses(pair):
    cached, plain = pair
    img = _img(4)
    cached.segment(img, VOCAB_A)
    img[10:20, 10:30] = 255 - img[10:20, 10:30]  # edited in place: same object, new content
    res = cached.segment(img, VOCAB_A)
    assert not res.image_cached
    _assert_same(res, plain.segment(img, VOCAB_A))
    assert len(cached.feature_cache) == 2
    img2 = img.copy()  # equal content in another array: a hit
    assert cached.segment(img2, "cat").image_cached


def test_content_not_identity_or_layout(pair):
    cached, _ = pair
    img = _img(5)
    cached.segment(img, "cat\ndog")
    assert cached.segment(np.asfortranarray(img), "cat").image_cached
    # a view over other memory with equal content hits; another dtype does not
    assert cached.segment(np.stack([img, img])[1], "cat").image_cached
    assert not cached.segment(img.astype(np.float32), "cat").image_cached


@pytest.mark.parametrize("change", [
    dict(short_side=40), dict(crop=24), dict(stride=8), dict(attention="q-k"),
    dict(mid_layers=(1, 3)), dict(mid_weight=0.25), dict(drop_last_mlp=False),
    dict(image_engineering=False),
])
def test_image_side_change_misses(pair, tiny_config, change):
    cached, plain = pair
    img = _img(6)
    cached.segment(img, VOCAB_A)
    cfg = tiny_config.replace(**change)
    res = cached.segment(img, VOCAB_A, config=cfg)
    assert not res.image_cached
    _assert_same(res, plain.segment(img, VOCAB_A, config=cfg))
    assert cached.segment(img, "cat", config=cfg).image_cached  # and it is cached in turn


def test_every_field_not_listed_as_text_side_is_in_the_key(tiny_config):
    names = [n for n, _ in image_side_items(tiny_config)]
    for field in ("short_side", "crop", "stride", "attention", "mid_layers", "mid_weight",
                  "drop_last_mlp", "image_engineering"):
        assert field in names
    for field in ("aux_weight", "eng_weight", "logit_scale", "pamr_steps", "pamr_dilations",
                  "prob_threshold", "area_threshold", "close_size", "aux_kind"):
        assert field not in names and field in NOT_IMAGE_SIDE
    all_fields = {f.name for f in dataclasses.fields(ITACLIPConfig)}
    assert set(names) == all_fields - NOT_IMAGE_SIDE


def build_tiny_clip(json_path, seed):
    import open_clip

    open_clip.add_model_config(json_path)
    torch.manual_seed(seed)
    return open_clip.create_model(json_path.stem, pretrained=None).eval()


def test_model_change_misses(tiny_model_json, tiny_config):
    model = build_tiny_clip(tiny_model_json, seed=0)
    seg = Segmenter(model, None, "cpu", tiny_config)
    img = _img(7)
    seg.segment(img, VOCAB_A)
    assert seg.segment(img, "cat").image_cached
    with torch.no_grad():  # weights edited in place: the features change, so must the key
        model.visual.transformer.resblocks[1].attn.in_proj_weight.mul_(1.5)
    res = seg.segment(img, VOCAB_A)
    assert not res.image_cached
    fresh = Segmenter(model, None, "cpu", tiny_config, feature_cache_mb=0).segment(img, VOCAB_A)
    _assert_same(res, fresh)
    # another model (other weights) has its own features
    other = Segmenter(build_tiny_clip(tiny_model_json, seed=1), None, "cpu", tiny_config)
    assert not other.segment(img, VOCAB_A).image_cached
    assert seg.model_identity != other.load().model_identity


def test_model_identity_of_loaded_checkpoint_and_precision(tiny_model_json, tiny_checkpoint):
    a = Segmenter(str(tiny_model_json), str(tiny_checkpoint), "cpu").load()
    b = Segmenter(str(tiny_model_json), str(tiny_checkpoint), "cpu").load()
    # same file, same weights: same identity base (the loaded model's cache key) ...
    assert a.model_identity[0] == b.model_identity[0] == a.weights_key
    # ... but the key also carries the backbone object, so two segmenters never mix
    assert a.model_identity != b.model_identity


def _entry_bytes(seg, img):
    seg.segment(img, "cat")
    (key,) = seg.feature_cache.keys()
    return seg.feature_cache.get(key).nbytes


def test_entry_size_is_two_grids_per_window(pair, tiny_config):
    cached, _ = pair
    img = _img(8)
    n = len(window_grid(48, 64, 32, 16))
    d = 32  # tiny model's embedding width; 32 px crops of 8 px patches: 4 x 4 grid
    assert _entry_bytes(cached, img) == n * 2 * 4 * 4 * d * 4
    no_eng = Segmenter(cached.model, None, "cpu", tiny_config.replace(image_engineering=False))
    assert _entry_bytes(no_eng, img) == n * 4 * 4 * d * 4
    (key,) = cached.feature_cache.keys()
    entry = cached.feature_cache.get(key)
    assert entry.merged.device.type == "cpu" and entry.merged.dtype == torch.float32
    assert entry.units == n * 5 and entry.size == (48, 64)


def test_lru_eviction_order(tiny_clip, tiny_config):
    probe = Segmenter(tiny_clip, None, "cpu", tiny_config)
    size = _entry_bytes(probe, _img(10))
    seg = Segmenter(tiny_clip, None, "cpu", tiny_config, feature_cache_mb=2.5 * size / 2**20)
    imgs = [_img(10 + i) for i in range(4)]
    seg.segment(imgs[0], "cat")
    seg.segment(imgs[1], "cat")
    assert seg.segment(imgs[0], "dog").image_cached  # 0 is now the most recent
    seg.segment(imgs[2], "cat")  # evicts 1, the least recently used
    assert len(seg.feature_cache) == 2 and seg.feature_cache.nbytes == 2 * size
    assert seg.segment(imgs[0], "cow").image_cached
    assert seg.segment(imgs[2], "cow").image_cached
    assert not seg.segment(imgs[1], "cow").image_cached  # was evicted; now back, 0 goes
    assert not seg.segment(imgs[0], "cow").image_cached
    assert seg.feature_cache.nbytes <= seg.feature_cache.max_bytes


def test_oversized_image_is_not_cached_and_evicts_nothing(tiny_clip, tiny_config):
    probe = Segmenter(tiny_clip, None, "cpu", tiny_config)
    size = _entry_bytes(probe, _img(20))
    seg = Segmenter(tiny_clip, None, "cpu", tiny_config, feature_cache_mb=1.5 * size / 2**20)
    plain = Segmenter(tiny_clip, None, "cpu", tiny_config, feature_cache_mb=0)
    small = _img(20)
    seg.segment(small, "cat")
    big = _img(21, (96, 128, 3))  # many more windows than the bound holds
    res = seg.segment(big, VOCAB_A)
    _assert_same(res, plain.segment(big, VOCAB_A))
    assert not seg.segment(big, VOCAB_A).image_cached  # never stored
    assert seg.segment(small, "dog").image_cached  # and the small one was kept


def test_zero_disables(tiny_clip, tiny_config, monkeypatch):
    seg = Segmenter(tiny_clip, None, "cpu", tiny_config, feature_cache_mb=0)
    assert not seg.feature_cache.enabled

    def no_hash(_):  # pragma: no cover - must not be called
        raise AssertionError("the image is hashed although the cache is off")

    monkeypatch.setattr("napari_itaclip.engine.segmenter.image_digest", no_hash)
    img = _img(22)
    seg.segment(img, "cat")
    assert not seg.segment(img, "cat").image_cached
    assert len(seg.feature_cache) == 0


@pytest.mark.parametrize("bad", [-1, float("nan")])
def test_bad_bound_is_refused(tiny_clip, bad):
    with pytest.raises(ValueError, match="feature_cache_mb"):
        Segmenter(tiny_clip, None, "cpu", feature_cache_mb=bad)


def test_has_cached_features(pair, tiny_config):
    cached, plain = pair
    img = _img(28)
    assert not cached.has_cached_features(img)  # not loaded yet: nothing cached, nothing loaded
    assert not cached.is_loaded
    cached.segment(img, "cat")
    assert cached.has_cached_features(img) and cached.has_cached_features(img.copy())
    assert cached.has_cached_features(img, config=tiny_config.replace(logit_scale=10, pamr_steps=0))
    assert not cached.has_cached_features(img, config=tiny_config.replace(stride=8))
    info = cached.feature_cache.info()
    assert (info["hits"], info["misses"]) == (0, 1)  # a query, not a use
    edited = img.copy()
    edited[0, 0, 0] ^= 1
    assert not cached.has_cached_features(edited)
    plain.segment(img, "cat")
    assert not plain.has_cached_features(img)


def test_clear_cache(pair):
    cached, _ = pair
    img = _img(23)
    cached.segment(img, "cat")
    assert cached.segment(img, "dog").image_cached
    assert cached.text_encoder.cached("cat") and cached.text_encoder.cached("dog")
    cached.clear_cache()
    assert len(cached.feature_cache) == 0 and cached.feature_cache.nbytes == 0
    assert cached.text_encoder.cached("cat") and cached.text_encoder.cached("dog")  # text kept
    assert not cached.segment(img, "dog").image_cached
    assert cached.segment(img, "cat").image_cached


def test_cache_failure_never_fails_the_run(pair, monkeypatch):
    cached, plain = pair
    cached.segment(_img(99), VOCAB_A)  # text encoded (and one image cached) beforehand

    def boom(*a, **k):
        raise RuntimeError("out of memory")

    monkeypatch.setattr("napari_itaclip.engine.segmenter.torch.empty", boom)
    img = _img(24)
    res = cached.segment(img, VOCAB_A)
    monkeypatch.undo()
    _assert_same(res, plain.segment(img, VOCAB_A))
    assert len(cached.feature_cache) == 1 and not cached.segment(img, "cat").image_cached


def test_grey_and_uint16_images_hit(pair):
    cached, plain = pair
    grey = (np.random.default_rng(25).random((48, 64)) * 60000).astype(np.uint16)
    cached.segment(grey, "cell\nnucleus")
    hit = cached.segment(grey, "cell\nmembrane")
    assert hit.image_cached
    _assert_same(hit, plain.segment(grey, "cell\nmembrane"))


def test_image_digest():
    a = _img(26)
    assert image_digest(a) == image_digest(a.copy()) == image_digest(np.asfortranarray(a))
    assert image_digest(a) != image_digest(a.reshape(64, 48, 3))  # same bytes, other shape
    assert image_digest(a) != image_digest(a.view(np.int8))  # same bytes, other dtype
    b = a.copy()
    b[-1, -1, -1] ^= 1
    assert image_digest(a) != image_digest(b)


def _entry(nbytes_each):
    t = torch.zeros(nbytes_each // 4, dtype=torch.float32)
    return ImageFeatures((1, 1), [(0, 1, 0, 1)], t, None, 1)


def test_feature_cache_unit():
    c = FeatureCache(max_mb=1000 / 2**20)  # 1000 bytes
    assert c.put("a", _entry(400)) and c.put("b", _entry(400))
    assert c.keys() == ["a", "b"]
    assert c.get("a") is not None and c.keys() == ["b", "a"]
    assert c.put("c", _entry(400))  # evicts b
    assert c.keys() == ["a", "c"] and c.nbytes == 800
    assert not c.put("d", _entry(1200))  # bigger than the bound: refused, nothing evicted
    assert c.keys() == ["a", "c"]
    assert c.put("a", _entry(200)) and c.nbytes == 600 and c.keys() == ["c", "a"]  # replaced
    c.make_room(700)  # evicts c so 700 more would fit
    assert c.keys() == ["a"]
    assert c.get("zz") is None
    info = c.info()
    assert info["entries"] == 1 and info["hits"] == 1 and info["misses"] == 1
    c.clear()
    assert len(c) == 0 and c.nbytes == 0
    assert not FeatureCache(0).enabled and not FeatureCache(0).put("x", _entry(4))
    assert Segmenter(None, None, "cpu").feature_cache.max_bytes / 2**20 == featmod.DEFAULT_FEATURE_CACHE_MB


def test_segment_function_reuses_features(tiny_model_json, tiny_checkpoint, tiny_config):
    from napari_itaclip import segment
    from napari_itaclip.engine import registry

    img = _img(27)
    kw = dict(model=str(tiny_model_json), pretrained=str(tiny_checkpoint), device="cpu",
              config=tiny_config)
    try:
        first = segment(img, "cat, dog", **kw)
        again = segment(img, "cat, bird", **kw)
    finally:
        registry.clear()
    assert not first.image_cached and again.image_cached
