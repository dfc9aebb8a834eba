"""Model loading: names, tags, local checkpoints, devices, and their errors."""

import numpy as np
import open_clip
import pytest
import torch

from napari_itaclip import Segmenter
from napari_itaclip.engine.models import read_state_dict, resolve_device
from napari_itaclip.errors import CheckpointError, ImageError, ModelError, WeightsUnavailableError


def test_device_auto_is_cpu_here():
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    assert resolve_device("auto").type in ("cpu", "mps")
    with pytest.raises(ValueError, match="CUDA"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu9")
    with pytest.raises(ValueError, match="only supported on CUDA"):
        Segmenter(device="cpu", half=True)


def test_unknown_model_name_suggests_close_names():
    seg = Segmenter(model="ViT-B-61", pretrained=None, device="cpu")
    with pytest.raises(ModelError, match="Did you mean.*ViT-B-16"):
        seg.load()
    assert not seg.is_loaded


def test_unknown_tag_lists_tags():
    with pytest.raises(ModelError, match="openai"):
        Segmenter(model="ViT-B-16", pretrained="not-a-tag", device="cpu").load()


def test_no_network_gives_actionable_error(monkeypatch):
    from huggingface_hub import constants

    import napari_itaclip.engine.models as models

    seen = []

    def offline(*a, **k):
        seen.append(constants.HF_HUB_OFFLINE)
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(models, "hub_reachable", lambda: False)
    monkeypatch.setattr(open_clip, "download_pretrained", offline)
    seg = Segmenter(model="ViT-B-16", pretrained="openai", device="cpu")
    with pytest.raises(WeightsUnavailableError, match="local checkpoint file") as info:
        seg.load()
    assert "-quickgelu" in str(info.value) and "HF_HOME" in str(info.value)
    assert not seg.is_loaded
    # the hub was asked for its cache only (no minute of retries), and restored after
    assert seen == [True] and constants.HF_HUB_OFFLINE is False


def test_cached_weights_load_offline(monkeypatch, tiny_model_json, tiny_checkpoint):
    """A tag whose file is in the hub cache loads with no network (cache-only mode)."""
    import napari_itaclip.engine.models as models

    monkeypatch.setattr(models, "hub_reachable", lambda: False)
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda name, tag: {"hf_hub": "x/y/"})
    monkeypatch.setattr(open_clip, "download_pretrained", lambda cfg, cache_dir=None: str(tiny_checkpoint))
    seg = Segmenter(model=str(tiny_model_json), pretrained="sometag", device="cpu").load()
    assert seg.is_loaded and "tag:sometag" in seg.weights_key


def test_hub_reachable_respects_offline_env(monkeypatch):
    from napari_itaclip.engine.models import hub_reachable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_reachable() is False


