"""The Flink SQL job (pipeline/flink/) on the real embedded broker, in its own venv and JVM.

One bounded run covers: 5m and 1h candles equal, bar for bar, the store's own downsampling
(``ohlc_buckets``) of the same 1m bars; a late bar inside the allowed lateness updates its
window; a bar later than that is dead-lettered as LateBar and counted; poison messages are
dead-lettered with a reason; the news join equals the batch as-of join of models/features/sentiment.py.
Skipped (with the install command) when the Flink venv or Java is missing; tests/run.sh
installs both, so CI runs them.
"""
from __future__ import annotations

import json
import time
import uuid

import numpy as np
import pandas as pd
import pytest
from kafka import KafkaConsumer, KafkaProducer

from models.features.sentiment import sentiment_features
from pipeline.workers.broker import ensure_topics
from pipeline.flink.launcher import FlinkJob, FlinkTopics, venv_dir
from pipeline.flink.stream import FlinkIndexer
from pipeline.contracts.schema import Bar
from pipeline.sources.news_simulator import simulate_frames
from pipeline.store.sqlite import SqliteStore
from pipeline.workers.worker import WorkerThread
from tests.flink_support import require_flink_venv

pytestmark = pytest.mark.slow

SYMBOLS = ("ACME", "GLOBX")
N_BARS = 1500  # per symbol: 25 hours of 1m bars, 300 five-minute and 26 one-hour windows
LATE_INDEX = 100  # ACME's bar 100 opens a 5m window; it is published 30 bars later
LATE_DELAY = 30


def _venv(tmp_path):
    venv = venv_dir(tmp_path)
    require_flink_venv(venv)
    return venv


def _records(bootstrap: str, topic: str) -> list:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=4000, enable_auto_commit=False)
    out = list(consumer)
    consumer.close()
    return out


def _latest_values(records) -> dict[str, dict]:
    """The upsert topic's final value per key (a tombstone removes the key until rewritten)."""
    latest: dict[str, dict] = {}
    for r in records:
        key = r.key.decode()
        if r.value is None:
            latest.pop(key, None)
        else:
            latest[key] = json.loads(r.value)
    return latest


@pytest.fixture(scope="module")
def bounded_run(broker, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flink")
    venv = _venv(tmp)
    tag = uuid.uuid4().hex[:8]
    topics = FlinkTopics(bars=f"fb-{tag}", news=f"fn-{tag}", out=f"fb-{tag}.flink",
                         sentiment=f"fb-{tag}.sent", dlq=f"fb-{tag}.dlq", group=f"fg-{tag}")
    ensure_topics(broker.bootstrap, topics.all())
    bars, news = simulate_frames(SYMBOLS, bars=N_BARS, seed=11, news_rate=0.3)
    assert len(news) > 500
    bars = bars.sort_values(["ts", "symbol"], kind="stable").reset_index(drop=True)

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=20)
    all_bars = [Bar(*row) for row in bars.itertuples(index=False)]
    acme = [b for b in all_bars if b.symbol == "ACME"]
    late = acme[LATE_INDEX]
    release_after = acme[LATE_INDEX + LATE_DELAY].ts
    for bar in all_bars:
        if bar == late:
            continue
        producer.send(topics.bars, key=bar.symbol.encode(), value=bar.to_json())
        if bar.symbol == "ACME" and bar.ts == release_after:
            producer.send(topics.bars, key=b"ACME", value=late.to_json())
            # and a replayed bar (same id, same values), counted once
            producer.send(topics.bars, key=b"ACME", value=acme[LATE_INDEX + 2].to_json())
    # far too late: a changed copy of an early GLOBX bar, 25 hours behind the watermark
    early = [b for b in all_bars if b.symbol == "GLOBX"][10]
    too_late = Bar(early.symbol, early.interval, early.ts, early.open, early.high * 2,
                   early.low, early.close, early.volume * 9, early.source)
    producer.send(topics.bars, key=b"GLOBX", value=too_late.to_json())
    for poison in (b"not json", b'{"symbol":"ACME","interval":"1m"}',
                   json.dumps({**early.to_dict(), "high": 1.0, "low": 2.0}).encode()):
        producer.send(topics.bars, key=b"ACME", value=poison)
    for item in news.itertuples(index=False):
        producer.send(topics.news, key=item.symbol.encode(),
                      value=json.dumps(item._asdict()).encode())
    producer.send(topics.news, key=b"ACME", value=b'{"symbol":"ACME","ts":1}')
    producer.flush()
    producer.close()

    job = FlinkJob(tmp, broker.bootstrap, topics=topics, venv=venv, lateness_s=3600)
    run = job.run_bounded(timeout_s=540)
    reference = SqliteStore(tmp / "reference.sqlite")
    reference.upsert_bars(all_bars)
    flink_store = SqliteStore(tmp / "flink.sqlite")
    yield {"bars": bars, "news": news, "topics": topics, "run": run, "job": job,
           "reference": reference, "flink_store": flink_store, "late": late,
           "bootstrap": broker.bootstrap}
    reference.close()
    flink_store.close()


