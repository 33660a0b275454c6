"""AlphaVantageNews (NEWS_SENTIMENT) against the loopback Alpha Vantage TEST DOUBLE (real HTTP,
no patching): success, empty feed, every in-body error, rate limits, budget, live dedupe."""
from __future__ import annotations

import threading

import pytest

from pipeline.contracts.news import NewsItem
from pipeline.sources.alphavantage_news import AlphaVantageNews
from pipeline.sources.base import SourceError
from pipeline.sources.api_errors import ApiError
from pipeline.sources.http_client import HttpPolicy
from pipeline.sources.request_budget import RequestBudget
from tests.market_api_double import (
    MarketApiDouble, Reply, av_article, av_error_message, av_information_burst,
    av_information_daily_limit, av_information_demo, av_information_premium, av_missing_key,
    av_note_rate_limit, eastern_ms, server_error,
)

KEY = "AVKEY-news-4412-QQ"
FAST = HttpPolicy(connect_timeout=1.0, read_timeout=0.5, retries=2, backoff=0.01,
                  backoff_max=0.05, rate_limit_retries=3, rate_limit_backoff=0.01)
T0 = eastern_ms(2024, 3, 4, 9, 0)
HOUR = 3_600_000

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def api():
    with MarketApiDouble(av_key=KEY) as double:
        double.set_av_news("IBM", [
            av_article("IBM wins contract", T0, {"IBM": (0.41, 0.9), "MSFT": (-0.2, 0.3)},
                       url="https://news.test/ibm-1"),
            av_article("Chips slump", T0 + HOUR, {"IBM": (-0.35, 0.25)},
                       url="https://news.test/chips"),
            av_article("IBM earnings", T0 + 2 * HOUR, {"IBM": (0.05, 0.7)},
                       url="https://news.test/ibm-2"),
        ])
        yield double


def news(api, tickers="IBM", **kw) -> AlphaVantageNews:
    kw.setdefault("api_key", KEY)
    kw.setdefault("policy", FAST)
    kw.setdefault("requests_per_minute", None)
    kw.setdefault("requests_per_day", None)
    return AlphaVantageNews(tickers, base_url=api.base_url, **kw)


def run(src: AlphaVantageNews) -> list[NewsItem]:
    return [i for batch in src.items(threading.Event()) for i in batch]


def test_success_gives_one_item_per_article_with_the_ticker_scores(api):
    items = run(news(api))
    assert [i.title for i in items] == ["IBM wins contract", "Chips slump", "IBM earnings"]
    first = items[0]
    assert first == NewsItem("IBM", T0, "alphavantage", "IBM wins contract",
                             "https://news.test/ibm-1", 0.41, 0.9)
    assert [i.ts for i in items] == [T0, T0 + HOUR, T0 + 2 * HOUR]  # Eastern -> UTC epoch ms
    sent = api.requests_for("alphavantage")[0].params
    assert sent["function"] == "NEWS_SENTIMENT" and sent["tickers"] == "IBM"
    assert sent["apikey"] == KEY and sent["limit"] == "50"


def test_time_window_and_limit_are_sent(api):
    items = run(news(api, time_from=T0 + HOUR, limit=1))
    assert [i.title for i in items] == ["IBM earnings"]  # newest first, limit 1
    sent = api.requests_for("alphavantage")[0].params
    assert sent["time_from"] == "20240304T1000" and sent["limit"] == "1"


def test_one_request_per_ticker(api):
    api.set_av_news("MSFT", [av_article("Cloud", T0, {"MSFT": (0.6, 1.0)})])
    items = run(news(api, "IBM, MSFT"))
    assert {i.symbol for i in items} == {"IBM", "MSFT"}
    assert [r.params["tickers"] for r in api.requests_for("alphavantage")] == ["IBM", "MSFT"]


def test_empty_feed_is_no_items_not_an_error(api):
    assert run(news(api, "NOPE")) == []


def test_invalid_article_is_skipped_and_counted(api):
    bad = av_article("Broken", T0, {"IBM": (0.5, 0.5)})
    bad["ticker_sentiment"][0]["ticker_sentiment_score"] = "7.5"  # outside [-1, 1]
    api.set_av_news("IBM", [bad, av_article("Fine", T0, {"IBM": (0.5, 0.5)})])
    src = news(api)
    assert [i.title for i in run(src)] == ["Fine"]
    assert src.stats()["invalid"] == 1


