"""A constructed model whose meaning is known: patch features encode the patch's
colour, and the words 'red', 'green', 'blue' point at those colours. A picture with
a red square and a blue disk on grey must be labelled exactly there, through
sliding windows, image engineering, PAMR, resizing and the closing."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_itaclip import ITACLIPConfig, Segmenter
from napari_itaclip.engine.segmenter import MEAN, STD

DIRS = {
    "grey": [0.0, 0.0, 0.0, 1.0],
    "red": [2.0, -1.0, -1.0, 0.0],
    "green": [-1.0, 2.0, -1.0, 0.0],
    "blue": [-1.0, -1.0, 2.0, 0.0],
}


class ColourBackbone:
    patch_size = (8, 8)
    num_heads = 1
    width = 4

    def dense_features(self, x, cfg):
        rgb = x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
        gh, gw = x.shape[-2] // 8, x.shape[-1] // 8
        mean = F.avg_pool2d(rgb[..., : gh * 8, : gw * 8], 8)  # (B, 3, gh, gw)
        chroma = mean - mean.mean(1, keepdim=True)
        feats = torch.cat([chroma, torch.full_like(mean[:, :1], 20.0)], 1)
        return feats.permute(0, 2, 3, 1)


class ColourText:
    def __init__(self):
        self.calls = 0

    def iter_encode(self, texts):
        self.calls += 1
        yield (0, len(texts))
        out = np.array([DIRS[t] for t in texts], dtype=np.float32)
        yield (len(texts), len(texts))
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def _picture(h=120, w=160):
    img = np.full((h, w, 3), 128, dtype=np.uint8)
    truth = np.zeros((h, w), dtype=np.int32)
    img[20:70, 30:90] = (220, 30, 30)
    truth[20:70, 30:90] = 1
    yy, xx = np.mgrid[:h, :w]
    disk = (yy - 85) ** 2 + (xx - 125) ** 2 < 22**2
    img[disk] = (30, 40, 210)
    truth[disk] = 2
    return img, truth


@pytest.mark.parametrize(
    "cfg, min_iou",
    [
        (ITACLIPConfig(short_side=None, crop=32, stride=16, pamr_dilations=(1, 2), pamr_steps=5), 0.85),
        (ITACLIPConfig(short_side=96, crop=32, stride=24, pamr_dilations=(2, 4)), 0.85),  # resized
        # no PAMR: boundaries are those of bilinearly upsampled 8 px patches
        (ITACLIPConfig(short_side=None, crop=48, stride=40, image_engineering=False, pamr_steps=0), 0.75),
    ],
)
def test_colours_are_labelled_where_they_are(cfg, min_iou):
    img, truth = _picture()
    seg = Segmenter.from_components(ColourBackbone(), ColourText(), config=cfg)
    res = seg.segment(img, "background: grey\nred\nblue\ngreen")
    assert res.class_names == ["background", "red", "blue", "green"]
    assert (res.labels == 3).sum() == 0  # nothing green in the picture
    for c in (0, 1, 2):
        inter = ((res.labels == c) & (truth == c)).sum()
        union = ((res.labels == c) | (truth == c)).sum()
        assert inter / union > min_iou, (c, inter / union)
    # well inside and well outside each object the label is exact
    from scipy import ndimage

    for c in (1, 2):
        inside = ndimage.binary_erosion(truth == c, iterations=8)
        outside = ~ndimage.binary_dilation(truth == c, iterations=8)
        assert (res.labels[inside] == c).all()
        assert (res.labels[outside] != c).all()


def test_grey_uint16_microscopy_like_image():
    """A uint16 image goes through the robust rescaling; bright blob = 'red' channel."""
    img, truth = _picture()
    img16 = img.astype(np.uint16) * 200 + 1000
    cfg = ITACLIPConfig(short_side=None, crop=32, stride=16, pamr_dilations=(1, 2), pamr_steps=2)
    seg = Segmenter.from_components(ColourBackbone(), ColourText(), config=cfg)
    res = seg.segment(img16, "background: grey\nred\nblue")
    inside = truth == 1
    assert (res.labels[inside] == 1).mean() > 0.85
