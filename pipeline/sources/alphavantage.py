"""Alpha Vantage bars: TIME_SERIES_INTRADAY (1/5/15/30/60min) and TIME_SERIES_DAILY.

Alpha Vantage answers HTTP 200 even for errors; the body says what went wrong:
``"Error Message"`` (bad symbol or function, missing key), ``"Note"`` (too many calls per
minute) or ``"Information"`` (rate limit, premium-only endpoint, demo key). Each becomes one
sentence: short-term rate limits are backed off and retried, the rest raise
:class:`~pipeline.sources.api_errors.ApiError`. The free tier allows 25 requests a day and
5 a minute; the request budget enforces that locally before the server has to.

Timestamps come in the Meta Data ``Time Zone`` (US/Eastern) and label the bar's start; daily
bars follow the convention of :mod:`pipeline.sources.daily` (midnight UTC of the trading date).
"""
from __future__ import annotations

import logging
import threading
from datetime import datetime
from typing import Any, Iterable, Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pipeline.contracts.config import Config, Secret
from pipeline.sources.daily import normalise_daily_ts
from pipeline.contracts.schema import Bar, InvalidBar, bar_from_mapping
from pipeline.sources.base import SourceError
from pipeline.sources.api_errors import ApiError, RateLimited
from pipeline.sources.http_client import ApiHttpClient, HttpPolicy, HttpReply, join_url
from pipeline.sources.polled_source import PolledApiSource
from pipeline.sources.redaction import short_text
from pipeline.sources.request_budget import RequestBudget

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://www.alphavantage.co"
#: KappaLab interval -> Alpha Vantage intraday interval (None: TIME_SERIES_DAILY)
AV_INTERVALS: dict[str, str | None] = {
    "1m": "1min", "5m": "5min", "15m": "15min", "30m": "30min", "1h": "60min", "1d": None,
}
FIELDS = (("open", "1. open"), ("high", "2. high"), ("low", "3. low"), ("close", "4. close"),
          ("volume", "5. volume"))
KEY_HINT = "a free key takes a minute at https://www.alphavantage.co/support/#api-key"


