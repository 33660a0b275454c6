"""The finance-news stream end to end on real parts: news simulator → the news StreamProducer → embedded
broker (TCP) → the news Indexer → store (SQLite file and the ES test double), with bad messages
going to the news DLQ once each."""
from __future__ import annotations

import threading
import time

import pytest
from kafka import KafkaConsumer, KafkaProducer

from pipeline.workers.indexer import Indexer
from pipeline.workers.stream_producer import NewsQueue, StreamProducer
from pipeline.sources.news_simulator import NewsMarketSimulator
from pipeline.workers.worker import WorkerThread

pytestmark = pytest.mark.slow


def run_indexer(store, broker, topics, expected: int, timeout_s: float = 60) -> Indexer:
    worker = Indexer(store, broker.bootstrap, stream="news", topic=topics["bars"],
                         dlq_topic=topics["dlq"], group_id=f"g-news-{topics['bars']}")
    wt = WorkerThread(worker).start()
    deadline = time.time() + timeout_s
    while time.time() < deadline and worker.stats()["counters"]["consumed"] < expected:
        time.sleep(0.2)
    assert wt.stop(), "news indexer did not stop"
    return worker


def test_simulated_news_reaches_the_store_exactly_once(broker, topics, any_store):
    feed = NewsQueue()
    sim = NewsMarketSimulator(news_rate=0.4, news_impact=1.0, on_news=feed.put,
                              symbols=["ACME", "GLOBX"], bars=300, seed=4)
    bars = list(sim.bars(threading.Event()))  # publishes the news into the queue
    feed.close()
    producer = StreamProducer("news", feed.batches, broker.bootstrap, topic=topics["bars"])
    producer.run_guarded(threading.Event())
    n = sim.news_emitted
    assert producer.state == "finished", producer.last_error
    assert producer.stats()["counters"]["produced"] == n > 100 and len(bars) == 600

    # a replay of the same items and two poison messages
    raw = KafkaProducer(bootstrap_servers=broker.bootstrap)
    raw.send(topics["bars"], key=b"ACME", value=b'{"symbol": "ACME"}')
    raw.send(topics["bars"], key=b"ACME",
             value=b'{"symbol":"ACME","ts":1735725600000,"source":"s","title":"t","url":"",'
                   b'"sentiment_score":3,"relevance":0.5}')
    raw.flush()
    raw.close()
    worker = run_indexer(any_store, broker, topics, n + 2)
    counters = worker.stats()["counters"]
    assert counters["stored"] == n and counters["rejected"] == 2
    assert any_store.count_news() == n
    stored = any_store.query_news("ACME")
    assert stored["ts"].is_monotonic_increasing and stored["source"].eq("simulator").all()

    consumer = KafkaConsumer(topics["dlq"], bootstrap_servers=broker.bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=5000)
    dead = list(consumer)
    consumer.close()
    assert len(dead) == 2
    reasons = sorted(dict(m.headers)["reason"].decode() for m in dead)
    assert reasons[0].startswith("InvalidNews: field sentiment_score 3")
    assert reasons[1].startswith("InvalidNews: missing field(s)")


def test_runtime_starts_the_simulated_news_feed(broker, tmp_path):
    from pipeline.contracts.config import load_config
    from pipeline.workers.runtime import Runtime, SimulatorSpec

    config = load_config(env={"KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
                              "KAPPALAB_DATA_DIR": str(tmp_path)})
    rt = Runtime(config)
    try:
        rt.start_indexer()
        rt.start_simulator(SimulatorSpec(symbols=("ACME",), speed=None, bars=300,
                                         news_rate=0.5, news_impact=1.0))
        deadline = time.time() + 60
        while time.time() < deadline and not (rt.store.count_bars() == 300 and
                                              rt.store.count_news() > 100):
            time.sleep(0.3)
        assert rt.is_running("news_indexer") and rt.is_running("news_producer")
        assert rt.store.count_bars() == 300
        emitted = rt.workers["producer"].worker.source.news_emitted
        assert rt.store.count_news() == emitted > 100
    finally:
        rt.shutdown()


