"""The ``napari-itaclip`` command line, run in-process on temporary folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _images import two_tone

from napari_itaclip.cli import main

tifffile = pytest.importorskip("tifffile")


@pytest.fixture
def images(tmp_path):
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(two_tone(0)).save(src / "a.png")
    Image.fromarray(two_tone(1)).save(src / "b.jpg", quality=95)
    tifffile.imwrite(src / "c.tif", two_tone(2)[..., 0])  # grey
    return src


def test_segment_writes_outputs_and_sidecar(images, tmp_path, model_args, tiny_clip,
                                            tiny_config):
    out = tmp_path / "out"
    rc = main(["segment", str(images), "--vocab", "sky, grass, cat", "--out", str(out),
               *model_args])
    assert rc == 0
    for stem in ("a", "b", "c"):
        labels = tifffile.imread(out / f"{stem}_labels.tif")
        sim = tifffile.imread(out / f"{stem}_similarity.tif")
        assert labels.shape == (40, 48) and labels.dtype == np.uint8  # the smallest dtype
        assert sim.shape == (3, 40, 48) and sim.dtype == np.float32
        assert labels.max() < 3
        meta = json.loads((out / f"{stem}.json").read_text())
        assert meta["class_names"] == ["sky", "grass", "cat"]
        assert meta["config"]["crop"] == 32 and meta["config"]["short_side"] is None
        assert meta["model"].endswith(".json")
        assert {"torch", "open_clip", "numpy", "napari_itaclip"} <= set(meta["versions"])
        assert meta["outputs"] == {"labels": f"{stem}_labels.tif",
                                   "similarity": f"{stem}_similarity.tif"}

    # the CLI's numbers are the library's numbers
    from PIL import Image

    from napari_itaclip import Segmenter

    seg = Segmenter(model=tiny_clip, pretrained=None, device="cpu", config=tiny_config)
    res = seg.segment(np.asarray(Image.open(images / "a.png")), "sky, grass, cat")
    np.testing.assert_array_equal(tifffile.imread(out / "a_labels.tif"), res.labels)
    np.testing.assert_allclose(tifffile.imread(out / "a_similarity.tif"), res.similarity,
                               atol=1e-5)


def test_resume_skips_finished_and_overwrite_recomputes(images, tmp_path, model_args, capsys):
    out = tmp_path / "out"
    argv = ["segment", str(images / "a.png"), "--vocab", "sky, grass", "--out", str(out),
            *model_args]
    assert main(argv) == 0
    sidecar = out / "a.json"
    first = sidecar.read_text()
    capsys.readouterr()
    assert main(argv) == 0
    assert "1 skipped" in capsys.readouterr().err
    assert sidecar.read_text() == first  # untouched
    # an unfinished input (its sidecar still says "running") is recomputed, with the reason
    meta = json.loads(first)
    sidecar.write_text(json.dumps({**meta, "status": "running"}))
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "1 segmented" in err and "recomputing a.png: the previous run did not finish it" in err
    assert json.loads(sidecar.read_text())["status"] == "done"
    # without any sidecar the outputs cannot be told from the user's files: refused
    sidecar.unlink()
    labels = (out / "a_labels.tif").read_bytes()
    assert main(argv) == 2
    assert "a_labels.tif exists and is not written by napari-itaclip" in capsys.readouterr().err
    assert (out / "a_labels.tif").read_bytes() == labels
    sidecar.write_text(first)
    before = json.loads(sidecar.read_text())["created"]
    assert main([*argv, "--overwrite"]) == 0
    assert "1 segmented, 0 skipped" in capsys.readouterr().err
    assert json.loads(sidecar.read_text())["created"] >= before


def test_bad_file_is_reported_and_skipped(images, tmp_path, model_args, capsys):
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (images / "empty.tif").write_bytes(b"")
    out = tmp_path / "out"
    rc = main(["segment", str(images), str(tmp_path / "missing.png"), "--vocab", "sky, grass",
               "--out", str(out), *model_args])
    assert rc == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "empty.tif" in err and "missing.png" in err
    assert "3 segmented, 0 skipped (already done), 3 failed" in err
    for stem in ("a", "b", "c"):
        assert (out / f"{stem}.json").exists()
    assert not (out / "broken.json").exists()
    assert not list(out.glob(".*tmp"))  # no temporary leftovers


def test_multipage_and_ome_tiff(tmp_path, model_args):
    src = tmp_path / "in"
    src.mkdir()
    stack = np.stack([two_tone(i, 36, 40)[..., 1] for i in range(3)])
    tifffile.imwrite(src / "stack.tif", stack, photometric="minisblack")  # 3 pages
    tifffile.imwrite(src / "ome.ome.tif", np.stack([two_tone(5, 36, 40)] * 2),
                     ome=True, metadata={"axes": "TYXS"}, photometric="rgb")
    out = tmp_path / "out"
    assert main(["segment", str(src), "--vocab", "a, b", "--out", str(out), *model_args]) == 0
    assert tifffile.imread(out / "stack_labels.tif").shape == (3, 36, 40)
    assert tifffile.imread(out / "stack_similarity.tif").shape == (3, 2, 36, 40)
    assert tifffile.imread(out / "ome_labels.tif").shape == (2, 36, 40)
    meta = json.loads((out / "ome.json").read_text())
    assert meta["image"]["rgb"] is True and meta["image"]["planes"] == [2]


def test_vocab_file_and_usage_errors(images, tmp_path, model_args, capsys):
    vocab = tmp_path / "classes.txt"
    vocab.write_text("background: sky, wall\ncat, feline\n# comment\ndog\n")
    out = tmp_path / "out"
    assert main(["segment", str(images / "a.png"), "--vocab", str(vocab), "--out", str(out),
                 *model_args]) == 0
    meta = json.loads((out / "a.json").read_text())
    assert meta["class_names"] == ["background", "cat", "dog"] and meta["has_background"]
    capsys.readouterr()
    assert main(["segment", str(images), "--vocab", "a,,b", "--out", str(out),
                 *model_args]) == 2
    assert main(["segment", str(images), "--vocab", "a", "--out", str(out), "--set",
                 "nonsense=1", *model_args]) == 2
    assert main(["segment", "--vocab", "a"]) == 2  # argparse error
    assert main(["--help"]) == 0
    assert main(["segment", str(images / "a.png"), "--vocab", "a, b", "--out",
                 str(tmp_path / "o2"), "--model", "no-such-model", "--pretrained", "none",
                 "--quiet"]) == 2
    assert "cannot load model" in capsys.readouterr().err


def test_generate_aux_flag_uses_llm(images, tmp_path, model_args, monkeypatch):
    llm = pytest.importorskip("napari_itaclip.llm")
    calls = []

    def fake_generate_aux(vocab, kind="definitions", settings=None):
        calls.append(kind)
        return vocab.with_aux({"cat": "a small domesticated carnivorous mammal"})

    monkeypatch.setattr(llm, "generate_aux", fake_generate_aux)
    out = tmp_path / "out"
    assert main(["segment", str(images / "a.png"), "--vocab", "cat, dog", "--out", str(out),
                 "--generate-aux", "definitions", *model_args]) == 0
    assert calls == ["definitions"]
    meta = json.loads((out / "a.json").read_text())
    assert "cat >= a small domesticated carnivorous mammal" in meta["vocabulary"]


def test_zarr_input_is_chunked_and_equals_in_memory(tmp_path, model_args, tiny_clip,
                                                    tiny_config):
    zarr = pytest.importorskip("zarr")
    from napari_itaclip import Segmenter

    img = np.concatenate([two_tone(7, 50, 90), two_tone(8, 40, 90)], axis=0)  # 90 x 90
    src = zarr.create_array(store=str(tmp_path / "big.zarr"), shape=img.shape,
                            chunks=(32, 32, 3), dtype=np.uint8)
    src[:] = img
    out = tmp_path / "out"
    rc = main(["segment", str(tmp_path / "big.zarr"), "--vocab", "sky, grass, cat", "--out",
               str(out), "--chunk-size", "40", *model_args])
    assert rc == 0
    labels = zarr.open_array(str(out / "big_labels.zarr"), mode="r")
    sim = zarr.open_array(str(out / "big_similarity.zarr"), mode="r")
    ref = Segmenter(model=tiny_clip, pretrained=None, device="cpu",
                    config=tiny_config).segment(img, "sky, grass, cat")
    np.testing.assert_array_equal(labels[:], ref.labels)
    np.testing.assert_allclose(sim[:], ref.similarity, atol=1e-5)
    meta = json.loads((out / "big.json").read_text())
    assert meta["chunked"]["chunks_per_plane"] == 9 and meta["chunked"]["halo"] == 6
    assert meta["outputs"]["labels"] == "big_labels.zarr"
    # resumable: the finished zarr outputs are recognised
    assert main(["segment", str(tmp_path / "big.zarr"), "--vocab", "sky, grass, cat", "--out",
                 str(out), "--chunk-size", "40", *model_args]) == 0


def test_object_size_in_chunks_labels_native_similarity_working(tmp_path, model_args,
                                                                 tiny_clip, tiny_config):
    zarr = pytest.importorskip("zarr")
    from napari_itaclip import Segmenter

    img = np.concatenate([two_tone(7, 60, 110), two_tone(8, 50, 110)], axis=0)  # 110 x 110
    src = zarr.create_array(store=str(tmp_path / "big.zarr"), shape=img.shape,
                            chunks=(32, 32, 3), dtype=np.uint8)
    src[:] = img
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "big.zarr"), "--vocab", "sky, grass, cat", "--out",
                 str(out), "--chunk-size", "20", "--object-size", "70", *model_args]) == 0
    labels = zarr.open_array(str(out / "big_labels.zarr"), mode="r")
    sim = zarr.open_array(str(out / "big_similarity.zarr"), mode="r")
    ref = Segmenter(model=tiny_clip, pretrained=None, device="cpu", config=tiny_config).segment(
        img, "sky, grass, cat", config=tiny_config.replace(object_size=70))
    assert labels.shape == (110, 110) and sim.shape == (3, 55, 55)
    assert sim.attrs["scale"] == 2.0
    np.testing.assert_array_equal(labels[:], ref.labels)
    np.testing.assert_allclose(sim[:], ref.working.similarity, atol=1e-5)
    meta = json.loads((out / "big.json").read_text())
    assert meta["config"]["object_size"] == 70 and meta["chunked"]["similarity_scale"] == 2
    # an object size below one patch: a usage error before any work
    assert main(["segment", str(tmp_path / "big.zarr"), "--vocab", "a, b", "--out",
                 str(tmp_path / "o2"), "--object-size", "5", *model_args]) == 2
    assert not (tmp_path / "o2").exists() or not any((tmp_path / "o2").iterdir())


def test_tiff_in_chunked_mode_is_read_lazily(tmp_path, model_args, tiny_clip, tiny_config):
    zarr = pytest.importorskip("zarr")
    from napari_itaclip import Segmenter

    img = two_tone(11, 72, 80)
    tifffile.imwrite(tmp_path / "tiled.tif", img, tile=(32, 32), photometric="rgb")
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "tiled.tif"), "--vocab", "a, b", "--out", str(out),
                 "--chunk-size", "40", *model_args]) == 0
    ref = Segmenter(model=tiny_clip, pretrained=None, device="cpu",
                    config=tiny_config).segment(img, "a, b")
    np.testing.assert_array_equal(zarr.open_array(str(out / "tiled_labels.zarr"))[:],
                                  ref.labels)


def test_chunked_mode_refuses_inexact_settings(images, tmp_path, model_args, capsys):
    rc = main(["segment", str(images / "a.png"), "--vocab", "a, b", "--out", str(tmp_path),
               "--chunk-size", "16", *model_args, "--area-threshold", "0.1"])
    assert rc == 2
    assert "area_threshold" in capsys.readouterr().err


@pytest.mark.slow
def test_processes_scheduler_equals_single_process(tmp_path, model_args, tiny_clip,
                                                   tiny_config):
    from PIL import Image

    from napari_itaclip import Segmenter

    img = two_tone(9, 70, 64)
    Image.fromarray(img).save(tmp_path / "p.png")
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "p.png"), "--vocab", "a, b", "--out", str(out),
                 "--chunk-size", "32", "--scheduler", "processes", "--workers", "2",
                 *model_args]) == 0
    zarr = pytest.importorskip("zarr")
    ref = Segmenter(model=tiny_clip, pretrained=None, device="cpu",
                    config=tiny_config).segment(img, "a, b")
    np.testing.assert_array_equal(zarr.open_array(str(out / "p_labels.zarr"))[:], ref.labels)


def test_inputs_with_the_same_stem_are_a_usage_error(tmp_path, model_args, capsys):
    from PIL import Image

    for folder, name in (("d1", "a.png"), ("d2", "a.png"), ("d1", "b.png"), ("d1", "b.tif")):
        (tmp_path / folder).mkdir(exist_ok=True)
        Image.fromarray(two_tone(0)).save(tmp_path / folder / name)
    out = tmp_path / "out"
    for inputs in ([tmp_path / "d1" / "a.png", tmp_path / "d2" / "a.png"],
                   [tmp_path / "d1"]):
        rc = main(["segment", *map(str, inputs), "--vocab", "a, b", "--out", str(out),
                   *model_args])
        assert rc == 2
        err = capsys.readouterr().err
        assert "same name stem" in err
        clash = ("d1/a.png", "d2/a.png") if len(inputs) == 2 else ("d1/b.png", "d1/b.tif")
        assert all(c in err.replace("\\", "/") for c in clash)
        assert not out.exists() or not list(out.iterdir())  # nothing was segmented


def _big_zarr(path, width=1100):
    zarr = pytest.importorskip("zarr")
    arr = zarr.create_array(store=str(path), shape=(8, width), chunks=(8, 256), dtype=np.uint8)
    arr[:] = np.arange(width, dtype=np.uint8)[None]
    return path


@pytest.mark.parametrize("extra,needle", [(["--preset", "voc21"], "area_threshold"),
                                          (["--area-threshold", "0.1"], "area_threshold"),
                                          (["--short-side", "336"], "short_side")])
def test_default_zarr_chunking_refuses_inexact_settings_up_front(tmp_path, model_args, capsys,
                                                                 extra, needle):
    small = tmp_path / "small.png"
    from PIL import Image

    Image.fromarray(two_tone(0)).save(small)
    big = _big_zarr(tmp_path / "big.zarr")  # wider than the default chunk (1024)
    out = tmp_path / "out"
    rc = main(["segment", str(small), str(big), "--vocab", "a, b", "--out", str(out),
               *model_args, *extra])
    assert rc == 2
    err = capsys.readouterr().err
    assert needle in err and "big.zarr" in err
    assert not (out / "small.json").exists()  # refused before any work


def test_distributed_address_opens_one_client_per_run(tmp_path, model_args, monkeypatch):
    distributed = pytest.importorskip("distributed")
    zarr = pytest.importorskip("zarr")
    made = []

    class RecordingClient(distributed.Client):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    monkeypatch.setattr(distributed, "Client", RecordingClient)
    for i in range(2):
        arr = zarr.create_array(store=str(tmp_path / f"z{i}.zarr"), shape=(40, 60, 3),
                                chunks=(20, 20, 3), dtype=np.uint8)
        arr[:] = two_tone(i, 40, 60)
    out = tmp_path / "out"
    # ":0": a free port (None still serves /metrics on 8787, which another test
    # or process may hold: "Port 8787 is already in use", an error here)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster:
        rc = main(["segment", str(tmp_path / "z0.zarr"), str(tmp_path / "z1.zarr"), "--vocab",
                   "a, b", "--out", str(out), "--chunk-size", "32", "--scheduler",
                   cluster.scheduler_address, *model_args])
    assert rc == 0
    assert (out / "z0.json").exists() and (out / "z1.json").exists()
    assert len(made) == 1 and made[0].status == "closed"


def test_lazy_tiff_store_is_closed(tmp_path):
    import os

    from napari_itaclip.files import open_image

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc to count open files")
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, two_tone(3, 64, 64), tile=(32, 32), photometric="rgb")

    def open_handles():
        fds = os.listdir("/proc/self/fd")
        return sum(os.path.realpath(f"/proc/self/fd/{f}") == str(path.resolve()) for f in fds)

    with open_image(path, lazy=True) as source:
        assert source.lazy
        assert np.asarray(source.data).shape == (64, 64, 3)
        assert open_handles() == 1
    assert open_handles() == 0


def test_set_accepts_none_for_optional_fields(images, tmp_path, tiny_model_json,
                                              tiny_checkpoint, tiny_args, capsys):
    """Issue #8 (a): --set short_side=none failed with "invalid literal for int()"."""
    out = tmp_path / "out"
    args = ["--model", str(tiny_model_json), "--pretrained", str(tiny_checkpoint),
            *[a for a in tiny_args if a not in ("--short-side", "none")]]
    assert "none" not in args
    rc = main(["segment", str(images / "a.png"), "--vocab", "sky, grass", "--out", str(out),
               *args, "--set", "short_side=none", "--set", "area_threshold=null"])
    assert rc == 0, capsys.readouterr().err
    meta = json.loads((out / "a.json").read_text())
    assert meta["config"]["short_side"] is None and meta["config"]["area_threshold"] is None


