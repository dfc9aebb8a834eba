"""Benchmark evaluation: the IoU metric, dataset layouts and the evaluate command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_itaclip.cli import main
from napari_itaclip.datasets import BENCHMARKS, load_vocabulary
from napari_itaclip.evaluation import DATASETS, IoUMetric, evaluate, find_samples


def test_metric_by_hand():
    m = IoUMetric(3)
    label = np.array([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 0]])
    inter, union, p, lab = m.update(pred, label)
    # ignored pixels (255) count nowhere, also not in the prediction's area
    np.testing.assert_array_equal(inter, [1, 2, 1])
    np.testing.assert_array_equal(p, [2, 3, 1])
    np.testing.assert_array_equal(lab, [2, 2, 2])
    np.testing.assert_array_equal(union, [3, 3, 2])
    out = m.compute()
    np.testing.assert_allclose(out["IoU"], [1 / 3, 2 / 3, 0.5])
    np.testing.assert_allclose(out["Acc"], [0.5, 1.0, 0.5])
    assert out["mIoU"] == pytest.approx((1 / 3 + 2 / 3 + 0.5) / 3)
    assert out["aAcc"] == pytest.approx(4 / 6)


def test_metric_sums_over_images_and_nan_classes():
    m = IoUMetric(4)
    m.update(np.zeros((2, 2), int), np.zeros((2, 2), int))
    m.update(np.ones((2, 2), int), np.array([[1, 1], [0, 0]]))
    out = m.compute()
    # class 0: inter 4, union 4 + 2 = 6; class 1: inter 2 union 4; classes 2, 3 absent -> NaN
    np.testing.assert_allclose(out["IoU"][:2], [4 / 6, 2 / 4])
    assert np.isnan(out["IoU"][2:]).all()
    assert out["mIoU"] == pytest.approx((4 / 6 + 0.5) / 2)  # NaN classes are not averaged
    assert out["aAcc"] == pytest.approx(6 / 8)
    # a label value >= num_classes (not 255) counts in no class' area
    m2 = IoUMetric(2)
    m2.update(np.array([0, 1]), np.array([7, 1]))
    np.testing.assert_array_equal(m2.label_area, [0, 1])
    np.testing.assert_array_equal(m2.pred_area, [1, 1])


def test_reduce_zero_label():
    m = IoUMetric(2, reduce_zero_label=True)
    m.update(np.array([0, 1, 1]), np.array([0, 1, 2]))  # label 0 -> ignored; 1->0, 2->1
    np.testing.assert_array_equal(m.intersect, [0, 1])
    np.testing.assert_array_equal(m.label_area, [1, 1])


@pytest.mark.parametrize("name", BENCHMARKS)
def test_class_lists_ship_with_the_package(name):
    vocab = load_vocabulary(name)
    assert len(vocab) == DATASETS[name].num_classes
    assert vocab.has_background == (name in ("voc21", "context60", "coco_object"))


def _voc(tmp_path, n=3, h=20, w=24):
    """A VOC2012 layout whose IoU is known: GT has classes 0, 15 (person) and 255 borders;
    predictions are the GT with a known block relabelled."""
    from PIL import Image

    root = tmp_path / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    ids = [f"2007_{i:06d}" for i in range(n)]
    inter = np.zeros(21, int)
    union = np.zeros(21, int)
    for k, sid in enumerate(ids):
        gt = np.zeros((h, w), np.uint8)
        gt[:, w // 2:] = 15
        gt[0, :] = 255  # a void border
        pred = gt.copy()
        pred[0, :] = 3  # predictions on void pixels are ignored
        pred[5:5 + k + 1, w // 2: w // 2 + 4] = 0  # (k+1)*4 person pixels called background
        lab = Image.fromarray(gt, mode="P")
        lab.putpalette([0, 0, 0, *([128] * 765)][:768])
        lab.save(root / "SegmentationClass" / f"{sid}.png")
        Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(root / "JPEGImages" / f"{sid}.jpg")
        Image.fromarray(pred).save(pred_dir / f"{sid}.png")
        wrong = (k + 1) * 4
        valid = (h - 1) * (w // 2)
        inter[0] += valid
        union[0] += valid + wrong
        inter[15] += valid - wrong
        union[15] += valid
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids) + "\n")
    iou = {0: inter[0] / union[0], 15: inter[15] / union[15]}
    return tmp_path, pred_dir, iou, (2 * (h - 1) * (w // 2) * n)


def test_evaluate_known_iou_from_saved_predictions(tmp_path, capsys):
    root, pred_dir, iou, total = _voc(tmp_path)
    samples = find_samples(DATASETS["voc21"], root)
    assert [s[0] for s in samples] == ["2007_000000", "2007_000001", "2007_000002"]
    res = evaluate("voc21", root, predictions=pred_dir)
    assert res.iou[0] == pytest.approx(100 * iou[0])
    assert res.iou[15] == pytest.approx(100 * iou[15])
    assert np.isnan(res.iou[3])  # predicted only on void pixels: absent everywhere
    assert res.miou == pytest.approx(100 * (iou[0] + iou[15]) / 2)
    wrong = 4 + 8 + 12
    assert res.aacc == pytest.approx(100 * (total - wrong) / total)

    out = tmp_path / "report"
    rc = main(["evaluate", "--dataset", "voc21", "--root", str(root), "--predictions",
               str(pred_dir), "--out", str(out), "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"mIoU {100 * (iou[0] + iou[15]) / 2:.2f}" in printed
    metrics = json.loads((out / "voc21_metrics.json").read_text())
    assert metrics["paper_mIoU"] == 67.9 and metrics["num_images"] == 3
    assert metrics["per_class"][15]["class"] == "person"
    assert metrics["per_class"][15]["IoU"] == pytest.approx(100 * iou[15], abs=1e-4)
    assert (out / "voc21_per_class_iou.csv").read_text().startswith("class,IoU,Acc")
    pytest.importorskip("matplotlib")
    assert (out / "voc21_per_class_iou.png").stat().st_size > 1000


def test_evaluate_runs_the_model_end_to_end(tmp_path, tiny_model_json, tiny_checkpoint,
                                            tiny_clip, tiny_config, capsys):
    from napari_itaclip import Segmenter

    root, _, _, _ = _voc(tmp_path, n=2)
    rc = main(["evaluate", "--dataset", "voc21", "--root", str(root / "VOCdevkit/VOC2012"),
               "--model", str(tiny_model_json), "--pretrained", str(tiny_checkpoint),
               "--device", "cpu", "--preset", "balanced", "--short-side", "none", "--stride",
               "16", "--set", "crop=32", "--set", "mid_layers=[2,3]", "--pamr-steps", "1",
               "--set", "pamr_dilations=[1,2]", "--quiet", "--out", str(tmp_path / "r"),
               "--no-plot"])
    assert rc == 0
    got = json.loads((tmp_path / "r" / "voc21_metrics.json").read_text())
    cfg = tiny_config.replace(pamr_steps=1)
    seg = Segmenter(model=tiny_clip, pretrained=None, device="cpu", config=cfg)
    ref = evaluate("voc21", root, segmenter=seg, config=cfg)
    assert got["mIoU"] == pytest.approx(ref.miou, abs=1e-3)
    assert got["config"]["pamr_steps"] == 1
    assert not (tmp_path / "r" / "voc21_per_class_iou.png").exists()


def test_evaluate_with_a_method_preset(tmp_path, tiny_model_json, tiny_checkpoint, tiny_clip,
                                      capsys):
    """``evaluate --preset clearclip-voc21``: ClearCLIP's switches (padding, q-q, no
    residual) with the authors' VOC21 threshold; the same mIoU as the library."""
    from napari_itaclip import ITACLIPConfig, Segmenter

    root, _, _, _ = _voc(tmp_path, n=2)
    rc = main(["evaluate", "--dataset", "voc21", "--root", str(root / "VOCdevkit/VOC2012"),
               "--model", str(tiny_model_json), "--pretrained", str(tiny_checkpoint),
               "--device", "cpu", "--preset", "clearclip-voc21", "--short-side", "none",
               "--stride", "14", "--set", "crop=28", "--quiet", "--out", str(tmp_path / "r"),
               "--no-plot"])
    assert rc == 0
    got = json.loads((tmp_path / "r" / "voc21_metrics.json").read_text())
    cfg = ITACLIPConfig.preset("clearclip-voc21", short_side=None, stride=14, crop=28)
    assert got["config"]["pad_to_patch"] and got["config"]["attention"] == "q-q"
    assert got["config"]["prob_threshold"] == 0.5 and not got["config"]["keep_last_residual"]
    seg = Segmenter(model=tiny_clip, pretrained=None, device="cpu", config=cfg)
    ref = evaluate("voc21", root, segmenter=seg, config=cfg)
    assert got["mIoU"] == pytest.approx(ref.miou, abs=1e-3)


