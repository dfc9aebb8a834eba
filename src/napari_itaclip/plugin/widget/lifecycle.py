"""The dock widget's start and end in napari: docking, what closes it, its teardown.

The widget is the ``ITACLIPWidget`` of dock.py (not imported: no import cycle).

napari closes a plugin widget in three ways, and only one of them closes the widget:

- the dock's X and ``remove_dock_widget`` take the widget out of its dock (a parent
  change to none: :func:`parent_changed`);
- closing the widget itself (``closeEvent``);
- closing the viewer (its window's X, File > Close Window, ``viewer.close()``) neither
  closes nor undocks it: :class:`WindowWatch` sees the window's Close event.
"""

from __future__ import annotations

import contextlib
import weakref

from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import QApplication, QMainWindow, QWidget

from .. import gc_pauses

__all__ = ["WindowWatch", "parent_changed", "soon", "teardown"]


def _no_ref() -> None:
    """A dead weak reference."""
    return None


def soon(target: QObject, method: str, ms: int = 0) -> None:
    """Call ``target.<method>()`` in ``ms`` (the next turn of the event loop), if the
    target is still alive then: the pending call holds no reference (a closed viewer's
    widget and all it references are freed by the next collection, turn or not).
    """
    ref = weakref.ref(target)

    def call() -> None:
        obj = ref()
        if obj is not None:
            with contextlib.suppress(RuntimeError):  # its Qt side was deleted
                getattr(obj, method)()

    QTimer.singleShot(ms, call)


class WindowWatch(QObject):
    """Watches the napari window a docked widget is in, and tears the widget down when
    the window closes. Until the dock is in a window, it watches the dock's topmost parent
    for the moment it gets one. Holds the widget and the window weakly: a closed viewer's
    window must not outlive it because a widget is left.
    """

    def __init__(self, widget: QWidget) -> None:
        super().__init__(widget)
        self._widget = weakref.ref(widget)
        self._watched = _no_ref  # the parent watched (the main window, in the end)
        self.window = _no_ref  # napari's main window, once found

    def follow(self) -> None:
        """Find the main window above the widget (the widget was docked or moved)."""
        widget = self._widget()
        if widget is None or widget.closed:
            return
        top = widget.parent()
        while top is not None and not isinstance(top, QMainWindow) and top.parent() is not None:
            top = top.parent()
        if top is None or top is self._watched():
            return
        self.stop()
        self._watched = weakref.ref(top)
        top.installEventFilter(self)
        if isinstance(top, QMainWindow):
            self.window = self._watched
            soon(widget.heatmaps, "prepare_text", 100)  # napari's first text, set up now

    def stop(self) -> None:
        """Watch nothing."""
        watched, self._watched, self.window = self._watched(), _no_ref, _no_ref
        if watched is not None:
            with contextlib.suppress(RuntimeError):  # deleted by Qt
                watched.removeEventFilter(self)

    def eventFilter(self, obj, e) -> bool:
        """The watched parent got a parent (look again), or the main window got a Close
        event: once napari has handled it (it may ask the user first and keep the window
        open), tear down if the window is closed.
        """
        widget = self._widget()
        if widget is None or widget.closed or obj is not self._watched():
            return False
        if e.type() == QEvent.Type.ParentChange and obj is not self.window():
            soon(self, "follow")
        elif e.type() == QEvent.Type.Close and obj is self.window():
            # the window's objects become garbage during its close: nothing may be frozen
            gc_pauses.release(widget)
            soon(self, "_after_close")
        return False

    def _after_close(self) -> None:
        widget = self._widget()
        if widget is None or widget.closed:
            return
        with contextlib.suppress(RuntimeError):  # Qt deleted the window meanwhile
            window = self.window()
            if window is not None and window.isVisible():
                if QApplication.activeModalWidget() is not None:  # napari asks the user
                    soon(self, "_after_close", 100)
                else:  # the close was refused
                    gc_pauses.arm(widget)
                return
        widget.teardown()


def parent_changed(widget: QWidget) -> None:
    """The widget got a parent (napari docked it: arm the short GC pauses, watch the
    window), or lost it: napari takes it out of its dock (``remove_dock_widget``, the
    dock's X) and drops the dock without closing the widget, so tear down.
    """
    if widget.parent() is not None:
        widget._docked = True
        gc_pauses.arm(widget)
        widget.window_watch.follow()
    elif widget._docked:
        widget.teardown()


def teardown(widget: QWidget) -> None:
    """See ``ITACLIPWidget.teardown``. What is plain Python comes first: when napari's
    window was closed, Qt may have deleted the widget's parts already.
    """
    gc_pauses.release(widget)
    worker, widget._worker = widget._worker, None
    if worker is not None:
        with contextlib.suppress(RuntimeError):
            worker.quit()  # stops at its next step; nothing it returns is applied
    with contextlib.suppress(RuntimeError):
        if widget.applier.running:
            widget.applier.finish_now()  # never leave a half-written layer behind
    widget._links.disconnect_all()
    widget.results.clear()
    widget._run = widget._plan = None
    with contextlib.suppress(RuntimeError):  # parts already deleted by Qt
        widget.window_watch.stop()
        widget.live.timer.stop()
        widget.relabeller.stop()
        widget.tiles.stop()
        widget.measure_panel.teardown()
        widget.teach.teardown()
        widget.heatmaps.set_source(None)
