"""What the package changes in a process, and when (napari_itaclip._torch_setup).

``import napari_itaclip`` must leave the process as it was: another plugin's imports and
environment are never affected. Only the engine, right before the package's first torch
import, sets ``OMP_WAIT_POLICY`` (unless set) and installs the triton guard. Each check
runs in a fresh interpreter: this test session imported torch first (conftest.py).
"""

from __future__ import annotations

import ast
import ctypes.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "napari_itaclip"
#: Modules whose import loads torch.
TORCH_STACK = ("torch", "torchvision", "open_clip", "timm")


def _child(code: str, env_extra=None, drop=("OMP_WAIT_POLICY", "NAPARI_ITACLIP_ALLOW_TRITON"),
           cwd=None) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON object last."""
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env.update(env_extra or {})
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, env=env, timeout=180, cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _libllvm() -> str | None:
    found = ctypes.util.find_library("LLVM-15")
    if found:
        return found
    for folder in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64"):
        for path in sorted(Path(folder).glob("libLLVM*.so*")):
            return str(path)
    return None


def _prepares(node) -> bool:
    """Whether ``node`` prepares the process: ``from . import _torch_ready`` (the engine's
    modules) or a ``before_torch()`` call."""
    if isinstance(node, ast.ImportFrom) and any(a.name == "_torch_ready" for a in node.names):
        return True
    return isinstance(node, ast.Call) and getattr(node.func, "id", None) == "before_torch"


def _torch_imports():
    """(module, imported name, whether the process is prepared before it): prepared
    earlier in the import's own function, or earlier at its module's top level."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        scopes = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        top = [n.lineno for stmt in tree.body for n in ast.walk(stmt) if _prepares(n)
               and not any(f.lineno <= n.lineno <= f.end_lineno for f in scopes)]
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                     else [])
            for name in (n for n in names if n.split(".")[0] in TORCH_STACK):
                scope = min((f for f in scopes if f.lineno <= node.lineno <= f.end_lineno),
                            key=lambda f: f.end_lineno - f.lineno, default=None)
                prepared = any(line < node.lineno for line in top) or (
                    scope is not None and any(_prepares(c) and c.lineno < node.lineno
                                              for c in ast.walk(scope)))
                found.append((path.relative_to(SRC).as_posix(), name, prepared))
    return found


def test_every_torch_import_is_prepared_for():
    """torch loads only after before_torch(): each engine module that imports torch
    imports engine/_torch_ready.py first (at its top, or in the function), and the few
    imports of open_clip outside the engine (the LLM helper's token counting, the CLI's
    model-config look-up) call before_torch() first in their function."""
    found = _torch_imports()
    assert [(m, n) for m, n, prepared in found if not prepared] == []
    outside = {m for m, _, _ in found if not m.startswith("engine/")}
    assert outside <= {"batch.py", "llm/answers.py"}  # keep them few
    assert "before_torch()" not in (SRC / "engine" / "__init__.py").read_text(encoding="utf-8")


def test_importing_the_package_changes_nothing_in_the_process():
    rep = _child("""
        import json, os, sys
        finders = [type(f).__name__ for f in sys.meta_path]
        import napari_itaclip
        from napari_itaclip import ITACLIPConfig, Vocabulary, measure
        ITACLIPConfig.preset("balanced"), Vocabulary.parse("a, b"), napari_itaclip.__version__
        print(json.dumps({"before": finders, "after": [type(f).__name__ for f in sys.meta_path],
                          "omp": os.environ.get("OMP_WAIT_POLICY"),
                          "torch": "torch" in sys.modules}))
    """)
    assert rep["after"] == rep["before"]
    assert rep["omp"] is None
    assert rep["torch"] is False