@pytest.mark.parametrize(("item", "expect"), [
    ("stride=none", "--set stride='none': expected an integer >= 1, e.g. stride=56"),
    ("short_side=big", "expected an integer >= 1 or none, e.g. short_side=336"),
    ("mid_layers=7,x", "expected a list of integers each >= 1, e.g. mid_layers=7,8,10"),
])
def test_bad_set_value_names_field_type_and_example(images, tmp_path, model_args, capsys,
                                                    item, expect):
    rc = main(["segment", str(images / "a.png"), "--vocab", "sky", "--out",
               str(tmp_path / "o"), *model_args, "--set", item])
    assert rc == 2
    assert expect in capsys.readouterr().err


def test_help_lists_the_config_field_table(capsys):
    from napari_itaclip.config import field_info

    assert main(["segment", "--help"]) == 0
    out = capsys.readouterr().out
    for info in field_info().values():
        assert f"  {info.name}: {info.expected()}" in out


def test_sidecar_has_ordinary_file_permissions(images, tmp_path, model_args):
    """Issue #8 (c): sidecars were written 0600 (a temporary file's mode)."""
    import os
    import stat

    out = tmp_path / "out"
    old = os.umask(0o022)
    try:
        assert main(["segment", str(images / "a.png"), "--vocab", "sky, grass", "--out",
                     str(out), *model_args]) == 0
    finally:
        os.umask(old)
    sidecar = stat.S_IMODE((out / "a.json").stat().st_mode)
    tiff = stat.S_IMODE((out / "a_labels.tif").stat().st_mode)
    assert sidecar == tiff == 0o644


