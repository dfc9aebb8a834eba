"""evaluate counts what it says: --limit >= 1; ground truths decoded exactly or refused."""

from __future__ import annotations

import numpy as np
import pytest

from napari_itaclip.cli import main
from napari_itaclip.evaluation import evaluate, read_label_map

Image = pytest.importorskip("PIL.Image")


def _voc_palette():
    """PASCAL VOC's colour map (bit-interleaved), 256 entries."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def _layout(tmp_path, n=3, h=16, w=20, gt_as="palette"):
    """A VOC layout of ``n`` images; predictions equal the ground truth but for one
    block of person pixels per image called background (k + 1 rows of 4 pixels)."""
    root = tmp_path / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    ids = [f"2007_{i:06d}" for i in range(n)]
    for k, sid in enumerate(ids):
        gt = np.zeros((h, w), np.uint8)
        gt[:, w // 2:] = 15
        gt[:, :3] = 7
        gt[0, :] = 255
        pred = gt.copy()
        pred[0, :] = 0
        pred[5:5 + k + 1, w // 2: w // 2 + 4] = 0
        lab = Image.fromarray(gt, mode="P")
        lab.putpalette(_voc_palette())
        if gt_as == "rgb":
            lab = lab.convert("RGB")
        elif gt_as == "grey-rgb":
            lab = Image.fromarray(np.repeat(gt[..., None], 3, -1))
        elif gt_as == "rgba-transparent":
            rgba = np.concatenate([np.repeat(gt[..., None], 3, -1),
                                   np.full((h, w, 1), 128, np.uint8)], -1)
            lab = Image.fromarray(rgba)
        lab.save(root / "SegmentationClass" / f"{sid}.png")
        Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(root / "JPEGImages" / f"{sid}.jpg")
        Image.fromarray(pred).save(pred_dir / f"{sid}.png")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids) + "\n")
    return tmp_path, pred_dir, ids


def test_palette_png_gives_its_indices(tmp_path):
    root, pred_dir, ids = _layout(tmp_path, n=1)
    path = root / "VOCdevkit/VOC2012/SegmentationClass" / f"{ids[0]}.png"
    with Image.open(path) as im:
        assert im.mode == "P"
    got = read_label_map(path)
    assert got.ndim == 2 and set(np.unique(got)) == {0, 7, 15, 255}
    res = evaluate("voc21", root, predictions=pred_dir)
    valid_person = 15 * 10
    assert res.iou[7] == pytest.approx(100.0)
    assert res.iou[15] == pytest.approx(100 * (valid_person - 4) / valid_person)


def test_colour_rendered_ground_truth_is_refused(tmp_path, capsys):
    root, pred_dir, ids = _layout(tmp_path, gt_as="rgb")
    with pytest.raises(ValueError, match="RGB colour image, not a map of class indices") as info:
        evaluate("voc21", root, predictions=pred_dir)
    assert f"{ids[0]}.png" in str(info.value)
    rc = main(["evaluate", "--dataset", "voc21", "--root", str(root), "--predictions",
               str(pred_dir), "--quiet"])
    assert rc == 1
    assert "palette PNG" in capsys.readouterr().err


def test_rgba_with_transparency_is_refused(tmp_path):
    root, pred_dir, _ = _layout(tmp_path, n=1, gt_as="rgba-transparent")
    with pytest.raises(ValueError, match="RGBA colour image"):
        evaluate("voc21", root, predictions=pred_dir)


def test_grey_map_saved_as_rgb_is_decoded_exactly(tmp_path):
    ref_root, ref_pred, _ = _layout(tmp_path / "a")
    root, pred_dir, _ = _layout(tmp_path / "b", gt_as="grey-rgb")
    ref = evaluate("voc21", ref_root, predictions=ref_pred)
    got = evaluate("voc21", root, predictions=pred_dir)
    np.testing.assert_array_equal(got.iou, ref.iou)
    assert got.aacc == ref.aacc


@pytest.mark.parametrize("limit", ["0", "-1", "x"])
def test_limit_below_one_is_a_usage_error(tmp_path, capsys, limit):
    root, pred_dir, _ = _layout(tmp_path)
    rc = main(["evaluate", "--dataset", "voc21", "--root", str(root), "--predictions",
               str(pred_dir), "--quiet", "--limit", limit])
    assert rc == 2
    captured = capsys.readouterr()
    assert "--limit" in captured.err and "mIoU" not in captured.out  # nothing was scored


def test_limit_counts_what_it_says(tmp_path):
    root, pred_dir, _ = _layout(tmp_path)
    for limit, expect in ((1, 1), (2, 2), (3, 3), (10, 3), (None, 3)):
        assert evaluate("voc21", root, predictions=pred_dir, limit=limit).num_images == expect
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="limit must be"):
            evaluate("voc21", root, predictions=pred_dir, limit=bad)
