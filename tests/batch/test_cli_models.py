"""The command line's model options: the catalogue in --help, short names, hf-hub:/local-dir:."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from napari_itaclip.catalogue import CATALOGUE, DEFAULT_PRETRAINED
from napari_itaclip.cli import _model_from_args, main

tifffile = pytest.importorskip("tifffile")


def test_help_lists_the_catalogue(capsys):
    assert main(["segment", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for e in CATALOGUE:
        assert f"'{e.short_name}' ({e.domain})" in out


@pytest.mark.parametrize("model, pretrained, want", [
    ("BiomedCLIP", DEFAULT_PRETRAINED,
     ("hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", None)),
    ("ViT-L-14 (DataComp-XL)", DEFAULT_PRETRAINED, ("ViT-L-14", "datacomp_xl_s13b_b90k")),
    ("ViT-L-14", DEFAULT_PRETRAINED, ("ViT-L-14", "openai")),
    ("ViT-B-16", "laion2b_s34b_b88k", ("ViT-B-16", "laion2b_s34b_b88k")),
    ("local-dir:/some/folder", DEFAULT_PRETRAINED, ("local-dir:/some/folder", None)),
    ("hf-hub:org/name", "none", ("hf-hub:org/name", None)),
    ("hf-hub:org/name", "openai", ("hf-hub:org/name", "openai")),  # explicit: refused at load
])
def test_model_arguments_resolve(model, pretrained, want):
    args = argparse.Namespace(model=model, pretrained=pretrained)
    assert _model_from_args(args) == want


def test_segment_with_a_local_dir_model(tmp_path):
    """hf-hub-layout folder (timm trunk + BERT) on the command line, no --pretrained."""
    from _timm_hf import tiny_timm_bert_folder

    folder = tiny_timm_bert_folder(tmp_path)
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    tifffile.imwrite(src / "a.tif", (rng.random((40, 48, 3)) * 255).astype(np.uint8))
    out = tmp_path / "out"
    rc = main(["segment", str(src), "--vocab", "background: wall\ncell\nnucleus", "--out",
               str(out), "--model", f"local-dir:{folder}", "--preset", "fast",
               "--short-side", "none", "--set", "crop=32", "--set", "stride=16", "--set",
               "mid_layers=[2,3]", "--device", "cpu", "--quiet"])
    assert rc == 0
    labels = tifffile.imread(out / "a_labels.tif")
    assert labels.shape == (40, 48) and labels.max() <= 2
    meta = json.loads((out / "a.json").read_text())
    assert meta["model"] == f"local-dir:{folder}" and meta["pretrained"] is None
