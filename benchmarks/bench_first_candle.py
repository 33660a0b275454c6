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
    CHART, ROOT, AppServer, launch_chromium, loadavg, store_figures,
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


def one_start(data_dir: Path, mode: str, browser, app_dir: Path = ROOT) -> dict:
    server = AppServer(data_dir, mode, app_dir)
    marks: dict = {}
    stop = threading.Event()
    watcher = threading.Thread(target=watch_store, args=(server, marks, stop), daemon=True)
    watcher.start()
    try:
        marks["port_open"] = server.wait_port()
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server.url, wait_until="commit", timeout=60_000)
        page.wait_for_selector("h1:has-text('Live market')", timeout=90_000)
        marks["page_loaded"] = server.since()
        page.wait_for_selector(CHART, timeout=120_000)
        marks["chart_drawn"] = server.since()
        watcher.join(30)
        page.close()
    finally:
        stop.set()
        server.stop()
    order = ("port_open", "page_loaded", "broker_recorded", "first_bar_stored", "warmup_stored",
             "chart_drawn")
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
