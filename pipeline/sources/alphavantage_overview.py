"""Alpha Vantage OVERVIEW as fundamentals snapshots for ``finance-fundamentals``.

``GET /query?function=OVERVIEW&symbol=IBM&apikey=...`` answers one flat JSON object of strings
(``Symbol``, ``AssetType``, ``Name``, ..., ``LatestQuarter`` ``YYYY-MM-DD``,
``MarketCapitalization``, ``PERatio``, ``EPS``, ``DividendYield``, ...); a figure the company
lacks is ``"None"`` or ``"-"``. A symbol Alpha Vantage has no overview for answers ``{}``.
KappaLab keeps the numbers of :data:`pipeline.contracts.fundamentals.OVERVIEW_FIELDS`, effective from the
fetch time (see :mod:`pipeline.contracts.fundamentals` for why not from ``LatestQuarter``).

Errors and budget as for the other Alpha Vantage sources: in-body ``Error Message`` /
``Information`` / ``Note`` become one sentence, per-minute notices are backed off and retried,
the daily limit fails, and one :class:`RequestBudget` (5 a minute, 25 a day on the free tier)
can be shared with the news and price sources of the same key.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, Callable, Iterable, Iterator

from pipeline.contracts.config import Config, Secret
from pipeline.contracts.fundamentals import (OVERVIEW_FIELDS, FundamentalsSnapshot,
                                   InvalidFundamentals, fundamentals_from_mapping)
from pipeline.sources.alphavantage import (DEFAULT_BASE_URL, KEY_HINT, body_error,
                                           check_rate_limit, check_reply)
from pipeline.sources.api_errors import ApiError, Stopped
from pipeline.sources.base import SourceError
from pipeline.sources.http_client import ApiHttpClient, HttpPolicy, HttpReply, join_url
from pipeline.sources.redaction import secret_value
from pipeline.sources.request_budget import RequestBudget

log = logging.getLogger(__name__)

#: The fields Alpha Vantage uses for "no figure".
MISSING_TEXT = {"", "none", "-", "null", "n/a", "nan"}


class AlphaVantageOverview:
    """Fundamentals snapshots for ``symbols`` from Alpha Vantage OVERVIEW.

    ``mode``: ``once`` (one request per symbol, then end) or ``live`` (again every
    ``poll_seconds``, default a day: the figures change with quarterly reports and prices).
    ``clock``: epoch seconds, the snapshots' effective time (tests pass their own).
    """

    name = "alphavantage"

    def __init__(self, symbols: str | Iterable[str], *, api_key: Secret | str | None,
                 mode: str = "once", base_url: str = DEFAULT_BASE_URL,
                 requests_per_minute: int | None = 5, requests_per_day: int | None = 25,
                 budget: RequestBudget | None = None, poll_seconds: float = 86_400.0,
                 policy: HttpPolicy | None = None, max_budget_wait: float | None = 120.0,
                 clock: Callable[[], float] = time.time):
        if isinstance(symbols, str):
            symbols = symbols.replace(",", " ").split()
        self.symbols = list(dict.fromkeys(s.strip().upper() for s in symbols if s.strip()))
        if not self.symbols:
            raise SourceError("Give at least one symbol for Alpha Vantage fundamentals "
                              "(e.g. IBM).")
        if mode not in ("once", "live"):
            raise SourceError(f"Alpha Vantage fundamentals mode must be 'once' or 'live', "
                              f"not {mode!r}.")
        self._api_key = secret_value(api_key)
        if self._api_key is None:
            raise SourceError(f"Alpha Vantage fundamentals need an API key; set "
                              f"ALPHAVANTAGE_API_KEY ({KEY_HINT}).")
        self.mode = mode
        self.url = join_url(base_url, "/query")
        self.poll_seconds = float(poll_seconds)
        self.max_budget_wait = max_budget_wait
        self.clock = clock
        self.client = ApiHttpClient(
            "Alpha Vantage", secrets=[self._api_key], policy=policy,
            budget=budget if budget is not None else RequestBudget(requests_per_minute,
                                                                   requests_per_day))
        self.counters = {"snapshots": 0, "no_overview": 0, "polls": 0}

    @classmethod
    def from_config(cls, config: Config, symbols, **kwargs: Any) -> "AlphaVantageOverview":
        return cls(symbols, api_key=config.alphavantage_api_key,
                   base_url=config.alphavantage_base_url, **kwargs)

    def describe(self) -> str:
        return f"Alpha Vantage fundamentals {','.join(self.symbols)} ({self.mode})"

    def stats(self) -> dict[str, Any]:
        return {**self.counters, **self.client.stats()}

    # -- public

    def items(self, stop: threading.Event) -> Iterator[list[FundamentalsSnapshot]]:
        """Yield one-snapshot batches until done or ``stop`` is set (a producer feed)."""
        try:
            while not stop.is_set():
                for symbol in self.symbols:
                    if stop.is_set():
                        return
                    snap = self.fetch(symbol, stop)
                    if snap is not None:
                        yield [snap]
                self.counters["polls"] += 1
                if self.mode == "once" or stop.wait(self.poll_seconds):
                    return
        except Stopped:
            return

    def fetch(self, symbol: str, stop: threading.Event) -> FundamentalsSnapshot | None:
        params = {"function": "OVERVIEW", "symbol": symbol, "apikey": self._api_key.get()}
        reply = self.client.get_json(self.url, params, stop=stop, what=f"{symbol} overview",
                                     check=_check_rate_limit,
                                     max_budget_wait=self.max_budget_wait)
        # effective from when the answer arrived: never earlier than the figures were known
        return self.parse(symbol, reply, int(self.clock() * 1000))

    def parse(self, symbol: str, reply: HttpReply, fetched_ms: int) -> FundamentalsSnapshot | None:
        label = f"{symbol} (OVERVIEW)"
        check_reply(reply, label)
        body = reply.payload
        if not body:
            self.counters["no_overview"] += 1
            log.warning("Alpha Vantage has no overview for %s (an ETF, an index or an unknown "
                        "symbol); no fundamentals for it.", symbol)
            return None
        if "Symbol" not in body:
            raise _error_from_body(label, body)
        values: dict[str, float | None] = {}
        for av_name, name in OVERVIEW_FIELDS.items():
            values[name] = _number(body.get(av_name))
        quarter = str(body.get("LatestQuarter") or "").strip()
        try:
            snap = fundamentals_from_mapping({
                "symbol": symbol, "ts": fetched_ms, "source": self.name,
                "latest_quarter": quarter if len(quarter) == 10 else "", "values": values})
        except InvalidFundamentals as exc:
            raise ApiError(f"Alpha Vantage's overview of {symbol} is not usable: {exc.reason}.",
                           kind="response") from None
        self.counters["snapshots"] += 1
        return snap


def _number(text: Any) -> float | None:
    if text is None or str(text).strip().lower() in MISSING_TEXT:
        return None
    try:
        value = float(str(text).strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _check_rate_limit(reply: HttpReply) -> None:
    check_rate_limit(reply, "Symbol")


def _error_from_body(label: str, body: dict) -> ApiError:
    return body_error(
        body, label, what="overview", invalid="check the symbol",
        premium=f"Alpha Vantage says {label} is a premium endpoint; this needs a premium key.",
        missing=(f"Alpha Vantage's answer for {label} has no 'Symbol' field; check "
                 "ALPHAVANTAGE_BASE_URL."))
