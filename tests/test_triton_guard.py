"""The guard that keeps triton out of a process holding Mesa's LLVM (see test_user_order.py
for the real thing, napari first, in child processes)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from napari_itaclip import _triton_guard

MAPS_WITH_MESA = """\
7f0000000000-7f0000001000 r--p 00000000 08:01 123 /usr/lib/x86_64-linux-gnu/libGLX_mesa.so.0.0.0
7f0000100000-7f0000200000 r-xp 00000000 08:01 456 /usr/lib/x86_64-linux-gnu/libLLVM-15.so.1
7f0000300000-7f0000400000 rw-p 00000000 00:00 0
"""
MAPS_WITHOUT = """\
7f0000000000-7f0000001000 r--p 00000000 08:01 123 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000300000-7f0000400000 rw-p 00000000 00:00 0 [heap]
"""


def test_foreign_llvm_reads_the_maps(tmp_path):
    mesa, plain = tmp_path / "mesa", tmp_path / "plain"
    mesa.write_text(MAPS_WITH_MESA)
    plain.write_text(MAPS_WITHOUT)
    assert _triton_guard.foreign_llvm(str(mesa)) == "/usr/lib/x86_64-linux-gnu/libLLVM-15.so.1"
    assert _triton_guard.foreign_llvm(str(plain)) is None
    assert _triton_guard.foreign_llvm(str(tmp_path / "missing")) is None


def test_guard_refuses_triton_only_while_llvm_is_mapped(tmp_path, monkeypatch):
    mesa, plain = tmp_path / "mesa", tmp_path / "plain"
    mesa.write_text(MAPS_WITH_MESA)
    plain.write_text(MAPS_WITHOUT)
    monkeypatch.delitem(sys.modules, "triton", raising=False)
    monkeypatch.delenv("NAPARI_ITACLIP_ALLOW_TRITON", raising=False)
    guard = _triton_guard.TritonGuard(str(mesa))
    assert guard.find_spec("numpy") is None  # other modules: never touched
    assert guard.find_spec("tritonclient") is None
    spec = guard.find_spec("triton")
    assert spec is not None
    with pytest.raises(_triton_guard.TritonUnavailableError, match="libLLVM-15.so.1") as info:
        spec.loader.exec_module(type(sys)("triton"))
    assert isinstance(info.value, ImportError)  # torch's `try: import triton` handles it
    assert "separate Python process" in str(info.value)
    assert guard.find_spec("triton.language") is not None
    assert _triton_guard.TritonGuard(str(plain)).find_spec("triton") is None  # no Mesa LLVM
    monkeypatch.setenv("NAPARI_ITACLIP_ALLOW_TRITON", "1")
    assert guard.find_spec("triton") is None  # switched off by the user
    monkeypatch.delenv("NAPARI_ITACLIP_ALLOW_TRITON")
    monkeypatch.setitem(sys.modules, "triton", type(sys)("triton"))
    assert guard.find_spec("triton") is None  # already loaded first: safe, step aside


def test_loading_the_engine_installs_the_guard_without_torch():
    """Installed when the engine's torch modules load, right before torch (not by
    ``import napari_itaclip`` or the engine's torch-free modules: tests/test_torch_setup.py)."""
    code = (
        "import sys, napari_itaclip\n"
        "from napari_itaclip import _triton_guard\n"
        "assert _triton_guard.installed() is None\n"
        "import napari_itaclip.engine.memory_model\n"
        "assert _triton_guard.installed() is None\n"
        "import napari_itaclip.engine._torch_ready\n"
        "g = _triton_guard.installed()\n"
        "assert (g is not None) == sys.platform.startswith('linux'), g\n"
        "assert g is None or sys.meta_path[0] is g\n"
        "assert _triton_guard.install() is g  # once\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_import_refused_in_a_process_with_llvm_mapped(tmp_path):
    """A fresh process that maps an LLVM library the way Mesa does, then imports triton."""
    import ctypes.util

    lib = ctypes.util.find_library("LLVM-15") or next(
        (str(p) for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64")
         for p in sorted(__import__("pathlib").Path(d).glob("libLLVM*.so*"))), None)
    if lib is None:
        pytest.skip("no libLLVM on this machine")
    code = (
        "import ctypes, sys, napari_itaclip.engine._torch_ready\n"
        f"ctypes.CDLL({lib!r})\n"
        "try:\n"
        "    import triton\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__)\n"
        "else:\n"
        "    print('imported')\n"
        "from torch.utils._triton import has_triton_package\n"
        "print(has_triton_package())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["TritonUnavailableError", "False"]