@pytest.mark.parametrize("reply,kind,words", [
    (av_error_message("NEWS_SENTIMENT"), "request", "invalid API call"),
    (av_missing_key(), "auth", "ALPHAVANTAGE_API_KEY"),
    (av_information_premium(), "forbidden", "premium"),
    (av_information_demo(), "auth", "demo key"),
    (av_information_daily_limit(KEY), "rate_limit", "daily request limit"),
    (Reply(200, {"Information": "Invalid inputs. Please refer to the API documentation."}),
     "request", "Invalid inputs"),
    (Reply(200, {"items": "0"}), "response", "no 'feed'"),
    (Reply(200, ["not", "an", "object"]), "response", "not a JSON object"),
    (server_error(404), "request", "HTTP 404"),
])
def test_every_in_body_error_is_one_clear_sentence(api, reply, kind, words):
    api.script("alphavantage", reply)
    with pytest.raises(ApiError) as err:
        run(news(api))
    message = str(err.value)
    assert err.value.kind == kind and words in message, message
    assert "\n" not in message and message.endswith(".") and KEY not in message
    assert len(api.requests) == 1


def test_rate_limit_notices_are_backed_off_then_succeed(api):
    api.script("alphavantage", av_note_rate_limit(), av_information_burst())
    src = news(api)
    assert len(run(src)) == 3
    assert len(api.requests) == 3 and src.stats()["rate_limited"] == 2


def test_budget_is_shared_and_enforced(api):
    budget = RequestBudget(per_minute=None, per_day=1)
    run(news(api, budget=budget, max_budget_wait=0.2))
    with pytest.raises(ApiError):
        run(news(api, budget=budget, max_budget_wait=0.2))
    assert len(api.requests) == 1


def test_live_polls_dedupe_and_ask_from_the_newest_item(api):
    stop = threading.Event()
    src = news(api, mode="live", poll_seconds=0.05)
    got: list[NewsItem] = []
    for batch in src.items(stop):
        got += batch
        if len(got) == 3 and len(api.requests) == 1:
            api.set_av_news("IBM", api.av_news["IBM"] + [
                av_article("Late item", T0 + 3 * HOUR, {"IBM": (0.2, 0.5)})])
        if len(got) >= 4:
            stop.set()
    assert [i.title for i in got][-1] == "Late item" and len(got) == 4
    later = api.requests_for("alphavantage")[1].params
    assert later["time_from"] == "20240304T1000"  # newest seen (11:00 ET) minus the overlap
    assert src.stats()["duplicates"] >= 1


def test_configuration_errors_are_sentences():
    with pytest.raises(SourceError, match="ALPHAVANTAGE_API_KEY"):
        AlphaVantageNews("IBM", api_key=None)
    with pytest.raises(SourceError, match="limit"):
        AlphaVantageNews("IBM", api_key="k", limit=5000)
    with pytest.raises(SourceError, match="ticker"):
        AlphaVantageNews(" , ", api_key="k")


def test_live_polling_outlives_a_failed_poll_but_not_a_bad_key(api):
    """A server error that outlasts the client's retries pauses live polling, which then
    polls again and gets the items; a rejected key ends it at once."""
    api.script("alphavantage", server_error(503), server_error(503), server_error(503))
    stop = threading.Event()
    src = news(api, mode="live", poll_seconds=0.05, live_backoff_max=0.1)
    got: list[NewsItem] = []
    for batch in src.items(stop):
        got += batch
        stop.set()
    assert len(got) == 3
    stats = src.stats()
    assert stats["live_errors"] == 1 and "HTTP 503" in stats["last_error"]
    assert KEY not in stats["last_error"]
    api.script("alphavantage", av_missing_key())
    with pytest.raises(ApiError, match="ALPHAVANTAGE_API_KEY"):
        run(news(api, mode="live", poll_seconds=0.05))
    with pytest.raises(ApiError):  # a backfill still fails on the first failed request
        api.script("alphavantage", server_error(503), server_error(503), server_error(503))
        run(news(api))
