"""Fault injection on the stream path, on real parts: the embedded broker over TCP, SQLite
files, the ES-API test double, and `python -m pipeline index` processes killed with SIGKILL.

Every test states its counts (produced, stored, DLQ, duplicates) and, for outages, the time
from the end of the fault to the last bar stored; they are printed as one JSON line each
(run with ``-s`` to see them) and appended to ``test-artifacts/fault_figures.jsonl``.
"""
from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from pipeline.workers.broker import ensure_topics
from pipeline.workers.indexer import Indexer
from pipeline.workers.bar_rules import SeriesClock
from pipeline.contracts.schema import Bar, InvalidBar, key_problem, parse_bar
from pipeline.store.sqlite import SqliteStore
from pipeline.workers.worker import WorkerThread
from tests.fuzz_messages import fuzz_messages

ARTIFACTS = Path("test-artifacts")


# ---- helpers ---------------------------------------------------------------------------------
def good_bars(symbols: tuple[str, ...], n: int, start_ts: int = 1_767_225_600_000) -> list[Bar]:
    rng = random.Random(5)
    out = []
    for i in range(n):
        for s in symbols:
            c = round(rng.uniform(50, 150), 4)
            out.append(Bar(s, "1m", start_ts + 60_000 * i, c, round(c * 1.01, 4),
                           round(c * 0.99, 4), c, round(rng.uniform(1, 1e5), 2), "faulttest"))
    return out


def send_all(bootstrap: str, topic: str, values: list[tuple[bytes | None, bytes | None]],
             **kw) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256_000,
                             max_request_size=4 * 1024 * 1024, acks="all", **kw)
    for key, value in values:
        producer.send(topic, key=key, value=value)
    producer.flush(60)
    producer.close()


