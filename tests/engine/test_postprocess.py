import numpy as np

from napari_itaclip.engine.postprocess import area_filter, closing, labels_from_probabilities


def test_prob_threshold_falls_back_to_label_zero():
    p = np.array([[[0.2, 0.05]], [[0.7, 0.06]], [[0.1, 0.04]]], dtype=np.float32)  # (3, 1, 2)
    lab = labels_from_probabilities(p, prob_threshold=0.1, close_size=0)
    np.testing.assert_array_equal(lab, [[1, 0]])  # max 0.06 < 0.1 -> 0
    np.testing.assert_array_equal(labels_from_probabilities(p, 0.0, 0), [[1, 1]])


def test_area_threshold_is_strictly_larger_than_fraction_of_non_background():
    p = np.zeros((3, 1, 10), dtype=np.float32)
    p[0, 0, :5] = 1  # background: never filtered, not counted
    p[1, 0, 5:9] = 1  # 4 px of the 5 non-background px
    p[2, 0, 9] = 1  # 1 px = 0.2 of non-background
    out = area_filter(p, 0.2)  # 1 > 0.2 * 5 is false -> removed
    assert out[2].sum() == 0 and out[1].sum() == 4 and out[0].sum() == 5
    assert area_filter(p, 0.19) is p  # 1 > 0.95: kept, nothing copied
    assert area_filter(p, None) is p
    assert p[2].sum() == 1  # input untouched


def test_closing_fills_holes_and_border_pixels_see_only_the_image():
    lab = np.full((7, 7), 2, dtype=np.int32)
    lab[3, 3] = 0  # a one-pixel hole
    np.testing.assert_array_equal(closing(lab, 3), np.full((7, 7), 2))
    # border: a column of 1 on the left edge against 0 elsewhere stays as it is
    edge = np.zeros((5, 5), dtype=np.int32)
    edge[:, 0] = 1
    np.testing.assert_array_equal(closing(edge, 3), edge)
    # a corner pixel of label 3 survives (its dilation never sees out-of-image zeros)
    corner = np.zeros((5, 5), dtype=np.int32)
    corner[0, 0] = 3
    np.testing.assert_array_equal(closing(corner, 3), corner)
    assert closing(lab, 0) is lab


def test_closing_against_scipy_grey_closing():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    lab = rng.integers(0, 4, size=(30, 25)).astype(np.int32)
    expected = ndimage.grey_erosion(ndimage.grey_dilation(lab, size=3, mode="nearest"),
                                    size=3, mode="nearest")
    np.testing.assert_array_equal(closing(lab, 3), expected)


def test_relabel_uses_kept_maps(tiny_segmenter):
    img = (np.random.default_rng(1).random((40, 40, 3)) * 255).astype(np.uint8)
    res = tiny_segmenter.segment(img, "background: sky\ncat\ndog")
    strict = res.relabel(prob_threshold=1.0)
    assert (strict.labels == 0).all()
    assert strict.config.prob_threshold == 1.0 and res.config.prob_threshold == 0.0
    back = strict.relabel(prob_threshold=0.0)
    np.testing.assert_array_equal(back.labels, res.labels)
    area = res.relabel(area_threshold=1.0)  # every class except 0 removed
    assert set(np.unique(area.labels)) <= {0}
    assert area.probabilities[1:].max() == 0 and res.probabilities[1:].max() > 0
    np.testing.assert_array_equal(area.relabel(area_threshold=None).labels, res.labels)


def test_labels_are_taken_band_by_band_with_the_same_result(monkeypatch):
    from napari_itaclip.engine import postprocess

    rng = np.random.default_rng(0)
    p = rng.random((5, 37, 23)).astype(np.float32)
    p[:, 3, 4] = 0.5  # a tie: the first class wins, as with numpy's argmax
    whole = labels_from_probabilities(p, 0.0, 0)
    monkeypatch.setattr(postprocess, "BAND_VALUES", 5 * 23 * 2)  # bands of two rows
    assert len(postprocess.row_bands(*p.shape)) == 19
    np.testing.assert_array_equal(labels_from_probabilities(p, 0.0, 0), whole)
    np.testing.assert_array_equal(whole, p.argmax(axis=0))


def test_the_finite_check_sees_every_band(monkeypatch):
    import pytest
    import torch

    from napari_itaclip.engine import postprocess
    from napari_itaclip.engine.segmenter import _check_finite
    from napari_itaclip.errors import NonFiniteResultError

    monkeypatch.setattr(postprocess, "BAND_VALUES", 3 * 10)  # bands of one row
    sim = torch.zeros(3, 10, 10)
    prob = torch.zeros(3, 10, 10)
    _check_finite(sim, prob, half=False)
    prob[2, 9, 9] = float("nan")  # the last pixel of the last band
    with pytest.raises(NonFiniteResultError, match=r"1\.0% of the pixels"):
        _check_finite(sim, prob, half=False)
