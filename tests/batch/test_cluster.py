"""Chunked mode on schedulers that serialise the tasks: a real cluster, processes, pickling.

A real ``dask scheduler`` and ``dask worker --nworkers 2`` are started as separate
processes (as a user starts them), so the task graph really travels over TCP; an
in-process ``LocalCluster(processes=False)`` never serialises it.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import Executor, Future
from pathlib import Path

import numpy as np
import pytest

import napari_itaclip
from napari_itaclip.cli import main

pytest.importorskip("dask")
zarr = pytest.importorskip("zarr")
tifffile = pytest.importorskip("tifffile")

VOCAB = "sky, grass, road"


def _image(h=90, w=100, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    base = np.stack([(yy * 3) % 256, (xx * 5) % 256, ((yy + xx) * 2) % 256], -1)
    base[(yy // 23 + xx // 19) % 3 == 0] //= 3
    return np.clip(base + rng.integers(0, 40, base.shape), 0, 255).astype(np.uint8)


def _reference(tiny_model_json, tiny_checkpoint, tiny_config, img):
    from napari_itaclip import Segmenter

    return Segmenter(model=str(tiny_model_json), pretrained=str(tiny_checkpoint), device="cpu",
                     config=tiny_config).segment(img, VOCAB)


def _spec(tiny_model_json, tiny_checkpoint, tiny_config):
    from napari_itaclip.chunked import SegmenterSpec

    return SegmenterSpec(model=str(tiny_model_json), pretrained=str(tiny_checkpoint),
                         device="cpu", config=tiny_config)


class PicklingExecutor(Executor):
    """Runs each call in this thread after a round trip through plain :mod:`pickle`.

    Stands in for a process pool or a cluster (which must pickle what they run) at no
    start-up cost; it records the types that travelled.
    """

    def __init__(self):
        self.sent: list[str] = []

    def submit(self, fn, /, *args, **kwargs):
        fn2, args2, kwargs2 = pickle.loads(pickle.dumps((fn, args, kwargs)))
        self.sent.extend(type(a).__module__.split(".")[0] for a in args)
        fut = Future()
        try:
            fut.set_result(fn2(*args2, **kwargs2))
        except Exception as exc:  # pragma: no cover - surfaced by fut.result()
            fut.set_exception(exc)
        return fut


def test_pool_tasks_are_plain_picklable_functions(tiny_model_json, tiny_checkpoint,
                                                  tiny_config, tmp_path):
    """What a pool or a cluster gets pickles with plain pickle and holds no dask object."""
    import dask.array as da

    from napari_itaclip.chunked import open_outputs, segment_chunked

    img = _image()
    src = zarr.create_array(store=str(tmp_path / "in.zarr"), shape=img.shape,
                            chunks=(32, 32, 3), dtype=np.uint8)
    src[:] = img
    labels, sim = open_outputs(tmp_path / "l.zarr", tmp_path / "s.zarr", (), img.shape[:2], 3,
                               32)
    pool = PicklingExecutor()
    seen = []
    plan = segment_chunked(da.from_zarr(src), VOCAB, labels, sim,
                           segmenter=_spec(tiny_model_json, tiny_checkpoint, tiny_config),
                           config=tiny_config, chunk=32, scheduler=pool, num_workers=2,
                           progress=lambda d, t: seen.append((d, t)))
    assert len(plan) == 12 and seen[-1] == (12, 12)
    assert "dask" not in pool.sent and "zarr" not in pool.sent
    ref = _reference(tiny_model_json, tiny_checkpoint, tiny_config, img)
    np.testing.assert_array_equal(labels[:], ref.labels)
    np.testing.assert_allclose(sim[:], ref.similarity, atol=1e-5)


# ---------------------------------------------------------------- a real cluster
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dask_command(sub: str) -> list[str]:
    exe = Path(sys.executable).with_name("dask")
    if exe.exists():
        return [str(exe), sub]
    return [sys.executable, "-m", f"distributed.cli.dask_{sub}"]  # pragma: no cover


def _stop(proc: subprocess.Popen) -> None:
    """Stop one process this test started (its own process group), by its PID."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:  # pragma: no cover
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture
def real_cluster(tmp_path):
    """``tcp://127.0.0.1:P`` of a scheduler and a 2-process worker started as subprocesses."""
    distributed = pytest.importorskip("distributed")
    src = str(Path(napari_itaclip.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = []
    logs = []
    try:
        for name, args in (("scheduler", ["--host", "127.0.0.1", "--port", str(port),
                                          "--no-dashboard"]),
                           ("worker", [address, "--nworkers", "2", "--nthreads", "1",
                                       "--no-dashboard"])):
            log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - closed below
            logs.append(log)
            procs.append(subprocess.Popen(_dask_command(name) + args, env=env, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True))
            if name == "scheduler":
                _wait_for_port(port, procs[0])
        with distributed.Client(address, set_as_default=False, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for proc in reversed(procs):
            _stop(proc)
        for log in logs:
            log.close()


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, "the dask scheduler exited"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"no dask scheduler on port {port}")  # pragma: no cover


def test_real_cluster_cli_equals_in_memory(real_cluster, tmp_path, tiny_model_json,
                                           tiny_checkpoint, tiny_config, model_args):
    img = _image()
    tifffile.imwrite(tmp_path / "big.tif", img)
    out = tmp_path / "out"
    rc = main(["segment", str(tmp_path / "big.tif"), "--vocab", VOCAB, "--out", str(out),
               "--chunk-size", "32", "--scheduler", real_cluster, *model_args])
    assert rc == 0
    ref = _reference(tiny_model_json, tiny_checkpoint, tiny_config, img)
    np.testing.assert_array_equal(zarr.open_array(str(out / "big_labels.zarr"))[:], ref.labels)
    np.testing.assert_allclose(zarr.open_array(str(out / "big_similarity.zarr"))[:],
                               ref.similarity, atol=1e-5)
    assert len(np.unique(ref.labels)) > 1
    assert (out / "big.json").exists()


@pytest.mark.slow
def test_processes_scheduler_equals_in_memory(tmp_path, tiny_model_json, tiny_checkpoint,
                                              tiny_config):
    from napari_itaclip.chunked import open_outputs, segment_chunked

    img = _image(70, 64)
    labels, sim = open_outputs(tmp_path / "l.zarr", tmp_path / "s.zarr", (), img.shape[:2], 3,
                               32)
    segment_chunked(img, VOCAB, labels, sim,
                    segmenter=_spec(tiny_model_json, tiny_checkpoint, tiny_config),
                    config=tiny_config, chunk=32, scheduler="processes", num_workers=2)
    ref = _reference(tiny_model_json, tiny_checkpoint, tiny_config, img)
    np.testing.assert_array_equal(labels[:], ref.labels)
    np.testing.assert_allclose(sim[:], ref.similarity, atol=1e-5)


# ------------------------------------------------------ a failed input looks failed
def _failing_after(n, monkeypatch):
    from napari_itaclip.chunked import run

    real = run.segment_region
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) > n:
            raise RuntimeError("injected chunk failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(run, "segment_region", flaky)


def test_failed_chunked_input_leaves_no_complete_looking_outputs(tmp_path, model_args,
                                                                monkeypatch):
    tifffile.imwrite(tmp_path / "big.tif", _image())
    out = tmp_path / "out"
    args = ["segment", str(tmp_path / "big.tif"), "--vocab", VOCAB, "--out", str(out),
            "--chunk-size", "32", *model_args]
    with monkeypatch.context() as m:
        _failing_after(3, m)
        assert main(args) == 1
    assert sorted(p.name for p in out.iterdir()) == []  # no outputs, no sidecar, no temporaries
    # a complete run, then a failing re-run over it: the complete outputs stay as they were
    assert main(args) == 0
    before = zarr.open_array(str(out / "big_labels.zarr"))[:]
    sidecar = (out / "big.json").read_bytes()
    with monkeypatch.context() as m:
        _failing_after(5, m)
        assert main([*args, "--overwrite"]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["big.json", "big_labels.zarr",
                                                     "big_similarity.zarr"]
    np.testing.assert_array_equal(zarr.open_array(str(out / "big_labels.zarr"))[:], before)
    assert (out / "big.json").read_bytes() == sidecar
