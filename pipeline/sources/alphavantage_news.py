"""Alpha Vantage NEWS_SENTIMENT as news items for the ``finance-news`` stream.

``GET /query?function=NEWS_SENTIMENT&tickers=IBM&time_from=20250101T0000&time_to=...&limit=50``
answers ``{"items": "N", "feed": [...]}``; each article carries ``title, url, time_published
(YYYYMMDDTHHMMSS), source`` and a ``ticker_sentiment`` list with, per ticker,
``ticker_sentiment_score`` (-1..1) and ``relevance_score`` (0..1), both as strings. KappaLab
keeps one :class:`~pipeline.contracts.news.NewsItem` per (article, requested ticker) with that ticker's
own score and relevance.

One request per ticker: Alpha Vantage's ``tickers=A,B`` means articles that mention *all* of
them. In-body errors, rate-limit notices and the request budget are handled exactly as for
the price source (:mod:`pipeline.sources.alphavantage`): short-term limits are backed off and
retried, the daily limit, a bad key, a premium-only request or any other notice raise
:class:`~pipeline.sources.http_client.ApiError` with one sentence.

Time zone: Alpha Vantage does not document the zone of ``time_published``. It is read as
US/Eastern, the zone of its price series (``news_time_zone`` changes it). That choice is the
safe one for the as-of join: if the truth were UTC, items would land a few hours *later*
than published (never earlier), so no bar could see news from its future.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator
from zoneinfo import ZoneInfo

from pipeline.contracts.backoff import Backoff
from pipeline.contracts.config import Config, Secret
from pipeline.contracts.news import InvalidNews, NewsItem, news_from_mapping
from pipeline.sources.alphavantage import DEFAULT_BASE_URL, KEY_HINT, body_error, check_rate_limit, check_reply
from pipeline.sources.base import SourceError
from pipeline.sources.api_errors import ApiError, Stopped
from pipeline.sources.http_client import ApiHttpClient, HttpPolicy, HttpReply, join_url
from pipeline.sources.redaction import secret_value, short_text
from pipeline.sources.request_budget import RequestBudget

log = logging.getLogger(__name__)

MAX_LIMIT = 1000  # Alpha Vantage's largest page
#: Live polls ask again from this long before the newest item seen, so items that appear late
#: in the feed are not missed; the deterministic IDs and the dedupe set drop the repeats.
POLL_OVERLAP_MS = 3_600_000


class AlphaVantageNews:
    """News items for ``tickers`` from Alpha Vantage NEWS_SENTIMENT.

    ``mode``: ``backfill`` (one request per ticker, then end) or ``live`` (poll every
    ``poll_seconds``, each poll from the newest item seen minus :data:`POLL_OVERLAP_MS`).
    ``time_from`` / ``time_to``: epoch ms UTC bounds of the backfill (None: Alpha Vantage's
    default, the latest items). ``limit``: items per request, at most 1000. Budget and HTTP
    policy as for :class:`~pipeline.sources.alphavantage.AlphaVantageSource` (free tier: 5
    requests a minute, 25 a day; pass the price source's ``budget`` to share it).
    """

    name = "alphavantage"

    def __init__(self, tickers: str | Iterable[str], *, api_key: Secret | str | None,
                 mode: str = "backfill", time_from: int | None = None,
                 time_to: int | None = None, limit: int = 50,
                 base_url: str = DEFAULT_BASE_URL, requests_per_minute: int | None = 5,
                 requests_per_day: int | None = 25, budget: RequestBudget | None = None,
                 poll_seconds: float = 900.0, policy: HttpPolicy | None = None,
                 max_budget_wait: float | None = 120.0, news_time_zone: str = "US/Eastern",
                 dedupe_size: int = 50_000, live_backoff_max: float = 3600.0):
        if isinstance(tickers, str):
            tickers = tickers.replace(",", " ").split()
        self.tickers = [t.strip().upper() for t in tickers if t.strip()]
        if not self.tickers:
            raise SourceError("Give at least one ticker for Alpha Vantage news (e.g. IBM).")
        if mode not in ("backfill", "live"):
            raise SourceError(f"Alpha Vantage news mode must be 'backfill' or 'live', not {mode!r}.")
        if not 1 <= int(limit) <= MAX_LIMIT:
            raise SourceError(f"Alpha Vantage news limit must be 1 to {MAX_LIMIT} items.")
        self._api_key = secret_value(api_key)
        if self._api_key is None:
            raise SourceError(f"Alpha Vantage news needs an API key; set ALPHAVANTAGE_API_KEY "
                              f"({KEY_HINT}).")
        self.mode = mode
        self.time_from, self.time_to = time_from, time_to
        self.limit = int(limit)
        self.url = join_url(base_url, "/query")
        self.poll_seconds = float(poll_seconds)
        self.max_budget_wait = max_budget_wait
        self.zone = ZoneInfo(news_time_zone)
        self.client = ApiHttpClient(
            "Alpha Vantage", secrets=[self._api_key], policy=policy,
            budget=budget if budget is not None else RequestBudget(requests_per_minute,
                                                                   requests_per_day))
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._dedupe_size = int(dedupe_size)
        self.counters = {"items": 0, "duplicates": 0, "invalid": 0, "polls": 0,
                         "live_errors": 0}
        self.live_backoff_max = float(live_backoff_max)
        self.last_error: str | None = None
        self._problem: str | None = None  # the failure of the last live poll, until one works

    def problem(self) -> str | None:
        """Why live polling delivers nothing right now (read by the producer's watchdog)."""
        return self._problem

    @classmethod
    def from_config(cls, config: Config, tickers: str | Iterable[str],
                    **kwargs: Any) -> "AlphaVantageNews":
        return cls(tickers, api_key=config.alphavantage_api_key,
                   base_url=config.alphavantage_base_url, **kwargs)

    def describe(self) -> str:
        return f"Alpha Vantage news {','.join(self.tickers)} ({self.mode})"

    def stats(self) -> dict[str, Any]:
        out = {**self.counters, **self.client.stats()}
        if self.last_error:
            out["last_error"] = self.last_error
        return out

    # -- public

    def items(self, stop: threading.Event) -> Iterator[list[NewsItem]]:
        """Yield batches of new (not yet seen) items until done or ``stop`` is set."""
        try:
            yield from self._poll_loop(stop)
        except Stopped:  # stopped while waiting for the request budget: a clean end
            return

    def _poll_loop(self, stop: threading.Event) -> Iterator[list[NewsItem]]:
        newest: dict[str, int] = {}
        # Live polling outlives a failed poll that may succeed later (a server error after
        # the client's retries, the daily limit, the budget): it pauses, longer each time,
        # and polls again. A bad key or a refused request still ends it.
        backoff = Backoff(base=max(self.poll_seconds, 1e-3), cap=max(self.poll_seconds,
                                                                    self.live_backoff_max))
        while not stop.is_set():
            try:
                for ticker in self.tickers:
                    if stop.is_set():
                        return
                    since = self.time_from
                    if ticker in newest:
                        since = max(since or 0, newest[ticker] - POLL_OVERLAP_MS)
                    batch = self.fetch(ticker, stop, time_from=since, time_to=self.time_to)
                    fresh = self._dedupe(batch)
                    if batch:
                        newest[ticker] = max(newest.get(ticker, 0), max(i.ts for i in batch))
                    if fresh:
                        yield fresh
            except ApiError as exc:
                if self.mode == "backfill" or not exc.retryable:
                    raise
                self.counters["live_errors"] += 1
                self.last_error = str(exc)
                delay = backoff.next_delay()
                self._problem = f"{exc} Polling again in {delay:.3g} s."
                log.warning("Alpha Vantage news: %s Polling again in %.0f s.", exc, delay)
                if stop.wait(delay):
                    return
                continue
            backoff.reset()
            self._problem = None
            self.counters["polls"] += 1
            if self.mode == "backfill" or stop.wait(self.poll_seconds):
                return

    def fetch(self, ticker: str, stop: threading.Event, time_from: int | None = None,
              time_to: int | None = None) -> list[NewsItem]:
        """One request: the ticker's items (oldest first), invalid articles skipped."""
        params = {"function": "NEWS_SENTIMENT", "tickers": ticker, "limit": str(self.limit),
                  "sort": "LATEST"}
        if time_from is not None:
            params["time_from"] = _av_time(time_from, self.zone)
        if time_to is not None:
            params["time_to"] = _av_time(time_to, timezone.utc)
        params["apikey"] = self._api_key.get()
        reply = self.client.get_json(self.url, params, stop=stop, what=f"{ticker} news",
                                     check=_check_rate_limit,
                                     max_budget_wait=self.max_budget_wait)
        return self.parse(ticker, reply)

    def parse(self, ticker: str, reply: HttpReply) -> list[NewsItem]:
        label = f"{ticker} (NEWS_SENTIMENT)"
        body = reply.payload
        check_reply(reply, label)
        feed = body.get("feed")
        if feed is None:
            raise _error_from_body(label, body)
        if not isinstance(feed, list):
            raise ApiError(f"Alpha Vantage's 'feed' for {label} is not a list.", kind="response")
        out: list[NewsItem] = []
        for article in feed:
            try:
                item = self._item(ticker, article)
            except (InvalidNews, ValueError, TypeError, KeyError, AttributeError) as exc:
                self.counters["invalid"] += 1
                reason = exc.reason if isinstance(exc, InvalidNews) else short_text(repr(exc), 120)
                log.warning("Skipped an Alpha Vantage news article for %s: %s", ticker, reason)
                continue
            if item is not None:
                out.append(item)
        out.sort(key=lambda i: (i.ts, i.doc_id))
        return out

    # -- details

    def _item(self, ticker: str, article: Any) -> NewsItem | None:
        mine = [t for t in article.get("ticker_sentiment") or []
                if isinstance(t, dict) and str(t.get("ticker", "")).upper() == ticker]
        if not mine:
            return None  # the article matched on something else; no score for this ticker
        local = datetime.strptime(str(article["time_published"]).strip(), "%Y%m%dT%H%M%S")
        ts = int(local.replace(tzinfo=self.zone).timestamp() * 1000)
        title = " ".join(str(article.get("title") or "").split())[:500] or "(untitled)"
        return news_from_mapping({
            "symbol": ticker, "ts": ts, "source": self.name, "title": title,
            "url": str(article.get("url") or "")[:2048],
            "sentiment_score": float(mine[0]["ticker_sentiment_score"]),
            "relevance": float(mine[0]["relevance_score"]),
        })

    def _dedupe(self, batch: list[NewsItem]) -> list[NewsItem]:
        fresh = []
        for item in batch:
            key = item.doc_id
            if key in self._seen:
                self.counters["duplicates"] += 1
                continue
            self._seen[key] = None
            if len(self._seen) > self._dedupe_size:
                self._seen.popitem(last=False)
            fresh.append(item)
        self.counters["items"] += len(fresh)
        return fresh


def _av_time(ms: int, zone) -> str:
    """Alpha Vantage's ``YYYYMMDDTHHMM``. Its zone is undocumented, so ``time_from`` is
    written in US/Eastern (the earlier wall-clock reading) and ``time_to`` in UTC (the later
    one): whichever zone the server assumes, the window asked for is never narrower."""
    return datetime.fromtimestamp(ms / 1000, zone).strftime("%Y%m%dT%H%M")


def _check_rate_limit(reply: HttpReply) -> None:
    check_rate_limit(reply, "feed")


def _error_from_body(label: str, body: dict) -> ApiError:
    return body_error(
        body, label, what="news", invalid="check the ticker",
        premium=f"Alpha Vantage says {label} is a premium endpoint; this needs a premium key.",
        missing=(f"Alpha Vantage's answer for {label} has no 'feed' section; check "
                 "ALPHAVANTAGE_BASE_URL."))
