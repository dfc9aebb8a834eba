"""The Applier: a step generator in short turns of the event loop; napari's heavy calls
in turns of their own, with the worker held off the GIL a little longer."""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("napari")


def _steps(seen: list, fail: bool = False):
    from napari_itaclip.plugin.output_plan import HEAVY, LIGHT

    seen.append(("light", sys.getswitchinterval()))
    yield LIGHT
    yield HEAVY  # the mark before the napari call
    seen.append(("heavy", sys.getswitchinterval()))  # "the napari call"
    if fail:
        raise RuntimeError("napari refused the layer")
    yield HEAVY  # the mark after it
    seen.append(("light", sys.getswitchinterval()))
    yield LIGHT
    return "done"


@pytest.mark.parametrize("fail", [False, True])
def test_heavy_calls_run_with_a_longer_switch_interval(qapp, qtbot, fail):
    from napari_itaclip.plugin.widget.apply import HEAVY_SWITCH_S, Applier

    default = sys.getswitchinterval()
    assert default < HEAVY_SWITCH_S
    applier, seen, out = Applier(), [], []
    applier.start(_steps(seen, fail), out.append, out.append)
    qtbot.waitUntil(lambda: not applier.running, timeout=2000)
    assert sys.getswitchinterval() == default  # restored, error or not
    kinds = [(kind, interval == default) for kind, interval in seen]
    if fail:
        assert kinds == [("light", True), ("heavy", False)]
        assert isinstance(out[0], RuntimeError)
    else:
        assert kinds == [("light", True), ("heavy", False), ("light", True)]
        assert out == ["done"]
    assert dict(seen)["heavy"] == pytest.approx(HEAVY_SWITCH_S)
    # the next job starts afresh: its first piece is not taken for a napari call
    seen.clear()
    applier.start(_steps(seen), out.append, out.append)
    qtbot.waitUntil(lambda: not applier.running, timeout=2000)
    assert seen[0] == ("light", default)
