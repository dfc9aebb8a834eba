"""Full-size ViT-B/16 in OpenAI's layout, random seeded weights from a local file.

Slow (a few minutes on 2 CPU cores): run with ``pytest -m slow``.
"""

import numpy as np
import pytest
import torch

from _spies import token_batches
from napari_itaclip import ITACLIPConfig, Segmenter

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vitb16_file(tmp_path_factory):
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None)
    path = tmp_path_factory.mktemp("vitb16") / "ViT-B-16.pt"
    torch.save(model.state_dict(), path)
    return path


def test_loads_and_segments_realistic_shapes(vitb16_file, tmp_path):
    cfg = ITACLIPConfig.preset("voc21", short_side=None, stride=112)
    seg = Segmenter("ViT-B-16-quickgelu", str(vitb16_file), device="cpu", config=cfg,
                    cache_dir=tmp_path)
    rng = np.random.default_rng(0)
    img = (rng.random((240, 300, 3)) * 255).astype(np.uint8)
    vocab = "background: sky, wall\ncat >= a small domesticated carnivorous mammal\ndog"
    res = seg.segment(img, vocab)
    assert res.labels.shape == (240, 300) and res.similarity.shape == (3, 240, 300)
    assert res.labels.min() >= 0 and res.labels.max() <= 2
    assert np.isfinite(res.similarity).all() and (np.abs(res.similarity) <= 1.0 + 1e-5).all()
    assert len(list(tmp_path.rglob("*.npy"))) == 5  # sky, wall, cat, dog and the definition
    # a second segmenter (a new process, in effect) reads the text cache from disk
    seg2 = Segmenter("ViT-B-16-quickgelu", str(vitb16_file), device="cpu", config=cfg,
                     cache_dir=tmp_path)
    seg2.load()
    with token_batches(seg2.model.token_embedding, fail=True):
        res2 = seg2.segment(img, vocab)
    np.testing.assert_array_equal(res.labels, res2.labels)
    np.testing.assert_allclose(res.similarity, res2.similarity, rtol=1e-6, atol=1e-7)


def test_image_smaller_than_the_crop(vitb16_file):
    cfg = ITACLIPConfig.preset("fast", short_side=None)
    seg = Segmenter("ViT-B-16-quickgelu", str(vitb16_file), device="cpu", config=cfg,
                    cache_dir=False)
    img = (np.random.default_rng(1).random((150, 200)) * 65535).astype(np.uint16)
    res = seg.segment(img, ["cell", "nucleus"])
    assert res.labels.shape == (150, 200) and res.probabilities.shape == (2, 150, 200)
    # two classes, one name each, no background: the probabilities are a softmax over
    # the two, and the labels their argmax up to the 3x3 closing's few changed pixels
    np.testing.assert_allclose(res.probabilities.sum(axis=0), 1.0, atol=1e-5)
    assert (res.labels == res.probabilities.argmax(axis=0)).mean() > 0.95