class AlphaVantageSource(PolledApiSource):
    """Bars for one or more symbols from Alpha Vantage.

    Parameters
    ----------
    symbols: one symbol, a comma/space separated string, or a list ("IBM", "IBM,MSFT").
    interval: KappaLab interval, 1m/5m/15m/30m/1h (intraday) or 1d (daily).
    api_key: ``Secret`` or str; never logged or shown.
    mode: ``backfill`` (one fetch per symbol, oldest first, then end) or ``live`` (poll).
    outputsize: ``compact`` (latest 100 bars) or ``full`` (intraday: 30 days or ``month``).
    base_url: API root (``ALPHAVANTAGE_BASE_URL``), requests go to ``{base_url}/query``.
    requests_per_minute, requests_per_day: local request budget (free tier: 5 and 25);
        ``budget`` instead shares one :class:`RequestBudget` between sources of one key.
    poll_seconds: live polling period (default: the bar interval, at most an hour).
    month: ``YYYY-MM`` for an intraday month of history; extended_hours / adjusted: passed
        through when set.
    include_incomplete: also yield the bar still forming (default: only finished bars).
    policy: timeouts, retries and back-offs (:class:`HttpPolicy`).
    max_budget_wait: longest wait for the request budget in backfill before giving up.
    live_backoff_max: cap of the growing pause after failed live polls.
    """

    name = "alphavantage"
    display_name = "Alpha Vantage"
    key_env = "ALPHAVANTAGE_API_KEY"
    key_hint = KEY_HINT

    def __init__(self, symbols: str | Iterable[str], interval: str = "5m", *,
                 api_key: Secret | str | None, mode: str = "backfill",
                 outputsize: str = "compact", base_url: str = DEFAULT_BASE_URL,
                 requests_per_minute: int | None = 5, requests_per_day: int | None = 25,
                 budget: RequestBudget | None = None, poll_seconds: float | None = None,
                 month: str | None = None, extended_hours: bool | None = None,
                 adjusted: bool | None = None, include_incomplete: bool = False,
                 policy: HttpPolicy | None = None, max_budget_wait: float | None = 120.0,
                 live_backoff_max: float = 900.0):
        super().__init__(symbols, interval, mode=mode, api_key=api_key,
                         poll_seconds=poll_seconds, include_incomplete=include_incomplete,
                         live_backoff_max=live_backoff_max, max_budget_wait=max_budget_wait)
        if outputsize not in ("compact", "full"):
            raise SourceError(f"Alpha Vantage outputsize must be 'compact' or 'full', "
                              f"not {outputsize!r}.")
        self.outputsize = outputsize
        self.av_interval = AV_INTERVALS[interval]
        self.function = "TIME_SERIES_DAILY" if self.av_interval is None else "TIME_SERIES_INTRADAY"
        self.base_url = base_url
        self.url = join_url(base_url, "/query")
        self.month = month
        self.extended_hours = extended_hours
        self.adjusted = adjusted
        self.client = ApiHttpClient(
            "Alpha Vantage", secrets=[self._api_key], policy=policy,
            budget=budget if budget is not None else RequestBudget(requests_per_minute,
                                                                   requests_per_day))

    @classmethod
    def from_config(cls, config: Config, symbols: str | Iterable[str], interval: str = "5m",
                    **kwargs: Any) -> "AlphaVantageSource":
        """Key and base URL from ``ALPHAVANTAGE_API_KEY`` / ``ALPHAVANTAGE_BASE_URL``."""
        return cls(symbols, interval, api_key=config.alphavantage_api_key,
                   base_url=config.alphavantage_base_url, **kwargs)

    def describe(self) -> str:
        what = self.av_interval or "daily"
        return (f"Alpha Vantage {','.join(self.symbols)} {self.interval} "
                f"({self.function} {what}, {self.outputsize}, {self.mode})")

    # -- fetching

    def _fetch(self, symbol: str, stop: threading.Event, since_ts: int | None,
               max_budget_wait: float | None) -> Iterator[list[Bar]]:
        what = f"{symbol} {self.interval} bars"
        reply = self.client.get_json(self.url, self._params(symbol), stop=stop, what=what,
                                     check=self._check_rate_limit,
                                     max_budget_wait=max_budget_wait)
        yield self._parse(symbol, reply)

    def _params(self, symbol: str) -> dict[str, str]:
        params = {"function": self.function, "symbol": symbol, "outputsize": self.outputsize,
                  "datatype": "json"}
        if self.av_interval:
            params["interval"] = self.av_interval
            if self.month:
                params["month"] = self.month
            if self.extended_hours is not None:
                params["extended_hours"] = str(self.extended_hours).lower()
            if self.adjusted is not None:
                params["adjusted"] = str(self.adjusted).lower()
        params["apikey"] = self._api_key.get()
        return params

    def _series_key(self) -> str:
        return f"Time Series ({self.av_interval})" if self.av_interval else "Time Series (Daily)"

    def _check_rate_limit(self, reply: HttpReply) -> None:
        """Back off on short-term limits; fail on the daily limit (see :func:`classify_notice`)."""
        check_rate_limit(reply, self._series_key())

    def _parse(self, symbol: str, reply: HttpReply) -> list[Bar]:
        body = reply.payload
        label = f"{symbol} ({self.function}{' ' + self.av_interval if self.av_interval else ''})"
        check_reply(reply, label)
        series = body.get(self._series_key())
        if series is None:
            raise self._error_from_body(symbol, label, body)
        if not isinstance(series, dict):
            raise ApiError(f"Alpha Vantage's {self._series_key()!r} for {label} is not an "
                           "object.", kind="response")
        zone = self._zone(body.get("Meta Data"), label)
        bars: list[Bar] = []
        for stamp, values in series.items():
            try:
                bars.append(self._bar(symbol, stamp, values, zone))
            except (InvalidBar, ValueError, TypeError, KeyError) as exc:
                reason = exc.reason if isinstance(exc, InvalidBar) else _reason(exc)
                self._invalid(symbol, str(stamp), reason)
        bars.sort(key=lambda b: b.ts)
        return bars

    def _error_from_body(self, symbol: str, label: str, body: dict) -> ApiError:
        hint = ("use outputsize='compact' or a premium key" if self.outputsize == "full"
                else "this needs a premium key")
        return body_error(
            body, label, what="bars",
            invalid="check that the symbol exists and the interval is supported",
            premium=(f"Alpha Vantage says {label} with outputsize={self.outputsize} is a "
                     f"premium endpoint; {hint}."),
            missing=(f"Alpha Vantage's answer for {label} has no {self._series_key()!r} "
                     "section; check the symbol and ALPHAVANTAGE_BASE_URL."))

    def _zone(self, meta: Any, label: str) -> ZoneInfo:
        name = "US/Eastern"
        if isinstance(meta, dict):
            for key, value in meta.items():
                if str(key).endswith("Time Zone") and isinstance(value, str):
                    name = value.strip()
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ApiError(f"Alpha Vantage's answer for {label} uses an unknown time zone "
                           f"{short_text(name, 40)!r}.", kind="response") from None

    def _bar(self, symbol: str, stamp: str, values: Any, zone: ZoneInfo) -> Bar:
        local = datetime.fromisoformat(stamp.strip())
        if local.tzinfo is None:
            local = local.replace(tzinfo=zone)
        ts = int(local.timestamp() * 1000)
        if self.interval == "1d":
            ts = normalise_daily_ts(ts, zone)
        row: dict[str, Any] = {"symbol": symbol, "interval": self.interval,
                               "ts": ts, "source": self.name}
        for name, key in FIELDS:
            row[name] = float(values[key])
        return bar_from_mapping(row)


