import pytest
import torch
import torch.nn.functional as F

from napari_itaclip import ITACLIPConfig
from napari_itaclip.engine.backbone import OpenCLIPViT, attention_map


def test_surgery_disabled_equals_stock_forward(tiny_clip):
    """q-k attention, no mid layers, MLP kept: the class token is open_clip's output."""
    cfg = ITACLIPConfig(attention="q-k", mid_layers=(), drop_last_mlp=False)
    bb = OpenCLIPViT(tiny_clip.visual)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ours = bb.tokens(x, cfg)
        stock = tiny_clip.visual(x)
        tiny_clip.visual.output_tokens = True
        try:
            _, stock_tokens = tiny_clip.visual(x)
        finally:
            tiny_clip.visual.output_tokens = False
    torch.testing.assert_close(ours[:, 0], stock, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours[:, 1:], stock_tokens @ tiny_clip.visual.proj, rtol=1e-5, atol=1e-5)


def test_itaclip_surgery_changes_the_output(tiny_clip):
    bb = OpenCLIPViT(tiny_clip.visual)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    stock = ITACLIPConfig(attention="q-k", mid_layers=(), drop_last_mlp=False)
    with torch.inference_mode():
        a = bb.tokens(x, stock)
        b = bb.tokens(x, ITACLIPConfig(mid_layers=(2, 3)))
        c = bb.tokens(x, ITACLIPConfig(mid_layers=(2, 3), drop_last_mlp=False))
    assert not torch.allclose(a, b, atol=1e-3)
    assert not torch.allclose(b, c, atol=1e-3)


def _heads(t, heads):
    return t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)


def _manual_last_block(bb, x, cfg):
    """docs/engine.md's "Dense image features" written out for one image, step by step."""
    h = bb.embed(x)
    mids = []
    for i, blk in enumerate(bb.blocks[:-1], start=1):
        if i in cfg.mid_layers:
            hh = blk.ln_1(h)
            q, k, v = F.linear(hh, blk.attn.in_proj_weight, blk.attn.in_proj_bias).chunk(3, -1)
            n = blk.attn.num_heads
            mids.append(attention_map(_heads(q, n), _heads(k, n), cfg.attention))
        h = blk(h)
    blk = bb.blocks[-1]
    hh = blk.ln_1(h)
    q, k, v = F.linear(hh, blk.attn.in_proj_weight, blk.attn.in_proj_bias).chunk(3, -1)
    n = blk.attn.num_heads
    a = attention_map(_heads(q, n), _heads(k, n), cfg.attention)
    a = (1 - cfg.mid_weight) * a + cfg.mid_weight * torch.stack(mids).mean(0)
    o = (a @ _heads(v, n)).transpose(1, 2).reshape(h.shape)
    h = h + blk.attn.out_proj(o)
    return tiny_clip_post(bb, h)


def tiny_clip_post(bb, h):
    return bb.visual.ln_post(h) @ bb.visual.proj


@pytest.mark.parametrize("mode", ["self-self", "q-q", "k-k", "q-k"])
def test_surgery_matches_spec_written_out(tiny_clip, mode):
    cfg = ITACLIPConfig(attention=mode, mid_layers=(1, 3), mid_weight=0.3)
    bb = OpenCLIPViT(tiny_clip.visual)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        torch.testing.assert_close(bb.tokens(x, cfg), _manual_last_block(bb, x, cfg),
                                   rtol=1e-5, atol=1e-5)


def test_attention_map_rows():
    q = torch.randn(2, 3, 5, 4)
    k = torch.randn(2, 3, 5, 4)
    torch.testing.assert_close(attention_map(q, k, "self-self").sum(-1), torch.full((2, 3, 5), 2.0))
    torch.testing.assert_close(attention_map(q, k, "q-k").sum(-1), torch.ones(2, 3, 5))
    expected = torch.softmax(q @ q.transpose(-1, -2) / 2.0, -1)
    torch.testing.assert_close(attention_map(q, k, "q-q"), expected)


def test_positional_embedding_resampled_for_small_crops(tiny_clip):
    bb = OpenCLIPViT(tiny_clip.visual)
    pos = tiny_clip.visual.positional_embedding
    assert bb.positional_embedding(4, 4) is pos  # the pretraining grid: untouched
    out = bb.positional_embedding(3, 2)
    assert out.shape == (1 + 6, pos.shape[1])
    torch.testing.assert_close(out[0], pos[0])
    ref = F.interpolate(pos[1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2),
                        scale_factor=(3.1 / 4, 2.1 / 4), mode="bicubic")
    torch.testing.assert_close(out[1:], ref.permute(0, 2, 3, 1).reshape(6, -1))
    # a crop smaller than the pretraining size (and not a multiple of the patch) runs
    feats = bb.dense_features(torch.randn(1, 3, 27, 17), ITACLIPConfig(mid_layers=(2, 3)))
    assert feats.shape == (1, 3, 2, 32)


def test_mid_layers_out_of_range(tiny_clip):
    bb = OpenCLIPViT(tiny_clip.visual)
    with pytest.raises(ValueError, match="1..3"):
        bb.dense_features(torch.randn(1, 3, 32, 32), ITACLIPConfig(mid_layers=(4,)))
