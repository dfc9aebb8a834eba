"""timm ViT trunks, Hugging Face text towers and hf-hub:/local-dir: loading (issue #10).

Offline and fast: a tiny timm ViT registered in ``_timm_hf``, a tiny BERT from a local
configuration and word-piece vocabulary, open_clip hub-layout folders in ``tmp_path``.
"""

from __future__ import annotations

import dataclasses
import json
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _spies import token_batches
from _timm_hf import (
    hf_text_cfg,
    openclip_to_timm_state,
    register_tiny_timm,
    timm_vision_cfg,
    tiny_timm_bert_folder,
    write_bert_folder,
    write_hub_folder,
)
from napari_itaclip import ITACLIPConfig, Segmenter
from napari_itaclip.engine.backbone import OpenCLIPViT, TimmViT, make_backbone
from napari_itaclip.engine.models import checkpoint_fingerprint
from napari_itaclip.engine.text import TextEncoder, _hf_text_tower
from napari_itaclip.errors import CheckpointError, ModelError, WeightsUnavailableError

STOCK = ITACLIPConfig(attention="q-k", mid_layers=(), drop_last_mlp=False)


@pytest.fixture(scope="module")
def hub_dir(tmp_path_factory):
    """local-dir: folder of a tiny CLIP with a timm ViT trunk and a BERT text tower."""
    return tiny_timm_bert_folder(tmp_path_factory.mktemp("hub"))


@pytest.fixture(scope="module")
def hub_model(hub_dir):
    import open_clip

    net = open_clip.create_model(f"local-dir:{hub_dir}", load_weights=False,
                                 pretrained_image=False, pretrained_text=False)
    from napari_itaclip.engine.models import _load_into, read_state_dict

    _load_into(net, read_state_dict(hub_dir / "open_clip_model.safetensors"), hub_dir, "tiny")
    return net.eval()


@pytest.fixture(scope="module")
def converted_dir(tiny_clip, tiny_model_json, tmp_path_factory):
    """The tiny open_clip ViT CLIP converted into the same network with a timm trunk."""
    register_tiny_timm()
    cfg = dict(json.loads(tiny_model_json.read_text()), vision_cfg=timm_vision_cfg())
    folder = tmp_path_factory.mktemp("converted")
    return write_hub_folder(folder, cfg, openclip_to_timm_state(tiny_clip.state_dict()))


@pytest.fixture(scope="module")
def converted(converted_dir):
    seg = Segmenter(f"local-dir:{converted_dir}", device="cpu", cache_dir=False)
    return seg.model


# -- the timm adapter ---------------------------------------------------------------------
def test_make_backbone_picks_the_timm_adapter(hub_model, tiny_clip):
    assert isinstance(make_backbone(hub_model), TimmViT)
    assert isinstance(make_backbone(tiny_clip), OpenCLIPViT)


