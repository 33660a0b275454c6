"""Backfill throughput against the raw client ceiling, both measured in this run on one broker.

    python benchmarks/bench_backfill.py [--bars 100000]

1. Raw ceiling: the same number of pre-encoded bar messages (the simulator's JSON) sent by a
   bare ``KafkaProducer`` (linger 50 ms, acks=all) on one thread while a bare ``KafkaConsumer``
   on another consumes them, ``json.loads`` each, ``executemany``-s them into a SQLite table
   and commits (SQLite, then the offsets): the least any pipeline on this client must do.
2. The pipeline: simulator → :class:`~pipeline.producer.Producer` → embedded broker →
   :class:`~pipeline.indexer.Indexer` (validation, DLQ, idempotent upserts) → SQLite store.

Prints ONE JSON line: both rates, end to end (first send → last bar stored) and produce-only,
and ``ratio`` = pipeline end to end / raw end to end (also ``ratio_vs_raw_produce``).
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
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
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bars", type=int, default=100_000, help="total bars (5 symbols)")
    args = ap.parse_args()
    quiet_kafka_logs()
    with tempfile.TemporaryDirectory() as tmp:
        broker = EmbeddedBroker(Path(tmp) / "broker.json")
        info = broker.start(reuse=False)
        try:
            raw = raw_ceiling(info.bootstrap, Path(tmp) / "raw.sqlite", args.bars)
            pipe = pipeline(info.bootstrap, Path(tmp) / "bench.sqlite", args.bars)
        finally:
            broker.stop()
    print(json.dumps({
        "benchmark": "backfill", "bars": args.bars, "store": "sqlite", "broker": "embedded tansu",
        "pipeline": pipe, "raw_client": raw,
        "ratio": round(pipe["end_to_end_bars_per_s"] / raw["end_to_end_bars_per_s"], 2),
        "ratio_vs_raw_produce": round(pipe["end_to_end_bars_per_s"] / raw["produce_bars_per_s"],
                                      2),
        "cpus": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2),
    }))


def raw_ceiling(bootstrap: str, db: Path, n: int) -> dict:
    from kafka import KafkaConsumer, KafkaProducer

    topic = "raw-ceiling"
    stop = threading.Event()
    payloads = [(b.symbol.encode(), b.to_json())
                for b in MarketSimulator(bars=n // 5).bars(stop)]
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE bars (symbol TEXT, interval TEXT, ts INTEGER, open REAL, "
                 "high REAL, low REAL, close REAL, volume REAL, source TEXT, "
                 "PRIMARY KEY (symbol, interval, ts)) WITHOUT ROWID")
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id="raw-ceiling",
                             enable_auto_commit=False, auto_offset_reset="earliest",
                             max_poll_interval_ms=10_000, session_timeout_ms=10_000,
                             heartbeat_interval_ms=1_000, max_poll_records=5000,
                             fetch_max_wait_ms=200)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=50,
                             batch_size=512_000)
    producer.send(topic, key=b"warm", value=b"{}").get(30)  # topic exists before timing
    while not consumer.assignment():  # join the group before timing
        consumer.poll(timeout_ms=100)
    stored = [1]  # the warm-up message counts as consumed below
    timing: dict[str, float] = {}

    def consume() -> None:
        cols = ("symbol", "interval", "ts", "open", "high", "low", "close", "volume", "source")
        while stored[0] < n + 1:
            batch = consumer.poll(timeout_ms=200)
            rows = []
            for msgs in batch.values():
                for m in msgs:
                    d = json.loads(m.value)
                    if d:
                        rows.append(tuple(d[c] for c in cols))
                stored[0] += len(msgs)
            if rows:
                conn.execute("BEGIN")
                conn.executemany("INSERT OR REPLACE INTO bars VALUES (?,?,?,?,?,?,?,?,?)", rows)
                conn.execute("COMMIT")
            if batch:
                consumer.commit()

    consumer_thread = threading.Thread(target=consume)
    t0 = time.perf_counter()
    consumer_thread.start()
    for key, value in payloads:
        producer.send(topic, key=key, value=value)
    producer.flush()
    timing["produce_s"] = time.perf_counter() - t0
    consumer_thread.join(600)
    timing["stored_s"] = time.perf_counter() - t0
    rows = conn.execute("SELECT COUNT(*) FROM bars").fetchone()[0]
    if rows != n:
        raise SystemExit(f"benchmark: the raw consumer stored {rows} of {n} bars")
    producer.close()
    consumer.close()
    conn.close()
    return {"produce_s": round(timing["produce_s"], 2),
            "produce_bars_per_s": round(n / timing["produce_s"]),
            "all_stored_s": round(timing["stored_s"], 2),
            "end_to_end_bars_per_s": round(n / timing["stored_s"])}


def pipeline(bootstrap: str, db: Path, n_bars: int) -> dict:
    store = SqliteStore(db)
    try:
        source = MarketSimulator(bars=n_bars // 5)
        indexer = WorkerThread(Indexer(store, bootstrap)).start()
        time.sleep(3.0)  # let the indexer join its group, as the raw consumer did
        t0 = time.perf_counter()
        producer = Producer(source, bootstrap, live=False)
        producer.run_guarded(threading.Event())
        t_produced = time.perf_counter() - t0
        n = producer.stats()["counters"]["produced"]
        while store.count_bars() < n and time.perf_counter() - t0 < 600:
            time.sleep(0.1)
        t_stored = time.perf_counter() - t0
        indexer.stop()
        return {"produce_s": round(t_produced, 2), "produce_bars_per_s": round(n / t_produced),
                "all_stored_s": round(t_stored, 2),
                "end_to_end_bars_per_s": round(n / t_stored), "stored": store.count_bars()}
    finally:
        store.close()


if __name__ == "__main__":
    main()
