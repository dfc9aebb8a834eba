import numpy as np
import open_clip
import torch

from _spies import token_batches
from napari_itaclip import Vocabulary
from napari_itaclip.engine.text import TextEncoder, templates


def _tok():
    return open_clip.get_tokenizer("ViT-B-16")


def test_eighty_templates():
    assert len(templates()) == 80
    assert templates()[0]("cat").endswith("cat.")


def test_truncated_context_equals_full_77(tiny_clip):
    tok = _tok()
    names = ["cat", "the very large and rather fluffy dog!", "x"]
    enc = TextEncoder(tiny_clip, tok, "cpu")
    full_enc = TextEncoder(tiny_clip, tok, "cpu")
    full_enc.truncate = False
    assert enc.truncate
    with token_batches(tiny_clip.token_embedding) as seen:
        short = enc.encode(names)
    n = max(width for _rows, width in seen)
    assert n < 77  # the padding was cut
    full = full_enc.encode(names)
    torch.testing.assert_close(torch.from_numpy(short), torch.from_numpy(full),
                               rtol=1e-5, atol=1e-6)


def test_ensemble_matches_definition(tiny_clip):
    tok = _tok()
    enc = TextEncoder(tiny_clip, tok, "cpu", batch_size=37)  # odd batches, mixed lengths
    feats = enc.encode(["cat", "a small domesticated carnivorous mammal"])
    with torch.inference_mode():
        for row, text in zip(feats, ["cat", "a small domesticated carnivorous mammal"]):
            e = tiny_clip.encode_text(tok([t(text) for t in templates()]))
            e = e / e.norm(dim=-1, keepdim=True)
            m = e.mean(0)
            np.testing.assert_allclose(row, (m / m.norm()).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-6)


def test_memory_and_disk_cache(tiny_clip, tmp_path, monkeypatch):
    tok = _tok()
    enc = TextEncoder(tiny_clip, tok, "cpu", cache_key="tiny|v", cache_dir=tmp_path)
    with token_batches(tiny_clip.token_embedding) as calls:
        a = enc.encode(["cat", "dog"])
        assert sum(rows for rows, _n in calls) == 160
        b = enc.encode(["dog", "cat"])
        assert sum(rows for rows, _n in calls) == 160  # memory hit
    np.testing.assert_array_equal(a[::-1], b)
    assert len(list(tmp_path.rglob("*.npy"))) == 2
    # a new encoder (a new process) reads the disk cache and runs nothing
    enc2 = TextEncoder(tiny_clip, tok, "cpu", cache_key="tiny|v", cache_dir=tmp_path)
    with token_batches(tiny_clip.token_embedding, fail=True):
        np.testing.assert_array_equal(enc2.encode(["cat", "dog"]), a)
    # other weights never see these entries
    enc3 = TextEncoder(tiny_clip, tok, "cpu", cache_key="other|v", cache_dir=tmp_path)
    assert not enc3.cached("cat")


def test_corrupt_cache_entry_is_recomputed(tiny_clip, tmp_path):
    tok = _tok()
    enc = TextEncoder(tiny_clip, tok, "cpu", cache_key="k", cache_dir=tmp_path)
    good = enc.encode(["cat"])
    for f in tmp_path.rglob("*.npy"):
        f.write_bytes(b"garbage")
    enc2 = TextEncoder(tiny_clip, tok, "cpu", cache_key="k", cache_dir=tmp_path)
    np.testing.assert_allclose(enc2.encode(["cat"]), good, rtol=1e-6)


