"""Output naming and the one atomic writer (napari_itaclip/outputs.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_itaclip.outputs import output_paths, write_atomic, write_json_atomic, write_tiff_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    write_json_atomic(target, {"a": np.int64(1), "p": Path("x")})
    assert json.loads(target.read_text()) == {"a": 1, "p": "x"}

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, broken)
    assert json.loads(target.read_text()) == {"a": 1, "p": "x"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_tiff_and_json_share_the_writer(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    paths = output_paths(tmp_path, Path("a.ome.tif"), zarr_out=False, tag="v2")
    assert paths.labels.name == "a__v2_labels.tif" and paths.sidecar.name == "a__v2.json"
    data = np.arange(12, dtype=np.int32).reshape(3, 4)
    write_tiff_atomic(paths.labels, data, "YX")
    np.testing.assert_array_equal(tifffile.imread(paths.labels), data)
    assert [p.name for p in tmp_path.iterdir()] == [paths.labels.name]


def test_the_llm_cache_does_not_import_the_image_readers():
    from _imports import loaded_by

    assert loaded_by("import napari_itaclip.llm.cache, napari_itaclip.outputs",
                     ("napari_itaclip.files", "tifffile", "zarr")) == []