def test_surgery_off_equals_the_timm_towers_stock_forward(hub_model):
    vis = hub_model.visual
    bb = TimmViT(vis)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ours = bb.tokens(x, STOCK)
        stock = vis(x)  # TimmModel.forward: trunk (token pooling) then head
        t = vis.trunk
        stock_tokens = vis.head(t.head(t.fc_norm(t.forward_features(x))))
    torch.testing.assert_close(ours[:, 0], stock, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours, stock_tokens, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("crop", [(32, 32), (24, 40), (16, 16)])
@pytest.mark.parametrize("attention", ["self-self", "q-k"])
def test_converted_openclip_vit_gives_the_same_dense_features(tiny_clip, converted, crop, attention):
    """timm's OpenAI-CLIP converter: same network, same features, resampled positions too."""
    a = OpenCLIPViT(tiny_clip.visual)
    b = TimmViT(converted.visual)
    x = torch.randn(2, 3, *crop, generator=torch.Generator().manual_seed(2))
    for cfg in (ITACLIPConfig(attention=attention, mid_layers=(2, 3)),
                ITACLIPConfig(attention=attention, mid_layers=(1,), drop_last_mlp=False),
                STOCK):
        with torch.inference_mode():
            fa, fb = a.dense_features(x, cfg), b.dense_features(x, cfg)
        assert fa.shape == fb.shape == (2, crop[0] // 8, crop[1] // 8, 32)
        torch.testing.assert_close(fb, fa, rtol=0, atol=1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(converted.visual(x[..., :32, :32]) if crop == (32, 32) else
                                   b.tokens(x, STOCK)[:, 0], a.tokens(x, STOCK)[:, 0],
                                   rtol=0, atol=1e-5)


def test_converted_model_same_pipeline_outputs(tiny_clip, converted_dir, tiny_config):
    cfg = dataclasses.replace(tiny_config, pamr_steps=3)
    ref = Segmenter(model=tiny_clip, pretrained=None, device="cpu", config=cfg, cache_dir=False)
    ours = Segmenter(f"local-dir:{converted_dir}", pretrained=None, device="cpu", config=cfg,
                     cache_dir=False)
    img = (np.random.default_rng(3).random((44, 70, 3)) * 255).astype(np.uint8)
    vocab = "background: wall\ncat, feline >= a small mammal"
    r0, r1 = ref.segment(img, vocab), ours.segment(img, vocab)
    np.testing.assert_allclose(r1.similarity, r0.similarity, rtol=0, atol=1e-5)
    np.testing.assert_allclose(r1.probabilities, r0.probabilities, rtol=0, atol=1e-4)
    assert (r1.labels == r0.labels).mean() >= 0.999


def _tower(trunk):
    """A stand-in for open_clip's TimmModel around a timm trunk."""
    tower = torch.nn.Module()
    tower.trunk = trunk
    tower.head = torch.nn.Sequential()
    return tower.eval()


def _vit(**kw):
    from timm.models.vision_transformer import VisionTransformer

    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=16)
    torch.manual_seed(0)
    return VisionTransformer(**dict(args, **kw)).eval()


@pytest.mark.parametrize("kw", [
    dict(reg_tokens=3, no_embed_class=True),
    dict(reg_tokens=2, no_embed_class=False),
    dict(no_embed_class=True, init_values=0.1, pre_norm=True),
    dict(class_token=False, global_pool="avg"),
])
def test_prefix_tokens_layer_scale_and_pooling_variants(kw):
    """Register tokens are prefix tokens (dropped like the class token); stock forward kept."""
    vis = _tower(_vit(**kw))
    bb = TimmViT(vis)
    t = vis.trunk
    assert bb.num_prefix == t.num_prefix_tokens
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        ours = bb.tokens(x, STOCK)
        stock_tokens = t.head(t.fc_norm(t.forward_features(x)))
        torch.testing.assert_close(ours, stock_tokens, rtol=1e-5, atol=1e-5)
        if t.global_pool == "token":
            torch.testing.assert_close(ours[:, 0], vis.trunk(x), rtol=1e-5, atol=1e-5)
        dense = bb.dense_features(x, ITACLIPConfig(mid_layers=(1, 2)))
    assert dense.shape == (2, 4, 4, 16)
    full = bb.tokens(x, ITACLIPConfig(mid_layers=(1, 2)))
    torch.testing.assert_close(dense.reshape(2, 16, 16), full[:, t.num_prefix_tokens:])


@pytest.mark.parametrize("no_embed_class", [False, True])
def test_positions_resampled_as_the_spec_says(no_embed_class):
    """A 24x40 crop: the patch table resampled bicubically with the reference's scale factor."""
    vis = _tower(_vit(reg_tokens=1, no_embed_class=no_embed_class))
    bb = TimmViT(vis)
    t = vis.trunk
    x = torch.randn(1, 3, 24, 40, generator=torch.Generator().manual_seed(5))
    pos = t.pos_embed[0]
    p = 0 if no_embed_class else 2
    grid = pos[p:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=(3.1 / 4, 5.1 / 4), mode="bicubic")
    patch_pos = grid.permute(0, 2, 3, 1).reshape(15, 32)
    patches = t.patch_embed.proj(x).flatten(2).transpose(1, 2)
    prefix = torch.cat([t.cls_token, t.reg_token], dim=1)
    if no_embed_class:
        want = torch.cat([prefix, patches + patch_pos], dim=1)
    else:
        want = torch.cat([prefix, patches], dim=1) + torch.cat([pos[:2], patch_pos])
    with torch.inference_mode():
        torch.testing.assert_close(bb.embed(x), t.norm_pre(want))
        # a 7x28-like case: same token count as the native grid but not square -> resampled
        y = torch.randn(1, 3, 16, 64)
        assert bb.embed(y).shape[1] == 2 + 2 * 8
        assert not torch.equal(bb.positional_embedding(2, 8)[p:], pos[p:])


def _eva():
    from timm.models.eva import Eva

    return Eva(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=16,
               use_rot_pos_emb=True, swiglu_mlp=True)


def _convnext():
    from timm.models.convnext import ConvNeXt

    return ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 8, 8, 8), num_classes=16)


