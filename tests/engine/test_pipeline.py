"""The assembled pipeline against docs/engine.md's sections "Image engineering",
"Sliding window" and "Outputs" written out naively."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from napari_itaclip import Vocabulary
from napari_itaclip.engine import augment
from napari_itaclip.engine.images import MEAN, STD
from napari_itaclip.engine.sliding import window_grid
from napari_itaclip.engine.windows import BatchBudget, crops_per_batch
from napari_itaclip.progress import drain


def test_window_grid_formula():
    # rows = max(H - c + s - 1, 0) // s + 1 ; windows end at min(i*s + c, H)
    wins = window_grid(336, 448, 224, 28)
    assert len(wins) == 5 * 9
    assert wins[0] == (0, 224, 0, 224) and wins[-1] == (112, 336, 224, 448)
    assert window_grid(100, 60, 224, 28) == [(0, 100, 0, 60)]  # smaller than the crop
    w = window_grid(300, 230, 224, 100)  # last window clamped back inside the image
    assert w == [(0, 224, 0, 224), (0, 224, 6, 230), (76, 300, 0, 224), (76, 300, 6, 230)]


def test_grayscale_and_blur_match_torchvision():
    x = torch.randn(2, 3, 40, 33, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(augment.grayscale(x)[:, :1], TF.rgb_to_grayscale(x))
    ref = torch.stack([TF.gaussian_blur(xi, [11, 11], [5.0, 5.0]) for xi in x])
    torch.testing.assert_close(augment.blur(x), ref, rtol=1e-5, atol=1e-5)


def _naive_crop_logits(seg, crop, text, cfg):
    """docs/engine.md's "Image engineering" for one crop, one view at a time, torchvision transforms."""
    bb = seg.backbone
    h, w = crop.shape[-2:]

    def feats(view):
        f = bb.dense_features(view[None], cfg)[0]
        return f / f.norm(dim=-1, keepdim=True)

    def up(f):
        return F.interpolate((f @ text.T).permute(2, 0, 1)[None], size=(h, w), mode="bilinear")[0]

    f0 = feats(crop)
    if not cfg.image_engineering:
        return up(f0)
    fg = feats(TF.rgb_to_grayscale(crop).expand(3, -1, -1))
    fb = feats(TF.gaussian_blur(crop, [11, 11], [5.0, 5.0]))
    logits = up(torch.stack([f0, fg, fb]).mean(0))
    fv = up(feats(TF.vflip(crop))).flip(-2)
    fh = up(feats(TF.hflip(crop))).flip(-1)
    return cfg.eng_weight * logits + (1 - cfg.eng_weight) * (fv + fh) / 2


def _naive_logits(seg, x, text, cfg):
    _, H, W = x.shape
    preds = torch.zeros(text.shape[0], H, W)
    count = torch.zeros(1, H, W)
    for y1, y2, x1, x2 in window_grid(H, W, cfg.crop, cfg.stride):
        preds[:, y1:y2, x1:x2] += _naive_crop_logits(seg, x[:, y1:y2, x1:x2], text, cfg)
        count[:, y1:y2, x1:x2] += 1
    return preds / count


@pytest.mark.parametrize("engineering", [True, False])
@pytest.mark.parametrize("shape", [(48, 72), (20, 26)])  # bigger than and smaller than the crop
def test_batched_logits_equal_naive_one_crop_at_a_time(tiny_segmenter, tiny_config, engineering, shape):
    cfg = tiny_config.replace(image_engineering=engineering, eng_weight=0.7)
    vocab = Vocabulary.parse("background: sky\ncat >= a pet\ndog")
    text = drain(tiny_segmenter.iter_query_features(vocab, cfg))
    img = torch.rand(3, *shape, generator=torch.Generator().manual_seed(4)) * 255
    x = (img - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    with torch.inference_mode():
        fast = drain(tiny_segmenter.iter_logits(x, text, cfg))
        naive = _naive_logits(tiny_segmenter, x, text, cfg)
    torch.testing.assert_close(fast, naive, rtol=1e-5, atol=1e-6)


def test_batch_size_does_not_change_results(tiny_clip, tiny_config):
    from napari_itaclip import Segmenter

    img = (np.random.default_rng(5).random((50, 70, 3)) * 255).astype(np.uint8)
    vocab = "background: sky\ncat\ndog"
    big = Segmenter(tiny_clip, None, "cpu", tiny_config, batch_memory_mb=1024)
    one = Segmenter(tiny_clip, None, "cpu", tiny_config, batch_memory_mb=1e-6)
    assert crops_per_batch(32, 32, BatchBudget.of(one.backbone, half=False,
                                                  batch_memory_mb=one.batch_memory_mb)) == 1
    steps = []
    r1 = big.segment(img, vocab)
    r2 = one.segment(img, vocab, progress=steps.append)
    n_windows = len(window_grid(50, 70, 32, 16))
    image_steps = [p for p in steps if p.stage == "image"]
    assert len(image_steps) == n_windows + 1  # one report per batch (one window each)
    assert image_steps[-1].total == n_windows * 5
    np.testing.assert_allclose(r1.similarity, r2.similarity, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(r1.labels, r2.labels)


def test_outputs_follow_spec_section_7(tiny_segmenter, tiny_config):
    cfg = tiny_config.replace(pamr_steps=0, close_size=0, logit_scale=40)
    vocab = Vocabulary.parse("background: sky, wall\ncat, feline\ndog")
    img = (np.random.default_rng(6).random((40, 40, 3)) * 255).astype(np.uint8)
    res = tiny_segmenter.segment(img, vocab, config=cfg)
    text = drain(tiny_segmenter.iter_query_features(vocab, cfg))
    x = (torch.from_numpy(img).permute(2, 0, 1).float() - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(
        STD).view(3, 1, 1)
    logits = drain(tiny_segmenter.iter_logits(x, text, cfg)).numpy()
    np.testing.assert_allclose(res.similarity[0], logits[:2].max(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.similarity[1], logits[2:4].max(0), rtol=1e-5, atol=1e-6)
    p = torch.softmax(torch.from_numpy(logits) * 40, 0).numpy()
    np.testing.assert_allclose(res.probabilities[0], p[:2].max(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.probabilities[2], p[4], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(res.labels, res.probabilities.argmax(0))


def test_short_side_resize_and_back(tiny_segmenter, tiny_config):
    cfg = tiny_config.replace(short_side=24)
    img = (np.random.default_rng(7).random((40, 60, 3)) * 255).astype(np.uint8)
    res = tiny_segmenter.segment(img, "cat\ndog", config=cfg)
    assert res.labels.shape == (40, 60) and res.similarity.shape == (2, 40, 60)
    # resized to 24 x 36 internally: the sliding window ran on that grid
    # (the second run of the same image is served from the feature cache, which
    # reports the same crop-view total)
    steps = []
    tiny_segmenter.segment(img, "cat\ndog", config=cfg, progress=steps.append)
    assert [p for p in steps if p.stage == "image-cached"][-1].total == len(window_grid(24, 36, 32, 16)) * 5
