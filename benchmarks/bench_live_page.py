"""Live market page: the store work of one refresh, on a SQLite store of N 1-minute bars.

    python benchmarks/bench_live_page.py [--bars 1000000] [--repeat 5]

One symbol with ``--bars`` consecutive 1m bars. For each view (1m × 150, 1h × 150, 1d × 600
candles, and the whole history in ~600 candles) it times, as the page does them:

- ``first_ms``: the first paint (no cached candles);
- ``new_bar_ms``: a refresh after one new bar was stored;
- ``idle_ms``: a refresh with nothing new (the page's "last ts" checks only).

``idle_core_share`` is the idle refresh's CPU time every 2 s (the page's refresh period) as a
share of one core: the server's cost of an open Live tab that has nothing new to show.
With ``--legacy`` it times what the page did before the rework (every refresh: the OHLC query
over the whole series, and a COUNT of its bars), for before/after figures on one machine.

Prints ONE JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.contracts.schema import Bar  # noqa: E402
from pipeline.store.sqlite import SqliteStore  # noqa: E402

MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000
VIEWS = {"1m x150": (MIN, 150), "1h x150": (HOUR, 150), "1d x600": (DAY, 600)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bars", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--legacy", action="store_true",
                    help="time the page's former per-refresh queries instead")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "bench.sqlite")
        t0 = time.perf_counter()
        last_ts = fill(store, args.bars)
        fill_s = time.perf_counter() - t0
        views = {}
        for name, (bucket, n) in VIEWS.items():
            views[name], last_ts = (legacy_view if args.legacy else new_view)(
                store, bucket, n, last_ts, args.repeat)
        if not args.legacy:
            views["whole history"], last_ts = new_view(store, None, 600, last_ts, args.repeat)
        store.close()
    idle = max(v["idle_cpu_ms"] for v in views.values())
    print(json.dumps({
        "bench": "live_page", "bars": args.bars, "store": "sqlite",
        "mode": "legacy" if args.legacy else "current", "fill_s": round(fill_s, 1),
        "views": views, "idle_core_share": round(idle / 2000.0, 4),
        "cpus": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2),
    }))


def fill(store: SqliteStore, n: int) -> int:
    rng = np.random.default_rng(1)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 5e-4, n)))
    start = 1_600_000_020_000 - 1_600_000_020_000 % MIN
    chunk = 100_000
    for i in range(0, n, chunk):
        c = close[i:i + chunk]
        store.upsert_bars([Bar("ACME", "1m", start + (i + j) * MIN, float(x), float(x) * 1.001,
                               float(x) * 0.999, float(x), 1000.0, "bench")
                           for j, x in enumerate(c)])
    return start + (n - 1) * MIN


def add_bar(store: SqliteStore, last_ts: int) -> int:
    ts = last_ts + MIN
    store.upsert_bars([Bar("ACME", "1m", ts, 100.0, 100.1, 99.9, 100.0, 1000.0, "bench")])
    return ts


def new_view(store, bucket, n, last_ts, repeat):
    from dashboard.candles import CandleFeed

    feed = CandleFeed(store)

    def refresh():
        if bucket is None:
            return feed.whole_history("ACME", "1m", MIN, candles=n)[0]
        return feed.latest("ACME", "1m", bucket, n)

    first = _time(refresh)
    new, idle, idle_cpu = [], [], []
    for _ in range(repeat):
        last_ts = add_bar(store, last_ts)
        new.append(_time(refresh))
        # idle: the page's check, newest bar and newest prediction of the series
        c0 = time.process_time()
        idle.append(_time(lambda: (feed.last_ts("ACME", "1m"),
                                   store.query_predictions(symbol="ACME", interval="1m",
                                                           limit=1))))
        idle_cpu.append((time.process_time() - c0) * 1000)
    return _summary(first, new, idle, idle_cpu), last_ts


def legacy_view(store, bucket, n, last_ts, repeat):
    def refresh():
        # the former page: the OHLC query over the whole series, then a COUNT, every 2 s
        store.ohlc_buckets("ACME", "1m", bucket, limit=n)
        store.count_bars("ACME", "1m")

    first = _time(refresh)
    new, idle, idle_cpu = [], [], []
    for _ in range(repeat):
        last_ts = add_bar(store, last_ts)
        new.append(_time(refresh))
        c0 = time.process_time()
        idle.append(_time(refresh))  # it re-ran the same queries when nothing had changed
        idle_cpu.append((time.process_time() - c0) * 1000)
    return _summary(first, new, idle, idle_cpu), last_ts


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def _summary(first, new, idle, idle_cpu) -> dict:
    return {"first_ms": round(first, 1), "new_bar_ms": round(float(np.median(new)), 1),
            "new_bar_max_ms": round(max(new), 1), "idle_ms": round(float(np.median(idle)), 2),
            "idle_cpu_ms": round(float(np.median(idle_cpu)), 2)}


if __name__ == "__main__":
    main()
