"""The first minute: from `streamlit run app.py` to the first candle drawn, on an empty data dir
and on a restart (same data dir, server stopped and started again), per pipeline mode.

    python benchmarks/bench_first_candle.py [--modes process,threads] [--runs 1]

Times are seconds from the moment `streamlit run` is launched:

- ``port_open``: the server accepts connections;
- ``page_loaded``: headless Chromium (opened as soon as the port is open) shows the Live page's
  title;
- ``broker_recorded``: the embedded broker's record appears in the data dir (on a restart the
  new pipeline's broker: a record newer than the launch);
- ``first_bar_stored`` / ``warmup_stored``: the store (SQLite file, read-only) holds a bar /
  the whole warm-up (1,500 bars per default symbol) more than it held at the launch;
- ``chart_drawn``: the page's candlestick chart is drawn (Plotly's cartesian layer exists).

Server-side marks (what the server did, apart from what the browser does with it), from the
frames the page's websocket receives (loopback) and from ``/proc``:

- ``pipeline_started``: the demo pipeline's child process was spawned (process mode);
- ``script_started``: the first script run began (the server's ``new_session`` message);
- ``chart_sent``: the first chart element with candles reached the page (a ``plotly_chart``
  delta whose figure has a candlestick trace); ``chart_drawn - chart_sent`` is the browser's
  own time (parsing, plotly.js, layout, drawing).

Modes: ``process`` (the default: the pipeline in one child process), ``threads`` (the
pipeline as threads of the server) and ``baseline`` (the app in ``--baseline-app``, e.g. an
export of the code before a change, in threads mode, or ``--baseline-mode process``), measured in one run. Prints ONE JSON
line with the load.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.app_server import (  # noqa: E402
    CHART, CLK_TCK, ROOT, AppServer, descendants, launch_chromium, loadavg, store_figures,
)
from pipeline.workers.runtime import DEFAULT_DEMO  # noqa: E402

WARMUP_BARS = DEFAULT_DEMO.warmup_bars * len(DEFAULT_DEMO.symbols)


def watch_store(server: AppServer, marks: dict, stop: threading.Event) -> None:
    """Record broker_recorded, first_bar_stored and warmup_stored as they happen."""
    base, _ = store_figures(server.data_dir)
    broker_file = server.data_dir / "broker.json"
    launched = time.time()
    while not stop.is_set():
        if "broker_recorded" not in marks:
            try:
                if broker_file.stat().st_mtime >= launched - 0.5:
                    marks["broker_recorded"] = server.since()
            except OSError:
                pass  # broker.json not written yet: polled again on the next tick
        n, _ = store_figures(server.data_dir)
        if n > base and "first_bar_stored" not in marks:
            marks["first_bar_stored"] = server.since()
        if n - base >= WARMUP_BARS and "warmup_stored" not in marks:
            marks["warmup_stored"] = server.since()
            return
        time.sleep(0.05)


def watch_frames(server: AppServer, marks: dict):
    """A page ``websocket`` handler noting ``script_started`` and ``chart_sent``."""
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    def on_frame(payload) -> None:
        if isinstance(payload, str) or "chart_sent" in marks:
            return
        msg = ForwardMsg()
        try:
            msg.ParseFromString(payload)
        except Exception:  # not a ForwardMsg: nothing to note
            return
        kind = msg.WhichOneof("type")
        if kind == "new_session":
            marks.setdefault("script_started", server.since())
        elif (kind == "delta" and msg.delta.HasField("new_element")
              and msg.delta.new_element.WhichOneof("type") == "plotly_chart"):
            data = json.loads(msg.delta.new_element.plotly_chart.spec).get("data") or []
            if any(t.get("type") == "candlestick" and t.get("x") for t in data):
                marks["chart_sent"] = server.since()

    return lambda ws: ws.on("framereceived", on_frame)


def pipeline_started(server: AppServer) -> float | None:
    """Seconds from the launch to the spawn of the demo pipeline's child process (its start
    time in /proc, on the same clock as ``time.monotonic`` on Linux), or None."""
    for pid in descendants(server.proc.pid):
        try:
            if b"demo_process" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            started = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        except OSError:
            continue  # ended meanwhile
        return round(started / CLK_TCK - server.t0, 2)
    return None


def one_start(data_dir: Path, mode: str, browser, app_dir: Path = ROOT) -> dict:
    server = AppServer(data_dir, mode, app_dir)
    marks: dict = {}
    stop = threading.Event()
    watcher = threading.Thread(target=watch_store, args=(server, marks, stop), daemon=True)
    watcher.start()
    try:
        marks["port_open"] = server.wait_port()
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("websocket", watch_frames(server, marks))
        page.goto(server.url, wait_until="commit", timeout=60_000)
        page.wait_for_selector("h1:has-text('Live market')", timeout=90_000)
        marks["page_loaded"] = server.since()
        page.wait_for_selector(CHART, timeout=120_000)
        marks["chart_drawn"] = server.since()
        marks["pipeline_started"] = pipeline_started(server)
        watcher.join(30)
        page.close()
    finally:
        stop.set()
        server.stop()
    order = ("port_open", "page_loaded", "broker_recorded", "first_bar_stored", "warmup_stored",
             "chart_drawn", "pipeline_started", "script_started", "chart_sent")
    return {k: marks.get(k) for k in order}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", default="process,threads",
                    help="pipeline modes of this checkout, and/or 'baseline'")
    ap.add_argument("--baseline-app", type=Path, default=None,
                    help="the app directory of the 'baseline' mode (run in threads mode), e.g. "
                         "an export of the code before a change")
    ap.add_argument("--baseline-mode", choices=("threads", "process"), default="threads",
                    help="the pipeline mode the baseline app runs in")
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    load_before = loadavg()
    results: dict[str, list] = {}
    with sync_playwright() as p:
        browser = launch_chromium(p)
        for _ in range(args.runs):
            for mode in args.modes.split(","):
                run_mode, app = (args.baseline_mode, args.baseline_app) if mode == "baseline" \
                    else (mode, ROOT)
                if app is None:
                    raise SystemExit("--baseline-app is needed for the baseline mode")
                with tempfile.TemporaryDirectory(prefix="kappalab-first-") as tmp:
                    empty = one_start(Path(tmp), run_mode, browser, app)
                    restart = one_start(Path(tmp), run_mode, browser, app)
                results.setdefault(mode, []).append({"empty": empty, "restart": restart})
        browser.close()
    summary = {mode: {kind: min(r[kind]["chart_drawn"] or 1e9 for r in runs)
                      for kind in ("empty", "restart")} for mode, runs in results.items()}
    print(json.dumps({
        "bench": "first_candle", "runs": results, "chart_drawn_best_s": summary,
        "targets_s": {"empty": 5.0, "restart": 3.0},
        "cpus": os.cpu_count(), "loadavg_1m_before": load_before, "loadavg_1m": loadavg(),
    }))


if __name__ == "__main__":
    main()
