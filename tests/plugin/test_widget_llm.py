"""The widget's "Generate definitions / synonyms" buttons, with a fake LLM generator."""

from __future__ import annotations

import sys
import time

import pytest

pytest.importorskip("napari")

VOCAB = "background: sky, wall\ncat, feline\ndog"


@pytest.fixture
def widget(make_napari_viewer):
    from _widgets import open_widget

    viewer = make_napari_viewer()
    w = open_widget(viewer)
    w.set_vocabulary(VOCAB)
    return w


@pytest.fixture
def fake_llm(monkeypatch):
    llm = pytest.importorskip("napari_itaclip.llm")
    calls = {"kinds": [], "yielded": 0, "delay": 0.0, "fail": None}

    def fake_iter(vocab, kind="definitions", settings=None, **kw):
        calls["kinds"].append(kind)
        calls["settings"] = settings
        names = [c.name for c in vocab if not c.is_background]
        aux = {}
        for i, name in enumerate(names, start=1):
            time.sleep(calls["delay"])
            if calls["fail"]:
                raise llm.LLMError(calls["fail"])
            aux[name] = f"a {kind[:-1]} of {name}"
            calls["yielded"] += 1
            yield i, len(names), name
        return vocab.with_aux(aux)

    monkeypatch.setattr(llm, "iter_generate_aux", fake_iter)
    monkeypatch.setattr(llm.LLMSettings, "from_env", classmethod(lambda cls, **kw: "SETTINGS"))
    return calls


def _errors():
    from napari.utils.notifications import NotificationSeverity, notification_manager

    return [str(n.message) for n in notification_manager.records
            if n.severity == NotificationSeverity.ERROR]


def test_generate_definitions_fills_editor(widget, fake_llm, qtbot):
    from napari_itaclip import Vocabulary

    widget.vocab_panel.generate_btns["definitions"].click()
    assert widget.busy and not widget.run_btn.isEnabled()
    qtbot.waitUntil(lambda: not widget.busy, timeout=5000)
    assert fake_llm["kinds"] == ["definitions"] and fake_llm["settings"] == "SETTINGS"
    vocab = widget.vocabulary()
    assert vocab == Vocabulary.parse(
        "background: sky, wall\ncat, feline >= a definition of cat\ndog >= a definition of dog")
    assert widget.progress_bar.value() == 1000
    assert "review" in widget.status_label.text()
    # the user can edit the result before running: it is plain text in the editor
    assert ">= a definition of dog" in widget.vocab_panel.editor.toPlainText()


def test_generate_synonyms_progress_and_cancel(widget, fake_llm, qtbot):
    fake_llm["delay"] = 0.3
    widget.vocab_panel.generate_btns["synonyms"].click()
    qtbot.waitUntil(lambda: fake_llm["yielded"] >= 1, timeout=5000)
    qtbot.waitUntil(lambda: "synonyms: 1/2 (cat)" in widget.status_label.text(), timeout=5000)
    widget.cancel_btn.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=5000)
    assert fake_llm["kinds"] == ["synonyms"]
    assert widget.vocab_panel.editor.toPlainText() == VOCAB  # unchanged
    assert "Cancelled" in widget.status_label.text()


# superqt's GeneratorWorker swallows a RuntimeError (LLMError is one) with a RuntimeWarning
# and never finishes: the suite's "warnings are errors" turned it into an error; users'
# napari does not, so neither does this test (see plugin/widget/workers.py)
@pytest.mark.filterwarnings("default::RuntimeWarning")
def test_llm_error_is_notified(widget, fake_llm, qtbot):
    fake_llm["fail"] = "cannot reach http://localhost:11434/v1 (connection refused): start Ollama"
    widget.vocab_panel.generate_btns["definitions"].click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=5000)
    assert any("connection refused" in m and "definitions" in m for m in _errors())
    assert not any("aborted thread" in m for m in _errors())
    assert "connection refused" in widget.status_label.text()
    assert widget.vocab_panel.editor.toPlainText() == VOCAB


def test_llm_settings_error_is_notified(widget, monkeypatch):
    llm = pytest.importorskip("napari_itaclip.llm")

    def bad(cls, **kw):
        raise llm.LLMError("NAPARI_ITACLIP_LLM_URL is not a URL")

    monkeypatch.setattr(llm.LLMSettings, "from_env", classmethod(bad))
    widget.vocab_panel.generate_btns["synonyms"].click()
    assert not widget.busy
    assert any("is not a URL" in m for m in _errors())


def test_missing_llm_module_degrades(widget, monkeypatch):
    monkeypatch.setitem(sys.modules, "napari_itaclip.llm", None)
    widget.vocab_panel.generate_btns["definitions"].click()
    assert not widget.busy
    assert any("LLM helper is not available" in m for m in _errors())
    assert widget.vocab_panel.editor.toPlainText() == VOCAB


def _run(widget, qtbot):
    """Click Run on a small image (recording the user's edits is the first thing it does)."""
    widget.run_btn.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=30000)


@pytest.fixture
def runnable(widget, tiny_segmenter, tiny_config):
    import numpy as np

    widget.viewer.add_image(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8),
                            name="img")
    widget.use_segmenter(tiny_segmenter)
    widget.set_config(tiny_config)
    return widget


def test_user_edits_after_a_fill_are_recorded(runnable, fake_llm, qtbot, monkeypatch):
    widget = runnable
    llm = pytest.importorskip("napari_itaclip.llm")
    recorded = []
    monkeypatch.setattr(llm, "remember_aux", lambda v, kind, settings: recorded.append((v, kind, settings)))
    widget.vocab_panel.generate_btns["definitions"].click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=5000)
    _run(widget, qtbot)
    assert recorded == []  # nothing edited yet
    text = widget.vocab_panel.editor.toPlainText().replace("a definition of dog", "a loyal pet")
    widget.set_vocabulary(text)
    _run(widget, qtbot)
    (vocab, kind, settings), = recorded
    assert vocab[2].aux == "a loyal pet" and kind == "definitions" and settings == "SETTINGS"
    _run(widget, qtbot)
    assert len(recorded) == 1  # recorded once per edit


def test_failure_to_record_edits_is_a_warning_not_lost(runnable, fake_llm, qtbot, monkeypatch):
    from napari.utils.notifications import NotificationSeverity, notification_manager

    widget = runnable

    llm = pytest.importorskip("napari_itaclip.llm")

    def broken(v, kind, settings):
        raise OSError("cache directory is read-only")

    monkeypatch.setattr(llm, "remember_aux", broken)
    widget.vocab_panel.generate_btns["definitions"].click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=5000)
    widget.set_vocabulary(widget.vocab_panel.editor.toPlainText().replace("a definition of dog",
                                                                  "a loyal pet"))
    _run(widget, qtbot)  # recording the edits fails: Run still segments
    assert widget.status_label.text().startswith("Done"), widget.status_label.text()
    warnings = [str(n.message) for n in notification_manager.records
                if n.severity == NotificationSeverity.WARNING]
    assert any("could not record the edited definitions" in m.lower()
               and "read-only" in m for m in warnings), warnings
