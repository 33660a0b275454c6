"""Polygon.io aggregates: ``/v2/aggs/ticker/{ticker}/range/{multiplier}/{timespan}/{from}/{to}``.

Requests ask for ``sort=asc`` and follow ``next_url`` pages; Polygon's ``next_url`` omits the
key, so it is appended again (and a ``next_url`` on another host is re-rooted on the
configured base URL, so the key only ever goes there). HTTP 401/403 and ``status`` values
other than ``OK``/``DELAYED`` become one sentence; HTTP 429 is backed off and retried; an
empty answer (``resultsCount`` 0, no ``results``) is simply no bars. ``t`` is the start of the
aggregate window in epoch ms UTC; daily bars are moved to the convention of
:mod:`pipeline.sources.daily` (midnight UTC of the trading date).
"""
from __future__ import annotations

import logging
import threading
from datetime import date, datetime, timedelta, timezone
from typing import Any, Iterable, Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pipeline.contracts.config import Config, Secret
from pipeline.contracts.schema import Bar, InvalidBar, bar_from_mapping
from pipeline.sources.base import SourceError
from pipeline.sources.api_errors import ApiError, RateLimited
from pipeline.sources.daily import nearest_utc_midnight
from pipeline.sources.http_client import ApiHttpClient, HttpPolicy, HttpReply, join_url
from pipeline.sources.polled_source import PolledApiSource
from pipeline.sources.redaction import short_text
from pipeline.sources.request_budget import RequestBudget

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.polygon.io"
#: KappaLab interval -> (multiplier, timespan)
POLYGON_INTERVALS: dict[str, tuple[int, str]] = {
    "1m": (1, "minute"), "5m": (5, "minute"), "15m": (15, "minute"), "30m": (30, "minute"),
    "1h": (1, "hour"), "1d": (1, "day"),
}
GOOD_STATUSES = ("OK", "DELAYED")
MAX_LIMIT = 50_000
KEY_HINT = "keys are on the dashboard at https://polygon.io"


