"""Backfill throughput against the raw client ceiling, both measured in this run on one broker.

    python benchmarks/bench_backfill.py [--bars 100000] [--modes process,thread]

1. Raw ceiling: the same number of pre-encoded bar messages (the simulator's JSON) sent by a
   bare ``KafkaProducer`` (linger 50 ms, acks=all) on one thread while a bare ``KafkaConsumer``
   on another consumes them, ``json.loads`` each, ``executemany``-s them into a SQLite table
   and commits (SQLite, then the offsets): the least any pipeline on this client must do, in
   one process.
2. The pipeline as users run it: ``python -m pipeline backfill --bars N`` (simulator →
   producer → embedded broker → indexer with validation, DLQ and the offset ledger →
   SQLite store) against the same broker, once per ``--indexer`` mode: ``process`` (the
   indexer in a child process) and ``thread`` (both in one process). Its time
   is the CLI's own ``elapsed_s`` (topic check, start offsets, child start, produce, until
   every acknowledged record is stored), which leaves out only the interpreter's start.

Prints ONE JSON line: per mode the pipeline's rate, CPU seconds and ``ratio`` = pipeline /
raw end to end; the top-level ``ratio`` is the mode ``--indexer auto`` (the default) runs on
this machine (``process`` from 4 cores, else ``thread``), named in ``ratio_mode``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.workers.backfill import resolve_mode  # noqa: E402
from pipeline.workers.broker import EmbeddedBroker  # noqa: E402
from pipeline.workers.runtime import quiet_kafka_logs  # noqa: E402
from pipeline.sources.simulator import MarketSimulator  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bars", type=int, default=100_000, help="total bars (5 symbols)")
    ap.add_argument("--modes", default="process,thread",
                    help="backfill --indexer modes to measure, comma-separated")
    ap.add_argument("--rounds", type=int, default=1,
                    help="interleaved rounds (raw client, then each mode); each figure is its "
                         "best round, so a burst of load on a shared machine counts less")
    args = ap.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    quiet_kafka_logs()
    load_before = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory() as tmp:
        broker = EmbeddedBroker(Path(tmp) / "broker.json")
        info = broker.start(reuse=False)
        try:
            raws, runs = [], {m: [] for m in modes}
            for r in range(max(1, args.rounds)):
                self_cpu = resource.getrusage(resource.RUSAGE_SELF)
                raw = raw_ceiling(info.bootstrap, Path(tmp) / f"raw-{r}.sqlite", args.bars,
                                  f"raw-ceiling-{r}")
                after = resource.getrusage(resource.RUSAGE_SELF)
                raw["cpu_s"] = round(after.ru_utime + after.ru_stime
                                     - self_cpu.ru_utime - self_cpu.ru_stime, 2)
                raws.append(raw)
                for m in modes:
                    runs[m].append(cli_backfill(info.bootstrap, Path(tmp) / f"{m}-{r}",
                                                args.bars, m, f"bench-{m}-{r}"))
        finally:
            broker.stop()
    best = lambda xs: max(xs, key=lambda x: x["end_to_end_bars_per_s"])  # noqa: E731
    raw = dict(best(raws), rounds_bars_per_s=[x["end_to_end_bars_per_s"] for x in raws])
    pipes = {m: dict(best(xs), rounds_bars_per_s=[x["end_to_end_bars_per_s"] for x in xs])
             for m, xs in runs.items()}
    for pipe in pipes.values():
        pipe["ratio"] = round(pipe["end_to_end_bars_per_s"] / raw["end_to_end_bars_per_s"], 2)
        pipe["ratio_vs_raw_produce"] = round(pipe["end_to_end_bars_per_s"]
                                             / raw["produce_bars_per_s"], 2)
    default = resolve_mode("auto")  # what `backfill` runs on this machine
    headline = pipes.get(default) or next(iter(pipes.values()))
    print(json.dumps({
        "benchmark": "backfill", "bars": args.bars, "store": "sqlite", "broker": "embedded tansu",
        "measured": "python -m pipeline backfill --indexer <mode>", "pipeline": pipes,
        "raw_client": raw, "ratio": headline["ratio"], "ratio_mode": headline["mode"],
        "rounds": max(1, args.rounds),
        "cpus": os.cpu_count(), "loadavg_1m_before": load_before,
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
    }))


def cli_backfill(bootstrap: str, data_dir: Path, n: int, mode: str, topic: str) -> dict:
    """One ``python -m pipeline backfill`` run; its summary line's figures."""
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=bootstrap, KAPPALAB_DATA_DIR=str(data_dir),
               PYTHONPATH=str(ROOT))
    env.pop("ELASTICSEARCH_URL", None)
    cpu_before = _children_cpu_s()
    proc = subprocess.run([sys.executable, "-m", "pipeline", "backfill", "--bars", str(n // 5),
                           "--topic", topic, "--indexer", mode], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark: backfill --indexer {mode} failed: {proc.stderr[-2000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    if summary["stored"] != n or not summary["complete"]:
        raise SystemExit(f"benchmark: backfill --indexer {mode} stored {summary['stored']} "
                         f"of {n} bars")
    return {"mode": mode, "all_stored_s": summary["elapsed_s"],
            "end_to_end_bars_per_s": round(n / summary["elapsed_s"]),
            "stored": summary["stored"],
            # CPU of the CLI and its indexer process, interpreter start included
            "cpu_s": round(_children_cpu_s() - cpu_before, 2)}


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def raw_ceiling(bootstrap: str, db: Path, n: int, topic: str) -> dict:
    from kafka import KafkaConsumer, KafkaProducer

    stop = threading.Event()
    payloads = [(b.symbol.encode(), b.to_json())
                for b in MarketSimulator(bars=n // 5).bars(stop)]
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE bars (symbol TEXT, interval TEXT, ts INTEGER, open REAL, "
                 "high REAL, low REAL, close REAL, volume REAL, source TEXT, "
                 "PRIMARY KEY (symbol, interval, ts)) WITHOUT ROWID")
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=topic,
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


if __name__ == "__main__":
    main()