def test_atomic_json_respects_umask_and_leaves_no_temp(tmp_path):
    import os
    import stat

    from napari_itaclip.files import write_json_atomic

    old = os.umask(0o027)
    try:
        write_json_atomic(tmp_path / "x.json", {"a": np.int64(3), "b": (1, 2)})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o640
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 3, "b": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_segment_with_a_method_preset(images, tmp_path, tiny_model_json, tiny_checkpoint,
                                      tiny_clip, tiny_config, capsys):
    """--preset takes the other methods' presets: NACLIP's whole-image window and
    renormalised probabilities, scaled to the tiny model; the library gives the same."""
    from PIL import Image

    from napari_itaclip import ITACLIPConfig, Segmenter

    out = tmp_path / "out"
    rc = main(["segment", str(images / "a.png"), "--vocab", "sky, grass, cat", "--out", str(out),
               "--model", str(tiny_model_json), "--pretrained", str(tiny_checkpoint),
               "--preset", "naclip-voc21", "--short-side", "none", "--pamr-steps", "2",
               "--set", "pamr_dilations=[1,2]", "--device", "cpu", "--quiet"])
    assert rc == 0
    meta = json.loads((out / "a.json").read_text())
    cfg = ITACLIPConfig.preset("naclip-voc21", short_side=None, pamr_steps=2,
                               pamr_dilations=(1, 2))
    assert meta["config"] == json.loads(json.dumps(cfg.to_dict()))
    assert meta["config"]["crop"] is None and meta["config"]["attention"] == "k-k"
    seg = Segmenter(model=tiny_clip, pretrained=None, device="cpu", config=cfg)
    res = seg.segment(np.asarray(Image.open(images / "a.png")), "sky, grass, cat")
    np.testing.assert_array_equal(tifffile.imread(out / "a_labels.tif"), res.labels)
    np.testing.assert_allclose(tifffile.imread(out / "a_similarity.tif"), res.similarity,
                               atol=1e-5)