def _deit():
    from timm.models.deit import VisionTransformerDistilled

    return VisionTransformerDistilled(img_size=32, patch_size=8, embed_dim=32, depth=2,
                                      num_heads=2, num_classes=16)


def _block(cls_name):
    from timm.models import vision_transformer as vt

    return partial(_vit, block_fn=getattr(vt, cls_name))


@pytest.mark.parametrize("make, phrase", [
    (partial(_vit, global_pool="map"), "attention-pool head (global_pool='map', as in SigLIP"),
    (partial(_vit, qk_norm=True), "qk-norm"),
    (_eva, "EVA / EVA02"),
    (_convnext, "ConvNeXt, ResNet"),
    (_deit, "distilled DeiT"),
    (_block("ResPostBlock"), "post-norm blocks"),
    (_block("ParallelScalingBlock"), "parallel attention/MLP blocks"),
    (partial(_vit, scale_attn_norm=True), "normalises the attention output"),
    (partial(_vit, pos_embed="none"), "no learned absolute position embedding"),
])
def test_unsupported_towers_are_refused_with_the_reason(make, phrase):
    with pytest.raises(ModelError) as info:
        make_backbone(_tower(make()))
    msg = str(info.value)
    assert phrase in msg and "not supported" in msg


def test_attention_pool_tower_head_is_refused():
    vis = _tower(_vit())
    vis.head = torch.nn.Sequential()
    vis.head.add_module("pool", torch.nn.Identity())
    with pytest.raises(ModelError, match="abs_attn"):
        make_backbone(vis)


# -- Hugging Face text towers ---------------------------------------------------------------
def test_hf_tower_truncation_equals_the_full_context(hub_model, hub_dir):
    import open_clip

    tok = open_clip.get_tokenizer(f"local-dir:{hub_dir}")
    assert _hf_text_tower(hub_model) is not None
    texts = ["cell", "a red cell nucleus", "background tissue", "dog", "blue sky wall"]
    fast = TextEncoder(hub_model, tok, "cpu", batch_size=37)
    full = TextEncoder(hub_model, tok, "cpu", batch_size=37)
    full.truncate = False
    assert fast.truncate and not fast.share_prefix
    with token_batches(hub_model.text) as calls:
        short = fast.encode(texts)
    np.testing.assert_allclose(short, full.encode(texts), rtol=0, atol=2e-6)
    assert max(n for _rows, n in calls) < tok.context_length  # the padding was actually cut


def test_hf_ensemble_is_the_spec_definition(hub_model, hub_dir):
    import open_clip
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    tok = open_clip.get_tokenizer(f"local-dir:{hub_dir}")
    enc = TextEncoder(hub_model, tok, "cpu")
    with torch.inference_mode():
        f = hub_model.encode_text(tok([t("nucleus") for t in OPENAI_IMAGENET_TEMPLATES]))
    f = F.normalize(F.normalize(f, dim=-1).mean(0), dim=0)
    np.testing.assert_allclose(enc.encode(["nucleus"])[0], f.numpy(), rtol=0, atol=2e-6)


def test_hf_mean_pooler_truncates_exactly_and_other_poolers_do_not(tmp_path):
    import open_clip

    register_tiny_timm()
    folder = write_bert_folder(tmp_path / "mean")
    cfg = {"embed_dim": 16, "vision_cfg": timm_vision_cfg(),
           "text_cfg": hf_text_cfg(folder, pooler="mean_pooler")}
    write_hub_folder(folder, cfg)
    seg = Segmenter(f"local-dir:{folder}", device="cpu", cache_dir=False)
    tok = open_clip.get_tokenizer(f"local-dir:{folder}")
    fast = TextEncoder(seg.model, tok, "cpu")
    full = TextEncoder(seg.model, tok, "cpu")
    full.truncate = False
    assert fast.truncate
    np.testing.assert_allclose(fast.encode(["cell", "stroma"]), full.encode(["cell", "stroma"]),
                               rtol=0, atol=2e-6)
    seg.model.text.pooler = type("MaxPooler", (torch.nn.Module,), {})()
    assert not TextEncoder(seg.model, tok, "cpu").truncate


