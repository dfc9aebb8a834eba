"""SCLIP, NACLIP and ClearCLIP (docs/engine.md, section "Other methods"): each switch against a step-by-step
reference written here, and every preset against the authors' table."""

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_itaclip import ITACLIPConfig, Vocabulary
from napari_itaclip.config import (
    DATASETS,
    METHODS,
    describe_method,
    list_presets,
    preset_method,
    register_preset,
)
from napari_itaclip.engine.backbone import OpenCLIPViT
from napari_itaclip.engine.blocks import attention_map, gaussian_bias
from napari_itaclip.engine.segmenter import MEAN, STD
from napari_itaclip.engine.sliding import patch_padding, window_grid, window_side
from napari_itaclip.progress import drain

# -------------------------------------------------------------------- the last block


def test_gaussian_bias_is_the_formula_with_a_zero_class_token_row_and_column():
    gh, gw, std = 3, 4, 1.7
    omega = gaussian_bias(gh, gw, std, dtype=torch.float64)
    assert omega.shape == (13, 13)
    for p in range(gh * gw):
        i, j = divmod(p, gw)  # raster order of the patch tokens
        for q in range(gh * gw):
            k, m = divmod(q, gw)
            want = math.exp(-((i - k) ** 2 + (j - m) ** 2) / (2 * std**2))
            assert omega[1 + p, 1 + q].item() == pytest.approx(want, rel=1e-12)
    assert torch.all(omega[0] == 0) and torch.all(omega[:, 0] == 0)
    assert torch.all(omega[1:, 1:].diagonal() == 1)


def _heads(t, n):
    return t.reshape(t.shape[0], t.shape[1], n, -1).transpose(1, 2)


def _manual_tokens(bb, x, cfg):
    """methods.md sections 1-3 written out: blocks 1..L-1 stock, then the last block
    head by head, with the bias built by loops, residual and FFN as configured."""
    gh, gw = x.shape[-2] // bb.patch_size[0], x.shape[-1] // bb.patch_size[1]
    h = bb.embed(x)
    for blk in bb.blocks[:-1]:
        h = blk(h)
    blk = bb.blocks[-1]
    n = blk.attn.num_heads
    q, k, v = F.linear(blk.ln_1(h), blk.attn.in_proj_weight, blk.attn.in_proj_bias).chunk(3, -1)
    q, k, v = _heads(q, n), _heads(k, n), _heads(v, n)
    s = q.shape[-1] ** -0.5
    bias = torch.zeros(1 + gh * gw, 1 + gh * gw)
    if cfg.attn_gaussian_std is not None:
        for a in range(gh * gw):
            for b in range(gh * gw):
                d2 = (a // gw - b // gw) ** 2 + (a % gw - b % gw) ** 2
                bias[1 + a, 1 + b] = math.exp(-d2 / (2 * cfg.attn_gaussian_std**2))
    if cfg.attention == "self-self":
        attn = torch.softmax(q @ q.transpose(-1, -2) * s, -1) + torch.softmax(k @ k.transpose(-1, -2) * s, -1)
    else:
        left, right = {"q-k": (q, k), "q-q": (q, q), "k-k": (k, k)}[cfg.attention]
        attn = torch.softmax(left @ right.transpose(-1, -2) * s + bias, -1)
    o = blk.attn.out_proj((attn @ v).transpose(1, 2).reshape(h.shape))
    out = h + o if cfg.keep_last_residual else o
    if not cfg.drop_last_mlp:
        out = out + blk.mlp(blk.ln_2(out))
    return bb.visual.ln_post(out) @ bb.visual.proj


_LAST_BLOCKS = {
    "sclip": dict(attention="self-self", keep_last_residual=True, drop_last_mlp=False),
    "naclip": dict(attention="k-k", attn_gaussian_std=5.0, keep_last_residual=False, drop_last_mlp=True),
    "naclip-small-std": dict(attention="k-k", attn_gaussian_std=0.8, keep_last_residual=False,
                             drop_last_mlp=True),
    "clearclip": dict(attention="q-q", keep_last_residual=False, drop_last_mlp=True),
    "clearclip-shipped": dict(attention="q-k", keep_last_residual=False, drop_last_mlp=True),
    "no-residual-with-ffn": dict(attention="q-q", keep_last_residual=False, drop_last_mlp=False),
    "bias-residual-ffn": dict(attention="q-k", attn_gaussian_std=2.0, keep_last_residual=True,
                              drop_last_mlp=False),
}


@pytest.mark.parametrize("name", list(_LAST_BLOCKS))
@pytest.mark.parametrize("size", [(32, 32), (40, 24)])  # the pretraining grid, and 5x3
def test_last_block_switches_match_the_written_out_reference(tiny_clip, name, size):
    cfg = ITACLIPConfig(mid_layers=(), **_LAST_BLOCKS[name])
    bb = OpenCLIPViT(tiny_clip.visual)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(11))
    with torch.inference_mode():
        torch.testing.assert_close(bb.tokens(x, cfg), _manual_tokens(bb, x, cfg), rtol=1e-5, atol=1e-5)


