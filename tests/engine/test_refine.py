import torch
import torch.nn.functional as F

from napari_itaclip.engine.refine import iter_pamr, pamr, pamr_affinity


def _kernels(with_centre):
    ks = []
    for y in range(3):
        for x in range(3):
            if y == 1 and x == 1 and not with_centre:
                continue
            k = torch.zeros(1, 1, 3, 3)
            k[0, 0, y, x] = 1
            ks.append(k)
    return torch.cat(ks)


def _taps(x, dilations, with_centre):
    """(B, K, H, W) -> (B, K, P, H, W) with dilated one-hot convolutions (replicate pad)."""
    b, k, h, w = x.shape
    flat = x.reshape(b * k, 1, h, w)
    out = []
    for d in dilations:
        p = F.pad(flat, [d] * 4, mode="replicate")
        out.append(F.conv2d(p, _kernels(with_centre), dilation=d))
    return torch.cat(out, 1).reshape(b, k, -1, h, w)


def _reference_pamr(img, mask, steps, dilations):
    """docs/engine.md's "PAMR" written with convolutions."""
    centre = img.unsqueeze(2)
    std = _taps(img, dilations, True).std(2, keepdim=True)
    aff = -(centre - _taps(img, dilations, False)).abs() / (1e-8 + 0.1 * std)
    aff = torch.softmax(aff.mean(1, keepdim=True), 2)
    for _ in range(steps):
        mask = (_taps(mask, dilations, False) * aff).sum(2)
    return mask


def test_pamr_matches_convolution_form():
    g = torch.Generator().manual_seed(0)
    img = torch.randn(1, 3, 37, 41, generator=g)
    mask = torch.randn(1, 11, 37, 41, generator=g)
    ours = pamr(img, mask, steps=3, dilations=(2, 5))
    torch.testing.assert_close(ours, _reference_pamr(img, mask, 3, (2, 5)), rtol=1e-5, atol=1e-6)


def test_affinity_is_a_distribution_over_sixteen_neighbours():
    img = torch.rand(1, 3, 20, 20)
    aff = pamr_affinity(img, (1, 2))
    assert aff.shape == (1, 16, 20, 20)
    torch.testing.assert_close(aff.sum(1), torch.ones(1, 20, 20))


def test_pamr_keeps_constants_and_respects_edges():
    img = torch.zeros(1, 3, 30, 30)
    img[..., :, 15:] = 5.0  # a strong vertical edge
    const = torch.full((1, 2, 30, 30), 0.25)
    torch.testing.assert_close(pamr(img, const, 4, (1, 2)), const)
    mask = torch.zeros(1, 1, 30, 30)
    mask[..., :, :15] = 1.0
    out = pamr(img, mask, 5, (1, 2))
    # propagation stays on its side of the image edge
    assert out[..., :, :14].min() > 0.99 and out[..., :, 16:].max() < 0.01


def test_iter_pamr_reports_every_step_and_chunks_channels():
    img = torch.rand(1, 3, 16, 16)
    mask = torch.rand(1, 20, 16, 16)
    gen = iter_pamr(img, mask, 3, (1, 2), chunk=8)
    steps = []
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            out = stop.value
            break
    assert steps[-1] == (9, 9) and len(steps) == 9  # 3 chunks x 3 steps
    torch.testing.assert_close(out, pamr(img, mask, 3, (1, 2)))


def test_chunks_change_the_memory_never_the_result():
    from napari_itaclip.engine.refine import PAMR_CHUNK_BYTES, pamr_chunk

    g = torch.Generator().manual_seed(1)
    img = torch.randn(1, 3, 45, 53, generator=g)
    mask = torch.randn(1, 11, 45, 53, generator=g)
    ref = pamr(img, mask, 3, (2, 5))
    for chunk in (1, 3, 8, None):
        out = drain_pamr(img, mask.clone(), chunk)
        assert torch.equal(out, ref), chunk  # bit for bit: channels are independent
    assert pamr_chunk(512, 512, 20) == 8  # 1 MB a channel: the most at a time
    assert pamr_chunk(8000, 8000, 20) == 1  # 256 MB a channel: one at a time
    assert pamr_chunk(2048, 2048, 20) * 2048 * 2048 * 4 <= PAMR_CHUNK_BYTES
    assert pamr_chunk(16, 16, 3) == 3


def drain_pamr(img, mask, chunk):
    from napari_itaclip.progress import drain

    return drain(iter_pamr(img, mask, 3, (2, 5), chunk=chunk, inplace=True))
