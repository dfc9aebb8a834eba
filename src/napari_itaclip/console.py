"""The command line's side of a run: its usage error, its progress bar, its version record.

Shared by :mod:`napari_itaclip.cli` and the batch runner it drives
(:mod:`napari_itaclip.batch`); nothing here segments anything.
"""

from __future__ import annotations

import platform
import sys

__all__ = ["ProgressBar", "UsageError", "versions"]


class UsageError(Exception):
    """A problem with the request itself, not with one input (the CLI's exit status 2)."""


def versions() -> dict[str, str]:
    """Versions of Python and the packages that determine the numbers (for sidecars)."""
    out = {"python": platform.python_version()}
    for name in ("napari_itaclip", "torch", "open_clip", "numpy"):
        try:
            mod = __import__(name)
            out[name] = str(getattr(mod, "__version__", "unknown"))
        except ImportError:  # pragma: no cover
            out[name] = "missing"
    return out


class ProgressBar:
    """A tqdm progress bar on stderr when available and wanted; otherwise silent."""

    def __init__(self, total: int, desc: str, quiet: bool, unit: str = "image",
                 leave: bool = True):
        self._tqdm = None
        if not quiet:
            try:
                from tqdm.auto import tqdm

                self._tqdm = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr,
                                  leave=leave, dynamic_ncols=True)
            except ImportError:  # pragma: no cover
                self._tqdm = None

    def update(self, n: int = 1, status: str | None = None) -> None:
        """Advance by ``n``, showing ``status`` beside the bar."""
        if self._tqdm is not None:
            if status:
                self._tqdm.set_postfix_str(status, refresh=False)
            self._tqdm.update(n)

    def progress(self, done: int, total: int) -> None:
        """Show ``done`` of ``total`` (a ``progress(done, total)`` callback)."""
        if self._tqdm is not None:
            self._tqdm.total = total
            self._tqdm.update(done - self._tqdm.n)

    def write(self, text: str) -> None:
        """Print a line to stderr without breaking the bar."""
        if self._tqdm is not None:
            self._tqdm.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        """Finish the bar."""
        if self._tqdm is not None:
            self._tqdm.close()