def classify_notice(field: str, text: str) -> str:
    """What an Alpha Vantage ``Note`` / ``Information`` text means.

    ``rate_limit_minute`` (calls too close together: back off and retry), ``rate_limit_day``
    (daily allowance used up), ``premium`` (endpoint or option needs a paid plan),
    ``demo_key``, or ``other``.
    """
    t = text.lower()
    if field == "Note" or any(s in t for s in ("per minute", "per second", "call frequency",
                                              "spreading out", "more sparingly")):
        return "rate_limit_minute"
    if "premium endpoint" in t or "premium feature" in t or "premium-only" in t:
        return "premium"
    if "demo" in t and "key" in t:
        return "demo_key"
    if "rate limit" in t or "per day" in t or "requests per" in t or "calls per" in t:
        return "rate_limit_day"
    return "other"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}"
    return short_text(str(exc), 120)


def body_error(body: dict, label: str, *, what: str, invalid: str, premium: str,
               missing: str) -> ApiError:
    """The one sentence for an Alpha Vantage answer that holds no data (HTTP 200 with an
    ``Error Message``, ``Information`` or ``Note`` instead): bad key, invalid call (``invalid``
    says what to check), premium endpoint (``premium``), demo key, other notices; ``missing``
    when the expected section is simply absent."""
    message = body.get("Error Message")
    if isinstance(message, str):
        if "apikey" in message.lower().replace(" ", ""):
            return ApiError(f"Alpha Vantage rejected the API key; set ALPHAVANTAGE_API_KEY "
                            f"to a valid key ({KEY_HINT}).", kind="auth", detail=message)
        return ApiError(f"Alpha Vantage rejected the request for {label} as an invalid API "
                        f"call; {invalid}.", kind="request", detail=message)
    for field in ("Information", "Note"):
        text = body.get(field)
        if not isinstance(text, str):
            continue
        kind = classify_notice(field, text)
        if kind == "premium":
            return ApiError(premium, kind="forbidden", detail=text)
        if kind == "demo_key":
            return ApiError("The Alpha Vantage demo key only works for the documentation "
                            f"examples; set ALPHAVANTAGE_API_KEY to your own key ({KEY_HINT}).",
                            kind="auth", detail=text)
        return ApiError(f"Alpha Vantage sent no {what} for {label} but this {field}: "
                        f"\"{short_text(text, 140)}\".", kind="request", detail=text)
    return ApiError(missing, kind="response", detail=", ".join(map(str, list(body)[:5])))


def check_reply(reply: HttpReply, label: str) -> None:
    """Raise the one sentence for an answer that is not HTTP 200 with a JSON object."""
    if reply.status != 200:
        raise ApiError(f"Alpha Vantage answered HTTP {reply.status} for {label}; check "
                       "ALPHAVANTAGE_BASE_URL.", kind="request", status=reply.status,
                       detail=reply.text)
    if not isinstance(reply.payload, dict):
        raise ApiError(f"Alpha Vantage answered {label} with something that is not a JSON "
                       "object; check ALPHAVANTAGE_BASE_URL.", kind="response",
                       detail=reply.text)


def check_rate_limit(reply: HttpReply, data_key: str) -> None:
    """For the HTTP client's retry loop: an answer without ``data_key`` that is a per-minute
    limit notice raises :class:`RateLimited` (back off and retry); the daily limit fails."""
    body = reply.payload
    if not isinstance(body, dict) or data_key in body:
        return
    for field in ("Note", "Information"):
        if isinstance(body.get(field), str):
            kind = classify_notice(field, body[field])
            if kind == "rate_limit_minute":
                raise RateLimited(f"Alpha Vantage {field}")
            if kind == "rate_limit_day":
                raise ApiError("Alpha Vantage's daily request limit for this API key is used "
                               "up; try again tomorrow or use a premium key.",
                               kind="rate_limit", detail=body[field])