def test_each_switch_changes_the_features(tiny_clip):
    """Negative controls: flipping one switch of NACLIP's block moves the output."""
    bb = OpenCLIPViT(tiny_clip.visual)
    x = torch.randn(1, 3, 40, 40, generator=torch.Generator().manual_seed(12))
    base = ITACLIPConfig(mid_layers=(), **_LAST_BLOCKS["naclip"])
    with torch.inference_mode():
        ref = bb.tokens(x, base)
        for change in (dict(attn_gaussian_std=None), dict(keep_last_residual=True),
                       dict(drop_last_mlp=False), dict(attention="q-q")):
            assert not torch.allclose(bb.tokens(x, base.replace(**change)), ref, atol=1e-4), change


def test_bias_is_cached_per_grid(tiny_clip):
    bb = OpenCLIPViT(tiny_clip.visual)
    cfg = ITACLIPConfig(mid_layers=(), **_LAST_BLOCKS["naclip"])
    x = torch.randn(1, 3, 40, 24)
    with torch.inference_mode():
        bb.tokens(x, cfg)
        first = bb.bias_cache.get(cfg, 5, 3, 1, x)
        bb.tokens(x, cfg)
        assert bb.bias_cache.get(cfg, 5, 3, 1, x) is first
    assert bb.bias_cache.get(cfg.replace(attn_gaussian_std=None), 5, 3, 1, x) is None


def test_attention_map_refuses_a_bias_with_self_self():
    q = torch.randn(1, 2, 5, 4)
    with pytest.raises(ValueError, match="single-softmax"):
        attention_map(q, q, "self-self", torch.zeros(5, 5))


# ------------------------------------------------------------------- windows, padding


