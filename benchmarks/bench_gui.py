"""GUI-thread stalls of the ITACLIP dock widget in a real napari window (Xvfb).

Drives the widget as a user does, one case per fresh child process: napari starts
first (torch is not imported before the plugin), the image layer is added, the widget
is opened as the Plugins menu does (``add_plugin_dock_widget``), Run is pressed and
the event loop runs until the outputs are complete, then 1.5 s more (deferred layer
adds and texture uploads happen after the worker ends). A 20 ms ``QTimer`` on the GUI
thread records its ticks; the longest tick-free stretch is reported for two windows:

- ``during``: from the Run click to the end of the worker thread (the moment napari's
  thread pool last went idle before the run was complete, timed by a polling thread so
  a stalled GUI thread does not delay it; if the pool was never seen busy, the moment
  ``widget.busy`` was seen False);
- ``end``: from the worker's end to 1.5 s after the run is complete (status "Done",
  outputs present, not busy; see :func:`run_state`).

A stall that straddles the worker's end is split between the two windows. Also
printed: the run's wall time (Run click to complete), the median tick gap, the
plugin's longest piece of GUI-thread work (the Run handler, each run slot of the widget
timed per call, and the output writer's turns of its own pieces; the issue's bound is
100 ms a turn) and napari's longest single call the writer made (adding or refreshing
a layer: napari's cost, which the plugin gives a turn of its own but cannot split).
Each run's progress line (and ``--json``) adds the longest gap in the 0.5 s between
opening the widget and pressing Run, the full (generation 2) garbage collections timed
with ``gc.callbacks``, and the objects the collector tracks and has frozen at the end.

The model is a tiny seeded open_clip ViT with ``short_side=64``: the ViT work is
negligible while the outputs are full size, so the figures are the widget's own
cost (reading planes, writing layers, upsampling, napari's layer adds and redraws).

    python benchmarks/bench_gui.py                                # all cases, 3 runs each
    python benchmarks/bench_gui.py --cases 512,6000 --repeat 5
    python benchmarks/bench_gui.py --cases stack4,rerun --classes 8 --json out.json
    python benchmarks/bench_gui.py --ref HEAD      # the committed package, not the work tree

Cases: ``512`` (512² grey uint8, the baseline), ``stack4`` (4 x 2048², all slices),
``6000`` (6000 x 6000), ``dask20`` ((20, 2048, 2048) dask array, one chunk per plane,
all slices), ``composite`` (a (3, 512, 512) non-RGB image: Run on channel 0, then Run
on the composite, over the first run's outputs; the second run is reported, and the
table notes whether its output layers were replaced or updated in place), ``rerun``
(4 x 2048² run twice, the second updating the layers; the second run is reported),
``tiled`` (4096², object size 64 px, the visible region in tiles), ``view3d`` (2048²,
the viewer in 3D: the heatmaps' class axis is shown as depth), ``pyramid`` (an
8192² five-level multiscale layer, object size 128 px: the widget reads its 2048² level)
and ``slide`` (a 131072² nine-level dask pyramid, object size 64 px: 65536² outputs,
larger than one napari texture; the visible region of a zoomed-in view, in tiles).

``--src DIR`` imports napari_itaclip from DIR; ``--ref REV`` measures the package as
committed at REV (``git archive`` of ``src/`` into a temporary folder). The children get
``NAPARI_ITACLIP_MEMORY_LIMIT_MB=none`` unless ``--memory-limit-mb`` says otherwise, so
that every case runs the way its name says (in memory) whatever memory the machine has
free: with less than the estimate available, the widget would segment 6000² in tiles.

Starts its own Xvfb when ``DISPLAY`` is unset. Under Xvfb OpenGL is software
(llvmpipe): adding a large layer costs far more there than on a desktop GPU. The JSON
(``--json``) holds every run's figures, the status line, the peak RSS and the times of
the worker's end and of ``busy`` turning False.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

TINY = {
    "embed_dim": 32, "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
CFG = dict(short_side=64, crop=32, stride=32, mid_layers=(2, 3), pamr_steps=0,
           image_engineering=False, pamr_dilations=(1, 2))
CLASS_NAMES = ["nucleus", "membrane", "cytoplasm", "mitochondrion", "vesicle", "nucleolus",
               "cell wall", "debris", "bacterium", "fibre"]

#: case key -> (title shown in the table, number of Runs; the last one is reported)
CASES = {
    "512": ("512² grey (baseline)", 1),
    "stack4": ("4 × 2048² stack, all slices", 1),
    "6000": ("6000 × 6000", 1),
    "10000": ("10000 × 10000 (in memory)", 1),
    "dask20": ("(20, 2048, 2048) dask, all slices", 1),
    "composite": ("512² composite replacing earlier layers", 2),
    "rerun": ("4 × 2048² re-run (in place)", 2),
    "tiled": ("4096² in tiles (object size 64 px: 2048² working, visible region)", 1),
    "view3d": ("2048² with the viewer in 3D", 1),
    "slide": ("131072² dask pyramid, object size 64 px: 65536² outputs, a zoomed-in region", 1),
    "pyramid": ("8192² multiscale (5 levels), object size 128 px: its 2048² level", 1),
}
DEFAULT_CASES = "512,stack4,6000,dask20,composite"
SOURCE = "image"  # the image layer's name; outputs are "image labels" / "image heatmaps"
TICK_MS = 20
SETTLE_S = 1.5
INCOMPLETE_S = 10.0  # "Done" shown but the outputs not as expected this long: give up


def vocabulary(n_classes: int) -> str:
    names = ["background", *CLASS_NAMES]
    names += [f"class {i}" for i in range(len(names), n_classes)]
    return "\n".join(names[:n_classes])


# -- the child: one case in one napari window -------------------------------------------
def run_state(widget, viewer, expected_shape) -> str | None:
    """Whether the run that was started is over: None (not yet), "done" or "error".

    The one place that knows what "complete" looks like; adapt it when the widget
    changes. Done = not busy, the status line starts with "Done" and both output
    layers exist with the expected shape (outputs may be written a few event-loop
    turns after the worker ends). Error = not busy and the status line shows an error
    (red span, "failed") or a cancellation.
    """
    if widget.busy:
        return None
    text = widget.status_label.text()
    if "color:#e55" in text or "failed" in text.lower() or text.startswith("Cancelled"):
        return "error"
    if not text.startswith("Done"):
        return None
    names = [layer.name for layer in viewer.layers]
    labels, heat = f"{SOURCE} labels", f"{SOURCE} heatmaps"
    if labels not in names or heat not in names:
        return None
    if tuple(viewer.layers[labels].data.shape) != tuple(expected_shape):
        return None
    return "done"


def outputs_summary(viewer) -> str:
    """The output layers found (for the report of a run that never looked complete)."""
    found = [f"{layer.name!r} {tuple(layer.data.shape)}" for layer in viewer.layers
             if layer.name.startswith(f"{SOURCE} ")]
    return "outputs: " + (", ".join(found) or "none")


def make_data(case: str):
    """The image layer's data and the shape of its outputs for ``case``."""
    import numpy as np

    def plane(h: int, w: int, z: int = 0):
        yy = np.arange(h, dtype=np.int32)[:, None]
        xx = np.arange(w, dtype=np.int32)[None, :]
        img = ((yy // 97 + xx // 61 + z) % 3) * 70 + (yy + 2 * xx + 13 * z) % 50
        noise = np.random.default_rng(z).integers(0, 30, (h, w), dtype=np.int32)
        return (img + noise).astype(np.uint8)

    if case == "512":
        return plane(512, 512), (512, 512)
    if case in ("stack4", "rerun"):
        return np.stack([plane(2048, 2048, z) for z in range(4)]), (4, 2048, 2048)
    if case == "6000":
        return plane(6000, 6000), (6000, 6000)
    if case == "10000":
        return plane(10000, 10000), (10000, 10000)
    if case == "dask20":
        import dask
        import dask.array as da

        planes = [da.from_delayed(dask.delayed(plane)(2048, 2048, z), (2048, 2048), np.uint8)
                  for z in range(20)]
        return da.stack(planes), (20, 2048, 2048)
    if case == "composite":
        return np.stack([plane(512, 512, c) for c in range(3)]), (512, 512)
    if case == "tiled":
        return plane(4096, 4096), (2048, 2048)
    if case == "view3d":
        return plane(2048, 2048), (2048, 2048)
    if case == "slide":  # lazy levels of random pixels, 1024² chunks
        import dask.array as da

        levels = [da.random.randint(0, 255, (2**k, 2**k), chunks=1024).astype(np.uint8)
                  for k in range(17, 8, -1)]
        return levels, (65536, 65536)
    if case == "pyramid":  # levels by 2x2 block means, as a pyramid writer makes them
        levels = [plane(8192, 8192)]
        while levels[-1].shape[0] > 512:
            a = levels[-1].astype(np.uint16)
            levels.append(((a[::2, ::2] + a[1::2, ::2] + a[::2, 1::2] + a[1::2, 1::2]) // 4)
                          .astype(np.uint8))
        return levels, (2048, 2048)
    raise ValueError(f"unknown case {case!r}")


def tiny_segmenter(tmp: Path):
    # the package's engine first: in a napari process (Mesa's LLVM mapped) it prepares
    # the process for torch (docs/architecture.md); torch imported first would crash
    from napari_itaclip import ITACLIPConfig, Segmenter

    # isort: split
    import open_clip
    import torch

    path = tmp / "bench_gui_tiny.json"
    path.write_text(json.dumps(TINY))
    open_clip.add_model_config(path)
    torch.manual_seed(0)
    model = open_clip.create_model(path.stem, pretrained=None).eval()
    cfg = ITACLIPConfig(**CFG)
    return Segmenter(model=model, pretrained=None, device="cpu", config=cfg), cfg


class PoolWatch:
    """Times when napari's thread pool (where its workers run) goes from busy to idle.

    A Python thread polls ``QThreadPool.globalInstance().activeThreadCount()`` every
    2 ms, so the worker's end is timed even while the GUI thread is stalled. Build it
    on the GUI thread: the global pool belongs to the thread that first asks for it,
    and superqt starts workers with a ``QTimer.singleShot`` whose receiver is the pool
    (a pool owned by the polling thread, which has no event loop, never starts them).
    """

    def __init__(self) -> None:
        import threading

        from qtpy.QtCore import QThreadPool

        self._pool = QThreadPool.globalInstance()
        self.idle_times: list[float] = []
        self.seen_active = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(1.0)

    def _poll(self) -> None:
        pool = self._pool
        active = False
        while not self._stop.is_set():
            now = pool.activeThreadCount() > 0
            if now and not active:
                self.seen_active = True
            elif active and not now:
                self.idle_times.append(time.perf_counter())
            active = now
            time.sleep(0.002)


class GCWatch:
    """Times CPython's full (generation 2) collections (``gc.callbacks``)."""

    def __init__(self) -> None:
        import gc

        self.full: list[tuple[float, float]] = []  # (start, seconds)
        self._t0 = 0.0
        gc.callbacks.insert(0, self._callback)  # first: the plugin's own callback, if
        # any, runs after "stop" is timed

    def _callback(self, phase: str, info: dict) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.full.append((self._t0, time.perf_counter() - self._t0))

    def longest_ms(self, start: float, stop: float) -> float:
        """The longest full collection that began in [start, stop] (ms; 0: none)."""
        return max([1e3 * d for t, d in self.full if start <= t <= stop], default=0.0)

    def count(self, start: float, stop: float) -> int:
        return sum(start <= t <= stop for t, _d in self.full)


GC_WATCH: GCWatch | None = None


def longest_stretch(ticks: list[float], start: float, stop: float) -> float:
    """The longest interval within [start, stop] containing no tick (seconds)."""
    points = [start, *(t for t in ticks if start < t < stop), stop]
    return max(b - a for a, b in zip(points, points[1:]))


def measured_run(app, widget, viewer, expected_shape, timeout: float) -> dict:
    """Press Run with the 20 ms heartbeat going; return the figures of this run."""
    from qtpy.QtCore import QEventLoop, Qt, QTimer

    ticks: list[float] = []
    heartbeat = QTimer()
    heartbeat.setTimerType(Qt.TimerType.PreciseTimer)
    heartbeat.setInterval(TICK_MS)
    heartbeat.timeout.connect(lambda: ticks.append(time.perf_counter()))
    watch = PoolWatch()
    st: dict = {"phase": "warm", "error": None, "note": ""}
    loop = QEventLoop()

    def step() -> None:  # on the GUI thread, every 10 ms (and whenever the loop is free)
        try:
            now = time.perf_counter()
            if st["phase"] == "warm" and now - st["t0"] > 0.5:
                st["phase"] = "running"
                st["text0"] = widget.status_label.text()
                st["t_click"] = time.perf_counter()
                widget.run_btn.click()  # the Run handler: plugin work on the GUI thread
                st["click_ms"] = 1e3 * (time.perf_counter() - st["t_click"])
                st["started"] = widget.busy or widget.status_label.text() != st["text0"]
            elif st["phase"] == "running":
                # the run has begun once busy or the status line changed (so that a
                # "Done" left from an earlier run is not taken for this one)
                st["started"] = (st["started"] or widget.busy
                                 or widget.status_label.text() != st["text0"])
                if st["started"] and "t_busy_off" not in st and not widget.busy:
                    st["t_busy_off"] = now
                state = run_state(widget, viewer, expected_shape) if st["started"] else None
                done_text = (st["started"] and not widget.busy
                             and widget.status_label.text().startswith("Done"))
                st["t_done_text"] = (st.get("t_done_text") or now) if done_text else None
                if state is not None:
                    st["phase"], st["state"], st["t_done"] = "settle", state, now
                elif done_text and now - st["t_done_text"] > INCOMPLETE_S:
                    st["phase"], st["state"], st["t_done"] = "settle", "incomplete", now
                    st["note"] = outputs_summary(viewer)
                elif now - st["t_click"] > timeout:
                    st["phase"], st["state"], st["t_done"] = "settle", "timeout", now
                    st["note"] = outputs_summary(viewer)
            elif st["phase"] == "settle" and now - st["t_done"] >= SETTLE_S:
                st["t_stop"] = now
                loop.quit()
        except Exception as exc:  # an exception in a slot would abort the process
            st["error"] = f"{type(exc).__name__}: {exc}"
            st["t_stop"] = time.perf_counter()
            loop.quit()

    poll = QTimer()
    poll.setInterval(10)
    poll.timeout.connect(step)
    watch.start()
    heartbeat.start()
    st["t0"] = time.perf_counter()
    poll.start()
    loop.exec()
    poll.stop()
    heartbeat.stop()
    watch.stop()
    if st["error"]:
        raise RuntimeError(st["error"])

    t_click, t_done, t_stop = st["t_click"], st["t_done"], st["t_stop"]
    ends = [t for t in watch.idle_times if t_click < t <= t_done]
    if ends:
        t_split, split = ends[-1], "thread pool idle"
    else:
        t_split, split = st.get("t_busy_off", t_done), "busy seen False"
    gaps = [b - a for a, b in zip(ticks, ticks[1:]) if t_click < b <= t_stop]
    status = re.sub(r"<[^>]+>", "", widget.status_label.text())
    return {
        "state": st["state"],
        "status": f"{status} ({st['note']})" if st["note"] else status,
        "wall_s": t_done - t_click,
        "worker_s": t_split - t_click,
        "busy_off_s": st.get("t_busy_off", t_done) - t_click,
        "before_ms": 1e3 * longest_stretch(ticks, ticks[0], t_click) if ticks else 0.0,
        "during_ms": 1e3 * longest_stretch(ticks, t_click, t_split),
        "end_ms": 1e3 * longest_stretch(ticks, t_split, t_stop),
        "median_ms": 1e3 * statistics.median(gaps) if gaps else float("nan"),
        "n_ticks": len(gaps),
        "split": split,
        "click_ms": st.get("click_ms", float("nan")),
        "gc_full_during_ms": GC_WATCH.longest_ms(t_click, t_split) if GC_WATCH else None,
        "gc_full_end_ms": GC_WATCH.longest_ms(t_split, t_stop) if GC_WATCH else None,
        "gc_full_n": GC_WATCH.count(t_click, t_stop) if GC_WATCH else None,
    }


#: the widget's slots that run on the GUI thread during a run (timed per call)
SLOTS = ("_on_returned", "_on_progress", "_on_errored", "_on_aborted", "_on_finished",
         "_applied", "_run_ended")


def time_slots(widget, longest: dict) -> None:
    """Wrap the widget's run slots so that each records its longest call (ms)."""
    def timed(name, fn):
        def call(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                ms = 1e3 * (time.perf_counter() - t)
                longest[name] = max(longest.get(name, 0.0), ms)
        return call

    for name in SLOTS:
        if hasattr(widget, name):  # looked up when a run starts: the wrapper is used
            setattr(widget, name, timed(name, getattr(widget, name)))


def child(case: str, report_path: str, n_classes: int, timeout: float) -> int:
    import faulthandler
    import resource

    global GC_WATCH
    deadline = time.monotonic() + timeout - 30  # napari's start-up and the report
    faulthandler.enable()
    GC_WATCH = GCWatch()
    report: dict = {"case": case, "notes": []}
    try:
        import napari
        from qtpy.QtWidgets import QApplication

        data, expected_shape = make_data(case)
        viewer = napari.Viewer(show=True)
        viewer.window._qt_window.resize(1500, 950)
        viewer.add_image(data, name=SOURCE, rgb=False, multiscale=case in ("pyramid", "slide"))
        app = QApplication.instance()
        if case == "view3d":  # the 3D button, before the widget opens
            viewer.dims.ndisplay = 3
        for _ in range(20):
            app.processEvents()
            time.sleep(0.02)
        report["torch_before_plugin"] = "torch" in sys.modules
        _dock, widget = viewer.window.add_plugin_dock_widget("napari-itaclip",
                                                              "ITACLIP segmentation")
        report["package"] = str(Path(sys.modules["napari_itaclip"].__file__).parent)
        with tempfile.TemporaryDirectory(prefix="itaclip-bench-gui-") as tmp:
            seg, cfg = tiny_segmenter(Path(tmp))
        widget.use_segmenter(seg)
        widget.set_config(cfg)
        widget.set_vocabulary(vocabulary(n_classes))
        panel = widget.image_panel
        if case in ("stack4", "rerun", "dask20"):
            panel.slices_combo.setCurrentText("all slices")
        if case == "composite":
            set_channel(panel, report["notes"])
        if case == "tiled":  # the whole image is in view: every tile, one after the other
            widget.scale_panel.set_object_size_px(64)
            widget.scale_panel.visible_only.setChecked(True)
        if case == "pyramid":  # factor 4: read at the 2048² level, in memory
            widget.scale_panel.set_object_size_px(128)
        if case == "slide":  # factor 2 (65536² outputs); about 4096 level-0 px in view
            widget.scale_panel.set_object_size_px(64)
            widget.scale_panel.visible_only.setChecked(True)
            viewer.camera.center = (2**16, 2**16)
            viewer.camera.zoom = 1500 / 4096
        app.processEvents()
        slot_ms: dict = {}
        time_slots(widget, slot_ms)
        runs = []
        n_runs = CASES[case][1]
        for i in range(n_runs):
            if case == "composite" and i == 1:
                panel.channel_combo.setCurrentIndex(panel.channel_combo.findData("composite"))
                app.processEvents()
            before = [id(viewer.layers[n]) if n in viewer.layers else None
                      for n in (f"{SOURCE} labels", f"{SOURCE} heatmaps")]
            slot_ms.clear()
            left = (deadline - time.monotonic()) / (n_runs - i)
            run = measured_run(app, widget, viewer, expected_shape, timeout=max(left, 10.0))
            after = [id(viewer.layers[n]) if n in viewer.layers else None
                     for n in (f"{SOURCE} labels", f"{SOURCE} heatmaps")]
            run["layers_replaced"] = [b is not None and a != b for a, b in zip(after, before)]
            applier = getattr(widget, "applier", None)  # the incremental writer, where present
            if hasattr(applier, "longest_turn_s"):
                run["applier_longest_turn_ms"] = 1e3 * applier.longest_turn_s
            own = [run["click_ms"], *slot_ms.values()]
            if hasattr(applier, "longest_own_turn_s"):
                own.append(1e3 * applier.longest_own_turn_s)
                run["napari_call_ms"] = 1e3 * applier.longest_napari_turn_s
            run["plugin_ms"] = max(own)
            run["slot_ms"] = dict(slot_ms)
            if i == n_runs - 1 and any(b is not None for b in before):
                report["notes"].append("outputs " + ("replaced" if any(run["layers_replaced"])
                                                     else "updated in place"))
            runs.append(run)
        report["runs"] = runs
        report.update(runs[-1])
        import gc

        report["gc_frozen"] = gc.get_freeze_count()
        report["gc_tracked"] = len(gc.get_objects())
        report["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    except BaseException as exc:  # reported in the table, never a crash of the whole run
        report["error"] = f"{type(exc).__name__}: {exc}"
        report["traceback"] = traceback.format_exc()
    Path(report_path).write_text(json.dumps(report))
    sys.stdout.flush()
    os._exit(0)  # skip napari's teardown: the report is written


def set_channel(panel, notes: list[str]) -> None:
    """Channel axis 0, channel 0 in the image panel (the composite case's first run)."""
    axis = panel.channel_axis_combo
    if axis.findData(0) < 0 and hasattr(panel, "_on_layer"):
        # seen with the widget at commit 0d4b6ef: opened with the layer already in the
        # viewer, its channel-axis list stays empty until the layer is picked again
        notes.append("channel-axis list empty when the widget opened; refilled via "
                     "ImagePanel._on_layer")
        panel._on_layer(panel.layer)
    if axis.findData(0) < 0:
        raise RuntimeError("the channel-axis list offers no axis 0: "
                           f"{[axis.itemText(i) for i in range(axis.count())]}")
    axis.setCurrentIndex(axis.findData(0))
    panel.channel_combo.setCurrentIndex(panel.channel_combo.findData(0))


# -- the parent: children, Xvfb and the table ----------------------------------------
def start_xvfb():
    """Start Xvfb on a free display; return (process, ":N")."""
    r, w = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-screen", "0", "1920x1080x24",
                             "-nolisten", "tcp"], pass_fds=(w,), stderr=subprocess.DEVNULL)
    os.close(w)
    with os.fdopen(r) as fh:
        number = fh.readline().strip()
    if not number:
        proc.kill()
        raise RuntimeError("Xvfb did not start")
    return proc, f":{number}"


def export_src(ref: str, dest: Path) -> str:
    """``git archive`` the repository's ``src/`` at ``ref`` into ``dest``; return its src."""
    repo = Path(__file__).resolve().parent.parent
    archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", ref, "src"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return str(dest / "src")


def run_child(case: str, n_classes: int, timeout: float, env: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="itaclip-bench-gui-") as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", case,
               "--report", str(report), "--classes", str(n_classes), "--timeout", str(timeout)]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=env, timeout=timeout, capture_output=True, text=True)
        except subprocess.TimeoutExpired:
            return {"case": case, "error": f"child timed out after {timeout:.0f} s"}
        if not report.exists():
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
            return {"case": case, "error": f"child exited {proc.returncode} without a report: "
                                           + " | ".join(tail)}
        out = json.loads(report.read_text())
        out["child_s"] = time.perf_counter() - t0
        return out


def fmt_ms(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} / {max(values):.0f}"


def table(results: dict[str, list[dict]], n_classes: int) -> str:
    lines = [
        f"GUI-thread stalls, {TICK_MS} ms QTimer, {n_classes} classes (median / max over runs)",
        "",
        "| case | runs | wall s | worker s | longest gap during run, ms | longest gap at end, ms "
        "| median gap, ms | plugin's longest turn, ms | napari's longest call, ms "
        "| longest full GC, ms | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case, runs in results.items():
        ok = [r for r in runs if "error" not in r and r.get("state") == "done"]
        bad = [r for r in runs if r not in ok]
        notes = sorted({n for r in runs for n in r.get("notes", [])})
        if ok:
            status = ok[-1]["status"]
            status = status if len(status) <= 60 else status[:57] + "..."
            row = [CASES[case][0], f"{len(ok)}/{len(runs)}",
                   f"{statistics.median(r['wall_s'] for r in ok):.2f}",
                   f"{statistics.median(r['worker_s'] for r in ok):.2f}",
                   fmt_ms([r["during_ms"] for r in ok]), fmt_ms([r["end_ms"] for r in ok]),
                   f"{statistics.median(r['median_ms'] for r in ok):.1f}",
                   fmt_ms([r.get("plugin_ms", float("nan")) for r in ok]),
                   fmt_ms([r.get("napari_call_ms", float("nan")) for r in ok]),
                   fmt_ms([max(r.get("gc_full_during_ms") or 0, r.get("gc_full_end_ms") or 0)
                           for r in ok]), status]
        else:
            row = [CASES[case][0], f"0/{len(runs)}", "-", "-", "-", "-", "-", "-", "-", "-", ""]
        if bad:
            err = bad[0].get("error") or f"{bad[0].get('state')}: {bad[0].get('status', '')}"
            row[-1] = (row[-1] + " " if row[-1] else "") + f"**failed** ({len(bad)}x): {err[:200]}"
        if notes:
            row[-1] += " [" + "; ".join(notes) + "]"
        lines.append("| " + " | ".join(s.replace("|", "/") for s in row) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=DEFAULT_CASES,
                   help=f"comma-separated, of {','.join(CASES)} (default {DEFAULT_CASES})")
    p.add_argument("--repeat", type=int, default=3, help="fresh child processes per case")
    p.add_argument("--classes", type=int, default=3, help="vocabulary size (background included)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per child")
    p.add_argument("--memory-limit-mb", default="none",
                   help="NAPARI_ITACLIP_MEMORY_LIMIT_MB for the children (default 'none': no "
                        "check, every case in memory as named; 'env': leave as is)")
    p.add_argument("--src", default=None,
                   help="import napari_itaclip from this source folder (put first on PYTHONPATH)")
    p.add_argument("--ref", default=None,
                   help="measure the package as committed at this git revision (e.g. HEAD): "
                        "'git archive' of its src/ into a temporary folder, used as --src")
    p.add_argument("--json", default=None, help="also write every run's figures to this file")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--report", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args.child, args.report, args.classes, args.timeout)

    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        p.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    if not 2 <= args.classes <= 1000:
        p.error("--classes must be in 2..1000")
    env = dict(os.environ)
    tmp_src = None
    if args.ref:
        tmp_src = tempfile.TemporaryDirectory(prefix="itaclip-bench-gui-src-")
        args.src = export_src(args.ref, Path(tmp_src.name))
    if args.src:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(Path(args.src).resolve()), *filter(None, [env.get("PYTHONPATH")])])
    if args.memory_limit_mb != "env":
        env["NAPARI_ITACLIP_MEMORY_LIMIT_MB"] = args.memory_limit_mb
    xvfb = None
    if not env.get("DISPLAY"):
        xvfb, env["DISPLAY"] = start_xvfb()
        print(f"started Xvfb on {env['DISPLAY']}", file=sys.stderr)
    results: dict[str, list[dict]] = {}
    try:
        for case in cases:
            for i in range(args.repeat):
                r = run_child(case, args.classes, args.timeout, env)
                results.setdefault(case, []).append(r)
                msg = r.get("error") or (f"{r['state']}: wall {r['wall_s']:.2f} s, before Run "
                                         f"{r.get('before_ms', 0):.0f} ms, during "
                                         f"{r['during_ms']:.0f} ms, end {r['end_ms']:.0f} ms, "
                                         f"peak RSS {r['peak_rss_gb']:.1f} GB, full GCs "
                                         f"{r.get('gc_full_n')} (longest during "
                                         f"{r.get('gc_full_during_ms') or 0:.0f}, end "
                                         f"{r.get('gc_full_end_ms') or 0:.0f} ms), frozen "
                                         f"{r.get('gc_frozen')}, tracked {r.get('gc_tracked')}")
                print(f"[{case} {i + 1}/{args.repeat}] {msg}", file=sys.stderr, flush=True)
    finally:
        if xvfb is not None:
            xvfb.terminate()
            xvfb.wait(10)
        if tmp_src is not None:
            tmp_src.cleanup()
    packages = sorted({r["package"] for rs in results.values() for r in rs if "package" in r})
    print(f"napari_itaclip from {', '.join(packages) or '?'}"
          + (f" (git {args.ref})" if args.ref else ""))
    print(table(results, args.classes))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