def test_aux_mixing(tiny_segmenter):
    vocab = Vocabulary.parse("background: sky, wall\ncat, feline >= a small mammal\ndog")
    cfg = tiny_segmenter.config.replace(aux_weight=0.2)
    from napari_itaclip.progress import drain

    q = drain(tiny_segmenter.iter_query_features(vocab, cfg)).numpy()
    enc = tiny_segmenter.text_encoder
    base = enc.encode(["sky", "wall", "cat", "feline", "dog"])
    aux = enc.encode(["a small mammal"])[0]
    np.testing.assert_allclose(q[:2], base[:2], rtol=1e-6)  # background: untouched
    np.testing.assert_allclose(q[2], 0.8 * base[2] + 0.2 * aux, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(q[3], 0.8 * base[3] + 0.2 * aux, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(q[4], base[4], rtol=1e-6)  # no aux text: untouched
    assert not np.isclose(np.linalg.norm(q[2]), 1.0, atol=1e-4)  # not re-normalised


def test_shared_prefix_equals_full_context(tiny_clip):
    from napari_itaclip.engine.text import _encode_shared_prefix, _lengths

    tok = _tok()
    names = ["cat", "tabby cat", "a small domesticated carnivorous mammal", "dog", "x"]
    for tpl in templates()[:10]:
        tokens = tok([tpl(n) for n in names])
        with torch.inference_mode():
            full = tiny_clip.encode_text(tokens)
            shared = _encode_shared_prefix(tiny_clip, tokens, _lengths(tokens, tiny_clip))
        torch.testing.assert_close(shared, full, rtol=1e-5, atol=1e-6)


def test_prefix_sharing_and_batched_paths_agree(tiny_clip):
    tok = _tok()
    names = ["cat", "dog", "bird", "a small domesticated carnivorous mammal", "person"]
    shared = TextEncoder(tiny_clip, tok, "cpu")
    assert shared.share_prefix
    plain = TextEncoder(tiny_clip, tok, "cpu")
    plain.share_prefix = False
    steps = list(_iterate(shared.iter_encode(names)))
    assert steps[-1] == (400, 400) and len(steps) == 81  # one report per template
    np.testing.assert_allclose(shared.encode(names), plain.encode(names), rtol=1e-5, atol=1e-6)


def _iterate(gen):
    while True:
        try:
            yield next(gen)
        except StopIteration:
            return


def test_disk_cache_is_keyed_on_the_weights_precision(tiny_clip, tmp_path):
    """float16 text embeddings (half=True on CUDA) never serve a float32 run, and back."""
    import copy

    tok = open_clip.get_tokenizer("ViT-B-16")
    fp32 = TextEncoder(tiny_clip, tok, "cpu", cache_key="same-weights", cache_dir=tmp_path)
    again = TextEncoder(tiny_clip, tok, "cpu", cache_key="same-weights", cache_dir=tmp_path)
    fp16 = TextEncoder(copy.deepcopy(tiny_clip).half(), tok, "cpu", cache_key="same-weights",
                       cache_dir=tmp_path)
    fp32.encode(["cat"])
    assert again.cached("cat")  # same weights, same precision: the entry serves it
    assert not fp16.cached("cat")
    fp16.encode(["cat"])
    files = sorted(tmp_path.rglob("*.npy"))
    assert len(files) == 2  # one entry per precision, side by side in one cache
    assert files[0].parent != files[1].parent and files[0].parent.parent == files[1].parent.parent


def test_an_abandoned_encoding_leaves_its_thread_out_of_inference_mode(tiny_clip, tmp_path):
    """A cancelled run abandons the text generator while suspended; the worker thread it
    ran in (a pooled thread, reused by the next run) must not stay in inference mode,
    or a model loaded there later gets inference tensors as weights."""
    import threading

    enc = TextEncoder(tiny_clip, open_clip.get_tokenizer("ViT-B-16"), device="cpu",
                      cache_dir=tmp_path, batch_size=2)
    seen = {}

    def run():
        gen = enc.iter_encode([f"class {k}" for k in range(6)])
        next(gen)
        next(gen)  # suspended between two batches
        seen["during"] = torch.is_inference_mode_enabled()
        del gen  # abandoned, as a cancelled worker does
        seen["after"] = torch.is_inference_mode_enabled()
        seen["param"] = torch.nn.Linear(2, 2).weight.is_inference()

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert seen == {"during": False, "after": False, "param": False}
