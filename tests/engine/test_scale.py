"""The working resolution from the object size (docs/models.md, "Object size")."""

from __future__ import annotations

import numpy as np
import pytest

from napari_itaclip import ITACLIPConfig, Segmenter
from napari_itaclip.engine.scale import (
    block_mean_uint8,
    labels_to_input,
    working_factor,
    working_shape,
    working_strokes,
)


@pytest.mark.parametrize("size, factor", [(None, 1), (16, 1), (25, 1), (63.9, 1), (64, 2),
                                          (100, 3), (256, 8), (5000, 156)])
def test_factor_from_object_size(size, factor):
    assert working_factor(size) == factor


@pytest.mark.parametrize("size, words", [(8, "smaller than one 16-px patch"),
                                         (0, "positive"), (-3, "positive"),
                                         (float("nan"), "finite"), (float("inf"), "finite"),
                                         ("big", "number")])
def test_unusable_object_sizes_are_clear_errors(size, words):
    with pytest.raises(ValueError, match=words):
        working_factor(size)
    if not isinstance(size, str):
        with pytest.raises(ValueError, match="object_size"):
            ITACLIPConfig(object_size=size)


def test_block_mean_is_exact_on_regions_and_edges():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (103, 77, 3), dtype=np.uint8)
    whole = block_mean_uint8(img, 4)
    assert whole.shape == (*working_shape(img.shape, 4), 3) == (26, 20, 3)
    # a block-aligned region gives exactly the matching part of the whole
    np.testing.assert_array_equal(block_mean_uint8(img[8:40, 12:64], 4), whole[2:10, 3:16])
    # the partial edge blocks average the pixels they have, rounded half up
    edge = img[100:103, 76:77].astype(np.float64).mean(axis=(0, 1))
    np.testing.assert_array_equal(whole[25, 19], np.floor(edge + 0.5))
    full = img[:4, :4].astype(np.float64).mean(axis=(0, 1))
    np.testing.assert_array_equal(whole[0, 0], np.floor(full + 0.5))
    assert block_mean_uint8(img, 1) is img


def test_labels_go_back_by_block():
    lab = np.arange(6).reshape(2, 3)
    up = labels_to_input(lab, (7, 11), 4)
    assert up.shape == (7, 11)
    assert up[0, 0] == 0 and up[3, 3] == 0 and up[4, 4] == 4 and up[6, 10] == 5
    # a region of the input, the labels of a region of the working grid
    part = labels_to_input(lab[1:, 1:], ((5, 7), (4, 11)), 4, origin=(1, 1))
    np.testing.assert_array_equal(part, up[5:7, 4:11])


def test_strokes_follow_the_image_to_the_working_grid():
    img = np.zeros((8, 8), np.uint8)
    a = np.zeros((8, 8), bool)
    b = np.zeros((8, 8), bool)
    a[0:4, 0:3] = True  # 12 of the first block's 16 pixels
    b[0:4, 3:4] = True  # 4 of them: the block is a's
    b[4:5, 4:5] = True  # one pixel in an empty block: b's
    work, masks = working_strokes(img, {"a": a, "b": b}, 4)
    assert work.shape == (2, 2, 3)
    np.testing.assert_array_equal(masks["a"], [[True, False], [False, False]])
    np.testing.assert_array_equal(masks["b"], [[False, False], [False, True]])


def test_engine_segments_the_working_image_and_maps_back(tiny_segmenter, tiny_config):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (130, 98, 3), dtype=np.uint8)
    vocab = "background: sky\ncat\ndog"
    res = tiny_segmenter.segment(img, vocab, config=tiny_config.replace(object_size=64))
    assert res.factor == 2 and res.shape == (130, 98)
    work = res.working
    assert work.shape == (65, 49)
    # the working result is the engine on the reduced image at its own resolution
    direct = tiny_segmenter.segment(block_mean_uint8(img, 2), vocab,
                                    config=tiny_config.replace(short_side=None))
    np.testing.assert_array_equal(work.labels, direct.labels)
    np.testing.assert_allclose(work.similarity, direct.similarity, atol=1e-6)
    # labels by block, maps bilinear at the input's size
    np.testing.assert_array_equal(res.labels, labels_to_input(work.labels, (130, 98), 2))
    assert res.similarity.shape == res.probabilities.shape == (3, 130, 98)
    np.testing.assert_allclose(res.similarity[:, 1::2, 1::2].mean(), work.similarity.mean(),
                               atol=0.02)
    # relabel works at the working resolution too
    strict = res.relabel(prob_threshold=0.99)
    np.testing.assert_array_equal(strict.labels, labels_to_input(
        work.relabel(prob_threshold=0.99).labels, (130, 98), 2))
    assert (strict.labels == 0).sum() >= (res.labels == 0).sum()


def test_object_size_never_changes_runs_without_it(tiny_segmenter, tiny_config):
    img = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    a = tiny_segmenter.segment(img, "cat\ndog", config=tiny_config)
    b = tiny_segmenter.segment(img, "cat\ndog", config=tiny_config.replace(object_size=None))
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.working is None and a.factor == 1


def test_colour_model_finds_a_square_at_its_object_size():
    from test_colour_model import ColourBackbone, ColourText, _picture

    # the red square and the blue disk at twice their size: objects of 100-120 px
    img = np.repeat(np.repeat(_picture()[0], 2, axis=0), 2, axis=1)
    truth = np.repeat(np.repeat(_picture()[1], 2, axis=0), 2, axis=1)
    cfg = ITACLIPConfig(short_side=None, crop=32, stride=16, pamr_dilations=(1, 2), pamr_steps=5,
                        object_size=64)
    seg = Segmenter.from_components(ColourBackbone(), ColourText(), config=cfg)
    res = seg.segment(img, "background: grey\nred\nblue\ngreen")
    assert res.factor == 2
    for c in (1, 2):
        inter = ((res.labels == c) & (truth == c)).sum()
        union = ((res.labels == c) | (truth == c)).sum()
        assert inter / union > 0.8, (c, inter / union)


def test_exemplars_at_the_working_resolution(tiny_segmenter, tiny_config):
    img = np.random.default_rng(3).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    mask = np.zeros((96, 96), bool)
    mask[10:30, 10:30] = True
    cfg = tiny_config.replace(object_size=64)
    ex = tiny_segmenter.exemplars(img, {"thing": mask}, config=cfg)
    res = tiny_segmenter.segment(img, "cat\ndog", config=cfg, exemplars=ex)
    assert res.class_names == ["cat", "dog", "thing"]
    assert (res.labels[10:30, 10:30] == 2).all()  # the strokes keep their class