# -- loading --------------------------------------------------------------------------------
def test_local_dir_segments_end_to_end(hub_dir, tiny_config, tmp_path):
    seg = Segmenter(f"local-dir:{hub_dir}", device="cpu", config=tiny_config,
                    cache_dir=tmp_path / "cache")
    img = (np.random.default_rng(6).random((40, 56, 3)) * 255).astype(np.uint8)
    res = seg.segment(img, "background: wall\ncell\nnucleus")
    assert res.labels.shape == (40, 56) and res.similarity.shape == (3, 40, 56)
    assert np.isfinite(res.probabilities).all()
    np.testing.assert_allclose(res.probabilities.sum(0), 1.0, atol=1e-5)  # one name per class
    key = seg.weights_key
    assert checkpoint_fingerprint(hub_dir / "open_clip_model.safetensors") in key
    assert checkpoint_fingerprint(hub_dir / "open_clip_config.json") in key
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 3
    # the same weights from a .bin file (read with weights_only) give the same model
    other = tmp_path / "bin"
    other.mkdir()
    for f in ("open_clip_config.json", "vocab.txt", "config.json", "tokenizer_config.json"):
        (other / f).write_bytes((hub_dir / f).read_bytes())
    from safetensors.torch import load_file

    torch.save(load_file(str(hub_dir / "open_clip_model.safetensors")),
               other / "open_clip_pytorch_model.bin")
    seg2 = Segmenter(f"local-dir:{other}", device="cpu", config=tiny_config, cache_dir=False)
    res2 = seg2.segment(img, "background: wall\ncell\nnucleus")
    np.testing.assert_array_equal(res.similarity, res2.similarity)
    assert seg2.weights_key != key


def test_pretrained_tag_with_a_schema_model(hub_dir):
    for ok in (None, "none", ""):
        Segmenter(f"local-dir:{hub_dir}", pretrained=ok, device="cpu", cache_dir=False).load()
    with pytest.raises(ModelError, match="brings its own weights.*pretrained='openai'.*None"):
        Segmenter(f"local-dir:{hub_dir}", pretrained="openai", device="cpu").load()


def test_bad_local_dirs(tmp_path, hub_dir):
    with pytest.raises(ModelError, match="model folder not found"):
        Segmenter(f"local-dir:{tmp_path / 'nope'}", device="cpu").load()
    with pytest.raises(ModelError, match="no open_clip_config.json"):
        Segmenter(f"local-dir:{tmp_path}", device="cpu").load()
    (tmp_path / "open_clip_config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="has no weights"):
        Segmenter(f"local-dir:{tmp_path}", device="cpu").load()
    (tmp_path / "open_clip_model.safetensors").write_bytes(b"junk")
    with pytest.raises(ModelError, match="'model_cfg'"):
        Segmenter(f"local-dir:{tmp_path}", device="cpu").load()
    with pytest.raises(ModelError, match="nothing after"):
        Segmenter("hf-hub:", device="cpu").load()


def test_missing_transformers_names_the_extra(hub_dir, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "transformers" else real(name, *a))
    with pytest.raises(ModelError, match=r"napari-itaclip\[hf\]"):
        Segmenter(f"local-dir:{hub_dir}", device="cpu").load()


def _fill_hub_cache(cache, repo, folder):
    """A Hugging Face hub cache holding ``folder``'s files as ``repo`` at one revision."""
    rev = "0123456789abcdef0123456789abcdef01234567"
    base = cache / f"models--{repo.replace('/', '--')}"
    snap = base / "snapshots" / rev
    snap.mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(rev)
    for f in folder.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())


def test_hf_hub_loads_from_a_filled_cache_offline(hub_dir, tmp_path, monkeypatch, tiny_config):
    from huggingface_hub import constants

    from napari_itaclip.engine import models

    cache = tmp_path / "hf"
    _fill_hub_cache(cache, "itaclip-test/tiny", hub_dir)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: False)
    seg = Segmenter("hf-hub:itaclip-test/tiny", device="cpu", config=tiny_config, cache_dir=False)
    img = (np.random.default_rng(7).random((32, 48, 3)) * 255).astype(np.uint8)
    res = seg.segment(img, ["cell", "nucleus"])
    ref = Segmenter(f"local-dir:{hub_dir}", device="cpu", config=tiny_config, cache_dir=False)
    np.testing.assert_array_equal(res.similarity, ref.segment(img, ["cell", "nucleus"]).similarity)
    assert "models--itaclip-test--tiny" in seg.weights_key
    with pytest.raises(WeightsUnavailableError, match="not in the local Hugging Face cache"):
        Segmenter("hf-hub:itaclip-test/absent", device="cpu").load()


