"""The command line never overwrites the user's files, never serves stale results, and
refuses what cannot work before any work (issue 18, parts 2, 3 and 7)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from napari_itaclip.cli import main

tifffile = pytest.importorskip("tifffile")


def _png(path, seed=0, h=40, w=48):
    from PIL import Image

    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2] = (200, 40, 40)
    img[h // 2:] = (30, 160, 220)
    Image.fromarray(np.clip(img + rng.integers(0, 30, img.shape), 0, 255).astype(np.uint8)
                    ).save(path)


@pytest.fixture
def folder(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _png(src / "a.png")
    return src


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the model is loaded (the checks must come before it)."""
    import napari_itaclip.batch as batch

    def refuse(spec):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(batch, "load_segmenter", refuse)


# ------------------------------------------------------------------------- vocabulary
@pytest.mark.parametrize("arg", ["classes_missing.txt", "no_such_folder/classes",
                                 "labels.CSV", "{dir}"])
def test_path_like_vocab_that_is_no_file_is_a_usage_error(folder, tmp_path, model_args, capsys,
                                                          no_model, arg):
    arg = arg.format(dir=tmp_path)
    out = tmp_path / "out"
    rc = main(["segment", str(folder), "--vocab", arg, "--out", str(out), *model_args])
    err = capsys.readouterr().err
    assert rc == 2 and repr(arg) in err and "looks like a file name" in err
    assert not out.exists()


def test_vocab_file_that_is_not_utf8_is_a_usage_error(folder, tmp_path, model_args, capsys,
                                                      no_model):
    vocab = tmp_path / "classes.txt"
    vocab.write_bytes("café, thé\n".encode("latin-1"))
    rc = main(["segment", str(folder), "--vocab", str(vocab), "--out", str(tmp_path / "o"),
               *model_args])
    err = capsys.readouterr().err
    assert rc == 2 and str(vocab) in err and "not UTF-8" in err and "0xe9" in err


# ---------------------------------------------------------------------------- outputs
def test_users_own_file_in_the_output_folder_is_never_overwritten(folder, model_args, capsys,
                                                                  no_model):
    user = folder / "a_labels.tif"
    tifffile.imwrite(user, np.full((5, 5), 7, np.uint8))
    before = user.read_bytes()
    rc = main(["segment", str(folder / "a.png"), "--vocab", "sky, sea", "--out", str(folder),
               *model_args])
    err = capsys.readouterr().err
    assert rc == 2 and f"{user} exists and is not written by napari-itaclip" in err
    assert user.read_bytes() == before
    assert not (folder / "a.json").exists() and not (folder / "a_similarity.tif").exists()
    # --overwrite keeps its meaning (our own outputs only): still refused
    assert main(["segment", str(folder / "a.png"), "--vocab", "sky, sea", "--out", str(folder),
                 "--overwrite", *model_args]) == 2
    assert user.read_bytes() == before


def test_users_json_where_the_sidecar_goes_is_never_overwritten(folder, model_args, capsys,
                                                                no_model):
    (folder / "a.json").write_text('{"my": "notes"}')
    rc = main(["segment", str(folder / "a.png"), "--vocab", "sky, sea", "--out", str(folder),
               *model_args])
    assert rc == 2 and "a.json exists and is not a napari-itaclip sidecar" in capsys.readouterr().err
    assert (folder / "a.json").read_text() == '{"my": "notes"}'


def test_rerun_on_the_output_folder_does_not_segment_earlier_outputs(folder, model_args,
                                                                     capsys):
    tifffile.imwrite(folder / "x_labels.tif", np.full((40, 48), 9, np.uint8))  # the user's
    argv = ["segment", str(folder), "--vocab", "sky, sea", "--out", str(folder), *model_args]
    assert main(argv) == 0
    assert "2 segmented" in capsys.readouterr().err  # a.png and the user's x_labels.tif
    assert (folder / "x_labels_labels.tif").exists()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "0 segmented, 2 skipped" in err and "ignoring 4 output(s)" in err
    assert not (folder / "a_labels_labels.tif").exists()
    assert not list(folder.glob("*_similarity_*"))


def test_out_that_is_a_file_is_a_usage_error(folder, tmp_path, model_args, capsys, no_model):
    target = tmp_path / "out.txt"
    target.write_text("mine")
    rc = main(["segment", str(folder), "--vocab", "sky, sea", "--out", str(target), *model_args])
    assert rc == 2 and "is a file, not a folder" in capsys.readouterr().err
    assert target.read_text() == "mine"


def test_out_that_cannot_be_written_is_a_usage_error_before_any_work(folder, tmp_path,
                                                                    model_args, capsys, no_model):
    if os.name == "nt" or not os.path.isdir("/proc/self"):
        pytest.skip("needs a read-only /proc")
    rc = main(["segment", str(folder), "--vocab", "sky, sea", "--out", "/proc/itaclip-out",
               *model_args])
    assert rc == 2 and "cannot write into /proc" in capsys.readouterr().err
    if os.geteuid() != 0:  # root writes into read-only folders
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            rc = main(["segment", str(folder), "--vocab", "sky, sea", "--out", str(ro / "sub"),
                       *model_args])
            assert rc == 2 and "cannot write into" in capsys.readouterr().err
        finally:
            ro.chmod(0o755)


