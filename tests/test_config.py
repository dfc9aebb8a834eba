import dataclasses

import pytest

from napari_itaclip import ITACLIPConfig
from napari_itaclip.config import PAPER_PRESETS, list_presets, register_preset

API_FIELDS = ["short_side", "crop", "stride", "attention", "mid_layers", "mid_weight",
              "drop_last_mlp", "image_engineering", "eng_weight", "aux_weight", "pamr_steps",
              "pamr_dilations", "logit_scale", "prob_threshold", "area_threshold", "close_size"]


def test_api_fields_round_trip_through_every_entry_point():
    """The public field names work where users give them: replace, to/from_dict, --set."""
    from napari_itaclip.config import field_info

    table = field_info()
    base = ITACLIPConfig()
    for name in API_FIELDS:
        info = table[name]
        text = info.example()
        parsed = info.parse(text)
        assert parsed == getattr(base, name)  # the default, formatted then parsed back
        cfg = base.replace(**{name: parsed})
        assert ITACLIPConfig.from_dict(cfg.to_dict()) == cfg


def test_replace_makes_a_new_checked_config():
    cfg = ITACLIPConfig()
    other = cfg.replace(stride=28)
    assert (cfg.stride, other.stride) == (56, 28)
    with pytest.raises(ValueError, match="stride"):
        cfg.replace(stride=0)
    assert cfg.stride == 56


@pytest.mark.parametrize(
    "name, short, aux, eng, scale, prob, area",
    [
        ("voc21", 336, 0.05, 0.70, 60, 0.1, 0.1),
        ("context60", 336, 0.15, 0.75, 55, 0.1, None),
        ("coco_object", 336, 0.10, 0.75, 50, 0.1, None),
        ("coco_stuff", 448, 0.20, 0.75, 40, 0.0, None),
        ("cityscapes", 560, 0.05, 0.70, 40, 0.0, None),
    ],
)
def test_paper_presets_match_the_table(name, short, aux, eng, scale, prob, area):
    cfg = ITACLIPConfig.preset(name)
    assert (cfg.short_side, cfg.aux_weight, cfg.eng_weight, cfg.logit_scale) == (short, aux, eng, scale)
    assert (cfg.prob_threshold, cfg.area_threshold) == (prob, area)
    assert (cfg.crop, cfg.stride, cfg.attention, cfg.mid_layers, cfg.mid_weight) == (
        224, 28, "self-self", (7, 8, 10), 0.5)
    assert cfg.drop_last_mlp and cfg.image_engineering
    assert (cfg.pamr_steps, cfg.pamr_dilations, cfg.close_size) == (10, (8, 16), 3)


def test_balanced_and_fast():
    assert ITACLIPConfig() == ITACLIPConfig.preset("balanced")
    assert ITACLIPConfig.preset("balanced").stride == 56
    fast = ITACLIPConfig.preset("fast")
    assert fast.stride == 112 and not fast.image_engineering and fast.pamr_steps == 0
    assert set(PAPER_PRESETS) | {"balanced", "fast"} <= set(list_presets())


def test_preset_overrides_and_replace():
    cfg = ITACLIPConfig.preset("voc21", stride=56)
    assert cfg.stride == 56 and cfg.logit_scale == 60
    assert dataclasses.replace(cfg, short_side=None).short_side is None
    assert cfg.replace(crop=112).crop == 112


def test_unknown_preset_lists_names():
    with pytest.raises(ValueError, match="voc21"):
        ITACLIPConfig.preset("nope")


def test_register_preset():
    register_preset("my-test", ITACLIPConfig(stride=64), overwrite=True)
    assert ITACLIPConfig.preset("my_test").stride == 64
    with pytest.raises(ValueError, match="exists"):
        register_preset("my-test", ITACLIPConfig())


@pytest.mark.parametrize("bad", [dict(stride=0), dict(attention="x-y"), dict(mid_weight=2.0),
                                 dict(mid_layers=(0,)), dict(pamr_steps=-1),
                                 dict(area_threshold=1.5), dict(short_side=0), dict(logit_scale=0)])
