"""A stopped indexer's lag keeps being measured (from its group's committed offsets) and grows
while the producer goes on; a restarted worker keeps its counters (per run and in total), its
throughput history, and a stopped worker says when it stopped. Real broker, real SQLite."""
from __future__ import annotations

import threading
import time

from dashboard.view_models import worker_row
from pipeline.contracts.config import load_config
from pipeline.workers.indexer import Indexer
from pipeline.workers.producer import Producer
from pipeline.workers.runtime import Runtime
from pipeline.sources.simulator import MarketSimulator


def produce(broker, topic: str, bars: int, seed: int) -> None:
    p = Producer(MarketSimulator(symbols=("ACME",), bars=bars, seed=seed), broker.bootstrap,
                 topic=topic, live=False)
    p.run_guarded(threading.Event())
    assert p.state == "finished", p.last_error


def wait_stored(rt: Runtime, n: int, timeout_s: float = 60) -> dict:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        snap = rt.local_stats()["indexer"]
        if snap["counters"]["stored"] >= n:
            return snap
        time.sleep(0.2)
    raise AssertionError(f"the indexer did not store {n} bars: {snap['counters']}")


def lag_of_stopped(rt: Runtime, expected: int, timeout_s: float = 20) -> int:
    deadline = time.time() + timeout_s
    lag = None
    while time.time() < deadline:
        lag = rt.local_stats()["indexer"]["gauges"].get("lag")
        if lag is not None and lag >= expected:
            return lag
        time.sleep(0.5)
    raise AssertionError(f"lag {lag}, expected at least {expected}")


def test_stopped_indexer_lag_grows_and_restart_keeps_counts(data_dir, monkeypatch, broker,
                                                            topics):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap)
    rt = Runtime(load_config())
    group = f"g-{topics['bars']}"

    def indexer(bootstrap):
        return Indexer(rt.store, bootstrap, topic=topics["bars"], dlq_topic=topics["dlq"],
                       group_id=group)

    try:
        rt.start_worker("indexer", indexer)
        produce(broker, topics["bars"], 300, seed=1)
        first = wait_stored(rt, 300)
        time.sleep(1.2)  # a throughput sample or two
        assert rt.stop_worker("indexer")
        stopped = rt.local_stats()["indexer"]
        row = worker_row("indexer", stopped, "thread", running=False)
        assert row["uptime"].startswith("stopped ") and row["uptime"].endswith(" UTC")
        history_before = len(stopped["history"])
        assert history_before >= 1

        # The producer goes on: the stopped indexer's lag is measured, and grows.
        # (The embedded broker's log end may trail by one batch: "at least" the older batch.)
        produce(broker, topics["bars"], 200, seed=2)
        lag1 = lag_of_stopped(rt, 1)
        produce(broker, topics["bars"], 200, seed=3)
        lag2 = lag_of_stopped(rt, lag1 + 1)
        assert lag1 < lag2 <= 400

        # Restarted: this run's count, the total over both runs, and the history goes on.
        rt.start_worker("indexer", indexer)
        snap = wait_stored(rt, 400)
        assert snap["run"] == 2
        assert snap["totals"]["stored"] == first["counters"]["stored"] + snap["counters"]["stored"]
        assert snap["totals"]["stored"] == 700
        assert len(snap["history"]) >= history_before
        row = worker_row("indexer", snap, "thread", running=True)
        assert row["stored"] == "400 (total 700)"
        assert not row["uptime"].startswith("stopped")
    finally:
        rt.shutdown()


def test_finite_import_reports_its_true_last_bar(broker, topics):
    """A backfill-speed source (a CSV import) ends between two samples of the gauge: the
    producer's "last bar" is still the newest bar it sent, not one 2,048 bars earlier."""
    source = MarketSimulator(symbols=("ACME", "GLOBX"), bars=1500, seed=5)
    p = Producer(source, broker.bootstrap, topic=topics["bars"], live=False)
    p.run_guarded(threading.Event())
    assert p.state == "finished", p.last_error
    last = max(b.ts for b in MarketSimulator(symbols=("ACME", "GLOBX"), bars=1500, seed=5)
               .bars(threading.Event()))
    snap = p.stats()
    assert snap["counters"]["produced"] == 3000
    assert snap["gauges"]["last_bar_ts"] == last
