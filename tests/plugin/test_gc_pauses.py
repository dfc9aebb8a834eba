"""The widget's garbage-collection policy, the class name's step-wise reveal and the
worker's preparation of napari's first Labels layer.

All keep single GUI-thread stalls short at the end of a run (docs/benchmarks.md, "GUI
responsiveness"); what is tested here is that they cost the user nothing (removed
layers are still freed, the policy ends with the last widget, the overlay ends up
naming the shown class) and that the preparation happens in the worker.
"""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from napari_itaclip.plugin import gc_pauses
from napari_itaclip.plugin.widget.heatmaps import reveal_steps


def _baseline() -> int:
    """What the permanent generation holds with nothing frozen: 0, except on CPython
    3.12, whose collections move the immortal objects they meet there (375 of them in
    a bare 3.12.1 interpreter), so that ``gc.get_freeze_count()`` is never 0 after one.
    """
    gc.unfreeze()
    gc.collect()
    return gc.get_freeze_count()


BASE = 0


@pytest.fixture(autouse=True)
def _no_policy_left():
    global BASE
    assert not gc_pauses.stats().armed
    BASE = _baseline()
    yield
    assert not gc_pauses.stats().armed
    if gc.get_freeze_count():  # never leave frozen objects to the next test
        gc.unfreeze()


def frozen() -> int:
    """Objects frozen beyond the interpreter's own baseline."""
    return gc.get_freeze_count() - BASE


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
    assert gc_pauses.stats().freezes == before + 1 and frozen() > 0
    viewer.layers.remove("scratch")
    assert gc.get_freeze_count() == 0  # a removal thaws
    qtbot.wait(20)
    gc.collect()
    assert ref() is None, "the removed layer stayed alive"
    # the policy goes on: the collection froze again
    assert frozen() > 0
    viewer.window.remove_dock_widget(widget)


def test_the_last_widget_ends_the_policy(make_widget, qtbot):
    viewer, first = make_widget()
    _other, second = make_widget()  # a second viewer, its own widget
    gc.collect()
    assert frozen() > 0
    first.viewer.window.remove_dock_widget(first)
    assert gc_pauses.stats().armed  # the other widget still holds it
    second.viewer.window.remove_dock_widget(second)
    s = gc_pauses.stats()
    assert not s.armed and gc.get_freeze_count() == 0
    assert gc_pauses._after_collection not in gc.callbacks
    gc.collect()
    assert frozen() == 0  # no freezing after the policy ended


def test_switched_off_by_the_environment(make_widget, monkeypatch):
    monkeypatch.setenv("NAPARI_ITACLIP_GC_FREEZE", "0")
    viewer, widget = make_widget()
    assert not gc_pauses.stats().armed
    gc.collect()
    assert frozen() == 0
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


def test_the_worker_prepares_naparis_first_labels_layer(make_widget, qtbot, monkeypatch):
    """vispy's dash patterns (napari's Labels polygon tool) are computed by the run's
    worker, not by the GUI thread while the first Labels layer is added."""
    import threading

    from _widgets import run
    from vispy.visuals.line import dash_atlas

    from napari_itaclip.plugin import layers

    original = dash_atlas._make_pattern
    computed_on_main: list[bool] = []

    def recording(*args):
        misses = original.cache_info().misses
        out = original(*args)
        if original.cache_info().misses > misses:
            computed_on_main.append(threading.current_thread() is threading.main_thread())
        return out

    viewer, widget = make_widget()
    viewer.add_image(np.zeros((32, 40), np.uint8), name="img")
    widget.set_vocabulary("background\ncell")
    # as if no Labels layer had been drawn yet (older napari draws lines of its own
    # when the viewer opens, on the GUI thread: not the plugin's concern)
    original.cache_clear()
    monkeypatch.setattr(dash_atlas, "_make_pattern", recording)
    monkeypatch.setattr(layers, "_first_labels_prepared", False)
    assert run(qtbot, widget).startswith("Done")
    assert "img labels" in [layer.name for layer in viewer.layers]
    assert computed_on_main and not any(computed_on_main), computed_on_main
    viewer.window.remove_dock_widget(widget)


def test_the_first_canvas_text_is_drawn_blank_once_docked(make_napari_viewer, qtbot,
                                                          monkeypatch):
    """napari's first text costs one long paint; the widget draws a blank one when it is
    docked in a window on screen, and leaves the user's own overlay text alone."""
    from _widgets import open_widget

    from napari_itaclip.plugin.widget import heatmaps

    monkeypatch.setattr(heatmaps, "_drawn", set())
    viewer = make_napari_viewer(show=True)
    seen: list[tuple[str, bool]] = []
    overlay = viewer.text_overlay
    overlay.events.visible.connect(lambda e: seen.append((overlay.text, overlay.visible)))
    widget = open_widget(viewer)
    qtbot.waitUntil(lambda: " " in heatmaps._drawn, timeout=3000)
    assert (" ", True) in seen  # shown blank for a paint
    assert not overlay.visible and overlay.text == ""  # and put back as it was
    viewer.window.remove_dock_widget(widget)

    heatmaps._drawn.clear()
    overlay.text, overlay.visible = "my note", True
    widget = open_widget(viewer)
    qtbot.wait(heatmaps.PREPARE_MS + 200)
    assert overlay.text == "my note" and overlay.visible and not heatmaps._drawn
    viewer.window.remove_dock_widget(widget)