def test_local_checkpoint_loads_the_same_weights(tiny_model_json, tiny_checkpoint, tiny_clip):
    seg = Segmenter(model=str(tiny_model_json), pretrained=str(tiny_checkpoint), device="cpu")
    seg.load()
    for (k, a), b in zip(seg.model.state_dict().items(), tiny_clip.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    assert seg.weights_key is not None  # weights from a file: disk text cache on


def test_missing_and_corrupt_checkpoints(tiny_model_json, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        Segmenter(model=str(tiny_model_json), pretrained=str(tmp_path / "nope.pt"), device="cpu").load()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        Segmenter(model=str(tiny_model_json), pretrained=str(bad), device="cpu").load()


def test_checkpoint_of_another_model_is_refused(tiny_model_json, tmp_path):
    other = {"visual.conv1.weight": torch.zeros(3, 3, 3, 3)}
    path = tmp_path / "other.pt"
    torch.save(other, path)
    with pytest.raises(CheckpointError, match="does not fit"):
        Segmenter(model=str(tiny_model_json), pretrained=str(path), device="cpu").load()


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(CheckpointError, match="refused for safety|corrupt"):
        read_state_dict(path)


def test_torchscript_archive_is_read(tmp_path):
    mod = torch.jit.script(torch.nn.Linear(2, 3))
    path = tmp_path / "ts.pt"
    mod.save(str(path))
    sd = read_state_dict(path)
    assert set(sd) == {"weight", "bias"}


def test_nested_state_dict_and_module_prefix(tmp_path):
    path = tmp_path / "n.pt"
    torch.save({"state_dict": {"module.a": torch.ones(1)}}, path)
    assert list(read_state_dict(path)) == ["a"]


def test_bad_input_changes_nothing(tiny_segmenter):
    with pytest.raises(ImageError):
        next(tiny_segmenter.iter_segment(np.full((8, 8), np.nan), "cat"))
    assert not tiny_segmenter.is_loaded  # checked before loading anything
    from napari_itaclip import VocabularyError

    with pytest.raises(VocabularyError):
        next(tiny_segmenter.iter_segment(np.zeros((40, 40)), ""))
    with pytest.raises(VocabularyError, match="duplicate"):
        tiny_segmenter.segment(np.zeros((40, 40)), ["cat", "cat"])
    assert not tiny_segmenter.is_loaded


def test_image_smaller_than_a_patch(tiny_segmenter):
    with pytest.raises(ValueError, match="smaller than one"):
        tiny_segmenter.segment(np.zeros((5, 40), np.uint8), "cat, dog")


def test_cancel_by_closing_the_generator(tiny_segmenter):
    gen = tiny_segmenter.iter_segment(np.zeros((64, 64, 3), np.uint8), "cat\ndog")
    stages = [next(gen).stage for _ in range(4)]
    gen.close()  # cancel between batches: no result, no error
    assert stages[0] == "load"
    with pytest.raises(StopIteration):
        next(gen)


def test_segment_convenience_reuses_the_model(tiny_model_json, tiny_checkpoint, monkeypatch):
    from napari_itaclip import segment
    from napari_itaclip.engine import registry

    registry.clear()
    img = np.zeros((32, 32), np.uint8)
    kw = dict(model=str(tiny_model_json), pretrained=str(tiny_checkpoint), device="cpu",
              preset="fast", short_side=None, crop=32, stride=32, mid_layers=(2,))
    r1 = segment(img, ["cat", "dog"], **kw)
    r2 = segment(img, ["cat", "dog"], **kw)
    assert registry.size() == 1
    np.testing.assert_array_equal(r1.similarity, r2.similarity)
    assert r1.config.stride == 32 and not r1.config.image_engineering


def test_loading_weights_logs_them_and_not_a_random_init(tiny_model_json, tiny_checkpoint, caplog,
                                                         monkeypatch):
    """open_clip's "initialized randomly" warning is false when we load the weights: dropped,
    and what was loaded (file, size) is logged instead; with no weights it stays."""
    import logging

    import napari_itaclip.engine.models as models

    caplog.set_level(logging.INFO)
    Segmenter(model=str(tiny_model_json), pretrained=str(tiny_checkpoint), device="cpu").load()
    texts = [r.getMessage() for r in caplog.records]
    assert not any("No pretrained weights loaded" in t for t in texts), texts
    size_mb = f"{tiny_checkpoint.stat().st_size / 1e6:.1f} MB"
    assert any(str(tiny_checkpoint) in t and size_mb in t for t in texts), texts

    caplog.clear()  # a hub tag: the tag and the cached file are named
    monkeypatch.setattr(models, "hub_reachable", lambda: False)
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda name, tag: {"hf_hub": "x/y/"})
    monkeypatch.setattr(open_clip, "download_pretrained", lambda cfg, cache_dir=None: str(tiny_checkpoint))
    Segmenter(model=str(tiny_model_json), pretrained="sometag", device="cpu").load()
    texts = [r.getMessage() for r in caplog.records]
    assert not any("No pretrained weights loaded" in t for t in texts), texts
    assert any("'sometag'" in t and size_mb in t for t in texts), texts

    caplog.clear()  # really random weights: open_clip's warning is true and kept
    Segmenter(model=str(tiny_model_json), pretrained=None, device="cpu").load()
    assert any("No pretrained weights loaded" in r.getMessage() for r in caplog.records)
    assert not logging.getLogger().filters  # the temporary filter is gone
