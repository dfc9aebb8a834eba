"""Keep triton out of a process where it would crash: one that already holds Mesa's LLVM.

On Linux, Mesa's OpenGL drivers (llvmpipe, radeonsi, iris with LLVM) map their own
``libLLVM-*.so`` into the process as soon as napari's canvas has an OpenGL context.
Loading triton's ``libtriton.so`` (which carries another LLVM build) after that crashes
the process with SIGSEGV. torchvision imports ``torch._dynamo``, which imports triton,
and open_clip imports torchvision: so loading the model after the viewer exists used
to kill napari.

This project never uses triton (no ``torch.compile``). :func:`install` puts a small
finder in front of :data:`sys.meta_path` that answers the import of ``triton`` with an
:class:`ImportError` *only while a foreign libLLVM is mapped and triton is not yet
loaded*: torch then behaves as on a machine without triton (it checks with
``try: import triton``), and code that really needs triton gets a clear error instead
of a crash. Everywhere else (no Mesa LLVM, triton already loaded, other platforms) the
finder steps aside and imports work as usual. See docs/architecture.md.

Set ``NAPARI_ITACLIP_ALLOW_TRITON=1`` to switch the guard off.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys

from . import _env

__all__ = ["TritonUnavailableError", "foreign_llvm", "install", "installed", "uninstall"]

_BLOCKED = "triton"


class TritonUnavailableError(ImportError):
    """triton was refused because importing it here would crash the process."""


def foreign_llvm(maps_path: str = "/proc/self/maps") -> str | None:
    """Path of an LLVM shared library mapped into this process (e.g. Mesa's), or None."""
    try:
        with open(maps_path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if "libLLVM" not in line:
                    continue
                fields = line.split(None, 5)
                path = fields[5].strip() if len(fields) == 6 else ""
                if os.path.basename(path).startswith("libLLVM"):
                    return path
    except OSError:
        return None
    return None


def _message(llvm: str) -> str:
    return (
        f"triton cannot be loaded in this process: {llvm} (Mesa's OpenGL driver, loaded by "
        "napari's canvas) is already mapped, and loading triton's own LLVM beside it crashes "
        "the process (SIGSEGV). napari-itaclip therefore keeps triton out of this session; "
        "torch works without it (no torch.compile GPU kernels). To use triton, run that code "
        "in a separate Python process, or import torch/torchvision before creating the napari "
        f"viewer. Set {_env.ALLOW_TRITON}=1 to switch this guard off (at the risk of the crash)."
    )


class _RefusingLoader(importlib.abc.Loader):
    def __init__(self, message: str):
        self.message = message

    def create_module(self, spec):  # noqa: D102
        return None

    def exec_module(self, module):  # noqa: D102
        raise TritonUnavailableError(self.message, name=module.__name__)


class TritonGuard(importlib.abc.MetaPathFinder):
    """Meta-path finder refusing ``triton`` while a foreign LLVM is mapped."""

    def __init__(self, maps_path: str = "/proc/self/maps"):
        self.maps_path = maps_path
        self.refused = 0

    def find_spec(self, fullname, path=None, target=None):  # noqa: D102
        if fullname != _BLOCKED and not fullname.startswith(_BLOCKED + "."):
            return None
        if _BLOCKED in sys.modules or _env.get(_env.ALLOW_TRITON) not in ("", "0"):
            return None  # already loaded (so it came first and is safe), or switched off
        llvm = foreign_llvm(self.maps_path)
        if llvm is None:
            return None
        self.refused += 1
        return importlib.machinery.ModuleSpec(fullname, _RefusingLoader(_message(llvm)))


def installed() -> TritonGuard | None:
    """The installed guard, if any."""
    return next((f for f in sys.meta_path if isinstance(f, TritonGuard)), None)


def install() -> TritonGuard | None:
    """Put the guard first on :data:`sys.meta_path` (once; Linux only). Cheap: no I/O."""
    if not sys.platform.startswith("linux"):
        return None
    guard = installed()
    if guard is None:
        guard = TritonGuard()
        sys.meta_path.insert(0, guard)
    return guard


def uninstall() -> None:
    """Remove the guard (tests)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, TritonGuard)]
