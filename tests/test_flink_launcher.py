"""The Flink job's app-side parts, without a JVM: the SQL it renders, the end offsets it
bounds a run with (on the real embedded broker), checkpoints, tombstones, the CLI and the
Pipeline page section. The job itself runs in tests/test_flink_job.py (slow)."""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaProducer

from pipeline.workers.broker import ensure_topics
from pipeline.flink.job import day_to_second, render_sql
from pipeline.flink.launcher import (INSTALL_HINT, FlinkJob, bounds_option, end_offsets,
                                     latest_checkpoint)
from pipeline.flink.stream import FlinkIndexer
from pipeline.contracts.schema import Bar
from pipeline.workers.worker import WorkerThread
from tests.flink_support import require_flink_venv

ROOT = Path(__file__).resolve().parent.parent


def _settings(**over):
    base = {"bootstrap": "127.0.0.1:9092", "bars_topic": "finance-data",
            "news_topic": "finance-news", "out_topic": "finance-data.flink",
            "sentiment_topic": "finance-data.flink.sentiment",
            "dlq_topic": "finance-data.flink.dlq", "group_id": "g", "lateness_s": 3600,
            "startup_mode": "earliest-offset", "bars_bounds": "", "news_bounds": ""}
    return {**base, **over}


def test_the_sql_renders_every_placeholder_into_one_statement_set():
    statements = render_sql(_settings(bars_bounds=bounds_option({0: 10, 1: 7})))
    text = "\n".join(statements)
    assert "${" not in text.replace("${...}", "")
    inserts = [s for s in statements if "INSERT INTO" in s]
    assert len(inserts) == 3 and len(statements) == 13
    assert "'scan.bounded.specific-offsets' = 'partition:0,offset:10;partition:1,offset:7'" in text
    assert "INTERVAL '0 01:00:00' DAY TO SECOND" in text
    with pytest.raises(KeyError):
        render_sql({k: v for k, v in _settings().items() if k != "dlq_topic"})


def test_day_to_second_literals():
    assert day_to_second(3600) == "0 01:00:00"
    assert day_to_second(90_061) == "1 01:01:01"


def test_end_offsets_reads_past_the_listed_offset(broker):
    """The embedded broker lists the start of the last batch as the end: the launcher reads
    on to the true end, which a bounded job needs to see every record."""
    topic = f"eo-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap, (topic,))
    assert end_offsets(broker.bootstrap, topic) == {0: 0}
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=50, batch_size=1 << 16)
    for i in range(777):
        producer.send(topic, value=str(i).encode())
    producer.flush()
    producer.close()
    assert end_offsets(broker.bootstrap, topic) == {0: 777}


def test_latest_checkpoint_is_the_newest_completed_one(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for job, n, done in (("a", 3, True), ("a", 4, False), ("b", 1, True)):
        chk = tmp_path / job / f"chk-{n}"
        chk.mkdir(parents=True)
        if done:
            (chk / "_metadata").write_bytes(b"x")
        time.sleep(0.02)
    assert latest_checkpoint(tmp_path) == tmp_path / "b" / "chk-1"


def test_status_of_a_job_that_never_ran(tmp_path):
    job = FlinkJob(tmp_path, None, venv=tmp_path / "no-venv")
    status = job.status()
    assert status["state"] == "stopped" and status["pid"] is None
    assert any("Flink venv" in m for m in status["missing"])
    assert job.stop() is False
    with pytest.raises(RuntimeError, match="needs a broker"):
        job.start()


def test_the_flink_indexer_skips_tombstones_and_stores_candles(broker, sqlite_store):
    tag = uuid.uuid4().hex[:8]
    topic, dlq = f"fo-{tag}", f"fo-{tag}.dlq"
    ensure_topics(broker.bootstrap, (topic, dlq))
    bar = Bar("ACME", "5m", 1_735_725_600_000, 10.0, 12.0, 9.0, 11.0, 500.0, "flink")
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    producer.send(topic, key=bar.doc_id.encode(), value=None)  # a retraction's tombstone
    producer.send(topic, key=bar.doc_id.encode(), value=bar.to_json())  # keyed by its id
    producer.send(topic, key=b"GLOBX|5m|1735725600000", value=bar.to_json())  # someone else's
    producer.flush()
    producer.close()
    worker = FlinkIndexer(sqlite_store, broker.bootstrap, topic=topic, dlq_topic=dlq,
                          group_id=f"g-{tag}")
    wt = WorkerThread(worker).start()
    deadline = time.monotonic() + 30
    while worker.stats()["counters"]["consumed"] < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert wt.stop()
    counters = worker.stats()["counters"]
    assert counters["consumed"] == 3 and counters["stored"] == 1 and counters["rejected"] == 1
    assert worker.recent_rejects[0]["reason"].startswith("KeyMismatch")
    stored = sqlite_store.query_bars("ACME", "5m")
    assert stored["close"].tolist() == [11.0] and stored["source"].tolist() == ["flink"]


def test_cli_status_without_the_venv(tmp_path, monkeypatch, capsys):
    from pipeline.__main__ import main

    monkeypatch.setenv("KAPPALAB_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("KAPPALAB_FLINK_VENV", str(tmp_path / "none"))
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)  # and no broker running
    assert main(["flink", "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["state"] == "stopped" and status["missing"]
    assert main(["flink", "run"]) == 2  # --bounded is required
    assert "needs --bounded" in capsys.readouterr().err


def test_pipeline_page_says_how_to_install_flink_without_its_venv(data_dir, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("KAPPALAB_FLINK_VENV", str(data_dir / "no-flink-venv"))
    at = AppTest.from_file(str(ROOT / "pages/pipeline_control.py"), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    assert INSTALL_HINT in [i.value for i in at.info]
    assert not any(b.key == "flink_start" for b in at.button)


def test_pipeline_page_offers_to_start_the_job_with_its_venv(data_dir, monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    from pipeline.flink.launcher import venv_dir

    require_flink_venv(venv_dir(data_dir))
    at = AppTest.from_file(str(ROOT / "pages/pipeline_control.py"), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(b.key == "flink_start" for b in at.button)
    assert "**Flink job** — stopped" in [m.value for m in at.markdown]
    assert INSTALL_HINT not in [i.value for i in at.info]