def test_evaluate_reports_a_wrong_layout(tmp_path, capsys):
    assert main(["evaluate", "--dataset", "cityscapes", "--root", str(tmp_path),
                 "--predictions", str(tmp_path), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "leftImg8bit/val" in err and "gtFine_labelTrainIds.png" in err


def test_cityscapes_layout_recursive(tmp_path):
    from PIL import Image

    base = tmp_path / "cityscapes"
    for city in ("aachen", "bremen"):
        (base / "leftImg8bit/val" / city).mkdir(parents=True)
        (base / "gtFine/val" / city).mkdir(parents=True)
        sid = f"{city}_000000_000019"
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(
            base / "leftImg8bit/val" / city / f"{sid}_leftImg8bit.png")
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(
            base / "gtFine/val" / city / f"{sid}_gtFine_labelTrainIds.png")
    samples = find_samples(DATASETS["cityscapes"], tmp_path)
    assert [s[0] for s in samples] == ["aachen/aachen_000000_000019",
                                       "bremen/bremen_000000_000019"]


def test_cityscapes_predictions_from_segment_are_found(tmp_path, capsys):
    """segment names outputs after the image file (<city>_..._leftImg8bit_labels.tif)."""
    from PIL import Image

    tifffile = pytest.importorskip("tifffile")
    from napari_itaclip.files import output_paths

    base = tmp_path / "cityscapes"
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    for k, city in enumerate(("aachen", "bremen")):
        (base / "leftImg8bit/val" / city).mkdir(parents=True)
        (base / "gtFine/val" / city).mkdir(parents=True)
        sid = f"{city}_000000_000019"
        img = base / "leftImg8bit/val" / city / f"{sid}_leftImg8bit.png"
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
        gt = np.full((8, 8), 2 + k, np.uint8)
        gt[0] = 255
        Image.fromarray(gt).save(base / "gtFine/val" / city / f"{sid}_gtFine_labelTrainIds.png")
        pred = gt.copy()
        pred[1] = 0  # 8 of 56 valid pixels wrong
        # the name segment gives the labels of this image
        tifffile.imwrite(output_paths(pred_dir, img, zarr_out=False).labels, pred)
    assert output_paths(pred_dir, img, zarr_out=False).labels.name == \
        "bremen_000000_000019_leftImg8bit_labels.tif"
    res = evaluate("cityscapes", tmp_path, predictions=pred_dir)
    assert res.num_images == 2
    assert res.aacc == pytest.approx(100 * 96 / 112)
    assert main(["evaluate", "--dataset", "cityscapes", "--root", str(tmp_path),
                 "--predictions", str(pred_dir), "--quiet", "--no-plot"]) == 0
    # a missing prediction names what was looked for
    next(pred_dir.glob("aachen*")).unlink()
    with pytest.raises(FileNotFoundError, match="aachen_000000_000019_leftImg8bit"):
        evaluate("cityscapes", tmp_path, predictions=pred_dir)


def test_evaluate_model_that_cannot_load_is_a_usage_error(tmp_path, tiny_model_json, capsys):
    root, _, _, _ = _voc(tmp_path, n=1)
    rc = main(["evaluate", "--dataset", "voc21", "--root", str(root), "--model",
               str(tiny_model_json), "--pretrained", str(tmp_path / "missing.pt"),
               "--device", "cpu", "--quiet", "--no-plot"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "cannot load model" in err and "missing.pt" in err
    assert "Traceback" not in err
