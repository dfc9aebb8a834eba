"""The one model identity (napari_itaclip/identity.py): its two rules, written once."""

from __future__ import annotations

import pickle

import pytest

from napari_itaclip.identity import (
    DEFAULT_PRETRAINED,
    NOT_GIVEN,
    ModelIdentity,
    normalise_pretrained,
    parse_none,
)


@pytest.mark.parametrize(("model", "pretrained", "want"), [
    ("ViT-B-16", DEFAULT_PRETRAINED, "openai"),
    ("hf-hub:org/name", DEFAULT_PRETRAINED, None),   # own weights
    ("local-dir:/x", DEFAULT_PRETRAINED, None),
    ("hf-hub:org/name", "openai", "openai"),         # explicit: kept (refused at load)
    ("ViT-B-16", "None", None),
    ("ViT-B-16", " none ", None),
    ("ViT-B-16", "", None),
    ("ViT-B-16", None, None),
    ("ViT-L-14", "datacomp_xl_s13b_b90k", "datacomp_xl_s13b_b90k"),
])
def test_pretrained_rules(model, pretrained, want):
    assert normalise_pretrained(model, pretrained) == want
    assert ModelIdentity(model, pretrained).pretrained == want


def test_identity_equality_and_feature_cache_bound():
    a = ModelIdentity("m", "w", "cpu", feature_cache_mb=10)
    b = ModelIdentity("m", "w", "cpu", feature_cache_mb=0)
    assert a == b and hash(a) == hash(b)  # the bound resizes, it does not reload
    assert a != ModelIdentity("m", "w", "cpu", half=True)
    assert a.segmenter_kwargs()["feature_cache_mb"] == 10.0
    assert "feature_cache_mb" not in ModelIdentity("m").segmenter_kwargs()
    with pytest.raises(ValueError, match="feature_cache_mb must be >= 0"):
        ModelIdentity("m", feature_cache_mb=-1)
    with pytest.raises(ValueError, match="batch_memory_mb must be > 0"):
        ModelIdentity("m", batch_memory_mb=0)


def test_derived_values_share_the_rules():
    from napari_itaclip.chunked import SegmenterSpec
    from napari_itaclip.engine.registry import SegmenterKey

    spec = SegmenterSpec(model="hf-hub:org/name", device="cpu", config="cfg")
    assert spec.pretrained is None
    assert spec.key == SegmenterKey("hf-hub:org/name", None, "cpu")
    assert type(spec.key) is ModelIdentity
    assert pickle.loads(pickle.dumps(spec)) == spec


def test_not_given_is_one_picklable_marker():
    assert pickle.loads(pickle.dumps(NOT_GIVEN)) is NOT_GIVEN is DEFAULT_PRETRAINED
    assert repr(NOT_GIVEN) == "NOT_GIVEN"
    assert parse_none("OFF") is None and parse_none("null") is None and parse_none("x") == "x"
