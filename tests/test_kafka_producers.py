"""Records other teams' Kafka clients write, read by the real indexer from the real broker.

librdkafka (confluent-kafka) writes gzip, snappy, lz4 and zstd batches between plain bars, a
transaction it commits and one it aborts, a tombstone, a bar with no key and a bar with odd
headers; a client without a codec meets a batch it cannot decode. The scenarios and their
figures live in ``tests/stream_cases.py`` (one JSON line each in
``test-artifacts/fault_figures.jsonl``)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import stream_cases

ARTIFACTS = Path("test-artifacts")


def record(figures: dict) -> dict:
    line = json.dumps(figures, default=str)
    print(line)
    ARTIFACTS.mkdir(exist_ok=True)
    with open(ARTIFACTS / "fault_figures.jsonl", "a") as fh:
        fh.write(line + "\n")
    return figures


def test_every_codec_from_librdkafka_is_stored_exactly_once(broker, tmp_path):
    import kafka.codec

    assert kafka.codec.has_snappy() and kafka.codec.has_lz4() and kafka.codec.has_zstd(), \
        "the codec packages of requirements.txt are not installed"
    f = record(stream_cases.case_codecs(broker.bootstrap, tmp_path))
    assert (f["sent"], f["stored"], f["dead_lettered"], f["lost"], f["duplicated"]) == \
        (45, 45, 0, 0, 0), f
    assert f["stored_unexpected"] == 0 and f["last_error"] is None, f


@pytest.mark.slow
def test_a_batch_the_client_cannot_decode_stalls_the_worker_with_the_reason(broker, tmp_path):
    """The client without snappy (kafka.codec.snappy = None, what kafka-python sees when
    python-snappy is missing): the first 5 bars are stored, then ``stalled`` at once with the
    codec named, and the heartbeat keeps going (it used to stop: the poll never returned)."""
    f = record(stream_cases.case_codec_missing(broker.bootstrap, tmp_path))
    assert f["stored"] == 5 and f["dead_lettered"] == 0 and f["duplicated"] == 0, f
    assert f["state"] == "stalled", f
    assert f["stalled_after_s"] is not None and f["stalled_after_s"] <= 3.0 + 10, f
    assert "snappy" in f["last_error"] and "python-snappy" in f["last_error"], f
    assert f["heartbeat_age_s"] < 4.0, f


def test_transactions_tombstones_null_keys_and_headers(broker, tmp_path):
    """Committed bars (of two interleaved transactional producers) stored once, aborted
    ones never (Tansu lists no aborted transactions: the consumer reads the ABORT markers
    itself, pipeline.workers.kafka_clients.list_aborted_transactions); the tombstone dead-lettered
    once with its reason; the null-key bar and the bar with odd headers stored; control
    records neither stored nor dead-lettered."""
    f = record(stream_cases.case_transactions(broker.bootstrap, tmp_path))
    assert f["aborted_stored"] == 0 and f["stored_unexpected"] == 0, f
    assert f["stored"] == 10 and f["lost"] == 0 and f["duplicated"] == 0, f
    assert f["dead_lettered"] == 1 and f["dlq_reasons"] == ["InvalidBar: message has no value"]
    assert f["state"] == "stopped" and f["last_error"] is None, f


def test_consumers_read_committed_only(broker):
    """Every consumer is built by the one factory, with read_committed."""
    from pipeline.workers.kafka_clients import make_consumer

    c = make_consumer(broker.bootstrap, None, None)
    try:
        assert c.config["isolation_level"] == "read_committed"
    finally:
        c.close()

    import pipeline
    root = Path(pipeline.__file__).parent
    direct = [str(p.relative_to(root)) for p in root.rglob("*.py")
              if "KafkaConsumer(" in p.read_text() and p.name != "kafka_clients.py"]
    assert direct == [], f"consumers built outside pipeline/workers/kafka_clients.py: {direct}"


def test_lag_uses_the_log_end_not_the_trailing_end_offsets(broker, tmp_path):
    """10,000 records in batches: end_offsets answers the start of the last batch on Tansu;
    log_end_offsets (used for every lag figure) answers the true end."""
    f = record(stream_cases.case_end_offsets(broker.bootstrap, tmp_path))
    assert f["read"] == 10_000 and f["log_end_offsets"] == 10_000, f
    assert f["probe_log_end"] == 10_000, f  # from outside a group (pipeline/workers/lag.py)


@pytest.mark.slow
def test_cli_masks_a_password_in_the_bootstrap_string(tmp_path):
    """A password written into KAFKA_BOOTSTRAP_SERVERS never reaches the CLI's output or its
    log lines (kafka-python's own included)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS="user:s3cr3tpw@127.0.0.1:1",
               KAPPALAB_DATA_DIR=str(tmp_path), KAPPALAB_AUTOSTART="0")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "index"], env=env, text=True,
                          capture_output=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "user:***@127.0.0.1:1" in out, out
    assert "s3cr3tpw" not in out, out