# ---------------------------------------------------------------------------- resume
def _reasons(err):
    return [line for line in err.splitlines() if line.startswith("recomputing")]


def test_resume_only_when_the_sidecar_records_the_same_run(folder, tmp_path, tiny_model_json,
                                                           tiny_checkpoint, tiny_args, capsys):
    ckpt = tmp_path / "weights.pt"
    shutil.copy(tiny_checkpoint, ckpt)
    out = tmp_path / "out"

    def run(*extra, vocab="sky, sea"):
        argv = ["segment", str(folder / "a.png"), "--vocab", vocab, "--out", str(out),
                "--model", str(tiny_model_json), "--pretrained", str(ckpt), *tiny_args, *extra]
        assert main(argv) == 0
        return capsys.readouterr().err

    run()
    err = run()
    assert "1 skipped" in err and not _reasons(err)
    # each ingredient of the run, changed alone, recomputes and says why
    err = run(vocab="sky, sea, cat")
    assert "1 segmented" in err and _reasons(err) == [
        "recomputing a.png: the vocabulary changed"]
    err = run("--stride", "8", vocab="sky, sea, cat")
    assert _reasons(err) == ["recomputing a.png: the configuration changed (stride 16 -> 8)"]
    assert json.loads((out / "a.json").read_text())["config"]["stride"] == 8
    err = run("--stride", "8", "--preset", "voc21", vocab="sky, sea, cat")
    assert "the configuration changed (" in _reasons(err)[0] and "more)" in _reasons(err)[0]
    st = ckpt.stat()
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # other weights, same name
    err = run("--stride", "8", "--preset", "voc21", vocab="sky, sea, cat")
    assert _reasons(err) == ["recomputing a.png: the model or its weights changed"]
    _png(folder / "a.png", seed=5)  # the input itself changed
    err = run("--stride", "8", "--preset", "voc21", vocab="sky, sea, cat")
    assert _reasons(err) == [
        "recomputing a.png: the input file changed (size or modification time)"]
    err = run("--stride", "8", "--preset", "voc21", vocab="sky, sea, cat")
    assert "1 skipped" in err and not _reasons(err)


def test_truncated_sidecar_means_not_done(folder, tmp_path, model_args, capsys):
    out = tmp_path / "out"
    argv = ["segment", str(folder / "a.png"), "--vocab", "sky, sea", "--out", str(out),
            *model_args]
    assert main(argv) == 0
    sidecar = out / "a.json"
    sidecar.write_text(sidecar.read_text()[:120])  # cut short
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "1 segmented" in err
    assert _reasons(err) == ["recomputing a.png: its sidecar a.json is unreadable (truncated "
                             "or corrupt)"]
    assert json.loads(sidecar.read_text())["status"] == "done"


def test_sidecar_records_the_run(folder, tmp_path, model_args, tiny_checkpoint):
    out = tmp_path / "out"
    assert main(["segment", str(folder / "a.png"), "--vocab", "sky, sea", "--out", str(out),
                 *model_args]) == 0
    meta = json.loads((out / "a.json").read_text())
    assert list(meta)[:2] == ["written_by", "status"]
    assert (meta["written_by"], meta["status"], meta["input_name"]) == (
        "napari-itaclip", "done", "a.png")
    run = meta["run"]
    assert run["vocabulary"] == "sky\nsea" and run["config"] == meta["config"]
    assert run["model"]["precision"] == "float32"
    assert run["model"]["files"]["pretrained"]["size"] == tiny_checkpoint.stat().st_size
    st = (folder / "a.png").stat()
    assert run["input"] == {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


# --------------------------------------------------------------------- configuration
@pytest.mark.parametrize("setting, message", [
    (["--set", "mid_layers=99"], "mid_layers [99] out of range: this model has 4 blocks"),
    (["--stride", "64"], "stride (64) must not exceed crop (32)"),
    (["--set", "logit_scale=inf"], "logit_scale='inf': expected a finite number > 0"),
    (["--set", "eng_weight=nan"], "eng_weight"),
])
def test_config_that_cannot_work_is_a_usage_error_before_loading(folder, tmp_path, model_args,
                                                                 capsys, no_model, setting,
                                                                 message):
    rc = main(["segment", str(folder), "--vocab", "sky, sea", "--out", str(tmp_path / "o"),
               *model_args, *setting])
    assert rc == 2 and message in capsys.readouterr().err


# ----------------------------------------------------------------------------- memory
def test_cli_reports_the_memory_error_per_input(tmp_path, model_args, capsys, monkeypatch):
    from napari_itaclip.engine.memory import MEMORY_LIMIT_ENV

    _png(tmp_path / "a.png")
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "1")
    rc = main(["segment", str(tmp_path / "a.png"), "--vocab", "sky, sea", "--out",
               str(tmp_path / "out"), *model_args])
    err = capsys.readouterr().err
    assert rc == 1
    assert "(InsufficientMemoryError)" in err and "--chunk-size" in err and "needs about" in err
    assert not (tmp_path / "out" / "a_labels.tif").exists()