def _x(shape, seed):
    img = torch.rand(3, *shape, generator=torch.Generator().manual_seed(seed)) * 255
    return (img - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def _naive_crop_logits(seg, crop, text, cfg):
    """One crop, one view at a time; ClearCLIP's padding written out (methods.md s. 3):
    the crop padded first, every view made from the padded crop, logits on the padded
    frame, cut back at the end."""
    import torchvision.transforms.functional as TF

    bb = seg.backbone
    h, w = crop.shape[-2:]
    p = bb.patch_size[0]
    left = r = t = b = 0
    if cfg.pad_to_patch:
        if w % p:
            left = (p - w % p) // 2
            r = p - w % p - left
        if h % p:
            t = (p - h % p) // 2
            b = p - h % p - t
    padded = F.pad(crop, (left, r, t, b))

    def feats(view):
        f = bb.dense_features(view[None], cfg)[0]
        return f / f.norm(dim=-1, keepdim=True)

    def up(f):
        return F.interpolate((f @ text.T).permute(2, 0, 1)[None], size=padded.shape[-2:],
                             mode="bilinear")[0]

    if not cfg.image_engineering:
        full = up(feats(padded))
    else:
        merged = torch.stack([feats(padded), feats(TF.rgb_to_grayscale(padded).expand(3, -1, -1)),
                              feats(TF.gaussian_blur(padded, [11, 11], [5.0, 5.0]))]).mean(0)
        flips = (up(feats(TF.vflip(padded))).flip(-2) + up(feats(TF.hflip(padded))).flip(-1)) / 2
        full = cfg.eng_weight * up(merged) + (1 - cfg.eng_weight) * flips
    return full[:, t:t + h, left:left + w]


def _naive_logits(seg, x, text, cfg):
    _, H, W = x.shape
    crop = max(H, W) if cfg.crop is None else cfg.crop
    preds = torch.zeros(text.shape[0], H, W)
    count = torch.zeros(1, H, W)
    for y1, y2, x1, x2 in window_grid(H, W, crop, cfg.stride):
        preds[:, y1:y2, x1:x2] += _naive_crop_logits(seg, x[:, y1:y2, x1:x2], text, cfg)
        count[:, y1:y2, x1:x2] += 1
    return preds / count


def test_patch_padding_is_centred():
    assert patch_padding(250, 430, (16, 16)) == (3, 3, 1, 1)  # 250 + 6, 430 + 2
    assert patch_padding(448, 448, (16, 16)) == (0, 0, 0, 0)
    assert patch_padding(21, 16, (16, 16)) == (5, 6, 0, 0)
    assert patch_padding(5, 3, (8, 8)) == (1, 2, 2, 3)


@pytest.mark.parametrize(
    "shape, crop, stride, engineering",
    [((30, 45), 32, 16, False),  # edge crops 30 x 32 (padded in height)
     ((30, 45), None, 16, False),  # the whole image: 30 x 45, padded in both axes
     ((37, 29), 28, 12, True),  # crops of 28 (not a multiple of 8) with the five views
     ((5, 6), None, 7, False)],  # an image smaller than one patch: padded up to it
)
def test_pad_to_patch_matches_the_written_out_reference(tiny_segmenter, tiny_config, shape, crop,
                                                        stride, engineering):
    cfg = tiny_config.replace(pad_to_patch=True, crop=crop, stride=stride,
                              image_engineering=engineering, eng_weight=0.6)
    vocab = Vocabulary.parse("background: sky\ncat\ndog")
    text = drain(tiny_segmenter.iter_query_features(vocab, cfg))
    x = _x(shape, 13)
    with torch.inference_mode():
        fast = drain(tiny_segmenter.iter_logits(x, text, cfg))
        naive = _naive_logits(tiny_segmenter, x, text, cfg)
        floored = drain(tiny_segmenter.iter_logits(x, text, cfg.replace(pad_to_patch=False))) if min(
            shape) >= 8 else None
    torch.testing.assert_close(fast, naive, rtol=1e-5, atol=1e-6)
    if floored is not None:
        assert not torch.allclose(fast, floored, atol=1e-4)


def test_whole_image_window(tiny_segmenter, tiny_config):
    """crop=None: one forward over the whole image, its logits upsampled to it."""
    cfg = tiny_config.replace(crop=None, image_engineering=False)
    vocab = Vocabulary.parse("cat\ndog\nbird")
    text = drain(tiny_segmenter.iter_query_features(vocab, cfg))
    x = _x((44, 70), 14)
    steps = []
    with torch.inference_mode():
        fast = drain(tiny_segmenter.iter_logits(x, text, cfg), steps.append)
        f = tiny_segmenter.backbone.dense_features(x[None], cfg)[0]  # 5 x 8 grid (floored)
        assert f.shape[:2] == (5, 8)
        f = f / f.norm(dim=-1, keepdim=True)
        ref = F.interpolate((f @ text.T).permute(2, 0, 1)[None], size=(44, 70), mode="bilinear")[0]
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)
    assert steps[-1].total == 1
    assert window_side(None, 44, 70) == 70 and window_grid(44, 70, 70, 16) == [(0, 44, 0, 70)]


def test_whole_image_window_too_big_is_refused(tiny_segmenter, tiny_config, monkeypatch):
    monkeypatch.setattr("napari_itaclip.engine.windows.MAX_WINDOW_BYTES", 10_000)
    img = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="crop=None.*short_side"):
        tiny_segmenter.segment(img, "cat\ndog", config=tiny_config.replace(crop=None))


# ----------------------------------------------------------------- post-processing