def test_redact_masks_passwords_in_urls_and_bootstrap_strings():
    from pipeline.sources.redaction import redact

    assert redact("SASL_SSL://bob:hunter2@h1:9093,carol:pw@h2:9093") == \
        "SASL_SSL://bob:***@h1:9093,carol:***@h2:9093"
    assert redact("https://alice:p%40ss@es.example:9200/x") == "https://alice:***@es.example:9200/x"
    for plain in ("kafka:9092", "at 12:30 ok", "bob@example.com", "127.0.0.1:9092"):
        assert redact(plain) == plain


@pytest.mark.slow
def test_topic_deleted_and_recreated_is_said_and_read_from_its_start(broker, tmp_path):
    """100 bars stored; the topic deleted for 8 s, created again, 300 more bars: all stored,
    the re-creation said in the state's last error and counted in the ``topic`` gauge."""
    f = record(stream_cases.case_topic_recreated(broker.bootstrap, tmp_path))
    assert (f["stored"], f["lost"], f["duplicated"]) == (400, 0, 0), f
    assert "deleted and re-created" in f["last_error"], f
    assert f["topic_gauge"]["resets"] >= 1 and f["lag"] == 0, f


@pytest.mark.slow
def test_topic_recreated_under_a_writing_producer_loses_nothing_still_in_the_log(broker,
                                                                                 tmp_path):
    """The issue's case: a producer writes throughout the deletion. Every acknowledged bar
    still in the topic's log is stored (the old code skipped the new log's records below its
    old position); bars Tansu acknowledged and then dropped with the deleted log are counted
    apart (no consumer can read them)."""
    f = record(stream_cases.case_topic_recreated_live_producer(broker.bootstrap, tmp_path))
    assert f["lost_still_in_log"] == 0 and f["duplicated"] == 0, f
    assert f["lag"] == 0 and f["topic_gauge"]["resets"] >= 1, f


@pytest.mark.slow
def test_the_scorer_says_stalled_on_a_batch_it_cannot_decode(broker, tmp_path):
    """The scorer meets the same undecodable snappy batch (client without the codec): it says
    ``stalled`` with the codec named, keeps its loop (and heartbeat) going, never ``failed``."""
    import time

    import kafka.codec

    from pipeline.workers.scorer import Scorer
    from pipeline.store.sqlite import SqliteStore
    from pipeline.workers.worker import WorkerThread

    topic, _dlq = stream_cases.new_topics(broker.bootstrap)
    p = stream_cases.rdkafka(broker.bootstrap, **{"compression.type": "snappy"})
    for i in range(5):
        p.produce(topic, key=b"AAA", value=stream_cases.bar_value(i))
    p.flush(10)
    saved, kafka.codec.snappy = kafka.codec.snappy, None
    store = SqliteStore(tmp_path / "scorer.sqlite")
    try:
        w = Scorer(store, broker.bootstrap, topic=topic, group_id=f"s-{topic}",
                   train_default=False, publish=False)
        wt = WorkerThread(w).start()
        deadline = time.time() + 30
        while time.time() < deadline and w.state != "stalled":
            time.sleep(0.2)
        assert w.state == "stalled", (w.state, w.last_error)
        assert "snappy" in w.last_error and "python-snappy" in w.last_error, w.last_error
        time.sleep(2.5)  # still trying, still saying why
        assert w.state == "stalled" and wt.alive
        wt.stop(timeout_s=20)
        assert w.state == "stopped", (w.state, w.last_error)
    finally:
        kafka.codec.snappy = saved
        store.close()