def test_the_engines_torch_free_modules_change_nothing():
    """The widget computes its Scale line (memory model, object-size arithmetic, resize
    shapes) with the engine's torch-free modules: importing them prepares nothing."""
    rep = _child("""
        import json, os, sys
        finders = [type(f).__name__ for f in sys.meta_path]
        import napari_itaclip.engine
        from napari_itaclip.engine import memory, memory_model, resize, scale, sliding
        from napari_itaclip.plugin import sources
        before = dict(omp=os.environ.get("OMP_WAIT_POLICY"),
                      same=[type(f).__name__ for f in sys.meta_path] == finders,
                      torch="torch" in sys.modules)
        from napari_itaclip.engine import segmenter  # imports torch: prepared first
        print(json.dumps({"before": before, "omp": os.environ.get("OMP_WAIT_POLICY"),
                          "torch": "torch" in sys.modules}))
    """)
    assert rep["before"] == {"omp": None, "same": True, "torch": False}
    assert rep["omp"] == "PASSIVE" and rep["torch"] is True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the guard is Linux-only")
def test_another_plugins_imports_are_unaffected(tmp_path):
    """With Mesa's LLVM mapped (as in napari), another plugin still imports its triton and
    sees the user's environment after ``import napari_itaclip``; our engine, once loaded,
    refuses triton and sets the OpenMP policy (its own process-wide need)."""
    lib = _libllvm()
    if lib is None:
        pytest.skip("no libLLVM on this machine")
    (tmp_path / "triton").mkdir()
    (tmp_path / "triton" / "__init__.py").write_text("WHO = 'a stand-in triton'\n")
    (tmp_path / "other_plugin.py").write_text(
        "import os, json, triton\n"
        "OMP = os.environ.get('OMP_WAIT_POLICY')\nTRITON = triton.WHO\n")
    rep = _child(f"""
        import ctypes, json, os, sys
        sys.path.insert(0, {str(tmp_path)!r})
        ctypes.CDLL({lib!r})  # what napari's OpenGL canvas does on Mesa
        import napari_itaclip
        import other_plugin
        first = {{"omp": other_plugin.OMP, "triton": other_plugin.TRITON}}
        del sys.modules["triton"]
        import napari_itaclip.engine.segmenter  # the engine's torch modules load
        try:
            import triton
            refused = None
        except ImportError as exc:
            refused = type(exc).__name__
        print(json.dumps({{"other_plugin": first, "refused": refused,
                          "omp_after_engine": os.environ.get("OMP_WAIT_POLICY")}}))
    """)
    assert rep["other_plugin"] == {"omp": None, "triton": "a stand-in triton"}
    assert rep["refused"] == "TritonUnavailableError"
    assert rep["omp_after_engine"] == "PASSIVE"


@pytest.mark.parametrize("user_value", [None, "ACTIVE"])
def test_the_engine_prepares_the_process_before_torch_loads(user_value):
    """What torch sees when it loads: PASSIVE (or the user's own value) and the guard first."""
    rep = _child("""
        import importlib.abc, json, os, sys
        seen = {}

        class Spy(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" and not seen:
                    seen["omp"] = os.environ.get("OMP_WAIT_POLICY")
                    seen["finders"] = [type(f).__name__ for f in sys.meta_path]
                return None

        sys.meta_path.insert(0, Spy())
        from napari_itaclip import Segmenter
        print(json.dumps(seen))
    """, env_extra={} if user_value is None else {"OMP_WAIT_POLICY": user_value})
    assert rep["omp"] == (user_value or "PASSIVE")
    if sys.platform.startswith("linux"):
        assert "TritonGuard" in rep["finders"]


def test_torch_loaded_first_keeps_the_environment():
    """torch already loaded (by the user or another plugin): the OpenMP runtime has read its
    environment, so the engine sets nothing; the guard is still installed (triton may come)."""
    rep = _child("""
        import json, os, sys
        import torch
        import napari_itaclip.engine.segmenter
        from napari_itaclip import _triton_guard
        print(json.dumps({"omp": os.environ.get("OMP_WAIT_POLICY"),
                          "guard": _triton_guard.installed() is not None}))
    """)
    assert rep["omp"] is None
    assert rep["guard"] is sys.platform.startswith("linux")