def test_renormalized_probabilities_after_labels(tiny_segmenter, tiny_config):
    """NACLIP: labels (and their threshold) from the grouped probabilities, then the
    probabilities divided by their class sum (methods.md section 2)."""
    base = tiny_config.replace(pamr_steps=0, close_size=0, logit_scale=30)
    vocab = Vocabulary.parse("sky, wall\ncat, feline\ndog")
    img = np.random.default_rng(15).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    grouped = tiny_segmenter.segment(img, vocab, config=base).probabilities
    thd = float(np.quantile(grouped.max(0), 0.3))  # a threshold that removes some labels
    base = base.replace(prob_threshold=thd)
    plain = tiny_segmenter.segment(img, vocab, config=base)
    renorm = tiny_segmenter.segment(img, vocab, config=base.replace(renormalize_probs=True))
    grouped = plain.probabilities
    np.testing.assert_array_equal(renorm.similarity, plain.similarity)
    np.testing.assert_allclose(renorm.probabilities, grouped / grouped.sum(0, keepdims=True), rtol=1e-6)
    labels = grouped.argmax(0)
    labels[grouped.max(0) < thd] = 0
    np.testing.assert_array_equal(renorm.labels, labels)
    # both steps matter: some labels are thresholded, the class sums are not 1
    assert (grouped.max(0) < thd).any() and (renorm.probabilities.max(0) >= thd).any()
    assert (np.abs(grouped.sum(0) - 1) > 0.01).any()
    # relabel keeps the order: threshold on the un-normalised maps, then renormalise
    thd2 = float(np.quantile(grouped.max(0), 0.6))
    again = renorm.relabel(prob_threshold=thd2)
    labels = grouped.argmax(0)
    labels[grouped.max(0) < thd2] = 0
    np.testing.assert_array_equal(again.labels, labels)
    np.testing.assert_allclose(again.probabilities, renorm.probabilities, rtol=1e-6)
    np.testing.assert_allclose(again.relabel(prob_threshold=thd).probabilities, renorm.probabilities)


def test_renormalisation_after_the_area_threshold_keeps_zero_sums_zero():
    from napari_itaclip.engine.postprocess import renormalize_probabilities

    p = np.array([[[0.2, 0.0]], [[0.6, 0.0]]], dtype=np.float32)
    out = renormalize_probabilities(p)
    np.testing.assert_allclose(out[:, 0, 0], [0.25, 0.75])
    assert np.all(out[:, 0, 1] == 0) and out is not p


# ------------------------------------------------------------------------ presets

# methods.md section 4: (short side, crop, stride, logit scale, prob thd, area thd, PAMR)
_TABLE = {
    "sclip": {
        "voc21": (336, 224, 112, 65, 0.1, 0.1, 0), "context60": (336, 224, 112, 50, 0.1, None, 0),
        "coco_object": (336, 224, 112, 50, 0.1, None, 0), "voc20": (336, 224, 112, 40, 0.0, None, 0),
        "context59": (336, 224, 112, 40, 0.0, None, 0), "ade20k": (336, 224, 112, 40, 0.0, None, 0),
        "coco_stuff": (448, 224, 112, 40, 0.0, None, 0), "cityscapes": (560, 224, 112, 40, 0.0, None, 0),
    },
    "naclip": {
        "voc21": (336, None, 112, 40, 0.1, None, 10), "voc20": (336, None, 112, 40, 0.0, None, 10),
        "context60": (336, 224, 112, 40, 0.1, None, 10), "coco_object": (336, 224, 112, 40, 0.1, None, 10),
        "context59": (336, 224, 112, 40, 0.0, None, 10), "ade20k": (336, 224, 112, 40, 0.0, None, 10),
        "coco_stuff": (336, 224, 112, 40, 0.0, None, 10), "cityscapes": (560, 224, 112, 40, 0.0, None, 10),
    },
    "clearclip": {
        "voc21": (448, 448, 224, 50, 0.5, None, 0), "context60": (448, 448, 224, 50, 0.15, None, 0),
        "coco_object": (448, 448, 224, 50, 0.4, None, 0), "voc20": (448, 448, 224, 50, 0.0, None, 0),
        "context59": (448, 448, 224, 50, 0.0, None, 0), "ade20k": (448, 448, 224, 50, 0.0, None, 0),
        "coco_stuff": (448, 448, 224, 50, 0.0, None, 0), "cityscapes": (448, 224, 224, 50, 0.0, None, 0),
    },
}
# methods.md section 5: (attention, gaussian std, keep residual, drop FFN, pad, renormalise)
_SWITCHES = {
    "sclip": ("self-self", None, True, False, False, False),
    "naclip": ("k-k", 5.0, False, True, False, True),
    "clearclip": ("q-q", None, False, True, True, False),
}


