"""``segment --measure``: per-input CSV files, the batch summary, spacing, resume, chunks."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from _images import two_tone

from napari_itaclip import measure
from napari_itaclip.cli import main
from napari_itaclip.measurements.outputs import spacing_from_tiff

tifffile = pytest.importorskip("tifffile")

VOCAB = "background: sky\ncat\ndog"
NAMES = ["background", "cat", "dog"]


def _read(path):
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


@pytest.fixture
def inputs(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    # ImageJ-style: 4 pixels per micron -> 0.25 um pixels
    tifffile.imwrite(src / "a.tif", two_tone(0)[..., 0], imagej=True, resolution=(4.0, 4.0),
                     metadata={"unit": "micron"})
    tifffile.imwrite(src / "b.tif", two_tone(1), photometric="rgb")  # no resolution
    return src


def test_measure_writes_csvs_summary_and_uses_tiff_spacing(inputs, tmp_path, model_args):
    out = tmp_path / "out"
    assert main(["segment", str(inputs), "--vocab", VOCAB, "--out", str(out), "--measure",
                 *model_args]) == 0
    for stem in ("a", "b"):
        assert (out / f"{stem}_classes.csv").is_file() and (out / f"{stem}_objects.csv").is_file()
    labels = tifffile.imread(out / "a_labels.tif")
    image = tifffile.imread(inputs / "a.tif")
    ref = measure(labels, NAMES, spacing=(0.25, 0.25), unit="µm", image=image)
    classes, objects = _read(out / "a_classes.csv"), _read(out / "a_objects.csv")
    assert classes["pixels"].tolist() == ref.classes["pixels"].tolist()
    assert np.allclose(classes["area"], classes["pixels"] * 0.0625)
    assert set(classes["unit"]) == {"µm"}
    assert len(objects) == len(ref.objects)
    assert np.allclose(objects["area"], ref.objects["area"])
    assert np.allclose(objects["mean_intensity"], ref.objects["mean_intensity"])
    # b: RGB intensities per channel, and pixels as the unit
    b_obj = _read(out / "b_objects.csv")
    assert {"mean_intensity_0", "mean_intensity_2"} <= set(b_obj.columns)
    assert set(_read(out / "b_classes.csv")["unit"]) == {"px"}
    summary = _read(out / "summary_classes.csv")
    assert summary["image"].tolist() == ["a.tif"] * 3 + ["b.tif"] * 3
    assert summary[summary["image"] == "a.tif"]["pixels"].tolist() == ref.classes["pixels"].tolist()


def test_spacing_option_resume_and_overwrite(inputs, tmp_path, model_args, capsys):
    out = tmp_path / "out"
    args = ["segment", str(inputs / "b.tif"), "--vocab", VOCAB, "--out", str(out), *model_args]
    assert main([*args, "--measure", "--spacing", "0.5,2", "--unit", "nm"]) == 0
    first = _read(out / "b_classes.csv")
    assert np.allclose(first["area"], first["pixels"] * 1.0) and set(first["unit"]) == {"nm"}
    stamp = os.stat(out / "b_classes.csv").st_mtime_ns
    # resumed: nothing recomputed, the CSV read back into the summary
    (out / "summary_classes.csv").unlink()
    assert main([*args, "--measure", "--spacing", "0.5,2", "--unit", "nm"]) == 0
    assert "0 segmented, 1 skipped" in capsys.readouterr().err
    assert os.stat(out / "b_classes.csv").st_mtime_ns == stamp
    summary = _read(out / "summary_classes.csv")
    assert summary["pixels"].tolist() == first["pixels"].tolist()
    # another spacing: the resumed input's CSVs are measured again (labels not recomputed)
    labels_stamp = os.stat(out / "b_labels.tif").st_mtime_ns
    assert main([*args, "--measure", "--spacing", "3"]) == 0
    again = _read(out / "b_classes.csv")
    assert np.allclose(again["area"], again["pixels"] * 9.0) and set(again["unit"]) == {"units"}
    assert os.stat(out / "b_labels.tif").st_mtime_ns == labels_stamp
    # an input finished without --measure gets its CSVs on a resumed --measure run
    out2 = tmp_path / "out2"
    args2 = ["segment", str(inputs / "b.tif"), "--vocab", VOCAB, "--out", str(out2), *model_args]
    assert main(args2) == 0 and not (out2 / "b_classes.csv").exists()
    assert main([*args2, "--measure"]) == 0 and (out2 / "b_classes.csv").is_file()
    # --overwrite recomputes everything, the CSVs included
    assert main([*args, "--measure", "--spacing", "3", "--overwrite"]) == 0
    assert os.stat(out / "b_labels.tif").st_mtime_ns != labels_stamp
    assert os.stat(out / "b_classes.csv").st_mtime_ns != stamp


def test_measure_usage_errors(inputs, tmp_path, model_args, capsys):
    base = ["segment", str(inputs / "b.tif"), "--vocab", VOCAB, "--out", str(tmp_path / "o"),
            *model_args]
    assert main([*base, "--spacing", "0.5"]) == 2
    assert "only apply with --measure" in capsys.readouterr().err
    assert main([*base, "--measure", "--spacing", "-1"]) == 2
    assert "--spacing" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_measure_plot(inputs, tmp_path, model_args):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    assert main(["segment", str(inputs), "--vocab", VOCAB, "--out", str(out), "--measure-plot",
                 *model_args]) == 0
    png = out / "summary_classes.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "a_classes.csv").is_file()


def test_chunked_mode_exact_class_areas_and_no_objects(tmp_path, model_args, capsys):
    zarr = pytest.importorskip("zarr")
    img = np.concatenate([two_tone(7, 50, 90), two_tone(8, 40, 90)], axis=0)
    tifffile.imwrite(tmp_path / "big.tif", img, photometric="rgb")
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "big.tif"), "--vocab", VOCAB, "--out", str(out),
                 "--chunk-size", "40", "--measure", *model_args]) == 0
    assert "no object table" in capsys.readouterr().err
    labels = zarr.open_array(str(out / "big_labels.zarr"), mode="r")[:]
    classes = _read(out / "big_classes.csv")
    assert classes["pixels"].tolist() == np.bincount(labels.ravel(), minlength=3).tolist()
    assert not (out / "big_objects.csv").exists()


def test_spacing_from_tiff_tags(tmp_path):
    tifffile.imwrite(tmp_path / "cm.tif", np.zeros((4, 4), np.uint8), resolution=(1e4, 5e3),
                     resolutionunit="CENTIMETER")
    (sy, sx), unit = spacing_from_tiff(tmp_path / "cm.tif")
    assert (sy, sx, unit) == (pytest.approx(2.0), pytest.approx(1.0), "µm")
    tifffile.imwrite(tmp_path / "none.tif", np.zeros((4, 4), np.uint8))
    assert spacing_from_tiff(tmp_path / "none.tif") is None
    tifffile.imwrite(tmp_path / "ome.tif", np.zeros((4, 4), np.uint8), ome=True,
                     metadata={"PhysicalSizeX": 0.3, "PhysicalSizeY": 0.6,
                               "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"})
    (sy, sx), unit = spacing_from_tiff(tmp_path / "ome.tif")
    assert (sy, sx, unit) == (pytest.approx(0.6), pytest.approx(0.3), "µm")


def test_summary_never_replaces_a_users_file_and_is_never_an_input(inputs, tmp_path,
                                                                    model_args, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    out.mkdir()
    mine = out / "summary_classes.csv"
    mine.write_text("my,own\n1,2\n")
    run = ["segment", str(inputs), "--vocab", VOCAB, "--out", str(out), *model_args]
    assert main([*run, "--measure"]) == 2  # before any work, naming the file
    assert "summary_classes.csv" in capsys.readouterr().err
    assert mine.read_text() == "my,own\n1,2\n" and not (out / "a_labels.tif").exists()
    mine.unlink()
    assert main([*run, "--measure-plot"]) == 0
    assert (out / "summary_classes.png").is_file()
    assert main([*run, "--measure-plot"]) == 0  # ours now: replaced on a re-run
    capsys.readouterr()
    # the output folder as input: neither the summary plot nor the labels are inputs
    assert main(["segment", str(out), "--vocab", VOCAB, "--out", str(tmp_path / "o2"),
                 *model_args]) == 2
    assert "no input images found" in capsys.readouterr().err


def test_an_input_named_summary_is_refused_with_measure(tmp_path, model_args, capsys):
    tifffile.imwrite(tmp_path / "summary.tif", two_tone(3), photometric="rgb")
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "summary.tif"), "--vocab", VOCAB, "--out", str(out),
                 "--measure", *model_args]) == 2
    assert "batch summary" in capsys.readouterr().err and not out.exists()
    assert main(["segment", str(tmp_path / "summary.tif"), "--vocab", VOCAB, "--out", str(out),
                 *model_args]) == 0  # without --measure there is no clash
