"""The command line with exemplars: ``exemplars IMAGE LABELS --out FILE`` makes a file,
``segment --exemplars FILE`` segments a folder with it (alone or with --vocab)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_itaclip import Exemplars
from napari_itaclip.cli import main


@pytest.fixture
def painted(tmp_path):
    """An image, its painted labels (values 1 and 3) and a second image, in folders."""
    rng = np.random.default_rng(0)
    src = tmp_path / "images"
    src.mkdir()
    img = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
    tifffile.imwrite(src / "a.tif", img)
    tifffile.imwrite(src / "b.tif", (rng.random((48, 64, 3)) * 255).astype(np.uint8))
    labels = np.zeros((48, 64), np.uint8)
    labels[5:15, 5:20] = 1
    labels[30:40, 40:60] = 3
    tifffile.imwrite(tmp_path / "a_painted.tif", labels)
    return src, tmp_path / "a_painted.tif", labels


def test_exemplars_command_names_values_by_the_vocabulary(painted, tmp_path, model_args):
    src, labels_path, labels = painted
    out = tmp_path / "a.itaclip-exemplars"
    rc = main(["exemplars", str(src / "a.tif"), str(labels_path), "--vocab", "cell, nucleus",
               "--values", "index", "--out", str(out), *model_args])
    assert rc == 0
    ex = Exemplars.load(out)
    assert ex.names == ["nucleus", "class 3"]  # value 1 = class 1; 0 unlabelled (no background)
    assert len(ex.planes) == 1
    s = ex.strokes(ex.planes[0])
    assert len(s.index) == (labels > 0).sum()
    # without a vocabulary every value is "class N"; an existing file is kept
    assert main(["exemplars", str(src / "a.tif"), str(labels_path), "--out", str(out),
                 *model_args]) == 2
    assert Exemplars.load(out).names == ["nucleus", "class 3"]
    assert main(["exemplars", str(src / "a.tif"), str(labels_path), "--out", str(out),
                 "--overwrite", *model_args]) == 0
    assert Exemplars.load(out).names == ["class 1", "class 3"]


def test_background_vocabulary_makes_zero_an_exemplar(painted, tmp_path, model_args):
    src, labels_path, _ = painted
    out = tmp_path / "bg.itaclip-exemplars"
    assert main(["exemplars", str(src / "a.tif"), str(labels_path), "--vocab",
                 "background: sky\ncell", "--values", "index", "--out", str(out),
                 *model_args]) == 0
    assert Exemplars.load(out).names == ["background", "cell", "class 3"]


def test_layer_values_are_the_widgets(painted, tmp_path, model_args):
    """The default reads a label file as napari saves the plugin's Labels layer: 0 is
    never an exemplar, and without a background class value 1 is the first class."""
    src, labels_path, labels = painted
    out = tmp_path / "layer.itaclip-exemplars"
    assert main(["exemplars", str(src / "a.tif"), str(labels_path), "--vocab", "cell, nucleus",
                 "--out", str(out), *model_args]) == 0
    ex = Exemplars.load(out)
    assert ex.names == ["cell", "class 3"]
    assert len(ex.strokes(ex.planes[0]).index) == (labels > 0).sum()
    assert main(["exemplars", str(src / "a.tif"), str(labels_path), "--vocab",
                 "background: sky\ncell", "--out", str(out), "--overwrite", *model_args]) == 0
    ex = Exemplars.load(out)
    assert ex.names == ["cell", "class 3"]  # 0 (background in the layer) is not painted
    assert len(ex.strokes(ex.planes[0]).index) == (labels > 0).sum()


def test_segment_a_folder_with_exemplars(painted, tmp_path, model_args):
    src, labels_path, labels = painted
    ex_file = tmp_path / "a.itaclip-exemplars"
    assert main(["exemplars", str(src / "a.tif"), str(labels_path), "--vocab", "cell, nucleus",
                 "--values", "index", "--out", str(ex_file), *model_args]) == 0
    out = tmp_path / "seg"
    assert main(["segment", str(src), "--exemplars", str(ex_file), "--out", str(out),
                 *model_args]) == 0
    side = json.loads((out / "a.json").read_text())
    assert side["class_names"] == ["nucleus", "class 3"]
    assert side["exemplars"]["names"] == ["nucleus", "class 3"]
    lab = tifffile.imread(out / "a_labels.tif")
    assert (lab[labels == 1] == 0).all() and (lab[labels == 3] == 1).all()  # strokes kept
    assert tifffile.imread(out / "b_labels.tif").shape == (48, 64)
    # with a vocabulary: "nucleus" adds to its class, "class 3" is appended
    out2 = tmp_path / "seg2"
    assert main(["segment", str(src), "--vocab", "cell, nucleus", "--exemplars", str(ex_file),
                 "--out", str(out2), *model_args]) == 0
    side = json.loads((out2 / "a.json").read_text())
    assert side["class_names"] == ["cell", "nucleus", "class 3"]
    lab = tifffile.imread(out2 / "a_labels.tif")
    assert (lab[labels == 1] == 1).all() and (lab[labels == 3] == 2).all()
    # measurements name the classes written, the exemplar-only ones included
    out3 = tmp_path / "seg3"
    assert main(["segment", str(src), "--exemplars", str(ex_file), "--measure", "--out",
                 str(out3), *model_args]) == 0
    import pandas as pd

    table = pd.read_csv(out3 / "a_classes.csv")
    assert set(table["class_name"]) <= {"nucleus", "class 3"}
    assert "class 3" in set(table["class_name"])


def test_segment_exemplar_errors(painted, tmp_path, model_args, tiny_model_json, tiny_args,
                                 capsys):
    src, labels_path, _ = painted
    bad = tmp_path / "bad.itaclip-exemplars"
    bad.write_bytes(b"garbage")
    assert main(["segment", str(src), "--exemplars", str(bad), "--out", str(tmp_path / "o"),
                 *model_args]) == 2
    assert "corrupt" in capsys.readouterr().err
    assert main(["segment", str(src), "--out", str(tmp_path / "o"), *model_args]) == 2
    assert "--vocab, --exemplars or both" in capsys.readouterr().err
    ex_file = tmp_path / "a.itaclip-exemplars"
    assert main(["exemplars", str(src / "a.tif"), str(labels_path), "--out", str(ex_file),
                 *model_args]) == 0
    # another model (random weights: a digest of other weights) is refused before any work
    other = ["--model", str(tiny_model_json), "--pretrained", "none", *tiny_args]
    assert main(["segment", str(src), "--exemplars", str(ex_file), "--out",
                 str(tmp_path / "o2"), *other]) == 2
    assert "made with model" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_both_commands_from_a_shell(painted, tmp_path, model_args):
    """The user's order: each command in its own process, as typed in a shell."""
    src, labels_path, labels = painted
    ex_file = tmp_path / "cells.itaclip-exemplars"
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "napari_itaclip.cli"]
    r = subprocess.run([*cmd, "exemplars", str(src / "a.tif"), str(labels_path), "--out",
                        str(ex_file), *model_args], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "seg"
    r = subprocess.run([*cmd, "segment", str(src), "--exemplars", str(ex_file), "--out",
                        str(out), *model_args], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    lab = tifffile.imread(out / "a_labels.tif")
    assert (lab[labels == 1] == 0).all() and (lab[labels == 3] == 1).all()


def test_resume_only_with_the_same_exemplars(painted, tmp_path, model_args, capsys):
    src, labels_path, _ = painted
    a, b = tmp_path / "a.itaclip-exemplars", tmp_path / "b.itaclip-exemplars"
    for path, values in ((a, "layer"), (b, "index")):
        assert main(["exemplars", str(src / "a.tif"), str(labels_path), "--vocab",
                     "cell, nucleus", "--values", values, "--out", str(path), *model_args]) == 0
    out = tmp_path / "seg"
    run = ["segment", str(src / "a.tif"), "--out", str(out), *model_args]
    assert main([*run, "--exemplars", str(a)]) == 0
    capsys.readouterr()
    assert main([*run, "--exemplars", str(a)]) == 0
    assert "1 skipped" in capsys.readouterr().err
    assert main([*run, "--exemplars", str(b)]) == 0
    err = capsys.readouterr().err
    assert "the exemplars changed" in err and "0 skipped" in err
    assert json.loads((out / "a.json").read_text())["class_names"] == ["nucleus", "class 3"]