@pytest.mark.parametrize("method", list(_TABLE))
@pytest.mark.parametrize("dataset", DATASETS)
def test_method_presets_match_the_authors_table(method, dataset):
    cfg = ITACLIPConfig.preset(f"{method}-{dataset}")
    short, crop, stride, scale, prob, area, pamr = _TABLE[method][dataset]
    assert (cfg.short_side, cfg.crop, cfg.stride, cfg.logit_scale) == (short, crop, stride, scale)
    assert (cfg.prob_threshold, cfg.area_threshold, cfg.pamr_steps) == (prob, area, pamr)
    if pamr:
        assert cfg.pamr_dilations == (8, 16)
    assert (cfg.attention, cfg.attn_gaussian_std, cfg.keep_last_residual, cfg.drop_last_mlp,
            cfg.pad_to_patch, cfg.renormalize_probs) == _SWITCHES[method]
    # what none of the three has
    assert cfg.mid_layers == () and not cfg.image_engineering
    assert cfg.aux_weight == 0 and cfg.close_size == 0


def test_itaclip_presets_keep_the_new_switches_off():
    for name in list_presets("itaclip"):
        cfg = ITACLIPConfig.preset(name)
        assert cfg.attn_gaussian_std is None and cfg.keep_last_residual
        assert not cfg.pad_to_patch and not cfg.renormalize_probs and cfg.crop is not None


def test_preset_names_resolve():
    assert ITACLIPConfig.preset("naclip-voc21").crop is None
    for spelling in ("naclip-coco_object", "NACLIP-coco-object", "naclip_coco_object"):
        assert ITACLIPConfig.preset(spelling) == ITACLIPConfig.preset("naclip-coco_object")
    assert ITACLIPConfig.preset("coco-object") == ITACLIPConfig.preset("coco_object")
    assert ITACLIPConfig.preset("clearclip-cityscapes", stride=112).stride == 112
    with pytest.raises(ValueError, match="naclip-voc21"):
        ITACLIPConfig.preset("naclip-nope")


def test_methods_are_listed_and_described():
    assert list(METHODS) == ["itaclip", "sclip", "naclip", "clearclip"]
    for m in METHODS:
        text = describe_method(m)
        assert text.endswith(".") and len(text) > 40
    with pytest.raises(ValueError, match="clearclip"):
        describe_method("maskclip")
    names = list_presets("naclip")
    assert names == [f"naclip-{d}" for d in DATASETS]
    assert "voc21" in list_presets("itaclip") and "naclip-voc21" not in list_presets("itaclip")
    assert set(list_presets()) == {n for m in METHODS for n in list_presets(m)}
    assert preset_method("clearclip-ade20k") == "clearclip" and preset_method("fast") == "itaclip"
    register_preset("sclip-my-data", ITACLIPConfig.preset("sclip-voc20", stride=56), overwrite=True)
    assert "sclip-my_data" in list_presets("sclip")
    assert ITACLIPConfig.preset("sclip-my-data").stride == 56


# ---------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "bad, match",
    [(dict(attn_gaussian_std=0.0), "attn_gaussian_std"),
     (dict(attn_gaussian_std=-1.0, attention="k-k"), "attn_gaussian_std"),
     (dict(attn_gaussian_std=float("nan"), attention="k-k"), "attn_gaussian_std"),
     (dict(attn_gaussian_std="5", attention="k-k"), "attn_gaussian_std"),
     (dict(attn_gaussian_std=5.0, attention="self-self"), "single-softmax"),
     (dict(crop=0), "crop"),
     (dict(pad_to_patch="yes"), "pad_to_patch"),
     (dict(keep_last_residual=None), "keep_last_residual"),
     (dict(renormalize_probs=2), "renormalize_probs")],
)
def test_invalid_switches_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        ITACLIPConfig(**bad)


