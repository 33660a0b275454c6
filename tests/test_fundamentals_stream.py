"""finance-fundamentals end to end on real parts: the Alpha Vantage OVERVIEW double → source →
the fundamentals StreamProducer → embedded broker (TCP) → Indexer → store (SQLite file and the
ES test double); bad messages go to the DLQ once each with the reason."""
from __future__ import annotations

import threading
import time

import pytest
from kafka import KafkaConsumer, KafkaProducer

from pipeline.workers.indexer import Indexer
from pipeline.workers.stream_producer import StreamProducer
from pipeline.sources.alphavantage_overview import AlphaVantageOverview
from pipeline.workers.worker import WorkerThread
from tests.market_api_double import MarketApiDouble, av_overview

pytestmark = pytest.mark.slow
KEY = "av-fund-key"


def test_snapshots_reach_the_store_once_and_bad_ones_the_dlq(broker, topics, any_store):
    with MarketApiDouble(av_key=KEY) as api:
        api.set_av_overview("IBM", av_overview("IBM", PERatio="24.5"))
        api.set_av_overview("MSFT", av_overview("MSFT", PERatio="None", EPS="12.1"))
        source = AlphaVantageOverview("IBM,MSFT,NOPE", api_key=KEY, base_url=api.base_url,
                                      requests_per_minute=None, requests_per_day=None)
        producer = StreamProducer("fundamentals", source.items, broker.bootstrap,
                                  topic=topics["bars"])
        producer.run_guarded(threading.Event())
    assert producer.state == "finished", producer.last_error
    assert producer.stats()["counters"]["produced"] == 2

    raw = KafkaProducer(bootstrap_servers=broker.bootstrap)
    raw.send(topics["bars"], key=b"IBM", value=b'{"symbol":"IBM"}')
    raw.send(topics["bars"], key=b"IBM",
             value=b'{"symbol":"IBM","ts":1735725600000,"source":"s","latest_quarter":"",'
                   b'"values":{"pe_ratio":"high"}}')
    raw.flush()
    raw.close()

    worker = Indexer(any_store, broker.bootstrap, stream="fundamentals", topic=topics["bars"],
                                 dlq_topic=topics["dlq"], group_id=f"g-fund-{topics['bars']}")
    wt = WorkerThread(worker).start()
    deadline = time.time() + 60
    while time.time() < deadline and worker.stats()["counters"]["consumed"] < 4:
        time.sleep(0.2)
    assert wt.stop(), "fundamentals indexer did not stop"
    counters = worker.stats()["counters"]
    assert counters["stored"] == 2 and counters["rejected"] == 2
    assert any_store.count_fundamentals() == 2
    msft = any_store.query_fundamentals("MSFT").iloc[0]
    assert msft["eps"] == 12.1 and msft["pe_ratio"] != msft["pe_ratio"]  # NaN: no P/E

    consumer = KafkaConsumer(topics["dlq"], bootstrap_servers=broker.bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=5000)
    dead = list(consumer)
    consumer.close()
    reasons = sorted(dict(m.headers)["reason"].decode() for m in dead)
    assert len(dead) == 2, reasons
    assert reasons[0].startswith("InvalidFundamentals: missing field(s)")
    assert reasons[1].startswith("InvalidFundamentals: value pe_ratio must be a finite number")


def test_cli_fetches_fundamentals_and_indexes_them(broker, tmp_path):
    import json

    from pipeline.store.sqlite import SqliteStore
    from tests.test_news_stream import _cli

    with MarketApiDouble(av_key="cli-key") as api:
        api.set_av_overview("FCLI", av_overview("FCLI", EPS="3.5"))
        env = {"ALPHAVANTAGE_API_KEY": "cli-key", "ALPHAVANTAGE_BASE_URL": api.base_url}
        code, out, err = _cli(broker, tmp_path, "fundamentals", "--symbols", "FCLI,NOPE",
                              extra_env=env)
        assert code == 0, err
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["snapshots"] == 1 and summary["no_overview"] == 1
        code, out, err = _cli(broker, tmp_path, "fundamentals", "--symbols", "FCLI",
                              extra_env={**env, "ALPHAVANTAGE_API_KEY": "wrong"})
        assert code != 0 and "ALPHAVANTAGE_API_KEY" in err and "wrong" not in err
    code, out, err = _cli(broker, tmp_path, "fundamentals-index", "--until-idle", "3")
    assert code == 0, err
    store = SqliteStore(tmp_path / "kappalab.sqlite")
    try:
        assert store.count_fundamentals("FCLI") == 1
        assert store.query_fundamentals("FCLI")["eps"].tolist() == [3.5]
    finally:
        store.close()
