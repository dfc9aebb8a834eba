"""Clear errors where open_clip or numpy would give a raw traceback, and the GELU warning."""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
import torch

from napari_itaclip import Segmenter
from napari_itaclip.errors import CheckpointError, ModelError


@pytest.fixture
def tiny_cfg(tiny_model_json):
    return json.loads(tiny_model_json.read_text())


def _config(tmp_path, base, name, **changes):
    cfg = copy.deepcopy(base)
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            cfg[section][field] = value
        else:
            cfg[key] = value
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return path


def test_checkpoint_of_another_width_names_both_shapes(tmp_path, tiny_checkpoint, tiny_cfg):
    wide = _config(tmp_path, tiny_cfg, "itaclip-tiny-wide", text_cfg__width=48, vision_cfg__width=48)
    with pytest.raises(CheckpointError) as info:
        Segmenter(model=str(wide), pretrained=str(tiny_checkpoint), device="cpu").load()
    msg = str(info.value)
    assert "does not fit model 'itaclip-tiny-wide'" in msg and str(tiny_checkpoint) in msg
    assert "checkpoint (77, 32) vs model (77, 48)" in msg  # the text position table
    assert "AssertionError" not in msg and not isinstance(info.value, AssertionError)


@pytest.mark.parametrize(("text", "needle"), [
    ('{"embed_dim": 32, "vision_cfg": ', "is not valid JSON"),
    ("[1, 2]", "is not an open_clip model config"),
    ('{"embed_dim": 32, "vision_cfg": {}}', "lacks 'text_cfg'"),
    (b"\xff\xfe\x00garbage", "cannot read model config"),
])
def test_malformed_model_config_names_the_file(tmp_path, text, needle):
    path = tmp_path / "broken-model.json"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(ModelError) as info:
        Segmenter(model=str(path), pretrained=None, device="cpu").load()
    assert needle in str(info.value) and str(path) in str(info.value)
    assert len(str(info.value)) < 400  # not open_clip's list of every model


def _release_checkpoint(tmp_path, tiny_clip):
    """The tiny weights as OpenAI's release files hold them (with their three scalars)."""
    state = dict(tiny_clip.state_dict())
    state.update(input_resolution=torch.tensor(32), context_length=torch.tensor(77),
                 vocab_size=torch.tensor(49408))
    path = tmp_path / "openai-release.pt"
    torch.save(state, path)
    return path


def test_gelu_model_with_an_openai_checkpoint_warns(tmp_path, tiny_clip, tiny_cfg):
    gelu = _config(tmp_path, tiny_cfg, "itaclip-tiny-g", quick_gelu=False)
    quick = _config(tmp_path, tiny_cfg, "itaclip-tiny-g-quickgelu", quick_gelu=True)
    ckpt = _release_checkpoint(tmp_path, tiny_clip)
    with pytest.warns(UserWarning, match="QuickGELU") as record:
        Segmenter(model=str(gelu), pretrained=str(ckpt), device="cpu").load()
    msg = str(record[0].message)
    assert "'itaclip-tiny-g' uses GELU" in msg and str(quick) in msg
    with warnings.catch_warnings():  # the matching model, or open_clip's own files: quiet
        warnings.simplefilter("error")
        Segmenter(model=str(quick), pretrained=str(ckpt), device="cpu").load()
        plain = tmp_path / "open_clip-layout.pt"
        torch.save(tiny_clip.state_dict(), plain)
        Segmenter(model=str(gelu), pretrained=str(plain), device="cpu").load()


def test_gelu_warning_names_the_quickgelu_model_of_an_open_clip_name(tmp_path):
    from napari_itaclip.engine.model_checks import warn_gelu_with_quickgelu_weights

    with pytest.warns(UserWarning, match="Use model 'ViT-B-16-quickgelu'"):
        warn_gelu_with_quickgelu_weights("ViT-B-16", "ViT-B-16", tmp_path / "ViT-B-16.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_gelu_with_quickgelu_weights("ViT-B-16-quickgelu", "ViT-B-16-quickgelu",
                                         tmp_path / "ViT-B-16.pt")


@pytest.mark.parametrize("bad", [
    np.ones(16, np.float32) / 4.0,             # unit norm, but another length
    np.ones(33, np.float32) / np.sqrt(33),     # one too many
    np.ones((1, 32), np.float32) / np.sqrt(32),  # another shape
    np.ones(32, np.float64) / np.sqrt(32),     # another dtype
    np.full(32, 3.0, np.float32),              # not an embedding (norm != 1)
], ids=["short", "long", "2d", "float64", "norm"])
def test_wrong_text_cache_entry_is_a_miss_and_rewritten(tiny_clip, tmp_path, bad):
    import open_clip

    from napari_itaclip.engine.text import TextEncoder

    tok = open_clip.get_tokenizer("ViT-B-16")
    enc = TextEncoder(tiny_clip, tok, "cpu", cache_key="k", cache_dir=tmp_path)
    good = enc.encode(["cat", "dog"])
    files = sorted(tmp_path.rglob("*.npy"))
    assert len(files) == 2
    for f in files:
        with open(f, "wb") as fh:
            np.save(fh, bad)
    enc2 = TextEncoder(tiny_clip, tok, "cpu", cache_key="k", cache_dir=tmp_path)
    assert not enc2.cached("cat")
    np.testing.assert_allclose(enc2.encode(["cat", "dog"]), good, rtol=1e-6)
    rewritten = sorted(np.load(f).tolist() for f in files)  # the right entries again
    np.testing.assert_allclose(rewritten, sorted(good.tolist()), rtol=1e-6)
    enc3 = TextEncoder(tiny_clip, tok, "cpu", cache_key="k", cache_dir=tmp_path)
    assert enc3.cached("cat") and enc3.cached("dog")
