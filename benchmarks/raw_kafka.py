"""The raw kafka-python baseline of ``bench_scorer_latency.py``: what the client itself costs.

The job is the least a consumer of the bars can do: ``poll`` + ``json.loads`` + one SQLite
insert per poll (WAL, ``synchronous=NORMAL``), with the scorer's fetch settings
(``fetch_max_wait_ms`` = :attr:`Scorer.FETCH_WAIT_MS`, up to 2,000 records a poll).

- :func:`raw_floor`: before a pipeline run, on the same broker, a thread sends a burst of
  ``len(symbols)`` simulator bars a second and a consumer thread of this process reads them.
  Its CPU is given two ways: the consuming thread alone (``thread_ms``: what the benchmark
  always reported), and that thread plus the consumer's own I/O thread (``client_ms``:
  kafka-python 3 runs its network I/O in a thread of its own, ``kafka-io-<client_id>``, so the
  consuming thread alone leaves out part of what the client costs).
- :func:`raw_beside` / :func:`raw_child`: during the measured window, the same job as an OS
  process of its own reading the pipeline's own bars topic in a group of its own, beside the
  scorer process: same bars, same moments, same machine load, and its process CPU measured
  like the scorer's (every thread of the process).
"""
from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.app_server import proc_cpu_s
from pipeline.sources.simulator import MarketSimulator
from pipeline.workers.scorer import Scorer

RAW_CLIENT_ID = "bench-raw-consumer"


def percentiles(x: np.ndarray) -> dict:
    if not len(x):
        return {"p50": None, "p95": None, "p99": None, "max": None, "n": 0}
    p50, p95, p99 = np.percentile(x, [50, 95, 99])
    return {"p50": round(float(p50), 1), "p95": round(float(p95), 1),
            "p99": round(float(p99), 1), "max": round(float(x.max()), 1), "n": int(len(x))}


def _consumer(bootstrap: str, topic: str, group: str):
    from kafka import KafkaConsumer

    return KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                         client_id=RAW_CLIENT_ID, enable_auto_commit=False,
                         auto_offset_reset="latest", max_poll_interval_ms=10_000,
                         session_timeout_ms=10_000, heartbeat_interval_ms=1_000,
                         max_poll_records=2000, fetch_max_wait_ms=Scorer.FETCH_WAIT_MS)


