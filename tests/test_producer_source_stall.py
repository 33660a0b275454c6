"""A live producer (bars or news) whose source keeps failing says ``stalled`` with the
reason, then ``running`` again once data arrives. Real parts: the embedded broker over TCP and
the Alpha Vantage TEST DOUBLE on loopback (tests/market_api_double.py) answering 503s, then
bars or news."""
from __future__ import annotations

import time


from pipeline.workers.stream_producer import StreamProducer
from pipeline.workers.producer import Producer
from pipeline.sources.alphavantage import AlphaVantageSource
from pipeline.sources.alphavantage_news import AlphaVantageNews
from pipeline.sources.http_client import HttpPolicy
from pipeline.workers.worker import WorkerThread
from tests.market_api_double import (
    MarketApiDouble, av_article, eastern_ms, make_bars, server_error,
)
from tests.test_scorer import wait_for

KEY = "AVKEY-stall-test-0042"
START = eastern_ms(2024, 1, 31, 9, 30)
FIVE_MIN = 300_000
FAST = HttpPolicy(connect_timeout=1.0, read_timeout=0.5, retries=1, backoff=0.01,
                  backoff_max=0.05, rate_limit_retries=1, rate_limit_backoff=0.01)


def test_failing_live_source_stalls_the_producer_with_its_reason_then_it_recovers(broker):
    with MarketApiDouble(av_key=KEY) as api:
        api.set_av_bars("IBM", "5min", make_bars(START, 5, FIVE_MIN))
        api.always("alphavantage", server_error(503))
        source = AlphaVantageSource("IBM", "5m", api_key=KEY, base_url=api.base_url,
                                    policy=FAST, requests_per_minute=None,
                                    requests_per_day=None, mode="live", poll_seconds=0.2,
                                    live_backoff_max=0.3)
        producer = Producer(source, broker.bootstrap, topic=f"stall-{time.time_ns()}",
                            live=True)
        producer.WATCH_EVERY_S = 0.1
        wt = WorkerThread(producer).start()
        try:
            wait_for(lambda: producer.state == "stalled", 30, "the producer to say stalled")
            stats = producer.stats(history=False)
            assert stats["last_error"].startswith("the source delivers no bars:")
            assert "Polling again in" in stats["last_error"] and KEY not in stats["last_error"]
            assert stats["counters"].get("produced", 0) == 0
            assert stats["gauges"]["source"]["live_errors"] >= 1
            api.always("alphavantage", None)  # the API answers again
            wait_for(lambda: producer.state == "running"
                     and producer.stats(history=False)["counters"].get("produced", 0) == 5,
                     30, "bars produced and the state back to running")
        finally:
            assert wt.stop(20)


def test_failing_live_news_source_stalls_the_news_producer_then_it_recovers(broker):
    with MarketApiDouble(av_key=KEY) as api:
        api.set_av_news("IBM", [av_article("IBM wins contract", START, {"IBM": (0.4, 0.9)}),
                                av_article("Chips slump", START + FIVE_MIN, {"IBM": (-0.3, 0.5)})])
        api.always("alphavantage", server_error(503))
        source = AlphaVantageNews("IBM", api_key=KEY, base_url=api.base_url, policy=FAST,
                                  requests_per_minute=None, requests_per_day=None, mode="live",
                                  poll_seconds=0.2, live_backoff_max=0.3)
        producer = StreamProducer("news", source.items, broker.bootstrap, topic=f"stall-n-{time.time_ns()}",
                                description=source.describe())
        producer.WATCH_EVERY_S = 0.1
        wt = WorkerThread(producer).start()
        try:
            wait_for(lambda: producer.state == "stalled", 30, "the news producer to say stalled")
            error = producer.stats(history=False)["last_error"]
            assert error.startswith("the source delivers no news:") and KEY not in error
            api.always("alphavantage", None)
            wait_for(lambda: producer.state == "running"
                     and producer.stats(history=False)["counters"].get("produced", 0) == 2,
                     30, "news produced and the state back to running")
        finally:
            assert wt.stop(20)
