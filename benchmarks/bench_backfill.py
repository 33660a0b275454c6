"""Backfill throughput: simulator → producer → embedded broker → indexer → SQLite.

    python benchmarks/bench_backfill.py [--bars 100000]

Prints one JSON line: produce and end-to-end rates, and time until all bars are stored.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.broker import EmbeddedBroker  # noqa: E402
from pipeline.indexer import Indexer  # noqa: E402
from pipeline.producer import Producer  # noqa: E402
from pipeline.runtime import quiet_kafka_logs  # noqa: E402
from pipeline.sources.simulator import MarketSimulator  # noqa: E402
from pipeline.store.sqlite import SqliteStore  # noqa: E402
from pipeline.worker import WorkerThread  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bars", type=int, default=100_000, help="total bars (5 symbols)")
    args = ap.parse_args()
    quiet_kafka_logs()
    with tempfile.TemporaryDirectory() as tmp:
        broker = EmbeddedBroker(Path(tmp) / "broker.json")
        info = broker.start(reuse=False)
        store = SqliteStore(Path(tmp) / "bench.sqlite")
        try:
            source = MarketSimulator(bars=args.bars // 5)
            indexer = WorkerThread(Indexer(store, info.bootstrap)).start()
            t0 = time.perf_counter()
            producer = Producer(source, info.bootstrap, live=False)
            producer.run_guarded(threading.Event())
            t_produced = time.perf_counter() - t0
            n = producer.stats()["counters"]["produced"]
            while store.count_bars() < n and time.perf_counter() - t0 < 600:
                time.sleep(0.1)
            t_stored = time.perf_counter() - t0
            indexer.stop()
            print(json.dumps({
                "benchmark": "backfill", "bars": n, "store": "sqlite",
                "broker": "embedded tansu", "produce_s": round(t_produced, 2),
                "produce_bars_per_s": round(n / t_produced),
                "all_stored_s": round(t_stored, 2),
                "end_to_end_bars_per_s": round(n / t_stored),
                "stored": store.count_bars(),
            }))
        finally:
            store.close()
            broker.stop()


if __name__ == "__main__":
    main()
