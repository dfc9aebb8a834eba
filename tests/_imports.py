"""The one import-cost check: which modules a statement loads in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

#: What ``import napari_itaclip`` (and its light parts) must not load.
HEAVY = ("torch", "open_clip", "napari", "qtpy", "PyQt6", "magicgui")


def loaded_by(statement: str, watch=HEAVY) -> list[str]:
    """Run ``statement`` in a new interpreter (this test run's ``sys.path``); return the
    modules of ``watch`` it loaded. The statement's own failure fails the test."""
    code = (f"import sys\n{statement}\n"
            f"print('\\n' + __import__('json').dumps([m for m in {list(watch)!r} "
            "if m in sys.modules]))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])
