"""The news part of the store contract, every backend (SQLite file, the ES test double over
loopback HTTP, a real cluster when ``ELASTICSEARCH_URL`` is set), plus the news schema."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from pipeline.contracts.news import (MAX_NEWS_BYTES, NEWS_COLUMNS, InvalidNews, NewsItem, news_id,
                           parse_news)
from pipeline.contracts.schema import InvalidBar
from tests.test_store_contract import PAGE, es_server, store  # noqa: F401  (fixtures)

T0 = 1_700_000_000_000


def make_news(symbol="AAA", n=20, start=T0, step=45_000) -> list[NewsItem]:
    return [NewsItem(symbol, start + i * step, "simulator" if i % 2 else "alphavantage",
                     f"Headline {i} about {symbol}", f"https://example.test/{symbol}/{i}"
                     if i % 3 else "", round((i % 7) / 3 - 1, 6), (i % 5) / 4)
            for i in range(n)]


def test_news_round_trip_range_and_limit(store):
    items = make_news("AAA") + make_news("BBB", n=5)
    assert store.upsert_news(items).accepted == len(items)
    got = store.query_news("AAA")
    assert list(got.columns) == NEWS_COLUMNS and len(got) == 20
    assert got["ts"].is_monotonic_increasing
    first = got.iloc[0].to_dict()
    assert first == {**items[0].to_dict(), "ts": items[0].ts}
    ranged = store.query_news("AAA", T0 + 45_000, T0 + 5 * 45_000)
    assert ranged["ts"].tolist() == [T0 + i * 45_000 for i in range(1, 5)]  # half-open
    latest = store.query_news("AAA", limit=3)
    assert latest["ts"].tolist() == [T0 + i * 45_000 for i in (17, 18, 19)]
    assert store.count_news() == 25 and store.count_news("BBB") == 5
    assert store.query_news("ZZZ").empty and list(store.query_news("ZZZ").columns) == NEWS_COLUMNS


def test_news_replay_is_idempotent_and_overwrites(store):
    items = make_news(n=2 * PAGE + 1)  # several search pages on the ES backends
    store.upsert_news(items)
    changed = NewsItem(**{**items[4].to_dict(), "sentiment_score": 0.9})
    store.upsert_news(items + [changed])
    assert store.count_news("AAA") == len(items)
    got = store.query_news("AAA")
    assert got.loc[got["ts"] == changed.ts, "sentiment_score"].tolist() == [0.9]


def test_reset_deletes_news(store):
    store.upsert_news(make_news(n=3))
    store.reset()
    assert store.count_news() == 0
    store.upsert_news(make_news(n=2))
    assert store.count_news() == 2


# ---- schema ---------------------------------------------------------------------------------
GOOD = {"symbol": "AAPL", "ts": T0, "source": "alphavantage", "title": "Apple beats",
        "url": "https://x.test/a", "sentiment_score": 0.25, "relevance": 0.8}


def test_parse_news_accepts_the_contract():
    item = parse_news(json.dumps(GOOD).encode())
    assert item.to_dict() == GOOD
    assert parse_news(item.to_json()) == item
    assert parse_news(json.dumps({**GOOD, "url": ""})).url == ""


@pytest.mark.parametrize("change, words", [
    ({"sentiment_score": 1.5}, "sentiment_score"),
    ({"relevance": -0.1}, "relevance"),
    ({"ts": 1_700_000_000}, "outside 2000-2100"),
    ({"ts": True}, "ts must be an integer"),
    ({"title": ""}, "title"),
    ({"title": "x" * 501}, "title"),
    ({"title": "bad\ud800"}, "lone surrogate"),
    ({"title": "bell\x07"}, "control character"),
    ({"symbol": "A|B"}, "'|'"),
    ({"url": 3}, "url must be a string"),
    ({"extra": 1}, "unexpected field"),
])
def test_parse_news_rejects_with_a_reason(change, words):
    with pytest.raises(InvalidNews) as exc:
        parse_news(json.dumps({**GOOD, **change}))
    assert words in exc.value.reason
    assert isinstance(exc.value, InvalidBar)  # the indexer's DLQ path applies unchanged


@pytest.mark.parametrize("raw, words", [
    (b'{"symbol": "A", "symbol": "B"}', "duplicate field"),
    (('{"ts": ' + "9" * 400 + "}").encode(), "integer literal"),
    (b'{"sentiment_score": NaN}', "not finite"),
    (b"\xff\xfe", "UTF-8"),
    (b"[1, 2]", "expected an object"),
    (b"x" * (MAX_NEWS_BYTES + 1), "byte limit"),
    (b"{", "not JSON"),
])
def test_parse_news_is_total_over_bad_bytes(raw, words):
    with pytest.raises(InvalidNews) as exc:
        parse_news(raw)
    assert words in exc.value.reason


def test_news_id_is_deterministic_and_separates_symbols():
    a = parse_news(json.dumps(GOOD))
    assert a.doc_id == parse_news(json.dumps(GOOD)).doc_id
    assert a.doc_id != parse_news(json.dumps({**GOOD, "symbol": "MSFT"})).doc_id
    # without a url the title and ts identify the item
    assert news_id("A", "csv", "", T0, "t") != news_id("A", "csv", "", T0 + 1, "t")
    assert news_id("A", "csv", "", T0, "t") == news_id("A", "csv", "", T0, "t")
    assert len(news_id("A", "s", "u" * 2048, T0, "t")) < 64
