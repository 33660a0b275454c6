"""Fundamentals features: batch as-of join vs the incremental tracker, on simulated bars and
a snapshot every ``--every`` bars per symbol.

    python benchmarks/bench_fundamentals.py [--bars 20000] [--symbols 5] [--every 390]

Prints one JSON line: bars, snapshots, batch seconds, tracker microseconds per bar, and whether
both shapes gave the same numbers.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.features.fundamentals import FUNDAMENTALS_GROUP, FundamentalsTracker, fundamentals_features  # noqa: E402
from pipeline.contracts.fundamentals import FUNDAMENTALS_COLUMNS, FundamentalsSnapshot  # noqa: E402
from pipeline.sources.simulator import MarketSimulator  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bars", type=int, default=20_000, help="bars per symbol")
    ap.add_argument("--symbols", type=int, default=5)
    ap.add_argument("--every", type=int, default=390, help="bars between snapshots")
    args = ap.parse_args()
    symbols = [f"S{i}" for i in range(args.symbols)]
    sim = MarketSimulator(symbols=symbols, bars=args.bars, seed=1)
    bars = pd.DataFrame([dataclasses.asdict(b) for b in sim.bars(threading.Event())])
    rng = np.random.default_rng(2)
    snaps = []
    for s, g in bars.groupby("symbol"):
        for ts in g["ts"].to_numpy()[:: args.every]:
            snaps.append(FundamentalsSnapshot(s, int(ts) + 30_000, "bench", "", {
                v[len("fund_"):]: float(rng.normal()) for v in FUNDAMENTALS_GROUP}))
    frame = pd.DataFrame([x.to_row() for x in snaps], columns=FUNDAMENTALS_COLUMNS)

    t0 = time.perf_counter()
    batch = fundamentals_features(bars, frame, FUNDAMENTALS_GROUP, "1m")
    batch_s = time.perf_counter() - t0

    tracker = FundamentalsTracker(FUNDAMENTALS_GROUP)
    for x in snaps:
        tracker.update_item(x)
    rows = bars.to_dict("records")
    t0 = time.perf_counter()
    out = [tracker.update(r) for r in rows]
    per_bar_us = (time.perf_counter() - t0) / len(rows) * 1e6
    inc = pd.DataFrame(out, index=bars.index)[FUNDAMENTALS_GROUP]
    same = bool(np.array_equal(batch.to_numpy(), inc.to_numpy(), equal_nan=True))
    print(json.dumps({"bench": "fundamentals", "bars": len(bars), "snapshots": len(snaps),
                      "batch_s": round(batch_s, 4), "tracker_us_per_bar": round(per_bar_us, 2),
                      "batch_equals_incremental": same}))


if __name__ == "__main__":
    main()