def read_topic(bootstrap: str, topic: str, expect: int, quiet_s: float = 3.0,
               timeout_s: float = 120) -> list:
    """Every record of ``topic``: reads until ``expect`` arrived and nothing more came for
    ``quiet_s`` (``end_offsets`` may trail the true end on the embedded broker)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             fetch_max_bytes=8 * 1024 * 1024,
                             max_partition_fetch_bytes=8 * 1024 * 1024)
    parts = consumer.partitions_for_topic(topic) or {0}
    tps = [TopicPartition(topic, p) for p in parts]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    out, last_new, deadline = [], time.time(), time.time() + timeout_s
    while time.time() < deadline:
        batch = consumer.poll(timeout_ms=300)
        for msgs in batch.values():
            out.extend(msgs)
        if batch:
            last_new = time.time()
        elif len(out) >= expect and time.time() - last_new > quiet_s:
            break
    consumer.close()
    return out


def committed(bootstrap: str, group: str) -> dict[int, int]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets({group: None}).get(group, {})
    finally:
        admin.close()
    return {tp.partition: om.offset for tp, om in offsets.items()}


def wait_for(predicate, timeout_s: float, what: str, every: float = 0.2):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def stored_bars(store, symbols) -> dict[str, tuple]:
    out = {}
    for s in symbols:
        for row in store.query_bars(s, "1m").itertuples(index=False):
            out[f"{row.symbol}|{row.interval}|{int(row.ts)}"] = (
                row.open, row.high, row.low, row.close, row.volume, row.source)
    return out


def assert_exact(store, bars: list[Bar]) -> None:
    """Exactly these bars, field by field, no duplicates."""
    symbols = sorted({b.symbol for b in bars})
    got = stored_bars(store, symbols)
    want = {b.doc_id: (b.open, b.high, b.low, b.close, b.volume, b.source) for b in bars}
    assert len(got) == len(want), f"stored {len(got)} bars, expected {len(want)}"
    assert got == want
    assert sum(store.count_bars(s, "1m") for s in symbols) == len(want), "duplicates"


def record(figures: dict) -> None:
    line = json.dumps(figures)
    print(line)
    ARTIFACTS.mkdir(exist_ok=True)
    with open(ARTIFACTS / "fault_figures.jsonl", "a") as fh:
        fh.write(line + "\n")


def start_indexer(store, broker, topics, group: str, **kw) -> tuple[Indexer, WorkerThread]:
    worker = Indexer(store, broker.bootstrap, topic=topics["bars"], dlq_topic=topics["dlq"],
                     group_id=group, **kw)
    return worker, WorkerThread(worker).start()


def cli_env(broker, data_dir: Path) -> dict:
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap,
               KAPPALAB_DATA_DIR=str(data_dir), PYTHONPATH=os.getcwd(), KAPPALAB_AUTOSTART="0")
    env.pop("ELASTICSEARCH_URL", None)
    return env


def index_process(broker, topics, data_dir: Path, group: str, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pipeline", "index", "--group", group,
           "--topic", topics["bars"], "--dlq-topic", topics["dlq"], *extra]
    return subprocess.Popen(cmd, env=cli_env(broker, data_dir), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)


# ---- poison pills ----------------------------------------------------------------------------
def _bar_json(**override) -> bytes:
    bar = {"symbol": "PILL", "interval": "1m", "ts": 1_767_225_600_000, "open": 10,
           "high": 11, "low": 9, "close": 10, "volume": 5, "source": "x"}
    bar.update(override)
    return json.dumps(bar).encode()


def _with_literal(field: str, literal: str) -> bytes:
    return _bar_json().replace(f'"{field}": 10'.encode(), f'"{field}": {literal}'.encode(), 1)


POISON_PILLS = {
    "400-digit literal": (_with_literal("open", "1" + "0" * 400), "integer literal of 401 digits"),
    "5000-digit literal": (_with_literal("close", "9" * 5000), "integer literal of 5,000 digits"),
    "lone surrogate": (_bar_json(symbol="\ud800"), "lone surrogate"),
    "control character": (_bar_json(source="a\x00b"), "control character"),
    "1 MiB message": (_bar_json(source="x" * (1024 * 1024)), "over the 16,384-byte limit"),
    "huge float": (_with_literal("open", "1e400"), "not finite"),
    "out-of-range price": (_bar_json(open=1e10, high=1e10), "out of range"),
    "NaN": (_with_literal("open", "NaN"), "not finite"),
    "long symbol": (_bar_json(symbol="S" * 33), "1 to 32 characters"),
    "duplicate field": (_bar_json().replace(b'"volume": 5', b'"volume": 5, "volume": 6'),
                        "duplicate field"),
    "no value": (None, "no value"),
}


def test_poison_pills_between_good_bars_are_dead_lettered_once(broker, topics, sqlite_store):
    good = good_bars(("GOOD",), len(POISON_PILLS) + 1)
    values, pill_order = [], []
    for bar, (name, (pill, _)) in zip(good, POISON_PILLS.items()):
        values += [(b"GOOD", bar.to_json()), (b"PILL", pill)]
        pill_order.append(name)
    values.append((b"GOOD", good[-1].to_json()))
    send_all(broker.bootstrap, topics["bars"], values)

    worker, wt = start_indexer(sqlite_store, broker, topics, "g-pills")
    try:
        wait_for(lambda: worker.stats()["counters"]["consumed"] >= len(values), 60,
                 "the indexer to consume every message")
        assert worker.state == "running", worker.last_error
        assert worker.stats()["counters"]["store_retries"] == 0
    finally:
        assert wt.stop()
    assert_exact(sqlite_store, good)
    dead = read_topic(broker.bootstrap, topics["dlq"], len(POISON_PILLS))
    assert len(dead) == len(POISON_PILLS), "each pill dead-lettered exactly once"
    by_offset = {int(dict(m.headers)["source_offset"]): m for m in dead}
    assert len(by_offset) == len(dead)
    for i, name in enumerate(pill_order):
        m = by_offset[2 * i + 1]
        h = dict(m.headers)
        pill, expected = POISON_PILLS[name]
        reason = h["reason"].decode()
        assert expected in reason, (name, reason)
        assert reason.split(":")[0] == h["error_class"].decode()
        assert int(h["original_size"]) == len(pill or b"")
        if name == "1 MiB message":
            assert h["truncated"] == b"true" and len(m.value) == 65_536
            assert m.value == pill[:65_536]
        else:
            assert m.value == (pill or b"")
    record({"fault": "poison pills", "produced": len(values), "good": len(good),
            "stored": sqlite_store.count_bars(), "dlq": len(dead), "duplicates": 0})


# ---- fuzz ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_fuzz_100k_messages_interleaved_with_good_bars(broker, topics, sqlite_store):
    seed, count = int(os.environ.get("KAPPALAB_FUZZ_SEED", "20261127")), 100_000
    fuzz = list(fuzz_messages(seed, count))
    good = good_bars(("G1", "G2", "G3", "G4", "G5"), 1000)
    rng = random.Random(seed)
    good_at = set(rng.sample(range(count + len(good)), len(good)))
    values, gi, fi = [], 0, 0
    for i in range(count + len(good)):
        if i in good_at:
            values.append((good[gi].symbol.encode(), good[gi].to_json()))
            gi += 1
        else:
            values.append((b"FZ", fuzz[fi]))
            fi += 1
    send_all(broker.bootstrap, topics["bars"], values)

    # The oracle: which fuzz messages are valid bars (to be stored, last write wins per ID).
    # A valid bar keyed with another symbol, or too far ahead, is dead-lettered too.
    valid_mutants: dict[str, Bar] = {}
    invalid_offsets: set[int] = set()
    clock = SeriesClock(lambda keys: {})  # pipeline/workers/bar_rules.py on an empty store
    for offset, (key, value) in enumerate(values):
        if key == b"FZ":
            try:
                bar = parse_bar(value)
            except InvalidBar:
                invalid_offsets.add(offset)
                continue
            screen = clock.screen([bar])
            if key_problem(key, bar) or screen.suspects:
                invalid_offsets.add(offset)
                continue
            clock.commit(screen)
            valid_mutants[bar.doc_id] = bar

    t0 = time.time()
    worker, wt = start_indexer(sqlite_store, broker, topics, "g-fuzz")
    try:
        wait_for(lambda: worker.stats()["counters"]["consumed"] >= len(values), 600,
                 "the indexer to consume the fuzz run")
        elapsed = time.time() - t0
        snap = worker.stats()
        assert worker.state == "running", worker.last_error
        assert snap["counters"]["store_retries"] == 0
    finally:
        assert wt.stop()
    assert_exact(sqlite_store, good)
    got = stored_bars(sqlite_store, ["FZ"])
    assert got == {i: (b.open, b.high, b.low, b.close, b.volume, b.source)
                   for i, b in valid_mutants.items() if b.symbol == "FZ"}
    dead = read_topic(broker.bootstrap, topics["dlq"], len(invalid_offsets))
    offsets = Counter(int(dict(m.headers)["source_offset"]) for m in dead)
    assert max(offsets.values()) == 1, "a message was dead-lettered twice"
    assert set(offsets) == invalid_offsets
    reasons = Counter(dict(m.headers)["error_class"].decode() for m in dead)
    assert "while parsing" not in " ".join(dict(m.headers)["reason"].decode() for m in dead)
    record({"fault": "fuzz", "seed": seed, "produced": len(values), "good": len(good),
            "valid_mutants": len(valid_mutants), "stored": sqlite_store.count_bars(),
            "dlq": len(dead), "duplicates": 0, "error_classes": dict(reasons),
            "elapsed_s": round(elapsed, 1)})


# ---- kill -9 ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_indexer_killed_three_times_mid_stream_stores_exactly_n(broker, topics, tmp_path):
    bars = good_bars(("K1", "K2", "K3"), 10_000)
    send_all(broker.bootstrap, topics["bars"], [(b.symbol.encode(), b.to_json()) for b in bars])
    store = SqliteStore(tmp_path / "kappalab.sqlite")
    kills = []
    for k in range(3):
        proc = index_process(broker, topics, tmp_path, "g-kill3")
        target = (k + 1) * len(bars) // 4
        try:
            wait_for(lambda: store.count_bars() >= target, 120, f"{target:,} bars stored")
        finally:
            kill(proc)
        kills.append(store.count_bars())
    proc = index_process(broker, topics, tmp_path, "g-kill3", "--until-idle", "4")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert_exact(store, bars)
    dead = read_topic(broker.bootstrap, topics["dlq"], 0, quiet_s=1)
    assert dead == []
    record({"fault": "indexer kill -9 x3", "produced": len(bars), "stored_at_kills": kills,
            "stored": store.count_bars(), "dlq": 0, "duplicates": 0})
    store.close()


# ---- store outages ---------------------------------------------------------------------------
def _outage_run(store, broker, topics, group: str, start_outage, end_outage, what: str,
                outage_s: float = 30.0) -> None:
    """Index a first half, hold an outage while the second half arrives, then recover."""
    bars = good_bars(("O1", "O2"), 2000)
    half = len(bars) // 2
    worker, wt = start_indexer(store, broker, topics, group, stall_after_s=5.0)
    try:
        send_all(broker.bootstrap, topics["bars"],
                 [(b.symbol.encode(), b.to_json()) for b in bars[:half]])
        wait_for(lambda: store.count_bars() >= half, 60, "the first half stored")
        wait_for(lambda: committed(broker.bootstrap, group).get(0) == half, 30,
                 "the first half committed")
        start_outage()
        t_fault = time.time()
        send_all(broker.bootstrap, topics["bars"],
                 [(b.symbol.encode(), b.to_json()) for b in bars[half:]])
        states = set()
        while time.time() - t_fault < outage_s:
            states.add(worker.state)
            assert committed(broker.bootstrap, group).get(0) == half, \
                "an offset was committed during the outage"
            time.sleep(0.5)
        assert "stalled" in states, f"never reported stalled during the outage: {states}"
        reason = worker.last_error or ""
        end_outage()
        t_back = time.time()
        wait_for(lambda: store.count_bars() >= len(bars), 120, "every bar stored after the outage")
        recovery = time.time() - t_back
        wait_for(lambda: worker.state == "running", 30, "the indexer back to running")
        retries = worker.stats()["counters"]["store_retries"]
        wait_for(lambda: committed(broker.bootstrap, group).get(0) == len(bars), 30,
                 "the offsets committed after recovery")
    finally:
        assert wt.stop()
    assert_exact(store, bars)
    dead = read_topic(broker.bootstrap, topics["dlq"], 0, quiet_s=1)
    assert dead == [], "a good bar was dead-lettered during the outage"
    record({"fault": what, "outage_s": outage_s, "produced": len(bars),
            "stored": store.count_bars(), "dlq": 0, "duplicates": 0, "store_retries": retries,
            "stall_reason": reason, "recovery_s": round(recovery, 2)})


@pytest.mark.slow
def test_sqlite_locked_30s_no_loss_no_duplicates_no_commit(broker, topics, tmp_path):
    store = SqliteStore(tmp_path / "kappalab.sqlite")
    locker = sqlite3.connect(tmp_path / "kappalab.sqlite", isolation_level=None)

    _outage_run(store, broker, topics, "g-lock",
                lambda: locker.execute("BEGIN EXCLUSIVE"), lambda: locker.execute("ROLLBACK"),
                "SQLite locked exclusively")
    locker.close()
    store.close()


@pytest.mark.slow
def test_elasticsearch_double_down_30s_no_loss_no_duplicates_no_commit(broker, topics):
    """TEST DOUBLE: the ES-API server of tests/es_double.py (no Elasticsearch runs here),
    stopped and restarted on the same port with its data kept."""
    import uuid

    from pipeline.store.elasticsearch import ElasticsearchStore
    from tests import es_double

    server = es_double.EsTestServer()
    url = server.start()
    port = int(url.rsplit(":", 1)[1])
    store = ElasticsearchStore(url, index_prefix=f"t{uuid.uuid4().hex[:6]}", max_retries=0,
                               request_timeout=3)
    try:
        _outage_run(store, broker, topics, "g-esdown", server.stop,
                    lambda: server.start(port=port), "Elasticsearch (test double) down")
    finally:
        store.close()
        server.stop()


# ---- disk full / read-only -------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A real 8 MiB tmpfs for the store (needs mount rights: root in CI)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()}): disk faults untested")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.slow
def test_full_disk_one_sentence_no_crash_loop_then_recovery(broker, topics, small_disk):
    data_dir = small_disk
    store = SqliteStore(data_dir / "kappalab.sqlite")
    bars = good_bars(("D1",), 4000)
    half = len(bars) // 2
    send_all(broker.bootstrap, topics["bars"], [(b.symbol.encode(), b.to_json()) for b in bars[:half]])
    proc = index_process(broker, topics, data_dir, "g-disk-full")
    try:
        wait_for(lambda: store.count_bars() >= half, 90, "the first half stored")
        filler = data_dir / "filler"
        with open(filler, "wb") as fh:  # fill the disk to the last byte
            try:
                while True:
                    fh.write(b"\0" * 65536)
            except OSError:
                pass
        send_all(broker.bootstrap, topics["bars"],
                 [(b.symbol.encode(), b.to_json()) for b in bars[half:]])
        time.sleep(25)  # several retry rounds
        assert proc.poll() is None, "the indexer process exited instead of waiting"
        def indexer_status():
            out = json.loads(subprocess.run(
                [sys.executable, "-m", "pipeline", "status", "--json"],
                env=cli_env(broker, data_dir), capture_output=True, text=True, timeout=60).stdout)
            return out if any(w["kind"] == "indexer" for w in out["workers"]) else None

        # status reads the heartbeat topic; on a loaded machine one read may come back early
        status = wait_for(indexer_status, 60, "status to list the indexer", every=1)
        filler.unlink()
        t_back = time.time()
        wait_for(lambda: store.count_bars() >= len(bars), 120, "every bar stored after the fix")
        recovery = time.time() - t_back
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        finally:
            kill(proc)
    warnings = [line for line in err.splitlines() if "WARNING" in line]
    store_lines = [w for w in warnings if "store is unavailable" in w]
    assert len(store_lines) == 1, f"expected the store failure once, got:\n{err}"
    assert "database or disk is full" in store_lines[0]
    indexers = [w for w in status["workers"] if w["kind"] == "indexer"]
    assert indexers and indexers[0]["state"] == "stalled", (status.get("workers"), err[-3000:])
    assert "disk is full" in indexers[0]["last_error"]
    assert_exact(store, bars)
    record({"fault": "disk full", "produced": len(bars), "stored": store.count_bars(),
            "dlq": 0, "duplicates": 0, "log_line": store_lines[0].split(": ", 1)[-1],
            "recovery_s": round(recovery, 2)})
    store.close()


@pytest.mark.slow
def test_read_only_store_one_sentence_then_runs_when_writable(broker, topics, small_disk):
    """Linux refuses to remount a file system read-only while a file on it is open for
    writing, so the read-only case is the store turning up read-only when the indexer starts
    (mid-run, SQLite's "attempt to write a readonly database" takes the disk-full path)."""
    data_dir = small_disk
    bars = good_bars(("RO",), 1000)
    SqliteStore(data_dir / "kappalab.sqlite").close()
    send_all(broker.bootstrap, topics["bars"], [(b.symbol.encode(), b.to_json()) for b in bars])
    subprocess.run(["mount", "-o", "remount,ro", str(data_dir)], check=True)
    proc = index_process(broker, topics, data_dir, "g-disk-ro")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.strip().splitlines() == [
        f"error: Cannot open the SQLite store at {data_dir / 'kappalab.sqlite'} (the file system "
        "is mounted read-only); set KAPPALAB_DATA_DIR to a writable folder."]
    subprocess.run(["mount", "-o", "remount,rw", str(data_dir)], check=True)
    proc = index_process(broker, topics, data_dir, "g-disk-ro", "--until-idle", "3")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    store = SqliteStore(data_dir / "kappalab.sqlite")
    assert_exact(store, bars)
    record({"fault": "read-only store at start", "produced": len(bars),
            "stored": store.count_bars(), "dlq": 0, "duplicates": 0})
    store.close()


# ---- consumer group --------------------------------------------------------------------------
@pytest.mark.slow
def test_two_indexers_one_group_four_partitions_one_killed(broker, tmp_path):
    import uuid

    tag = uuid.uuid4().hex[:8]
    topics = {"bars": f"t4-{tag}", "dlq": f"t4-{tag}.dlq"}
    ensure_topics(broker.bootstrap, (topics["bars"],), partitions=4)
    ensure_topics(broker.bootstrap, (topics["dlq"],))
    bars = good_bars(tuple(f"P{i}" for i in range(8)), 12_000)
    half = len(bars) // 2
    # The second half is sent after the kill, so the dead member's partitions must be taken
    # over for it to be stored, however fast the first half went.
    send_all(broker.bootstrap, topics["bars"],
             [(b.symbol.encode(), b.to_json()) for b in bars[:half]])
    store = SqliteStore(tmp_path / "kappalab.sqlite")
    a = index_process(broker, topics, tmp_path, "g-two")
    b = index_process(broker, topics, tmp_path, "g-two")

    def both_working():
        from pipeline.workers.worker import latest_heartbeats

        beats = {s.get("pid"): s for s in latest_heartbeats(broker.bootstrap, 5_000)}
        return all(beats.get(p.pid, {}).get("counters", {}).get("stored", 0) > 0
                   and beats[p.pid].get("gauges", {}).get("partitions") for p in (a, b))

    try:
        # "Mid-way" means after the group settled: both members hold partitions and stored.
        wait_for(both_working, 120, "both indexers holding partitions and storing", every=1)
        kill(a)
        t_kill, at_kill = time.time(), store.count_bars()
        send_all(broker.bootstrap, topics["bars"],
                 [(b.symbol.encode(), b.to_json()) for b in bars[half:]])
        try:
            wait_for(lambda: store.count_bars() >= len(bars), 180,
                     "every bar stored by the survivor")
        except AssertionError:
            from pipeline.workers.worker import latest_heartbeats

            survivor = [s for s in latest_heartbeats(broker.bootstrap, 5_000) if s.get("pid") == b.pid]
            raise AssertionError(f"survivor: {survivor}; stored {store.count_bars()} of {len(bars)}")
        takeover = time.time() - t_kill
    finally:
        kill(a)
        kill(b)
    assert_exact(store, bars)
    record({"fault": "two indexers, one killed", "partitions": 4, "produced": len(bars),
            "stored_at_kill": at_kill,
            "stored": store.count_bars(), "dlq": 0, "duplicates": 0,
            "recovery_s": round(takeover, 2)})
    store.close()


# ---- broker restart --------------------------------------------------------------------------
@pytest.mark.slow
def test_broker_restart_workers_reconnect_store_has_no_gap(tmp_path):
    """SIGKILL the embedded broker under a live producer and indexer (separate processes),
    start it again on the same port: the topics come back empty, the workers reconnect by
    themselves, the producer resumes after the last stored bar: no gap, no duplicate."""
    from pipeline.workers.broker import EmbeddedBroker

    state = tmp_path / "broker.json"
    first = EmbeddedBroker(state)
    info = first.start(reuse=False)
    port = int(info.bootstrap.rsplit(":", 1)[1])
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=info.bootstrap,
               KAPPALAB_DATA_DIR=str(tmp_path), PYTHONPATH=os.getcwd())
    env.pop("ELASTICSEARCH_URL", None)
    store = SqliteStore(tmp_path / "kappalab.sqlite")
    symbols = ("R1", "R2")
    indexer = subprocess.Popen([sys.executable, "-m", "pipeline", "index"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    producer = subprocess.Popen([sys.executable, "-m", "pipeline", "produce", "--speed", "600",
                                 "--symbols", ",".join(symbols)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = None
    try:
        wait_for(lambda: store.count_bars() >= 200, 120, "200 bars stored before the restart")
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(10)
        at_kill = store.count_bars()
        time.sleep(1.0)
        second = EmbeddedBroker(state, port=port)
        second.start(reuse=False)
        t_back = time.time()
        wait_for(lambda: store.count_bars() >= at_kill + 200, 180,
                 "200 new bars stored after the restart")
        recovery = time.time() - t_back
        producer.send_signal(signal.SIGTERM)
        producer.communicate(timeout=60)
        stable, last = 0, -1
        while stable < 8:  # the indexer drains what is left
            n = store.count_bars()
            stable = stable + 1 if n == last else 0
            last = n
            time.sleep(0.5)
    finally:
        kill(producer)
        indexer.send_signal(signal.SIGTERM)
        try:
            _, ierr = indexer.communicate(timeout=30)
        finally:
            kill(indexer)
        if second is not None:
            second.stop()
        first.stop()
    gaps = {}
    for s in symbols:
        ts = store.query_bars(s, "1m")["ts"].tolist()
        assert ts == sorted(set(ts)), "duplicate or unordered bars"
        steps = [b - a for a, b in zip(ts, ts[1:])]
        gaps[s] = sum(1 for d in steps if d != 60_000)
    assert gaps == {s: 0 for s in symbols}, f"gaps in the stored series: {gaps}"
    record({"fault": "broker restart (SIGKILL, same port)", "stored_at_kill": at_kill,
            "stored": store.count_bars(), "dlq": 0, "duplicates": 0, "gaps": 0,
            "recovery_s": round(recovery, 2)})
    store.close()


@pytest.mark.slow
def test_app_runtime_restarts_a_dead_embedded_broker_on_the_same_port(tmp_path, monkeypatch):
    from pipeline.workers.broker import is_healthy
    from pipeline.contracts.config import load_config
    from pipeline.workers.runtime import Runtime

    monkeypatch.setenv("KAPPALAB_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("ELASTICSEARCH_URL", raising=False)
    rt = Runtime(load_config())
    try:
        info = rt.ensure_broker()
        os.kill(info.pid, signal.SIGKILL)
        t0 = time.time()
        new = wait_for(lambda: rt.broker_info if rt.broker_info.pid != info.pid else None, 60,
                       "the runtime to start the broker again")
        assert new.bootstrap == info.bootstrap
        assert is_healthy(new.bootstrap, 5)
        record({"fault": "app runtime: broker SIGKILL", "same_port": True,
                "recovery_s": round(time.time() - t0, 2)})
    finally:
        rt.shutdown()
