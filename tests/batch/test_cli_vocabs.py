"""``napari-itaclip segment --vocab A --vocab B``: features computed once per image, one
set of outputs per vocabulary (issue #11).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_itaclip.cli import main

tifffile = pytest.importorskip("tifffile")

def _img(seed, shape=(40, 48, 3)):
    return np.random.default_rng(seed).integers(0, 255, shape).astype(np.uint8)


def test_several_vocabularies_each_get_outputs_features_computed_once(tmp_path, model_args,
                                                                      tiny_clip, tiny_config,
                                                                      monkeypatch):
    from napari_itaclip import Segmenter
    from napari_itaclip.engine import registry, windows

    registry.clear()

    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "a.tif", _img(0))
    tifffile.imwrite(src / "z.tif", np.stack([_img(1)[..., 0], _img(2)[..., 0]]))  # 2 planes
    vfile = tmp_path / "cells.txt"
    vfile.write_text("background: sky\ncell >= a small unit of life\nnucleus\n")
    forwards = []
    real = windows.crop_features
    monkeypatch.setattr(windows, "crop_features",
                        lambda *a, **k: forwards.append(1) or real(*a, **k))
    out = tmp_path / "out"
    rc = main(["segment", str(src), "--vocab", str(vfile), "--vocab", "sky, grass, cat",
               "--vocab", "sky, grass, cat", "--out", str(out), *model_args])
    assert rc == 0
    n_batches = len(forwards)
    # three vocabularies, one ViT pass per plane: as many forwards as one vocabulary needs
    forwards.clear()
    registry.clear()  # a fresh model: its feature cache is empty
    single = tmp_path / "single"
    assert main(["segment", str(src), "--vocab", "sky, grass, cat", "--out", str(single),
                 *model_args]) == 0
    assert n_batches == len(forwards) > 0
    ref = Segmenter(tiny_clip, None, "cpu", tiny_config, feature_cache_mb=0)
    for tag, vocab in (("cells", vfile.read_text()), ("sky-grass-cat", "sky, grass, cat"),
                       ("sky-grass-cat-2", "sky, grass, cat")):
        meta = json.loads((out / f"a__{tag}.json").read_text())
        assert meta["vocabulary_name"] == tag
        assert meta["outputs"] == {"labels": f"a__{tag}_labels.tif",
                                   "similarity": f"a__{tag}_similarity.tif"}
        expect = ref.segment(_img(0), vocab, config=tiny_config)
        np.testing.assert_array_equal(tifffile.imread(out / f"a__{tag}_labels.tif"), expect.labels)
        np.testing.assert_allclose(tifffile.imread(out / f"a__{tag}_similarity.tif"),
                                   expect.similarity, atol=1e-6)
        zmeta = json.loads((out / f"z__{tag}.json").read_text())
        assert zmeta["planes_with_image_features_reused"] == (0 if tag == "cells" else 2)
        labels = tifffile.imread(out / f"z__{tag}_labels.tif")
        assert labels.shape == (2, 40, 48)
        np.testing.assert_array_equal(labels[1], ref.segment(_img(2)[..., 0], vocab,
                                                             config=tiny_config).labels)
    assert meta["class_names"] == ["sky", "grass", "cat"]
    # the single-vocabulary outputs keep their plain names
    assert (single / "a_labels.tif").is_file() and (single / "a.json").is_file()
    # resuming: everything done is skipped; a new vocabulary only computes its outputs
    rc = main(["segment", str(src), "--vocab", str(vfile), "--vocab", "sky, grass, cat",
               "--vocab", "sky, grass, cat", "--out", str(out), *model_args])
    assert rc == 0
    before = (out / "a__cells_labels.tif").stat().st_mtime_ns
    assert main(["segment", str(src), "--vocab", str(vfile), "--vocab", "tree, road",
                 "--out", str(out), *model_args]) == 0
    assert (out / "a__tree-road_labels.tif").is_file()
    assert (out / "a__cells_labels.tif").stat().st_mtime_ns == before
    registry.clear()


def test_bad_second_vocabulary_is_a_usage_error(tmp_path, model_args, capsys):
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "a.tif", _img(0))
    rc = main(["segment", str(src), "--vocab", "cat, dog", "--vocab", "background: a\nbackground: b",
               "--out", str(tmp_path / "out"), *model_args])
    assert rc == 2
    assert "--vocab" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_features_that_do_not_fit_the_cache_are_recomputed_and_said(tmp_path, model_args,
                                                                     capsys):
    """--feature-cache-mb reaches the model; a too-small cache says the ViT ran again."""
    from napari_itaclip.engine import registry

    registry.clear()
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "a.tif", _img(0))
    argv = ["segment", str(src), "--vocab", "sky, grass", "--vocab", "cat, dog",
            "--out", str(tmp_path / "small"), "-q", *model_args]
    assert main([*argv, "--feature-cache-mb", "0.0001"]) == 0
    err = capsys.readouterr().err
    assert "do not fit the image-feature cache" in err and "--feature-cache-mb" in err
    meta = json.loads((tmp_path / "small" / "a__cat-dog.json").read_text())
    assert meta["planes_with_image_features_reused"] == 0
    registry.clear()
    argv[argv.index(str(tmp_path / "small"))] = str(tmp_path / "big")
    assert main(argv) == 0  # the default bound holds the features: reused, nothing said
    assert "feature cache" not in capsys.readouterr().err
    meta = json.loads((tmp_path / "big" / "a__cat-dog.json").read_text())
    assert meta["planes_with_image_features_reused"] == 1
    registry.clear()