def test_valid_switch_combinations():
    cfg = ITACLIPConfig(attention="q-k", attn_gaussian_std=3, keep_last_residual=False,
                        drop_last_mlp=False, pad_to_patch=1, crop=None, renormalize_probs=True)
    assert cfg.pad_to_patch is True and cfg.crop is None
    # the Gaussian bias goes to the last block's own map; mid-layer maps stay unbiased
    assert ITACLIPConfig(attention="k-k", attn_gaussian_std=5.0, mid_layers=(7,)).mid_layers == (7,)
    round_trip = ITACLIPConfig.from_dict(ITACLIPConfig.preset("naclip-voc21").to_dict())
    assert round_trip == ITACLIPConfig.preset("naclip-voc21")
    assert {"attn_gaussian_std", "keep_last_residual", "pad_to_patch", "renormalize_probs"} <= {
        f.name for f in dataclasses.fields(ITACLIPConfig)}


def test_chunked_mode_refuses_the_whole_image_window():
    from napari_itaclip.chunked import ChunkingError, check_config

    with pytest.raises(ChunkingError, match="crop=None"):
        check_config(ITACLIPConfig.preset("naclip-voc21", short_side=None))
    check_config(ITACLIPConfig.preset("clearclip-voc20", short_side=None))  # padding is local


# ------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("method", ["sclip", "naclip", "clearclip"])
def test_method_presets_run_end_to_end_batched(tiny_segmenter, method, monkeypatch):
    """The presets scaled to the tiny model; a tiny batch bound gives the same result."""
    cfg = ITACLIPConfig.preset(f"{method}-voc21", short_side=None, logit_scale=300,
                               pamr_dilations=(1, 2), pamr_steps=2 if method == "naclip" else 0)
    if cfg.crop is not None:
        cfg = cfg.replace(crop=28, stride=14)  # not a multiple of the patch: ClearCLIP pads
    vocab = Vocabulary.parse("background: sky, wall\ncat\ndog, puppy")
    img = np.random.default_rng(16).integers(0, 256, (45, 58, 3), dtype=np.uint8)
    monkeypatch.setattr(tiny_segmenter, "batch_memory_mb", 1024.0)
    big = tiny_segmenter.segment(img, vocab, config=cfg)
    monkeypatch.setattr(tiny_segmenter, "batch_memory_mb", 1e-6)  # one crop per batch
    one = tiny_segmenter.segment(img, vocab, config=cfg)
    np.testing.assert_allclose(big.similarity, one.similarity, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(big.labels, one.labels)
    if method == "naclip":
        np.testing.assert_allclose(big.probabilities.sum(0), 1.0, rtol=1e-5)


# ------------------------------------------------------------------- feature cache


_CACHE_CASES = {
    "naclip": dict(attention="k-k", attn_gaussian_std=2.0, keep_last_residual=False, crop=None,
                   mid_layers=(), image_engineering=False, renormalize_probs=True),
    "clearclip": dict(attention="q-q", keep_last_residual=False, pad_to_patch=True, crop=28,
                      stride=14, mid_layers=()),
}


@pytest.mark.parametrize("name", list(_CACHE_CASES))
def test_feature_cache_with_the_method_switches(tiny_clip, tiny_config, name):
    """A new vocabulary (or text-side setting) reuses the features: same outputs as
    without a cache; changing an image-side switch misses."""
    from napari_itaclip import Segmenter

    cfg = tiny_config.replace(**_CACHE_CASES[name])
    cached = Segmenter(tiny_clip, None, "cpu", cfg)
    plain = Segmenter(tiny_clip, None, "cpu", cfg, feature_cache_mb=0)
    img = np.random.default_rng(17).integers(0, 256, (45, 58, 3), dtype=np.uint8)
    assert not cached.segment(img, "cat\ndog").image_cached
    for vocab, c in (("cat\nbird\ncar", cfg), ("cat\ndog", cfg.replace(renormalize_probs=False,
                                                                       logit_scale=20))):
        hit = cached.segment(img, vocab, config=c)
        assert hit.image_cached
        ref = plain.segment(img, vocab, config=c)
        np.testing.assert_allclose(hit.similarity, ref.similarity, rtol=0, atol=1e-6)
        np.testing.assert_allclose(hit.probabilities, ref.probabilities, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(hit.labels, ref.labels)
    for change in (dict(attn_gaussian_std=None if cfg.attn_gaussian_std else 3.0),
                   dict(keep_last_residual=True), dict(pad_to_patch=not cfg.pad_to_patch),
                   dict(crop=32 if cfg.crop is None else None)):
        assert not cached.segment(img, "cat\ndog", config=cfg.replace(**change)).image_cached
