"""Short garbage-collection pauses in a napari session that has torch loaded.

CPython's full (generation 2) collection walks every object the process tracks, holding
the GIL: napari's GUI thread stalls for its whole length. A napari window tracks about
230 k objects; torch, open_clip and (when installed) transformers add about 400 k more
that live as long as the process (modules, classes, functions). A full collection then
takes 250 to 330 ms on the project machine, and napari's layer creation allocates enough
to start one at the end of a run (docs/benchmarks.md, "GUI responsiveness").

While a widget sits in napari's window (it arms the policy when docked), this module
keeps those pauses short with :func:`gc.freeze`: at the end of every full collection,
the moment the heap holds no cyclic garbage, the survivors are moved to the permanent
generation, and later collections walk only what was created since.

What the cyclic collector would free among frozen objects stays allocated until they
are unfrozen (reference counting still frees everything else). napari layers are such
objects (they are freed by the cyclic collector only), so every layer removal thaws
(:func:`gc.unfreeze`): the next full collection walks everything once, as it would
without this module, frees the removed layer, and freezes again. Closing the viewer,
and the last widget's teardown, thaw and stop. ``NAPARI_ITACLIP_GC_FREEZE=0`` switches
all of it off. Free-threaded builds are left alone. (On CPython 3.12 the permanent
generation also holds the immortal objects that collections move there, a few hundred:
``gc.get_freeze_count()`` is not 0 there with nothing frozen, and a thaw hands them back
to the collector, which moves them again.)
"""

from __future__ import annotations

import contextlib
import gc
import sysconfig
import threading
import weakref
from dataclasses import dataclass

from .. import _env

__all__ = ["Stats", "arm", "enabled", "release", "stats", "thaw"]

_lock = threading.Lock()
_holders: weakref.WeakSet = weakref.WeakSet()  # the widgets that armed the policy


@dataclass
class Stats:
    """What the policy did in this process (for tests and benchmarks)."""

    armed: bool = False
    freezes: int = 0  # full collections followed by a freeze
    thaws: int = 0  # unfreeze calls that moved objects back


_stats = Stats()


def enabled() -> bool:
    """Whether the policy may run here (the switch, and a build with the GIL)."""
    if _env.get(_env.GC_FREEZE).lower() in ("0", "false", "no", "off"):
        return False
    return not sysconfig.get_config_var("Py_GIL_DISABLED")


def _live_holders() -> bool:
    """Whether a holder is still open (a closed one that missed :func:`release` counts not)."""
    return any(not getattr(h, "closed", False) for h in list(_holders))


def _after_collection(phase: str, info: dict) -> None:
    """``gc.callbacks`` entry: freeze the survivors of every full collection, or end the
    policy when no open holder is left.
    """
    if phase != "stop" or info.get("generation") != 2:
        return
    if _live_holders():
        gc.freeze()
        _stats.freezes += 1
    else:
        _disarm()


def _disarm() -> None:
    thaw()
    with contextlib.suppress(ValueError):
        gc.callbacks.remove(_after_collection)
    _stats.armed = False


def arm(holder: object) -> bool:
    """Start (or join) the policy on behalf of ``holder`` (a widget); whether it runs."""
    if not enabled():
        return False
    with _lock:
        _holders.add(holder)
        if not _stats.armed:
            gc.callbacks.append(_after_collection)
            _stats.armed = True
    return True


def thaw() -> None:
    """Unfreeze (something freed only by the cyclic collector may be garbage now)."""
    if _stats.armed and gc.get_freeze_count():
        gc.unfreeze()
        _stats.thaws += 1


def release(holder: object) -> None:
    """``holder`` is gone; the last one thaws and stops the policy."""
    with _lock:
        _holders.discard(holder)
        if _stats.armed and not _live_holders():
            _disarm()


def stats() -> Stats:
    """A copy of the policy's counters."""
    return Stats(_stats.armed, _stats.freezes, _stats.thaws)
