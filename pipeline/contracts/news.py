"""The news-item contract: the second stream, ``finance-news`` (Kafka key = symbol).

A news message is UTF-8 JSON with exactly the fields of :class:`NewsItem`. One article that
mentions several tickers is several items, one per symbol, each with that ticker's own score.

===============  ==========================================================================
field            rule
===============  ==========================================================================
symbol           1-32 characters, no ``|``, no leading/trailing space, no control character
ts               publication time, integer epoch milliseconds UTC, 2000-2100
source           1-64 characters (``alphavantage``, ``simulator``, ``csv``...)
title            1-500 characters
url              0-2048 characters (empty when the source has no link)
sentiment_score  finite number in [-1, 1] (negative = bearish)
relevance        finite number in [0, 1] (how much the item is about ``symbol``)
===============  ==========================================================================

The same strictness as :func:`pipeline.contracts.schema.parse_bar` applies: a message over
:data:`MAX_NEWS_BYTES` is refused unread, integer literals longer than 20 digits are refused
before Python builds them, ``NaN``/``Infinity``, duplicate keys, lone surrogates and control
characters are refused. Anything refused raises :class:`InvalidNews` (a kind of
:class:`~pipeline.contracts.schema.InvalidBar`, so the indexer's dead-letter handling applies unchanged).

The document ID is deterministic (:func:`news_id`): symbol + source + url, or symbol + source +
ts + title when there is no url, so replays and overlapping polls never duplicate an item.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

from pipeline.contracts.schema import (MAX_SOURCE_LEN, MAX_SYMBOL_LEN, MAX_TS_MS, MIN_TS_MS, InvalidBar,
                             _check_text, _show, decode_object)

NEWS_TOPIC = "finance-news"
NEWS_DLQ_TOPIC = "finance-news.dlq"

NEWS_FIELDS = ("symbol", "ts", "source", "title", "url", "sentiment_score", "relevance")
NEWS_COLUMNS = list(NEWS_FIELDS)
MAX_TITLE_LEN = 500
MAX_URL_LEN = 2048
#: A news message is a few hundred bytes; the url and title limits keep it well under this.
MAX_NEWS_BYTES = 16_384


class InvalidNews(InvalidBar):
    """A message that is not a valid news item; ``reason`` is one sentence for the DLQ."""


@dataclass(frozen=True, slots=True)
class NewsItem:
    """One news item with its sentiment (the contract of ``finance-news``, docs/NEWS.md).
    Immutable; its document id is derived from symbol, source, url, time and title."""

    symbol: str
    ts: int
    source: str
    title: str
    url: str
    sentiment_score: float
    relevance: float

    @property
    def doc_id(self) -> str:
        return news_id(self.symbol, self.source, self.url, self.ts, self.title)

    def to_dict(self) -> dict[str, Any]:
        return {"symbol": self.symbol, "ts": self.ts, "source": self.source,
                "title": self.title, "url": self.url,
                "sentiment_score": self.sentiment_score, "relevance": self.relevance}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False).encode()


def news_id(symbol: str, source: str, url: str, ts: int, title: str) -> str:
    """Deterministic ID; hashed so that a 2 KB url still gives a short, safe key."""
    ident = "\x1f".join((symbol, source, url) if url else (symbol, source, str(int(ts)), title))
    return "news-" + hashlib.sha1(ident.encode("utf-8")).hexdigest()


def parse_news(raw: bytes | str) -> NewsItem:
    """Decode and validate one message; raise :class:`InvalidNews` with the reason.

    Total over its input, like :func:`pipeline.contracts.schema.parse_bar`.
    """
    obj = decode_object(raw, MAX_NEWS_BYTES, InvalidNews)
    return news_from_mapping(obj)


def news_from_mapping(obj: Mapping[str, Any]) -> NewsItem:
    """Validate a decoded mapping against the news contract."""
    try:
        return _news_from_mapping(obj)
    except InvalidNews:
        raise
    except InvalidBar as exc:  # raised by the shared text checks of pipeline.contracts.schema
        raise InvalidNews(exc.reason) from None


def _news_from_mapping(obj: Mapping[str, Any]) -> NewsItem:
    missing = [f for f in NEWS_FIELDS if f not in obj]
    if missing:
        raise InvalidNews(f"missing field(s): {', '.join(missing)}")
    extra = sorted(set(obj) - set(NEWS_FIELDS))
    if extra:
        shown = ", ".join(_show(str(e), 20) for e in extra[:5])
        raise InvalidNews(f"unexpected field(s): {shown}{' …' if len(extra) > 5 else ''}")

    symbol = _check_text("symbol", obj["symbol"], MAX_SYMBOL_LEN)
    if "|" in symbol or symbol != symbol.strip():
        raise InvalidNews(f"field symbol {_show(symbol)} contains '|' or leading/trailing spaces")
    source = _check_text("source", obj["source"], MAX_SOURCE_LEN)
    title = _check_text("title", obj["title"], MAX_TITLE_LEN)
    url = obj["url"]
    if url != "":
        url = _check_text("url", url, MAX_URL_LEN)

    ts = obj["ts"]
    if isinstance(ts, bool) or not isinstance(ts, (int, float)):
        raise InvalidNews(f"field ts must be an integer (epoch ms), got {type(ts).__name__}")
    if isinstance(ts, float):
        if not math.isfinite(ts) or ts != int(ts):
            raise InvalidNews(f"field ts must be a whole number of epoch ms, got {ts!r}")
        ts = int(ts)
    if not MIN_TS_MS <= ts < MAX_TS_MS:
        raise InvalidNews(f"field ts {ts} is outside 2000-2100 in epoch milliseconds")

    score = _bounded("sentiment_score", obj["sentiment_score"], -1.0, 1.0)
    relevance = _bounded("relevance", obj["relevance"], 0.0, 1.0)
    return NewsItem(symbol, ts, source, title, url, score, relevance)


def _bounded(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidNews(f"field {name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidNews(f"field {name} {value:g} is outside [{low:g}, {high:g}]")
    return value
