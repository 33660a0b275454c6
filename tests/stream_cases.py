"""Issue 19's Kafka and store cases, each run on real parts and measured.

Every case sends bars with a real producer (librdkafka through confluent-kafka, or
kafka-python) to the real embedded broker, runs a real :class:`~pipeline.workers.indexer.Indexer`
on a real SQLite file, and returns its figures: sent / stored / dead-lettered / lost /
duplicated and what the worker said (state, last error). The tests
(``tests/test_kafka_producers.py``, ``tests/test_store_identity.py``) assert on them; run as a
script it prints one JSON line per case, against whatever ``pipeline`` package is first on
``sys.path`` (that is how the figures before the fix were measured on the old ``main``):

    cd /work/main && python3 /path/to/tests/stream_cases.py [case ...]
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

T0 = 1_767_225_600_000  # 2026-01-01 00:00 UTC


def bar_value(i: int, symbol: str = "AAA") -> bytes:
    c = 100.0 + (i % 17)
    return json.dumps({"symbol": symbol, "interval": "1m", "ts": T0 + 60_000 * i, "open": c,
                       "high": c + 1, "low": c - 1, "close": c, "volume": 10 + i,
                       "source": "case"}).encode()


def new_topics(bootstrap: str) -> tuple[str, str]:
    from pipeline.workers.broker import ensure_topics

    t = f"c-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, (t, t + ".dlq"))
    return t, t + ".dlq"


def rdkafka(bootstrap: str, **conf):
    from confluent_kafka import Producer

    return Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, **conf})


def count_topic(bootstrap: str, topic: str, quiet_s: float = 2.0) -> list:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in (c.partitions_for_topic(topic) or {0})]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        out, last = [], time.time()
        while time.time() - last < quiet_s:
            got = c.poll(timeout_ms=300)
            for msgs in got.values():
                out += msgs
            if got:
                last = time.time()
        return out
    finally:
        c.close()


def start(store, bootstrap: str, topic: str, dlq: str, stall_after_s: float = 3.0):
    from pipeline.workers.indexer import Indexer
    from pipeline.workers.worker import WorkerThread

    w = Indexer(store, bootstrap, topic=topic, dlq_topic=dlq, group_id=f"g-{topic}",
                stall_after_s=stall_after_s)
    return w, WorkerThread(w).start()


def settle(w, predicate=lambda w: False, timeout_s: float = 30.0, quiet_s: float = 4.0):
    """Wait until ``predicate(w)`` or until the consumed count stopped moving for ``quiet_s``
    after the first record (or ``timeout_s``)."""
    deadline, last, seen = time.time() + timeout_s, time.time(), -1
    while time.time() < deadline:
        if predicate(w):
            return
        n = w.stats(history=False)["counters"].get("consumed", 0)
        if n != seen:
            seen, last = n, time.time()
        elif n > 0 and time.time() - last > quiet_s:
            return
        time.sleep(0.2)


def figures(case: str, w, store, sent: int, good_ids: set, dlq_msgs: list, **extra) -> dict:
    snap = w.stats(history=False)
    stored = store.query_bars("AAA", "1m")
    ids = set(int(t) for t in stored["ts"]) if len(stored) else set()
    want = {T0 + 60_000 * i for i in good_ids}
    dlq_ts = set()
    for m in dlq_msgs:
        try:
            dlq_ts.add(int(json.loads(m.value)["ts"]))
        except (TypeError, ValueError, KeyError):
            pass  # a dead letter that is not a bar (the poison messages): no ts to count
    beat_age = round(time.time() - getattr(w, "_last_heartbeat", time.time()), 1)
    return {"case": case, "sent": sent, "stored": len(ids & want),
            "stored_unexpected": len(ids - want), "dead_lettered": len(dlq_msgs),
            "lost": len(want - ids - dlq_ts), "duplicated": len(stored) - len(ids),
            "state": snap["state"], "last_error": snap["last_error"],
            "heartbeat_age_s": beat_age, **extra}


def topic_gauges(w) -> dict:
    g = w.stats(history=False)["gauges"]
    return {"lag": g.get("lag"), "topic_gauge": g.get("topic")}


# ---- the cases -----------------------------------------------------------------------------
def case_codecs(bootstrap: str, work: Path) -> dict:
    """Plain bars between gzip, snappy, lz4 and zstd batches from librdkafka."""
    from pipeline.store.sqlite import SqliteStore

    topic, dlq = new_topics(bootstrap)
    i = 0
    for codec in ("none", "gzip", "none", "snappy", "none", "lz4", "none", "zstd", "none"):
        p = rdkafka(bootstrap, **{"compression.type": codec})
        for _ in range(5):
            p.produce(topic, key=b"AAA", value=bar_value(i))
            i += 1
        p.flush(10)
    store = SqliteStore(work / "codecs.sqlite")
    w, wt = start(store, bootstrap, topic, dlq)
    settle(w, lambda w: w.stats(history=False)["counters"]["consumed"] >= i, timeout_s=40)
    wt.stop()
    return figures("codecs gzip/snappy/lz4/zstd", w, store, i, set(range(i)),
                   count_topic(bootstrap, dlq))


def case_codec_missing(bootstrap: str, work: Path) -> dict:
    """A snappy batch between plain bars, read by a client without the snappy codec
    (``kafka.codec.snappy = None``: exactly what kafka-python sees when python-snappy is not
    installed). The 5 snappy bars cannot be read, nor the 5 plain ones behind them in the
    partition ("lost" counts these 10 not stored); the worker must say so."""
    import kafka.codec

    from pipeline.store.sqlite import SqliteStore

    topic, dlq = new_topics(bootstrap)
    i = 0
    for codec in ("none", "snappy", "none"):
        p = rdkafka(bootstrap, **{"compression.type": codec})
        for _ in range(5):
            p.produce(topic, key=b"AAA", value=bar_value(i))
            i += 1
        p.flush(10)
    saved, kafka.codec.snappy = kafka.codec.snappy, None
    store = SqliteStore(work / "nocodec.sqlite")
    try:
        w, wt = start(store, bootstrap, topic, dlq, stall_after_s=3.0)
        t0 = time.time()
        deadline, stalled_after = t0 + 25, None
        while time.time() < deadline:
            if w.state == "stalled" and stalled_after is None:
                stalled_after = round(time.time() - t0, 1)
            time.sleep(0.3)
        out = figures("codec missing in the client (snappy)", w, store, i, set(range(i)),
                      count_topic(bootstrap, dlq), stalled_after_s=stalled_after,
                      unreadable=5)
        wt.stop(timeout_s=20)
        return out
    finally:
        kafka.codec.snappy = saved


def case_transactions(bootstrap: str, work: Path) -> dict:
    """A transactional librdkafka producer commits 5 bars and aborts 5 (while a second one
    commits 3 in between); then a tombstone, a bar with a null key, a bar with arbitrary
    headers (control records come with the transaction markers)."""
    from pipeline.store.sqlite import SqliteStore

    topic, dlq = new_topics(bootstrap)
    p = rdkafka(bootstrap, **{"transactional.id": f"tx-{topic}"})
    p.init_transactions(20)
    p.begin_transaction()
    for i in range(5):
        p.produce(topic, key=b"AAA", value=bar_value(i))
    p.commit_transaction(20)
    p.begin_transaction()
    for i in range(5, 10):
        p.produce(topic, key=b"AAA", value=bar_value(i))
    p.flush(10)
    # a second transactional producer commits while the first one's transaction is open
    p2 = rdkafka(bootstrap, **{"transactional.id": f"tx2-{topic}"})
    p2.init_transactions(20)
    p2.begin_transaction()
    for i in range(12, 15):
        p2.produce(topic, key=b"AAA", value=bar_value(i))
    p2.commit_transaction(20)
    p.abort_transaction(20)
    q = rdkafka(bootstrap)
    q.produce(topic, key=b"AAA", value=None)  # tombstone
    q.produce(topic, value=bar_value(10))  # null key
    q.produce(topic, key=b"AAA", value=bar_value(11),
              headers=[("trace", b"\x00\xff"), ("empty", b""), ("none", None), ("trace", b"2")])
    q.flush(10)
    store = SqliteStore(work / "tx.sqlite")
    w, wt = start(store, bootstrap, topic, dlq)
    settle(w, timeout_s=40)
    wt.stop()
    dead = count_topic(bootstrap, dlq)
    return figures("transactions, tombstone, null key, headers", w, store, 16,
                   {0, 1, 2, 3, 4, 10, 11, 12, 13, 14}, dead, aborted_stored=sum(
                       1 for t in store.query_bars("AAA", "1m")["ts"]
                       if T0 + 60_000 * 5 <= int(t) < T0 + 60_000 * 10),
                   dlq_reasons=sorted({dict(m.headers).get("reason", b"").decode()[:60]
                                       for m in dead}))


def _store_fault(bootstrap: str, work: Path, name: str, fault, repair=None) -> dict:
    """Bars flow into a running indexer; ``fault(path)`` hits the SQLite file; 20 more bars
    are sent; then (optionally) ``repair(path)`` and 20 more."""
    from kafka import KafkaProducer

    from pipeline.store.sqlite import SqliteStore

    topic, dlq = new_topics(bootstrap)
    path = work / f"{name}.sqlite"
    store = SqliteStore(path)
    w, wt = start(store, bootstrap, topic, dlq)
    prod = KafkaProducer(bootstrap_servers=bootstrap, acks="all")

    def send(rng):
        for i in rng:
            prod.send(topic, key=b"AAA", value=bar_value(i))
        prod.flush(10)

    send(range(0, 20))
    settle(w, lambda w: w.stats(history=False)["counters"]["stored"] >= 20)
    fault(path)
    send(range(20, 40))
    time.sleep(6)  # past the 3 s stall threshold
    during = {"state": w.state, "last_error": w.last_error}
    exists = path.exists()
    tables = _tables(path) if exists else None
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    committed = {tp.partition: om.offset
                 for tp, om in admin.list_group_offsets({f"g-{topic}": None}).get(
                     f"g-{topic}", {}).items()}
    admin.close()
    out = {"case": f"sqlite {name}", "sent": 40, "during_fault": during,
           "committed_during_fault": committed, "file_at_path": exists, "tables_at_path": tables}
    if repair is not None:
        repair(path)
        send(range(40, 60))
        settle(w, lambda w: w.state == "running" and w.stats(history=False)["counters"][
            "stored"] >= 60, timeout_s=40)
        fresh = SqliteStore.__new__(SqliteStore)  # read the file at the path as it is now
        import sqlite3

        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            ts = {r[0] for r in conn.execute("SELECT ts FROM bars WHERE symbol='AAA'")}
        del fresh
        out.update(sent=60, after_repair={"state": w.state, "last_error": w.last_error},
                   stored_in_file_at_path=len(ts),
                   stored_after_fault=len(ts & {T0 + 60_000 * i for i in range(20, 60)}),
                   lost_after_fault=40 - len(ts & {T0 + 60_000 * i for i in range(20, 60)}))
    wt.stop()
    prod.close()
    return out


def _tables(path: Path):
    import sqlite3

    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            return sorted(r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table'"))
    except sqlite3.Error as exc:
        return f"unreadable: {exc}"


def _delete(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _restore_valid(path: Path) -> None:
    """A valid KappaLab store put at the path (as a restored backup would be)."""
    from pipeline.store.sqlite import SqliteStore

    other = path.with_name(path.stem + "-restored.sqlite")
    s = SqliteStore(other)
    s.close()
    _delete(path)
    os.replace(other, path)


def _replace_with_empty(path: Path) -> None:
    import sqlite3

    other = path.with_name(path.stem + "-other.sqlite")
    sqlite3.connect(other).close()
    os.replace(other, path)


def _drop_tables(path: Path) -> None:
    import sqlite3

    conn = sqlite3.connect(path, timeout=10)
    for t in ("bars", "predictions", "docs", "news", "fundamentals", "artefacts"):
        conn.execute(f"DROP TABLE IF EXISTS {t}")
    conn.commit()
    conn.close()


def case_sqlite_deleted(bootstrap, work):
    return _store_fault(bootstrap, work, "deleted", _delete, _restore_valid)


def case_sqlite_replaced(bootstrap, work):
    return _store_fault(bootstrap, work, "replaced", _replace_with_empty, _restore_valid)


def case_sqlite_emptied(bootstrap, work):
    return _store_fault(bootstrap, work, "emptied", _drop_tables, _restore_valid)


def case_topic_recreated_live_producer(bootstrap: str, work: Path) -> dict:
    """A producer writes a bar every 10 ms throughout; after 100 the topic is deleted and
    re-created 1 s later (as the issue's reporter did under the simulator). On Tansu the
    producer's own metadata refresh may re-create it first, with 4 partitions."""
    import threading

    from kafka import KafkaAdminClient, KafkaProducer

    from pipeline.workers.broker import ensure_topics
    from pipeline.store.sqlite import SqliteStore

    topic, dlq = new_topics(bootstrap)
    store = SqliteStore(work / "recreated-live.sqlite")
    w, wt = start(store, bootstrap, topic, dlq)
    prod = KafkaProducer(bootstrap_servers=bootstrap, acks="all", retries=20)
    acked: set[int] = set()
    lock = threading.Lock()

    def ack(i):
        def cb(_):
            with lock:
                acked.add(i)
        return cb

    def produce():
        for i in range(400):
            prod.send(topic, key=b"AAA", value=bar_value(i)).add_callback(ack(i))
            time.sleep(0.01)
            if i == 100:
                prod.flush(10)
                settle(w, lambda w: w.stats(history=False)["counters"]["stored"] >= 100)
                admin = KafkaAdminClient(bootstrap_servers=bootstrap)
                admin.delete_topics([topic])
                admin.close()
                threading.Timer(1.0, lambda: _create_quietly(bootstrap, topic)).start()
        prod.flush(20)

    t = threading.Thread(target=produce)
    t.start()
    t.join(60)
    t0 = time.time()
    settle(w, lambda w: len(store.query_bars("AAA", "1m")) >= len(acked), timeout_s=30,
           quiet_s=30)
    stored = {int(t) for t in store.query_bars("AAA", "1m")["ts"]}
    in_log = {json.loads(m.value)["ts"] for m in count_topic(bootstrap, topic)}
    missing = {T0 + 60_000 * i for i in acked} - stored
    out = figures("topic deleted and re-created, producer writing throughout", w, store, 400,
                  acked, count_topic(bootstrap, dlq), acked=len(acked),
                  lost_still_in_log=len(missing & in_log),
                  lost_gone_from_log=len(missing - in_log),
                  waited_s=round(time.time() - t0, 1),
                  **topic_gauges(w))
    wt.stop()
    prod.close()
    return out


def _create_quietly(bootstrap: str, topic: str) -> None:
    from pipeline.workers.broker import ensure_topics

    try:
        ensure_topics(bootstrap, (topic,))
    except Exception:  # the producer's metadata refresh created it first
        pass  # either way the topic exists now


def case_topic_recreated(bootstrap: str, work: Path) -> dict:
    """100 bars indexed; the topic deleted (8 s) and re-created; 300 more acknowledged bars,
    all with the key AAA (so on several partitions they share one)."""
    from kafka import KafkaAdminClient, KafkaProducer

    from pipeline.workers.broker import ensure_topics
    from pipeline.store.sqlite import SqliteStore

    topic, dlq = new_topics(bootstrap)
    store = SqliteStore(work / "recreated.sqlite")
    w, wt = start(store, bootstrap, topic, dlq)
    prod = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for i in range(100):
        prod.send(topic, key=b"AAA", value=bar_value(i))
    prod.flush(10)
    settle(w, lambda w: w.stats(history=False)["counters"]["stored"] >= 100)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    prod.close()  # its metadata refreshes would re-create the topic on Tansu
    admin.delete_topics([topic])
    admin.close()
    time.sleep(8)  # past the 3 s stall threshold
    while_deleted = {"state": w.state, "last_error": w.last_error}
    ensure_topics(bootstrap, (topic,))
    prod = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    acked = 0
    futures = [prod.send(topic, key=b"AAA", value=bar_value(i)) for i in range(100, 400)]
    prod.flush(20)
    for f in futures:
        try:
            f.get(10)
            acked += 1
        except Exception:
            pass  # not acknowledged (the topic was being deleted): not counted as sent
    t0 = time.time()
    settle(w, lambda w: len(store.query_bars("AAA", "1m")) >= 400, timeout_s=30, quiet_s=30)
    out = figures("topic deleted and re-created", w, store, 400, set(range(400)),
                  count_topic(bootstrap, dlq), acked_after_recreate=acked,
                  waited_s=round(time.time() - t0, 1), while_deleted=while_deleted,
                  **topic_gauges(w))
    wt.stop()
    prod.close()
    return out


def case_end_offsets(bootstrap: str, work: Path) -> dict:
    """10,000 records in batches: what ``end_offsets`` and the fetch high watermark say."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    topic, _ = new_topics(bootstrap)
    prod = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=50, batch_size=256_000)
    for i in range(10_000):
        prod.send(topic, value=bar_value(i))
    prod.flush(30)
    prod.close()
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    c.assign([tp])
    end = c.end_offsets([tp])[tp]
    c.seek_to_beginning(tp)
    n, last = 0, time.time()
    while time.time() - last < 2:
        got = c.poll(timeout_ms=300)
        n += sum(len(m) for m in got.values())
        if got:
            last = time.time()
    out = {"case": "end_offsets vs high watermark", "records": 10_000, "read": n,
           "end_offsets": end, "highwater": c.highwater(tp), "position": c.position(tp)}
    try:
        from pipeline.workers.kafka_clients import log_end_offsets, make_consumer, probe_log_end

        out["log_end_offsets"] = log_end_offsets(c, [tp])[tp]
        probe = make_consumer(bootstrap, None, None)
        out["probe_log_end"] = probe_log_end(probe, [tp])[tp]
        probe.close()
    except ImportError:
        pass  # run against old main (no probe_log_end there): the figure is left out
    c.close()
    return out


CASES = {name[5:]: fn for name, fn in dict(globals()).items() if name.startswith("case_")}


def main(argv: list[str]) -> None:
    sys.path.insert(0, os.getcwd())
    from pipeline.workers.broker import EmbeddedBroker
    from pipeline.workers.runtime import quiet_kafka_logs

    quiet_kafka_logs()
    if os.environ.get("KAPPALAB_CASES_NO_SNAPPY"):  # main's requirements had no python-snappy
        import kafka.codec

        kafka.codec.snappy = None
    work = Path(tempfile.mkdtemp(prefix="kappalab-cases-"))
    broker = EmbeddedBroker(work / "broker.json")
    info = broker.start(reuse=False)
    try:
        for name in argv or list(CASES):
            try:
                print(json.dumps(CASES[name](info.bootstrap, work), default=str), flush=True)
            except Exception as exc:
                print(json.dumps({"case": name, "error": repr(exc)}), flush=True)
    finally:
        broker.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
