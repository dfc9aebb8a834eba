import numpy as np


def test_tiny_segmenter_runs_end_to_end(tiny_segmenter):
    img = (np.random.RandomState(0).rand(40, 56, 3) * 255).astype(np.uint8)
    stages = []
    res = tiny_segmenter.segment(img, "background: sky\ncat\ndog", progress=stages.append)
    assert res.labels.shape == (40, 56)
    assert res.probabilities.shape == res.similarity.shape == (3, 40, 56)
    assert [s.stage for s in stages][0] == "load"
    assert {s.stage for s in stages} == {"load", "text", "image", "refine", "post"}
    np.testing.assert_allclose(res.probabilities.sum(0) <= 1 + 1e-5, True)