def test_candles_equal_the_stores_downsampling_bar_for_bar(bounded_run):
    r = bounded_run
    topic = r["topics"].out
    total = sum(r["run"]["bars_end"].values())
    assert total == 2 * N_BARS + 1 + 1 + 3  # bars, the replay, the too-late bar, 3 poison
    # the job's topic indexed like any stream
    indexer = FlinkIndexer(r["flink_store"], r["bootstrap"], topic=topic,
                           dlq_topic=r["topics"].dlq, group_id=f"ix-{uuid.uuid4().hex[:6]}")
    n_out = len(_records(r["bootstrap"], topic))
    wt = WorkerThread(indexer).start()
    deadline = time.monotonic() + 60
    while indexer.stats()["counters"]["consumed"] < n_out and time.monotonic() < deadline:
        time.sleep(0.2)
    assert wt.stop()
    assert indexer.stats()["counters"]["rejected"] == 0
    compared = {}
    for interval, bucket in (("5m", 300_000), ("1h", 3_600_000)):
        n = 0
        for symbol in SYMBOLS:
            want = r["reference"].ohlc_buckets(symbol, "1m", bucket)
            got = r["flink_store"].query_bars(symbol, interval)
            assert len(got) == len(want) > 0
            assert got["ts"].tolist() == want["ts"].tolist()
            for col in ("open", "high", "low", "close"):
                assert got[col].tolist() == want[col].tolist(), (interval, symbol, col)
            np.testing.assert_allclose(got["volume"], want["volume"], rtol=1e-12)
            assert set(got["source"]) == {"flink"}
            n += len(got)
        compared[interval] = n
    print(f"\nflink candles equal to ohlc_buckets: {compared}; bounded run {r['run']['seconds']} s")
    assert compared["5m"] == 2 * N_BARS // 5 and compared["1h"] >= 2 * 25


def test_a_late_bar_inside_the_lateness_updates_its_window(bounded_run):
    r = bounded_run
    late = r["late"]
    window = late.ts - late.ts % 300_000
    assert window == late.ts  # it opens its window: without it, the open would differ
    key = f"ACME|5m|{window}"
    versions = [json.loads(m.value) for m in _records(r["bootstrap"], r["topics"].out)
                if m.key.decode() == key and m.value is not None]
    assert len(versions) >= 2  # written before the late bar arrived, and again after
    assert versions[0]["open"] != late.open and versions[-1]["open"] == late.open
    assert versions[-1]["volume"] > versions[0]["volume"]


def test_bad_and_too_late_input_is_dead_lettered_with_a_reason(bounded_run):
    r = bounded_run
    dead = _records(r["bootstrap"], r["topics"].dlq)
    reasons = sorted(dict(m.headers)["reason"].decode() for m in dead)
    classes = sorted(dict(m.headers)["error_class"].decode() for m in dead)
    assert classes == ["InvalidBar"] * 3 + ["InvalidNews", "LateBar"], reasons
    assert any("not a JSON object" in x for x in reasons)
    assert any("high is below low" in x for x in reasons)
    late = next(m for m in dead if dict(m.headers)["error_class"] == b"LateBar")
    assert dict(late.headers)["source_topic"].decode() == r["topics"].bars
    assert json.loads(late.value)["high"] > 0  # the original bytes are kept