def _table(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE bars (symbol TEXT, ts INTEGER, close REAL, produced_ms INTEGER)")
    return conn


def _poll_once(consumer, conn) -> list[tuple]:
    """The raw job for one poll: decode, one insert, commit the offsets; the rows."""
    rows = []
    for msgs in consumer.poll(timeout_ms=100, max_records=2000).values():
        for m in msgs:
            d = json.loads(m.value)
            rows.append((d["symbol"], d["ts"], d["close"], m.timestamp))
    if rows:
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO bars VALUES (?,?,?,?)", rows)
        conn.execute("COMMIT")
        consumer.commit_async()
    return rows


def _client_threads_cpu() -> float:
    """CPU seconds of the raw consumer's own threads (its I/O thread), this process."""
    total = 0.0
    for t in threading.enumerate():
        if RAW_CLIENT_ID in t.name and t.ident is not None:
            try:
                total += time.clock_gettime(time.pthread_getcpuclockid(t.ident))
            except (OSError, ProcessLookupError):
                continue  # the thread ended between enumerate() and the read: its CPU is gone
    return total


def raw_floor(bootstrap: str, db: Path, symbols: list[str], seconds: float
              ) -> tuple[dict, float | None, float | None]:
    """kafka-python's own latency for the live feed's bursts (record timestamp → insert);
    the consuming thread's CPU ms per bar, and that plus the consumer's I/O thread."""
    from pipeline.workers.producer import make_kafka_producer

    topic = "bench-raw-floor"
    stop = threading.Event()
    producer = make_kafka_producer(bootstrap, live=True)
    producer.send(topic, key=b"warm", value=b"{}").get(30)  # the topic exists before timing
    consumer = _consumer(bootstrap, topic, topic)
    while not consumer.assignment():  # join the group before timing
        consumer.poll(timeout_ms=100)
    conn = _table(db)
    source = MarketSimulator(symbols=symbols, interval="1m", seed=11, speed=60.0, fast_bars=0)

    def produce() -> None:
        for bar in source.bars(stop):  # one burst of len(symbols) bars a second
            producer.send(topic, key=bar.symbol.encode(), value=bar.to_json())

    sender = threading.Thread(target=produce, name="bench-raw-producer")
    sender.start()
    lat: list[float] = []
    cpu0 = io0 = None
    measure_from = time.time() + 2.0  # the first bursts settle the fetch sessions
    t_end = measure_from + seconds
    try:
        while time.time() < t_end:
            rows = _poll_once(consumer, conn)
            if rows and time.time() >= measure_from:
                stored = time.time() * 1000
                if cpu0 is None:  # from the end of the first measured batch
                    cpu0, io0 = time.thread_time(), _client_threads_cpu()
                else:
                    lat.extend(stored - r[3] for r in rows)
        cpu_s = time.thread_time() - cpu0 if cpu0 is not None else None
        io_s = _client_threads_cpu() - io0 if io0 is not None else None
    finally:
        stop.set()
        sender.join(30)
        producer.close(timeout=10)
        consumer.close()
        conn.close()
    if cpu_s is None or not lat:
        return percentiles(np.asarray(lat, dtype="float64")), None, None
    return (percentiles(np.asarray(lat, dtype="float64")), round(cpu_s * 1000 / len(lat), 3),
            round((cpu_s + io_s) * 1000 / len(lat), 3))


class RawBeside:
    """The raw job as an OS process beside the scorer (:func:`raw_child`), on the same topic
    in a group of its own; :meth:`window` gives its figures over the scorer's window."""

    def __init__(self, bench: Path, bootstrap: str, topic: str, out: Path):
        self.out = out
        self.proc = subprocess.Popen([sys.executable, str(bench), "--raw-child", bootstrap,
                                      topic, str(out)], stdout=sys.stderr)
        self.cpu0 = 0.0

    def joined(self) -> bool:
        return self.out.with_suffix(".joined").exists()

    def start(self) -> None:
        self.cpu0 = proc_cpu_s(self.proc.pid)

    def cpu_s(self) -> float:
        return proc_cpu_s(self.proc.pid) - self.cpu0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(90)  # a loaded machine: it writes its figures, then closes
        except subprocess.TimeoutExpired:
            print("the raw consumer process did not stop within 90 s: killed",
                  file=sys.stderr, flush=True)
            self.proc.kill()  # by its own PID
            self.proc.wait(10)

    def window(self, t0: int, t1: int, cpu_s: float) -> dict:
        """Latency of the bars produced in ``[t0, t1)`` and process CPU per such bar."""
        try:
            rows = json.loads(self.out.read_text())
        except (OSError, ValueError):
            return {"failed": "the raw consumer process left no figures"}
        lat = np.asarray([s - p for p, s in rows if t0 <= p < t1], dtype="float64")
        return {"latency_ms": percentiles(lat),
                "cpu_ms_per_bar": round(cpu_s * 1000 / len(lat), 3) if len(lat) else None}


def raw_child(bootstrap: str, topic: str, out: str) -> int:
    """``--raw-child``: the raw job on ``topic`` until SIGTERM; then ``[produced_ms,
    stored_ms]`` of every bar read goes to ``out`` as JSON."""
    from pipeline.workers.runtime import quiet_kafka_logs

    quiet_kafka_logs()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    out_path = Path(out)
    consumer = _consumer(bootstrap, topic, "bench-raw-beside")
    while not consumer.assignment() and not stop.is_set():
        consumer.poll(timeout_ms=100)
    out_path.with_suffix(".joined").touch()
    conn = _table(out_path.with_suffix(".sqlite"))
    seen: list[tuple[int, float]] = []
    try:
        while not stop.is_set():
            rows = _poll_once(consumer, conn)
            if rows:
                stored = time.time() * 1000
                seen.extend((r[3], stored) for r in rows)
    finally:
        out_path.write_text(json.dumps(seen))  # before the close, which may take a while
        conn.close()
        consumer.close()
    return 0
