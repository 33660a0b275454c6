"""End to end on real parts: simulator → producer → embedded broker (TCP) → indexer → store.

Runs against both store backends (SQLite file, and Elasticsearch through the ES-API test double).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest
from kafka import KafkaConsumer, KafkaProducer

from pipeline.workers.indexer import Indexer
from pipeline.workers.producer import Producer
from pipeline.contracts.schema import Bar
from pipeline.sources.simulator import MarketSimulator
from pipeline.workers.worker import WorkerThread

pytestmark = pytest.mark.slow


def produce(broker, topic, bars_per_symbol, symbols=("ACME", "GLOBX"), seed=3) -> list[Bar]:
    source = MarketSimulator(symbols=symbols, bars=bars_per_symbol, seed=seed)
    producer = Producer(source, broker.bootstrap, topic=topic, live=False)
    producer.run_guarded(threading.Event())
    assert producer.state == "finished", producer.last_error
    assert producer.stats()["counters"]["produced"] == bars_per_symbol * len(symbols)
    return list(MarketSimulator(symbols=symbols, bars=bars_per_symbol, seed=seed).bars(threading.Event()))


def index_until(store, broker, topics, expected: int, group: str, timeout_s: float = 60):
    worker = Indexer(store, broker.bootstrap, topic=topics["bars"], dlq_topic=topics["dlq"],
                     group_id=group)
    wt = WorkerThread(worker).start()
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if worker.stats()["counters"]["consumed"] >= expected:
            break
        time.sleep(0.2)
    assert wt.stop(), "indexer did not stop"
    return worker


def stored_frame(store, symbols) -> pd.DataFrame:
    return pd.concat([store.query_bars(s, "1m") for s in symbols], ignore_index=True)


def expected_frame(bars: list[Bar]) -> pd.DataFrame:
    df = pd.DataFrame([b.to_dict() for b in bars])
    return df.sort_values(["symbol", "ts"]).reset_index(drop=True)


def test_produce_index_exactly_n_field_by_field(broker, topics, any_store):
    bars = produce(broker, topics["bars"], 1000)
    worker = index_until(any_store, broker, topics, len(bars), "g-exact")
    assert any_store.count_bars() == len(bars) == 2000
    got = stored_frame(any_store, ["ACME", "GLOBX"]).sort_values(["symbol", "ts"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got[expected_frame(bars).columns], expected_frame(bars),
                                  check_dtype=False)
    assert worker.stats()["counters"]["rejected"] == 0


def test_replay_twice_is_idempotent(broker, topics, any_store):
    produce(broker, topics["bars"], 500)
    produce(broker, topics["bars"], 500)  # the same bars again: a replayed topic
    index_until(any_store, broker, topics, 2000, "g-replay")
    assert any_store.count_bars() == 1000
    # A second consumer group replays the whole topic from the start: still exactly N.
    index_until(any_store, broker, topics, 2000, "g-replay-2")
    assert any_store.count_bars() == 1000


def test_indexer_stopped_mid_stream_then_restarted(broker, topics, sqlite_store):
    bars = produce(broker, topics["bars"], 5000)  # 10,000 messages
    worker = Indexer(sqlite_store, broker.bootstrap, topic=topics["bars"],
                     dlq_topic=topics["dlq"], group_id="g-crash", batch_max=500)
    wt = WorkerThread(worker).start()
    deadline = time.time() + 60
    while worker.stats()["counters"]["stored"] < 1500 and time.time() < deadline:
        time.sleep(0.02)
    wt.stop()
    partial = sqlite_store.count_bars()
    assert 0 < partial < len(bars), "the stop should land mid-stream"
    index_until(sqlite_store, broker, topics, len(bars) - partial, "g-crash")
    assert sqlite_store.count_bars() == len(bars)
    got = stored_frame(sqlite_store, ["ACME", "GLOBX"]).sort_values(["symbol", "ts"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got[expected_frame(bars).columns], expected_frame(bars),
                                  check_dtype=False)


def test_indexer_process_killed_then_restarted(broker, topics, tmp_path):
    """A real `python -m pipeline index` process killed with SIGKILL mid-stream."""
    from pipeline.store.sqlite import SqliteStore

    bars = produce(broker, topics["bars"], 10000)  # 20,000 messages
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap,
               KAPPALAB_DATA_DIR=str(tmp_path), PYTHONPATH=os.getcwd())
    env.pop("ELASTICSEARCH_URL", None)
    store = SqliteStore(tmp_path / "kappalab.sqlite")
    cmd = [sys.executable, "-m", "pipeline", "index", "--group", "g-kill",
           "--topic", topics["bars"], "--dlq-topic", topics["dlq"]]
    proc = subprocess.Popen(cmd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while store.count_bars() < 3000 and time.time() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    partial = store.count_bars()
    assert 0 < partial < len(bars)
    proc2 = subprocess.Popen(cmd + ["--until-idle", "4"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    out, err = proc2.communicate(timeout=120)
    assert proc2.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["summary"] == "indexer"
    assert store.count_bars() == len(bars)
    assert len(stored_frame(store, ["ACME", "GLOBX"])) == len(bars)


BAD_MESSAGES = {
    b"not json at all": "not JSON",
    b"\xff\xfe\x00": "UTF-8",
    b"[1, 2, 3]": "expected an object",
    json.dumps({"symbol": "ACME", "interval": "1m", "ts": 1735725600000}).encode(): "missing",
    json.dumps({"symbol": "ACME", "interval": "1m", "ts": "yesterday", "open": 1, "high": 1,
                "low": 1, "close": 1, "volume": 1, "source": "x"}).encode(): "ts must be",
    json.dumps({"symbol": "ACME", "interval": "1m", "ts": 1735725600000, "open": "1",
                "high": 1, "low": 1, "close": 1, "volume": 1, "source": "x"}).encode(): "open must be a number",
    b'{"symbol":"ACME","interval":"1m","ts":1735725600000,"open":NaN,"high":1,"low":1,"close":1,"volume":1,"source":"x"}': "not finite",
    b'{"symbol":"ACME","interval":"1m","ts":1735725600000,"open":1,"high":Infinity,"low":1,"close":1,"volume":1,"source":"x"}': "not finite",
    json.dumps({"symbol": "ACME", "interval": "1m", "ts": 1735725600000, "open": 10, "high": 9,
                "low": 11, "close": 10, "volume": 1, "source": "x"}).encode(): "below low",
    json.dumps({"symbol": "ACME", "interval": "1m", "ts": 1735725600000, "open": 10, "high": 11,
                "low": 9, "close": 10, "volume": -5, "source": "x"}).encode(): "negative",
    json.dumps({"symbol": "ACME", "interval": "7m", "ts": 1735725600000, "open": 10, "high": 11,
                "low": 9, "close": 10, "volume": 5, "source": "x"}).encode(): "interval",
    json.dumps({"symbol": "ACME", "interval": "1m", "ts": 1735725600, "open": 10, "high": 11,
                "low": 9, "close": 10, "volume": 5, "source": "x"}).encode(): "outside 2000-2100",
    json.dumps({"symbol": "ACME", "interval": "1m", "ts": 1735725600000, "open": 12, "high": 11,
                "low": 9, "close": 10, "volume": 5, "source": "x"}).encode(): "open 12.0 is outside",
}


def test_bad_messages_go_to_dlq_with_reason_good_ones_stored(broker, topics, any_store):
    good = list(MarketSimulator(symbols=("ACME",), bars=200, seed=11).bars(threading.Event()))
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    bad = list(BAD_MESSAGES)
    sent_bad = 0
    for i, bar in enumerate(good):
        producer.send(topics["bars"], key=b"ACME", value=bar.to_json())
        if i % 15 == 0 and sent_bad < len(bad):
            producer.send(topics["bars"], key=b"ACME", value=bad[sent_bad])
            sent_bad += 1
    while sent_bad < len(bad):
        producer.send(topics["bars"], key=b"ACME", value=bad[sent_bad])
        sent_bad += 1
    producer.send(topics["bars"], key=b"ACME", value=None)  # a tombstone: no value at all
    producer.flush()
    producer.close()
    total = len(good) + len(bad) + 1
    worker = index_until(any_store, broker, topics, total, "g-dlq")
    assert worker.state in ("stopped", "finished")
    assert any_store.count_bars() == len(good)
    counters = worker.stats()["counters"]
    assert counters["rejected"] == len(bad) + 1

    consumer = KafkaConsumer(topics["dlq"], bootstrap_servers=broker.bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=5000)
    dead = list(consumer)
    consumer.close()
    assert len(dead) == len(bad) + 1
    by_value = {m.value: dict(m.headers)["reason"].decode() for m in dead}
    for raw, expected in BAD_MESSAGES.items():
        assert raw in by_value, f"raw bytes not kept for {raw!r}"
        assert expected in by_value[raw], (raw, by_value[raw])
    assert "no value" in by_value[b""]
    headers = dict(dead[0].headers)
    assert headers["source_topic"].decode() == topics["bars"]
    assert int(headers["source_offset"]) >= 0