def test_news_join_equals_the_batch_as_of_join(bounded_run):
    r = bounded_run
    got = pd.DataFrame(_latest_values(_records(r["bootstrap"], r["topics"].sentiment)).values())
    bars = r["bars"]
    want = bars[["symbol", "ts"]].copy()
    want[["news_count_10", "sent_mean_10"]] = sentiment_features(
        bars, r["news"], ["news_count_10", "sent_mean_10"], interval="1m").to_numpy()
    merged = want.merge(got, on=["symbol", "ts"], how="left", suffixes=("", "_flink"))
    assert len(got) == len(want) == 2 * N_BARS
    assert merged["news_count_10_flink"].notna().all()
    assert (merged["news_count_10"] == merged["news_count_10_flink"]).all()
    np.testing.assert_allclose(merged["sent_mean_10_flink"], merged["sent_mean_10"],
                               rtol=1e-9, atol=1e-12)
    with_news = int((merged["news_count_10"] > 0).sum())
    print(f"\nnews join: {len(merged)} bars equal, {with_news} with news in their window")
    assert with_news > N_BARS


def _wait(predicate, timeout_s: float, what: str, job: FlinkJob) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout_s:.0f} s; job log:\n{job.log_tail()}")
        time.sleep(1.0)


def test_a_restarted_job_resumes_from_its_checkpoint_and_loses_nothing(broker, tmp_path):
    """Stop the streaming job after a checkpoint, publish more bars, start it again: it
    restores its windows and offsets, and every candle equals the store's downsampling."""
    venv = _venv(tmp_path)
    tag = uuid.uuid4().hex[:8]
    topics = FlinkTopics(bars=f"rb-{tag}", news=f"rn-{tag}", out=f"rb-{tag}.flink",
                         sentiment=f"rb-{tag}.sent", dlq=f"rb-{tag}.dlq", group=f"rg-{tag}")
    ensure_topics(broker.bootstrap, topics.all())
    bars, _ = simulate_frames(SYMBOLS, bars=240, seed=5, news_rate=0.0)
    all_bars = [Bar(*row) for row in bars.sort_values(["ts", "symbol"]).itertuples(index=False)]
    half = len(all_bars) // 2 + 30  # the 1h window around here spans the restart
    job = FlinkJob(tmp_path, broker.bootstrap, topics=topics, venv=venv, lateness_s=3600)

    def publish(part) -> None:
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=20)
        for bar in part:
            producer.send(topics.bars, key=bar.symbol.encode(), value=bar.to_json())
        producer.flush()
        producer.close()

    def caught_up() -> bool:  # offsets are committed when a checkpoint completes
        return job.lag() == 0

    publish(all_bars[:half])
    job.start(log_id="test-log")
    try:
        _wait(caught_up, 300, "the first run did not checkpoint all bars", job)
        assert job.status()["state"] == "running"
    finally:
        assert job.stop()
    assert job.pid() is None
    publish(all_bars[half:])
    job.start(log_id="test-log")
    try:
        assert job.started_with().get("restore_from"), "the newest checkpoint was not restored"
        _wait(caught_up, 300, "the restarted run did not catch up", job)
    finally:
        job.stop()
    reference = SqliteStore(tmp_path / "reference.sqlite")
    reference.upsert_bars(all_bars)
    latest = _latest_values(_records(broker.bootstrap, topics.out))
    n = 0
    for interval, bucket in (("5m", 300_000), ("1h", 3_600_000)):
        for symbol in SYMBOLS:
            want = reference.ohlc_buckets(symbol, "1m", bucket)
            got = sorted((v for v in latest.values()
                          if v["symbol"] == symbol and v["interval"] == interval),
                         key=lambda v: v["ts"])
            assert [v["ts"] for v in got] == want["ts"].tolist()
            for col in ("open", "high", "low", "close"):
                assert [v[col] for v in got] == want[col].tolist(), (interval, symbol, col)
            np.testing.assert_allclose([v["volume"] for v in got], want["volume"], rtol=1e-12)
            n += len(got)
    reference.close()
    print(f"\nafter a restart: {n} candles equal to ohlc_buckets")