def test_preset_help_names_the_methods(capsys):
    assert main(["segment", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "METHOD-DATASET" in text and "sclip, naclip, clearclip" in text
    assert "naclip-voc21" in text
    assert main(["segment", "x.png", "--vocab", "cat", "--preset", "naclip-nope"]) == 2


@pytest.mark.parametrize(("flag", "field", "text", "want"), [
    ("--area-threshold", "area_threshold", "off", None),
    ("--area-threshold", "area_threshold", "null", None),
    ("--area-threshold", "area_threshold", "0.2", 0.2),
    ("--short-side", "short_side", "NONE", None),
    ("--short-side", "short_side", "448", 448),
    ("--pamr-steps", "pamr_steps", "3", 3),
])
def test_dedicated_flags_and_set_share_one_parser(flag, field, text, want):
    """Issue 17: --area-threshold off worked but --set area_threshold=off failed."""
    from napari_itaclip.cli import _build_parser, _config_from_args

    parser = _build_parser()
    base = ["segment", "in.tif", "--vocab", "a, b", "--out", "o", "--preset", "balanced"]
    by_flag = _config_from_args(parser.parse_args([*base, flag, text]), "balanced")
    by_set = _config_from_args(parser.parse_args([*base, "--set", f"{field}={text}"]), "balanced")
    assert getattr(by_flag, field) == getattr(by_set, field) == want


def test_dedicated_flag_and_set_refuse_alike(capsys):
    from napari_itaclip.cli import _build_parser, _config_from_args
    from napari_itaclip.console import UsageError

    parser = _build_parser()
    base = ["segment", "in.tif", "--vocab", "a", "--out", "o"]
    with pytest.raises(SystemExit) as exc:
        parser.parse_args([*base, "--stride", "off"])
    assert exc.value.code == 2
    flag_error = capsys.readouterr().err
    with pytest.raises(UsageError) as err:
        _config_from_args(parser.parse_args([*base, "--set", "stride=off"]), "balanced")
    assert "stride='off': expected an integer >= 1" in flag_error
    assert "stride='off': expected an integer >= 1" in str(err.value)