def _cli(broker, data_dir, *args, extra_env=None):
    import os
    import subprocess
    import sys

    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap,
               KAPPALAB_DATA_DIR=str(data_dir), PYTHONPATH=os.getcwd(), **(extra_env or {}))
    env.pop("ELASTICSEARCH_URL", None)
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], env=env,
                          capture_output=True, text=True, timeout=240)
    return proc.returncode, proc.stdout, proc.stderr


def test_cli_publishes_csv_and_alphavantage_news_and_indexes_them(broker, tmp_path):
    import json

    from pipeline.store.sqlite import SqliteStore
    from tests.market_api_double import MarketApiDouble, av_article

    csv_file = tmp_path / "h.csv"
    csv_file.write_text("symbol,published,title\n"
                        "CLICO,2025-01-02T15:00:00Z,CLICO shares soar on great results\n"
                        "CLICO,2025-01-02T16:00:00Z,CLICO hit by terrible lawsuit\n"
                        "CLICO,not-a-time,Broken row\n", encoding="utf-8")
    code, out, err = _cli(broker, tmp_path, "news", "--source", "csv", "--file", str(csv_file))
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["items"] == 2 and summary["skipped"] == 1

    with MarketApiDouble(av_key="cli-key") as api:
        api.set_av_news("AVCLI", [av_article("A", 1_735_830_000_000, {"AVCLI": (0.3, 0.8)}),
                                  av_article("B", 1_735_833_600_000, {"AVCLI": (-0.4, 0.6)})])
        code, out, err = _cli(broker, tmp_path, "news", "--symbols", "AVCLI",
                              extra_env={"ALPHAVANTAGE_API_KEY": "cli-key",
                                         "ALPHAVANTAGE_BASE_URL": api.base_url})
        assert code == 0, err
        code, out, err = _cli(broker, tmp_path, "news", "--symbols", "AVCLI",
                              extra_env={"ALPHAVANTAGE_API_KEY": "wrong",
                                         "ALPHAVANTAGE_BASE_URL": api.base_url})
        assert code != 0 and "ALPHAVANTAGE_API_KEY" in err and "wrong" not in err

    code, out, err = _cli(broker, tmp_path, "news-index", "--until-idle", "3")
    assert code == 0, err
    store = SqliteStore(tmp_path / "kappalab.sqlite")
    try:
        assert store.count_news("CLICO") == 2 and store.count_news("AVCLI") == 2
        scores = store.query_news("CLICO")["sentiment_score"].tolist()
        assert scores[0] > 0 > scores[1]
    finally:
        store.close()


def test_cli_simulator_publishes_its_news_next_to_the_bars(broker, tmp_path):
    """`produce --source simulator --news-rate` publishes the simulator's news to finance-news
    (every item, once); `news-index` stores them; a rate without the simulator is refused."""
    import json

    from pipeline.store.sqlite import SqliteStore

    code, out, err = _cli(broker, tmp_path, "produce", "--symbols", "NEWSA,NEWSB", "--bars",
                          "120", "--news-rate", "0.3", "--news-impact", "1.5")
    assert code == 0, err
    summary = [json.loads(line) for line in out.strip().splitlines()
               if line.startswith("{")][-1]
    assert summary["summary"] == "news_producer" and summary["dropped"] == 0
    assert summary["produced"] > 30 and summary["send_errors"] == 0
    code, out, err = _cli(broker, tmp_path, "news-index", "--until-idle", "3")
    assert code == 0, err
    store = SqliteStore(tmp_path / "kappalab.sqlite")
    try:
        assert store.count_news("NEWSA") + store.count_news("NEWSB") == summary["produced"]
    finally:
        store.close()
    code, out, err = _cli(broker, tmp_path, "produce", "--source", "csv", "--file", "x.csv",
                          "--news-rate", "0.3")
    assert code != 0 and "--source simulator" in err
