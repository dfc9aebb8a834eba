"""The widget's garbage-collection policy and the class name's step-wise reveal.

Both keep single GUI-thread stalls short at the end of a run (docs/benchmarks.md, "GUI
responsiveness"); what is tested here is that neither costs the user anything: removed
layers are still freed, the policy ends with the last widget, and the overlay ends up
naming the shown class.
"""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from napari_itaclip.plugin import gc_pauses
from napari_itaclip.plugin.widget.heatmaps import reveal_steps


@pytest.fixture(autouse=True)
def _no_policy_left():
    yield
    assert not gc_pauses.stats().armed
    if gc.get_freeze_count():  # never leave frozen objects to the next test
        gc.unfreeze()


def test_reveal_steps_add_a_few_new_characters_each():
    text = "heatmap: mitochondrion"
    steps = reveal_steps(text, set(), per_step=4)
    assert steps[-1] == text
    drawn: set[str] = set()
    for step in steps:
        assert text.startswith(step)
        assert len({c for c in step if not c.isspace()} - drawn) <= 4
        drawn |= set(step)
    # characters drawn before cost nothing: one step
    assert reveal_steps("heatmap: cat", set("heatmap: cat")) == ["heatmap: cat"]
    assert reveal_steps("", set()) == [""]


def test_removed_layers_are_still_freed_while_the_policy_runs(make_widget, qtbot):
    viewer, widget = make_widget()
    assert gc_pauses.stats().armed
    layer = viewer.add_image(np.zeros((64, 64), np.uint8), name="scratch")
    ref = weakref.ref(viewer.layers["scratch"].__wrapped__
                      if hasattr(viewer.layers["scratch"], "__wrapped__") else layer)
    del layer
    before = gc_pauses.stats().freezes
    gc.collect()  # a full collection: the survivors (the layer among them) are frozen
    assert gc_pauses.stats().freezes == before + 1 and gc.get_freeze_count() > 0
    viewer.layers.remove("scratch")
    assert gc.get_freeze_count() == 0  # a removal thaws
    qtbot.wait(20)
    gc.collect()
    assert ref() is None, "the removed layer stayed alive"
    # the policy goes on: the collection froze again
    assert gc.get_freeze_count() > 0
    viewer.window.remove_dock_widget(widget)


def test_the_last_widget_ends_the_policy(make_widget, qtbot):
    viewer, first = make_widget()
    _other, second = make_widget()  # a second viewer, its own widget
    gc.collect()
    assert gc.get_freeze_count() > 0
    first.viewer.window.remove_dock_widget(first)
    assert gc_pauses.stats().armed  # the other widget still holds it
    second.viewer.window.remove_dock_widget(second)
    s = gc_pauses.stats()
    assert not s.armed and gc.get_freeze_count() == 0
    assert gc_pauses._after_collection not in gc.callbacks
    gc.collect()
    assert gc.get_freeze_count() == 0  # no freezing after the policy ended


def test_switched_off_by_the_environment(make_widget, monkeypatch):
    monkeypatch.setenv("NAPARI_ITACLIP_GC_FREEZE", "0")
    viewer, widget = make_widget()
    assert not gc_pauses.stats().armed
    gc.collect()
    assert gc.get_freeze_count() == 0
    viewer.window.remove_dock_widget(widget)


def test_overlay_names_the_class_after_its_steps(make_widget, qtbot):
    from _widgets import run

    from napari_itaclip.plugin.widget import heatmaps

    viewer, widget = make_widget()
    viewer.add_image(np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8),
                     name="img")
    widget.set_vocabulary("background\nzyxwvq\njkfhg")  # letters not drawn before
    heatmaps._drawn.difference_update("zyxwvqjkfhg")
    shown: list[str] = []
    viewer.text_overlay.events.text.connect(lambda e: shown.append(viewer.text_overlay.text))
    assert run(qtbot, widget).startswith("Done")
    widget.heatmaps.combo.setCurrentIndex(1)
    qtbot.waitUntil(lambda: viewer.text_overlay.text == "heatmap: zyxwvq", timeout=3000)
    assert viewer.text_overlay.visible
    target = "heatmap: zyxwvq"  # six new letters: shown in more than one paint
    assert any(t.startswith("heatmap: z") and t != target for t in shown), shown
    # the user's own overlay text is never overwritten by a step still to come
    widget.heatmaps.combo.setCurrentIndex(2)
    viewer.text_overlay.text = "my note"
    qtbot.wait(300)
    assert viewer.text_overlay.text == "my note"
    viewer.window.remove_dock_widget(widget)
