"""A classroom on one laptop: N viewers (headless Chromium pages) on the Live page of one server.

    python benchmarks/bench_classroom.py [--viewers 1,5,10,20,30] [--window 15]
        [--variants process,threads] [--baseline-app DIR [--baseline-mode process]]

For each variant (a pipeline mode of this checkout, and optionally ``baseline``: the app in
``--baseline-app``, e.g. an export of the code before a change, run the same way) it starts
one ``streamlit run app.py`` on an empty data dir, opens one session over the websocket to
start the demo, waits for the warm-up to be stored, then:

- ``idle``: the CPU of the server process and of its whole process tree (pipeline process,
  broker, retrain process) over ``--window`` seconds with no viewer (from /proc, in % of one
  core);
- for each N: opens Chromium pages on the Live page until N are open, each timed from
  ``goto`` to its candlestick chart drawn (``browser_chart_s``: the browser's render
  included, on a machine the pages share), then a websocket probe session times the server
  alone: its first run request to the chart element it sends (``server_chart_s``: the
  server-side time to a first complete render of the Live page, without a browser). After 5 s
  it measures the CPU over ``--window`` s, then reads each page's newest candle against the
  store's newest bar of the same series (``behind_bars``: in 1m bars; the demo stores one a
  second);
- ``cpu_per_viewer_pct``: (server CPU with N viewers - idle) / N (the builds every viewer
  shares included); ``cpu_per_added_viewer_pct``: (server CPU with N - with the previous
  step's viewers) / the viewers added, the cost of one more viewer; ``cpu_ms_per_refresh``:
  that extra CPU over the refreshes the N pages asked for in the window (the websocket frames
  they sent, counted by Playwright: a starved browser asks less often than the page's period,
  ``refreshes_per_viewer_s`` says how often it did).

With ``--clients protocol`` the viewers are protocol sessions instead of browsers
(``ProtocolViewer``: the first run, then each fragment's auto-reruns at its own period, with
the hashes of the elements already held, as the page's JavaScript does): the server's own cost
for N sessions without N Chromium renderers competing for the same two cores; time to chart
is then the server's (first run request → chart element received), and ``behind_bars`` the
newest candle each session received against the store.

Prints ONE JSON line with the load before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.app_server import (  # noqa: E402
    CHART, ROOT, AppServer, ProtocolViewer, chart_last_ts, launch_chromium, loadavg,
    session_first_render, store_figures,
)
from pipeline.workers.runtime import DEFAULT_DEMO  # noqa: E402

MIN = 60_000


def cpu_window(server: AppServer, seconds: float, sleep=time.sleep) -> dict:
    s0, t0, w0 = server.server_cpu_s(), server.cpu_s(), time.monotonic()
    sleep(seconds)
    s1, t1, w1 = server.server_cpu_s(), server.cpu_s(), time.monotonic()
    wall = w1 - w0
    return {"server_pct": round(100 * (s1 - s0) / wall, 1),
            "tree_pct": round(100 * (t1 - t0) / wall, 1)}


def viewer_cpu(n: int, cpu: dict, idle: dict, window: float, refreshes: int,
               previous: dict | None = None) -> dict:
    """One step's CPU figures: the server's CPU above idle per viewer and per refresh, and
    (after a first step) per viewer added since the previous step: the marginal cost of one
    more viewer, without the per-bar builds every viewer shares."""
    extra = max(0.0, cpu["server_pct"] - idle["server_pct"])
    added = None
    if previous is not None and n > previous["viewers"]:
        added = round((cpu["server_pct"] - previous["cpu"]["server_pct"])
                      / (n - previous["viewers"]), 2)
    return {"viewers": n, "cpu": cpu, "cpu_per_viewer_pct": round(extra / n, 2),
            "cpu_per_added_viewer_pct": added,
            "cpu_ms_per_refresh": (round(extra / 100 * window * 1000 / refreshes, 2)
                                   if refreshes else None),
            "refreshes_per_viewer_s": round(refreshes / n / window, 2)}


def wait_warm(server: AppServer, timeout_s: float = 120) -> float:
    want = DEFAULT_DEMO.warmup_bars * len(DEFAULT_DEMO.symbols)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if store_figures(server.data_dir)[0] >= want:
            return server.since()
        time.sleep(0.2)
    raise TimeoutError("the demo's warm-up was not stored")


def run_variant(name: str, mode: str, app_dir: Path, counts: list[int], window: float,
                refresh_s: float, browser) -> dict:
    out: dict = {"variant": name, "mode": mode, "app": str(app_dir), "steps": []}
    frames = [0]  # websocket frames the pages sent: their rerun requests

    def count_frame(_payload) -> None:
        frames[0] += 1

    with tempfile.TemporaryDirectory(prefix=f"kappalab-class-{name}-") as tmp:
        server = AppServer(Path(tmp), mode, app_dir)
        pages = []
        try:
            server.wait_port()
            session_first_render(server.port, until="script_finished")  # autostart the demo
            out["warm_s"] = wait_warm(server)
            time.sleep(5)  # the scorer's first model, the first retrain settle
            out["idle"] = cpu_window(server, window)
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            for n in counts:
                opened = []
                while len(pages) < n:
                    page = context.new_page()
                    page.on("websocket", lambda ws: ws.on("framesent", count_frame))
                    t0 = time.monotonic()
                    page.goto(server.url, wait_until="commit", timeout=120_000)
                    page.wait_for_selector(CHART, timeout=180_000)
                    opened.append(round(time.monotonic() - t0, 2))
                    pages.append(page)
                probe = round(session_first_render(server.port), 2)
                time.sleep(5)
                sent0 = frames[0]
                # Playwright delivers the pages' events (the frames counted) while it waits.
                cpu = cpu_window(server, window, lambda s: pages[0].wait_for_timeout(s * 1000))
                refreshes = frames[0] - sent0  # the pages' rerun requests in the window
                behind = []
                store_last = store_figures(server.data_dir)[1]
                for page in pages:
                    shown = chart_last_ts(page)
                    if shown is not None and store_last is not None:
                        behind.append(max(0, (store_last - shown) // MIN))
                out["steps"].append({
                    **viewer_cpu(n, cpu, out["idle"], window, refreshes,
                                 out["steps"][-1] if out["steps"] else None),
                    "refreshes_asked_per_viewer_s": round(1 / refresh_s, 2),
                    "browser_chart_s": opened,
                    "browser_chart_s_max": max(opened) if opened else None,
                    "server_chart_s": probe,
                    "behind_bars_max": max(behind) if behind else None,
                    "behind_bars_median": statistics.median(behind) if behind else None,
                    "pages_read": len(behind),
                    "loadavg_1m": loadavg(),
                })
                print(json.dumps({"progress": name, **out["steps"][-1]}), file=sys.stderr,
                      flush=True)
                if n == 20 and os.environ.get("KAPPALAB_CLASSROOM_SHOTS"):
                    shoot(pages, Path(os.environ["KAPPALAB_CLASSROOM_SHOTS"]), name)
            context.close()
        finally:
            server.stop()
    return out


def run_variant_protocol(name: str, mode: str, app_dir: Path, counts: list[int],
                         window: float) -> dict:
    """The same steps with protocol viewers (benchmarks/app_server.py ``ProtocolViewer``): the
    server's work for N sessions without N browsers competing with it for the cores."""
    out: dict = {"variant": name, "mode": mode, "app": str(app_dir), "clients": "protocol",
                 "steps": []}
    with tempfile.TemporaryDirectory(prefix=f"kappalab-class-{name}-") as tmp:
        server = AppServer(Path(tmp), mode, app_dir)
        viewers: list[ProtocolViewer] = []
        try:
            server.wait_port()
            session_first_render(server.port, until="script_finished")  # autostart the demo
            out["warm_s"] = wait_warm(server)
            time.sleep(5)
            out["idle"] = cpu_window(server, window)
            for n in counts:
                new = [ProtocolViewer(server.port).start() for _ in range(n - len(viewers))]
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline and any(
                        v.first_chart_s is None and v.error is None for v in new):
                    time.sleep(0.1)
                viewers += new
                time.sleep(3)
                reruns0 = sum(v.reruns for v in viewers)
                cpu = cpu_window(server, window)
                refreshes = sum(v.reruns for v in viewers) - reruns0
                store_last = store_figures(server.data_dir)[1]
                behind = [max(0, (store_last - v.last_candle_ts) // MIN) for v in viewers
                          if v.last_candle_ts is not None and store_last is not None]
                charts = [round(v.first_chart_s, 2) for v in new if v.first_chart_s is not None]
                out["steps"].append({
                    **viewer_cpu(n, cpu, out["idle"], window, refreshes,
                                 out["steps"][-1] if out["steps"] else None),
                    "server_chart_s_new": charts,
                    "server_chart_s_max": max(charts) if charts else None,
                    "behind_bars_max": max(behind) if behind else None,
                    "behind_bars_median": statistics.median(behind) if behind else None,
                    "sent_as_reference": sum(v.refs for v in viewers),
                    "errors": [v.error for v in viewers if v.error],
                    "loadavg_1m": loadavg(),
                })
                print(json.dumps({"progress": name, **out["steps"][-1]}), file=sys.stderr,
                      flush=True)
        finally:
            for v in viewers:
                v.stop()
            server.stop()
    return out


def shoot(pages, folder: Path, name: str) -> None:
    """Screenshots of every open page (``KAPPALAB_CLASSROOM_SHOTS``: the folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, page in enumerate(pages):
        page.screenshot(path=str(folder / f"{name}-viewer{i + 1:02d}.png"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--viewers", default="1,5,10,20,30")
    ap.add_argument("--window", type=float, default=15.0)
    ap.add_argument("--variants", default="process,threads",
                    help="pipeline modes of this checkout to run, and/or 'baseline'")
    ap.add_argument("--baseline-app", type=Path, default=None,
                    help="the app directory of the 'baseline' variant (e.g. an export of main)")
    ap.add_argument("--baseline-mode", choices=("threads", "process"), default="threads",
                    help="the pipeline mode the baseline app runs in (threads: as the app was "
                         "before the pipeline process existed)")
    ap.add_argument("--baseline-refresh", type=float, default=2.0,
                    help="the baseline Live page's refresh period (s)")
    ap.add_argument("--clients", choices=("chromium", "protocol"), default="chromium",
                    help="viewers as headless Chromium pages, or as protocol sessions (no "
                         "browser: the server's own cost, without browsers taking the cores)")
    args = ap.parse_args()
    counts = [int(v) for v in args.viewers.split(",")]
    from playwright.sync_api import sync_playwright

    from dashboard.shared_views import LIVE_REFRESH_S

    load_before = loadavg()
    results = []
    if args.clients == "protocol":
        for variant in args.variants.split(","):
            if variant == "baseline" and not args.baseline_app:
                raise SystemExit("--baseline-app is needed for the baseline variant")
            mode, app = (args.baseline_mode, args.baseline_app) if variant == "baseline" \
                else (variant, ROOT)
            results.append(run_variant_protocol(variant, mode, app, counts, args.window))
        print(json.dumps({"bench": "classroom", "clients": "protocol", "window_s": args.window,
                          "results": results, "cpus": os.cpu_count(),
                          "loadavg_1m_before": load_before, "loadavg_1m": loadavg()}))
        return
    with sync_playwright() as p:
        browser = launch_chromium(p)
        for variant in args.variants.split(","):
            if variant == "baseline":
                if not args.baseline_app:
                    raise SystemExit("--baseline-app is needed for the baseline variant")
                results.append(run_variant("baseline", args.baseline_mode, args.baseline_app,
                                           counts, args.window, args.baseline_refresh,
                                           browser))
            else:
                results.append(run_variant(variant, variant, ROOT, counts, args.window,
                                           LIVE_REFRESH_S, browser))
        browser.close()
    print(json.dumps({"bench": "classroom", "window_s": args.window, "results": results,
                      "cpus": os.cpu_count(), "loadavg_1m_before": load_before,
                      "loadavg_1m": loadavg()}))


if __name__ == "__main__":
    main()