# --------------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_prints_one_line_keeps_finished_outputs_and_exits_130(folder, tmp_path,
                                                                     model_args, capsys,
                                                                     monkeypatch):
    from napari_itaclip import Segmenter

    _png(folder / "b.png", seed=3)
    real = Segmenter.segment
    calls = []

    def segment(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:  # the second input
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(Segmenter, "segment", segment)
    out = tmp_path / "out"
    argv = ["segment", str(folder), "--vocab", "sky, sea", "--out", str(out), *model_args]
    assert main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert err == ("napari-itaclip segment: interrupted; finished outputs are kept (re-run the "
                   "same command to resume)")
    assert json.loads((out / "a.json").read_text())["status"] == "done"
    assert not (out / "b.json").exists() and not (out / "b_labels.tif").exists()
    monkeypatch.setattr(Segmenter, "segment", real)
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "1 segmented, 1 skipped" in err and not _reasons(err)


def test_switching_between_memory_and_chunked_keeps_earlier_outputs_ours(tmp_path, model_args,
                                                                         capsys):
    rng = np.random.default_rng(0)
    tifffile.imwrite(tmp_path / "a.tif", rng.integers(0, 255, (40, 48, 3)).astype(np.uint8))
    out = tmp_path / "out"
    argv = ["segment", str(tmp_path / "a.tif"), "--vocab", "sky, sea", "--out", str(out),
            *model_args]
    assert main(argv) == 0  # in memory: TIFFs
    assert main([*argv, "--chunk-size", "32", "--overwrite"]) == 0  # chunked: zarr stores
    meta = json.loads((out / "a.json").read_text())
    assert meta["outputs"]["labels"] == "a_labels.zarr"
    assert meta["earlier_outputs"] == ["a_labels.tif", "a_similarity.tif"]
    capsys.readouterr()
    assert main(argv) == 0 and "1 skipped" in capsys.readouterr().err  # same run: equal
    assert main([*argv, "--overwrite"]) == 0  # the TIFFs are still ours to replace
    meta = json.loads((out / "a.json").read_text())
    assert meta["outputs"]["labels"] == "a_labels.tif"
    assert meta["earlier_outputs"] == ["a_labels.zarr", "a_similarity.zarr"]


def test_failed_input_leaves_what_was_there(folder, tmp_path, model_args, capsys, monkeypatch):
    from napari_itaclip.engine.memory import MEMORY_LIMIT_ENV

    out = tmp_path / "out"
    argv = ["segment", str(folder / "a.png"), "--vocab", "sky, sea", "--out", str(out),
            *model_args]
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "1")
    assert main(argv) == 1
    assert sorted(p.name for p in out.iterdir()) == []  # nothing, not even a sidecar
    monkeypatch.delenv(MEMORY_LIMIT_ENV)
    assert main(argv) == 0
    sidecar = (out / "a.json").read_bytes()
    # a failing recomputation keeps the complete earlier result, sidecar included
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "1")
    assert main([*argv, "--overwrite"]) == 1
    assert (out / "a.json").read_bytes() == sidecar
    # outputs half replaced when it failed: the sidecar says failed, the next run recomputes
    import napari_itaclip.batch as batch

    real = batch.write_tiff_atomic
    def flaky(path, *a, **k):
        if path.name.endswith("_labels.tif"):
            raise OSError("disk full")
        return real(path, *a, **k)

    monkeypatch.delenv(MEMORY_LIMIT_ENV)
    monkeypatch.setattr(batch, "write_tiff_atomic", flaky)
    assert main([*argv, "--overwrite"]) == 1
    meta = json.loads((out / "a.json").read_text())
    assert meta["status"] == "failed" and "disk full" in meta["error"]
    monkeypatch.setattr(batch, "write_tiff_atomic", real)
    capsys.readouterr()
    assert main(argv) == 0
    assert _reasons(capsys.readouterr().err) == ["recomputing a.png: the previous run failed on it"]
    assert json.loads((out / "a.json").read_text())["status"] == "done"


def test_measure_csv_of_the_user_is_never_overwritten(folder, model_args, capsys, no_model):
    user = folder / "a_classes.csv"
    user.write_text("my,own\n1,2\n")
    rc = main(["segment", str(folder / "a.png"), "--vocab", "sky, sea", "--out", str(folder),
               "--measure", *model_args])
    assert rc == 2 and "a_classes.csv exists and is not written by napari-itaclip" in \
        capsys.readouterr().err
    assert user.read_text() == "my,own\n1,2\n"