def test_invalid_values_are_rejected(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        ITACLIPConfig(**bad)


def test_dict_round_trip():
    cfg = ITACLIPConfig.preset("coco_stuff")
    assert ITACLIPConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        ITACLIPConfig.from_dict({"bogus": 1})


def test_field_table_covers_every_field():
    from napari_itaclip.config import field_info

    table = field_info()
    assert list(table) == [f.name for f in dataclasses.fields(ITACLIPConfig)]
    for name, info in table.items():
        assert info.help and info.kind in ("int", "float", "bool", "str", "ints"), name
        assert info.default == getattr(ITACLIPConfig(), name)
        assert info.check(info.default)[1] is None  # the defaults pass their own rules
    assert table["short_side"].optional and table["area_threshold"].optional
    assert not table["stride"].optional
    assert table["attention"].choices == ("self-self", "q-k", "q-q", "k-k")
    assert (table["mid_weight"].low, table["mid_weight"].high) == (0, 1)


@pytest.mark.parametrize(("name", "text", "value"), [
    ("short_side", "none", None), ("short_side", "NULL", None), ("short_side", "448", 448),
    ("area_threshold", "none", None), ("area_threshold", "0.2", 0.2),
    ("mid_layers", "7,8", (7, 8)), ("mid_layers", "[7, 8, 10]", (7, 8, 10)),
    ("mid_layers", "", ()), ("drop_last_mlp", "false", False), ("attention", "q-k", "q-k"),
])
def test_field_parse(name, text, value):
    from napari_itaclip.config import field_info

    assert field_info()[name].parse(text) == value


@pytest.mark.parametrize(("name", "text", "expect"), [
    ("short_side", "abc", "short_side='abc': expected an integer >= 1 or none, e.g. short_side=336"),
    ("stride", "none", "stride='none': expected an integer >= 1, e.g. stride=56"),
    ("mid_weight", "3", "expected a finite number in [0, 1]"),
    ("attention", "x", "expected one of 'self-self'"),
    ("pamr_dilations", "[]", "a non-empty list of integers"),
])
def test_field_parse_errors_name_field_type_and_example(name, text, expect):
    from napari_itaclip.config import field_info

    with pytest.raises(ValueError) as info:
        field_info()[name].parse(text)
    assert expect in str(info.value)


def test_benchmark_names_defined_once():
    from napari_itaclip.datasets import BENCHMARKS
    from napari_itaclip.evaluation import DATASETS

    assert PAPER_PRESETS is BENCHMARKS
    assert tuple(DATASETS) == BENCHMARKS


def test_every_float_field_refuses_non_finite_values():
    """Generic over the field table: inf and nan are never valid, whatever the bounds."""
    from napari_itaclip.config import field_info

    floats = [name for name, info in field_info().items() if info.kind == "float"]
    assert {"logit_scale", "mid_weight", "attn_gaussian_std", "area_threshold"} <= set(floats)
    base = ITACLIPConfig.preset("naclip-voc21")  # single-softmax: attn_gaussian_std allowed
    for name in floats:
        for value in (float("inf"), float("-inf"), float("nan")):
            with pytest.raises(ValueError, match=name):
                base.replace(**{name: value})
            with pytest.raises(ValueError, match=name):
                field_info()[name].parse(str(value))


@pytest.mark.parametrize("crop, stride, ok", [(224, 224, True), (224, 225, False),
                                              (32, 64, False), (None, 5000, True)])
def test_stride_beyond_crop_is_refused_as_chunked_mode_refuses_it(crop, stride, ok):
    from napari_itaclip.chunked import ChunkingError
    from napari_itaclip.chunked.plan import plan_axis

    if ok:
        assert ITACLIPConfig(crop=crop, stride=stride).stride == stride
        return
    with pytest.raises(ValueError, match=rf"stride \({stride}\) must not exceed crop \({crop}\)"):
        ITACLIPConfig(crop=crop, stride=stride)
    with pytest.raises(ChunkingError, match=rf"stride \({stride}\) must not exceed crop"):
        plan_axis(1000, 256, crop, stride, 0)