class PolygonSource(PolledApiSource):
    """Aggregate bars for one or more tickers from Polygon.

    Parameters
    ----------
    symbols: one ticker, a comma/space separated string, or a list ("AAPL", "AAPL,MSFT").
    interval: KappaLab interval 1m/5m/15m/30m/1h/1d.
    api_key: ``Secret`` or str; never logged or shown.
    mode: ``backfill`` (the last ``days`` days, or ``start``..``end``, then end) or ``live``
        (first the same window, then poll from the last bar on).
    days: backfill window in days back from today (UTC).
    start, end: explicit window (``date``, ``YYYY-MM-DD`` or epoch ms); override ``days``.
    adjusted: split-adjusted prices (Polygon's default, true).
    limit: bars per page (Polygon allows up to 50000); ``max_pages`` bounds a backfill.
    base_url: API root (``POLYGON_BASE_URL``).
    requests_per_minute, requests_per_day, budget: local request budget (free plan: 5/min).
    poll_seconds, include_incomplete, policy, max_budget_wait, live_backoff_max: as for
        :class:`~pipeline.sources.alphavantage.AlphaVantageSource`.
    """

    name = "polygon"
    display_name = "Polygon"
    key_env = "POLYGON_API_KEY"
    key_hint = KEY_HINT

    def __init__(self, symbols: str | Iterable[str], interval: str = "1m", *,
                 api_key: Secret | str | None, mode: str = "backfill", days: int = 7,
                 start: date | str | int | None = None, end: date | str | int | None = None,
                 adjusted: bool = True, limit: int = MAX_LIMIT, max_pages: int = 10_000,
                 base_url: str = DEFAULT_BASE_URL, requests_per_minute: int | None = 5,
                 requests_per_day: int | None = None, budget: RequestBudget | None = None,
                 poll_seconds: float | None = None, include_incomplete: bool = False,
                 policy: HttpPolicy | None = None, max_budget_wait: float | None = 120.0,
                 live_backoff_max: float = 900.0):
        super().__init__(symbols, interval, mode=mode, api_key=api_key,
                         poll_seconds=poll_seconds, include_incomplete=include_incomplete,
                         live_backoff_max=live_backoff_max, max_budget_wait=max_budget_wait)
        if int(days) < 1:
            raise SourceError(f"Polygon backfill days must be at least 1, not {days!r}.")
        if not 1 <= int(limit) <= MAX_LIMIT:
            raise SourceError(f"Polygon limit must be between 1 and {MAX_LIMIT}, not {limit!r}.")
        self.days = int(days)
        self.start = _window_edge(start, "start")
        self.end = _window_edge(end, "end")
        self.adjusted = adjusted
        self.limit = int(limit)
        self.max_pages = int(max_pages)
        self.multiplier, self.timespan = POLYGON_INTERVALS[interval]
        self.base_url = base_url
        join_url(base_url, "/")  # validates the URL now rather than at the first request
        self.client = ApiHttpClient(
            "Polygon", secrets=[self._api_key], policy=policy,
            budget=budget if budget is not None else (
                RequestBudget(requests_per_minute, requests_per_day)
                if requests_per_minute or requests_per_day else None))
        self._counters["pages"] = 0

    @classmethod
    def from_config(cls, config: Config, symbols: str | Iterable[str], interval: str = "1m",
                    **kwargs: Any) -> "PolygonSource":
        """Key and base URL from ``POLYGON_API_KEY`` / ``POLYGON_BASE_URL``."""
        return cls(symbols, interval, api_key=config.polygon_api_key,
                   base_url=config.polygon_base_url, **kwargs)

    def describe(self) -> str:
        window = (f"{self.start}..{self.end or 'today'}" if self.start else f"last {self.days} days")
        return (f"Polygon {','.join(self.symbols)} {self.interval} "
                f"({self.multiplier} {self.timespan}, {window}, {self.mode})")

    # -- fetching

    def _fetch(self, symbol: str, stop: threading.Event, since_ts: int | None,
               max_budget_wait: float | None) -> Iterator[list[Bar]]:
        start, end = self._window(since_ts)
        path = (f"/v2/aggs/ticker/{symbol}/range/{self.multiplier}/{self.timespan}/"
                f"{start}/{end}")
        url = join_url(self.base_url, path)
        params: dict[str, str] = {"adjusted": str(self.adjusted).lower(), "sort": "asc",
                                  "limit": str(self.limit)}
        what = f"{symbol} {self.interval} aggregates"
        seen_urls: set[str] = set()
        for page in range(1, self.max_pages + 1):
            params["apiKey"] = self._api_key.get()
            reply = self.client.get_json(url, params, stop=stop, what=what,
                                         check=_check_rate_limit, max_budget_wait=max_budget_wait)
            body = self._checked(symbol, reply)
            self._counters["pages"] += 1
            yield self._parse(symbol, body.get("results") or [])
            next_url = body.get("next_url")
            if not next_url or not isinstance(next_url, str):
                return
            url, params = self._next_request(next_url)
            if url + "?" + urlencode(params) in seen_urls:
                log.warning("Polygon %s: next_url repeats itself; stopping pagination", symbol)
                return
            seen_urls.add(url + "?" + urlencode(params))
        log.warning("Polygon %s: stopped after max_pages=%d pages", symbol, self.max_pages)

    def _window(self, since_ts: int | None) -> tuple[str, str]:
        """``from``/``to`` path parts: the configured window, or from the last bar on (live)."""
        now = datetime.now(timezone.utc)
        if since_ts is not None:
            return str(since_ts), str(int(now.timestamp() * 1000))
        start = self.start or (now.date() - timedelta(days=self.days)).isoformat()
        end = self.end or now.date().isoformat()
        return str(start), str(end)

    def _next_request(self, next_url: str) -> tuple[str, dict[str, str]]:
        """Split ``next_url`` into URL and params, on our host, without any key it carries."""
        parts = urlsplit(next_url)
        base = urlsplit(self.base_url.strip())
        if (parts.scheme, parts.netloc) != (base.scheme, base.netloc):
            if parts.netloc:
                log.debug("Polygon next_url on another host; re-rooting it on the base URL")
            url = join_url(self.base_url, parts.path)
        else:
            url = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        params = {k: v for k, v in parse_qsl(parts.query, keep_blank_values=True)
                  if k.lower() != "apikey"}
        return url, params

    def _checked(self, symbol: str, reply: HttpReply) -> dict:
        body = reply.payload if isinstance(reply.payload, dict) else {}
        upstream = body.get("error") or body.get("message") or reply.text
        label = f"{symbol} {self.interval} aggregates"
        if reply.status == 401:
            raise ApiError(f"Polygon rejected the API key (HTTP 401); set POLYGON_API_KEY to a "
                           f"valid key ({KEY_HINT}).", kind="auth", status=401, detail=upstream)
        if reply.status == 403 or body.get("status") == "NOT_AUTHORIZED":
            raise ApiError(f"Polygon says your plan does not include {label} for this date range "
                           f"(HTTP {reply.status}, {body.get('status') or 'forbidden'}); upgrade "
                           "the plan or ask for a coarser interval or older dates.",
                           kind="forbidden", status=reply.status, detail=upstream)
        if reply.status == 404:
            raise ApiError(f"Polygon answered HTTP 404 for {label}; check the ticker and "
                           "POLYGON_BASE_URL.", kind="request", status=404, detail=upstream)
        if reply.status >= 400:
            raise ApiError(f"Polygon refused the request for {label} (HTTP {reply.status}): "
                           f"\"{short_text(str(upstream), 120)}\".", kind="request",
                           status=reply.status, detail=upstream)
        if not body:
            raise ApiError(f"Polygon answered {label} with something that is not a JSON object; "
                           "check POLYGON_BASE_URL.", kind="response", detail=reply.text)
        status = body.get("status")
        if status not in GOOD_STATUSES:
            if status == "ERROR":
                raise ApiError(f"Polygon returned an error for {label}: "
                               f"\"{short_text(str(upstream), 120)}\".", kind="request",
                               detail=upstream)
            raise ApiError(f"Polygon answered {label} with status {short_text(str(status), 40)!r}"
                           f" instead of OK.", kind="response", detail=upstream)
        if not isinstance(body.get("results") or [], list):
            raise ApiError(f"Polygon's results for {label} are not a list.", kind="response")
        return body

    def _parse(self, symbol: str, results: list) -> list[Bar]:
        bars = []
        daily = self.interval == "1d"
        for item in results:
            try:
                bars.append(bar_from_mapping({
                    "symbol": symbol, "interval": self.interval,
                    "ts": nearest_utc_midnight(item["t"]) if daily and isinstance(
                        item.get("t"), (int, float)) and not isinstance(item["t"], bool)
                    else item["t"],
                    "open": item["o"], "high": item["h"], "low": item["l"], "close": item["c"],
                    "volume": item.get("v", 0), "source": self.name}))
            except InvalidBar as exc:
                self._invalid(symbol, f"t={item.get('t')}", exc.reason)
            except (KeyError, TypeError, AttributeError) as exc:
                where = f"t={item.get('t')}" if isinstance(item, dict) else "result"
                self._invalid(symbol, where, f"missing or malformed field ({exc})")
        bars.sort(key=lambda b: b.ts)  # asked for asc already; cheap insurance
        return bars


def _check_rate_limit(reply: HttpReply) -> None:
    """Polygon sometimes reports the per-minute limit in a 200 body with status ERROR."""
    body = reply.payload
    if isinstance(body, dict) and body.get("status") == "ERROR":
        text = str(body.get("error") or body.get("message") or "").lower()
        if "exceeded the maximum requests" in text or "rate limit" in text:
            raise RateLimited("Polygon status ERROR: too many requests")


def _window_edge(value: date | str | int | None, name: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return str(int(value.timestamp() * 1000))
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return str(int(value))
    try:
        return date.fromisoformat(str(value)).isoformat()
    except ValueError:
        raise SourceError(f"Polygon {name} must be a date like 2024-01-31 or epoch "
                          f"milliseconds, not {value!r}.") from None