def test_catalogue_is_data_only_and_consistent():
    from _imports import loaded_by

    assert loaded_by("import napari_itaclip.catalogue", ("torch", "open_clip")) == []
    import open_clip

    from napari_itaclip.catalogue import CATALOGUE, DOMAINS, catalogue_help, find_entry

    assert len(CATALOGUE) >= 5
    first = CATALOGUE[0]
    assert (first.model, first.pretrained) == ("ViT-B-16", "openai")
    assert {e.domain for e in CATALOGUE} == set(DOMAINS)
    assert len({e.short_name for e in CATALOGUE}) == len(CATALOGUE)
    for e in CATALOGUE:
        if e.model.startswith("hf-hub:"):
            assert e.pretrained is None
        else:
            assert e.pretrained in open_clip.list_pretrained_tags_by_model(e.model)
        assert find_entry(e.short_name) is e and find_entry(e.model) is e
        assert e.short_name in catalogue_help()
    assert find_entry("BiomedCLIP").needs_transformers
    assert json.dumps([dataclasses.asdict(e) for e in CATALOGUE])


# -- the other methods' switches on timm trunks (docs/engine.md, "Other methods") ---------
_METHOD_BLOCKS = [
    dict(attention="k-k", attn_gaussian_std=5.0, keep_last_residual=False),  # NACLIP
    dict(attention="q-q", keep_last_residual=False),  # ClearCLIP
    dict(attention="self-self", drop_last_mlp=False),  # SCLIP
    dict(attention="q-k", attn_gaussian_std=1.5, drop_last_mlp=False),
]


@pytest.mark.parametrize("switches", _METHOD_BLOCKS)
def test_method_switches_equal_on_the_converted_timm_trunk(tiny_clip, converted, switches):
    """Same network as open_clip's ViT: the last-block switches give the same features."""
    cfg = ITACLIPConfig(mid_layers=(), **switches)
    x = torch.randn(2, 3, 40, 24, generator=torch.Generator().manual_seed(21))
    with torch.inference_mode():
        fa = OpenCLIPViT(tiny_clip.visual).dense_features(x, cfg)
        fb = TimmViT(converted.visual).dense_features(x, cfg)
    torch.testing.assert_close(fb, fa, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kw", [dict(reg_tokens=2), dict(reg_tokens=3, no_embed_class=True)])
def test_gaussian_bias_leaves_every_prefix_token_out(kw):
    """NACLIP's bias on a trunk with register tokens: zero rows and columns for the class
    and register tokens, the Gaussian between patches (written out here)."""
    vis = _tower(_vit(**kw))
    bb = TimmViT(vis)
    t = vis.trunk
    cfg = ITACLIPConfig(mid_layers=(), attention="k-k", attn_gaussian_std=2.0,
                        keep_last_residual=False)
    x = torch.randn(1, 3, 24, 32, generator=torch.Generator().manual_seed(22))
    p, gh, gw = t.num_prefix_tokens, 3, 4
    with torch.inference_mode():
        h = bb.embed(x)
        for blk in t.blocks[:-1]:
            h = blk(h)
        blk = t.blocks[-1]
        n, d = blk.attn.num_heads, h.shape[-1] // blk.attn.num_heads
        k = blk.attn.qkv(blk.norm1(h)).reshape(1, -1, 3, n, d).permute(2, 0, 3, 1, 4)[1]
        bias = torch.zeros(p + gh * gw, p + gh * gw)
        for a in range(gh * gw):
            for b in range(gh * gw):
                dist2 = (a // gw - b // gw) ** 2 + (a % gw - b % gw) ** 2
                bias[p + a, p + b] = np.exp(-dist2 / 8.0)
        v = blk.attn.qkv(blk.norm1(h)).reshape(1, -1, 3, n, d).permute(2, 0, 3, 1, 4)[2]
        attn = torch.softmax(k @ k.transpose(-1, -2) * d**-0.5 + bias, -1)
        out = blk.ls1(blk.attn.proj((attn @ v).transpose(1, 2).reshape(h.shape)))
        torch.testing.assert_close(bb.tokens(x, cfg), bb.project(out), rtol=1e-5, atol=1e-5)
