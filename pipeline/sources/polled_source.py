"""The backfill/live loop both HTTP market-data sources (Alpha Vantage, Polygon) share."""
from __future__ import annotations

import abc
import logging
import threading
import time
from typing import Any, Iterable, Iterator

from pipeline.contracts.backoff import Backoff
from pipeline.contracts.config import Secret
from pipeline.contracts.schema import INTERVALS, MAX_SYMBOL_LEN, Bar
from pipeline.sources.api_errors import ApiError, Stopped
from pipeline.sources.base import Source, SourceError
from pipeline.sources.http_client import ApiHttpClient
from pipeline.sources.redaction import secret_value

log = logging.getLogger(__name__)


class PolledApiSource(Source):
    """The backfill/live loop both HTTP sources share.

    Subclasses implement :meth:`_fetch` (one request, or one paginated series of them, for
    one symbol) and yield bars sorted by ``ts``. ``backfill`` fetches each symbol once;
    ``live`` polls every ``poll_seconds`` and yields only bars newer than the last one
    yielded for that symbol (dedupe by ``ts``), skips bars still forming, keeps going through
    transient errors and rate limits with a growing back-off, and raises only errors the user
    must act on (bad key, bad symbol, plan lacks access).
    """

    MODES = ("backfill", "live")

    def __init__(self, symbols: str | Iterable[str], interval: str, *, mode: str,
                 api_key: Secret | str | None, poll_seconds: float | None,
                 include_incomplete: bool, live_backoff_max: float,
                 max_budget_wait: float | None):
        if isinstance(symbols, str):
            symbols = [s for s in symbols.replace(",", " ").split() if s]
        self.symbols = list(dict.fromkeys(str(s).strip().upper() for s in symbols if str(s).strip()))
        if not self.symbols:
            raise SourceError(f"{self.display_name} needs at least one symbol, like AAPL.")
        for symbol in self.symbols:
            if len(symbol) > MAX_SYMBOL_LEN or "|" in symbol or " " in symbol:
                raise SourceError(f"{self.display_name} symbol {symbol!r} is longer than "
                                  f"{MAX_SYMBOL_LEN} characters or contains '|' or spaces.")
        if interval not in INTERVALS:
            raise SourceError(f"{self.display_name} cannot fetch interval {interval!r}; "
                              f"use one of {', '.join(INTERVALS)}.")
        if mode not in self.MODES:
            raise SourceError(f"{self.display_name} mode must be 'backfill' or 'live', "
                              f"not {mode!r}.")
        self.interval = interval
        self.interval_ms = INTERVALS[interval]
        self.mode = mode
        self.poll_seconds = float(poll_seconds if poll_seconds is not None
                                  else min(self.interval_ms / 1000, 3600.0))
        self.include_incomplete = include_incomplete
        self.live_backoff_max = live_backoff_max
        self.max_budget_wait = max_budget_wait
        self._last_ts: dict[str, int] = {}
        self._counters: dict[str, Any] = {
            "bars": 0, "polls": 0, "duplicates_skipped": 0, "incomplete_skipped": 0,
            "invalid_bars": 0, "live_errors": 0}
        self._invalid_samples: list[str] = []
        self._last_error: str | None = None
        self._problem: str | None = None  # the failure of the last live poll, until one works
        self._api_key = secret_value(api_key)
        if self._api_key is None:
            raise self._key_error()

    display_name = "source"
    client: ApiHttpClient

    # -- Source

    def bars(self, stop: threading.Event) -> Iterator[Bar]:
        try:
            if self.mode == "backfill":
                for symbol in self.symbols:
                    if stop.is_set():
                        return
                    yield from self._poll(symbol, stop, self.max_budget_wait)
            else:
                yield from self._live(stop)
        except Stopped:
            return
        except ApiError as exc:
            self._last_error = str(exc)
            raise
        finally:
            self.client.close()

    def problem(self) -> str | None:
        return self._problem

    def stats(self) -> dict[str, Any]:
        out = dict(self._counters)
        out.update(self.client.stats())
        out["last_ts"] = dict(self._last_ts)
        if self._invalid_samples:
            out["invalid_samples"] = list(self._invalid_samples)
        if self._last_error:
            out["last_error"] = self._last_error
        return out

    # -- subclass hook

    @abc.abstractmethod
    def _fetch(self, symbol: str, stop: threading.Event, since_ts: int | None,
               max_budget_wait: float | None) -> Iterator[list[Bar]]:
        """Yield chunks (pages) of bars for ``symbol`` sorted by ts, oldest first."""

    # -- details

    def _live(self, stop: threading.Event) -> Iterator[Bar]:
        backoff = Backoff(base=max(self.poll_seconds, 1e-3), cap=self.live_backoff_max)
        while not stop.is_set():
            started = time.monotonic()
            problem: ApiError | None = None
            for symbol in self.symbols:
                try:
                    yield from self._poll(symbol, stop, None)
                except ApiError as exc:
                    if not exc.retryable:
                        raise
                    problem = exc
                    break
                if stop.is_set():
                    return
            if problem is None:
                backoff.reset()
                self._problem = None
                delay = max(0.0, self.poll_seconds - (time.monotonic() - started))
            else:
                self._counters["live_errors"] += 1
                self._last_error = str(problem)
                delay = backoff.next_delay()
                self._problem = f"{problem} Polling again in {delay:.3g} s."
                log.warning("%s: %s Polling again in %.1f s.", self.display_name, problem, delay)
            if stop.wait(delay):
                return

    def _poll(self, symbol: str, stop: threading.Event,
              max_budget_wait: float | None) -> Iterator[Bar]:
        last = self._last_ts.get(symbol)
        now_ms = int(time.time() * 1000)
        self._counters["polls"] += 1
        fresh = 0
        for chunk in self._fetch(symbol, stop, last, max_budget_wait):
            for bar in chunk:
                if not self.include_incomplete and bar.ts + self.interval_ms > now_ms:
                    self._counters["incomplete_skipped"] += 1
                    continue
                if last is not None and bar.ts <= last:
                    self._counters["duplicates_skipped"] += 1
                    continue
                last = self._last_ts[symbol] = bar.ts
                self._counters["bars"] += 1
                fresh += 1
                yield bar
        logging.getLogger(type(self).__module__).info(
            "%s %s %s: %d new bar(s)", self.display_name, symbol, self.interval, fresh)

    def _invalid(self, symbol: str, where: str, reason: str) -> None:
        self._counters["invalid_bars"] += 1
        if len(self._invalid_samples) < 5:
            self._invalid_samples.append(f"{symbol} {where}: {reason}")
        logging.getLogger(type(self).__module__).warning(
            "%s %s: skipped invalid bar at %s: %s", self.display_name, symbol, where, reason)

    def _key_error(self) -> SourceError:
        return SourceError(f"{self.display_name} needs an API key: set {self.key_env} "
                           f"({self.key_hint}).")

    key_env = "API_KEY"
    key_hint = ""
