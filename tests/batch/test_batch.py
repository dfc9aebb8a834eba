"""batch.BatchSegmenter: the object behind ``napari-itaclip segment``, used directly."""

from __future__ import annotations

import json

import numpy as np
import pytest

tifffile = pytest.importorskip("tifffile")


def test_batch_segmenter_shares_one_model_and_writes_sidecars(tmp_path, tiny_model_json,
                                                              tiny_checkpoint, tiny_config,
                                                              monkeypatch):
    import napari_itaclip.engine.segmenter as seg_mod
    from napari_itaclip import Segmenter, Vocabulary
    from napari_itaclip.batch import BatchSegmenter
    from napari_itaclip.chunked import SegmenterSpec

    loads = []
    real = seg_mod.load_model
    monkeypatch.setattr(seg_mod, "load_model",
                        lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"im{i}.tif")
        tifffile.imwrite(paths[-1], rng.integers(0, 255, (2, 40, 36)).astype(np.uint8))
    vocab = Vocabulary.parse("background: sky\ncell")
    spec = SegmenterSpec(model=str(tiny_model_json), pretrained=str(tiny_checkpoint),
                         device="cpu")
    with BatchSegmenter(vocab, tiny_config, spec, preset="mine", quiet=True) as batch:
        report = batch.run(paths, tmp_path / "out")
        again = batch.run(paths, tmp_path / "out")
    assert (report.done, report.skipped, report.failed) == (2, 0, [])
    assert (again.done, again.skipped) == (0, 2)
    assert loads == [str(tiny_model_json)]  # one model for the whole run
    meta = json.loads((tmp_path / "out" / "im1.json").read_text())
    assert meta["preset"] == "mine" and meta["image"]["planes"] == [2]
    ref = Segmenter(model=str(tiny_model_json), pretrained=str(tiny_checkpoint), device="cpu")
    expect = ref.segment(tifffile.imread(paths[1])[1], vocab, config=tiny_config)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "im1_labels.tif")[1],
                                  expect.labels)
