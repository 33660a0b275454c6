"""Polite HTTP GET for the market-data APIs (Alpha Vantage, Polygon).

One :class:`ApiHttpClient` per source does every request: it waits for the
:class:`RequestBudget` (requests per minute / per day), sets connect and read timeouts, retries
transient failures (timeouts, refused or dropped connections, HTTP 5xx) with exponential
back-off, backs off and retries rate limits (HTTP 429, or an in-body notice the caller's
``check`` turns into :class:`RateLimited`), and turns everything it gives up on into an
:class:`ApiError` — a :class:`~pipeline.sources.base.SourceError` whose message is one
sentence without the API key.

API keys travel in query strings (Alpha Vantage only accepts ``apikey=``), so they would show
up in urllib3's DEBUG request lines and in requests' exception texts. Every key a client is
given is registered with the module's redactor; a logging filter on the urllib3/requests
loggers scrubs registered keys and any ``apikey=``/``apiKey=``/``token=`` query value from
records before any handler sees them, and exception texts only ever reach messages through
:func:`redact`. Waits use ``stop.wait`` so a stopping source never sleeps through a stop.

:class:`PolledApiSource` (at the end) is the backfill/live loop both HTTP sources share:
per-symbol dedupe by ``ts``, finished bars only, back-off on failed live polls.
"""
from __future__ import annotations

import abc
import email.utils
import json
import logging
import random
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping
from urllib.parse import quote, quote_plus, urlsplit

import requests

from pipeline.config import Secret
from pipeline.schema import INTERVALS, MAX_SYMBOL_LEN, Bar
from pipeline.sources.base import Source, SourceError

log = logging.getLogger(__name__)

USER_AGENT = "KappaLab/1.0 (+market-data source)"


# --------------------------------------------------------------------------- errors


class ApiError(SourceError):
    """A request the client gave up on; ``str()`` is one sentence without secrets.

    ``kind`` says what happened so a live source can decide to keep going:
    ``transient`` (network, timeout, 5xx after retries), ``rate_limit`` (still limited after
    the back-offs), ``budget`` (the local request budget would need too long a wait),
    ``auth`` (key missing or invalid), ``forbidden`` (plan lacks access), ``request`` (bad
    symbol, function or parameters), ``response`` (unparseable answer).
    """

    RETRYABLE = frozenset({"transient", "rate_limit", "budget"})

    def __init__(self, message: str, *, kind: str, status: int | None = None,
                 detail: str | None = None):
        super().__init__(redact(message))
        self.kind = kind
        self.status = status
        #: the upstream's own wording (redacted, shortened) for logs; not part of the sentence
        self.detail = redact(detail) if detail else None

    @property
    def retryable(self) -> bool:
        return self.kind in self.RETRYABLE


class RateLimited(Exception):
    """Raised by a response ``check`` to say "rate-limited: back off and retry"."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class Stopped(Exception):
    """``stop`` was set while the client was waiting (budget, back-off)."""


# --------------------------------------------------------------------------- redaction


_SECRETS: set[str] = set()
_SECRETS_LOCK = threading.Lock()
_SECRET_PATTERN: re.Pattern[str] | None = None
# Any credential-looking query parameter, registered or not.
_QUERY_KEY_RE = re.compile(r"(?i)\b((?:api[_-]?key|apikey|access[_-]?token|token)=)[^&\s'\"<>#]+")
REDACTED = "***"


def register_secret(value: str | Secret | None) -> None:
    """Make :func:`redact` (and the logging filter) hide ``value`` and its URL-encoded forms."""
    raw = value.get() if isinstance(value, Secret) else value
    if not raw or len(raw) < 4:  # redacting 1-3 characters would mangle ordinary text
        return
    global _SECRET_PATTERN
    with _SECRETS_LOCK:
        before = len(_SECRETS)
        _SECRETS.update({raw, quote(raw, safe=""), quote_plus(raw)})
        if len(_SECRETS) != before:
            alternatives = sorted(_SECRETS, key=len, reverse=True)
            _SECRET_PATTERN = re.compile("|".join(re.escape(s) for s in alternatives))


def redact(text: Any) -> str:
    """``text`` as a string with registered secrets and credential query values masked."""
    s = text if isinstance(text, str) else str(text)
    pattern = _SECRET_PATTERN
    if pattern is not None:
        s = pattern.sub(REDACTED, s)
    return _QUERY_KEY_RE.sub(lambda m: m.group(1) + REDACTED, s)


class RedactingFilter(logging.Filter):
    """Rewrites a record's message with secrets masked (installed on third-party loggers,
    whose records carry full request URLs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is not ours to fix; leave it alone
            return True
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, ()
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


_LOGGERS_TO_SCRUB = (
    "urllib3", "urllib3.connectionpool", "urllib3.connection", "urllib3.poolmanager",
    "urllib3.response", "urllib3.util.retry", "requests", "pipeline.sources",
    "pipeline.sources.http_client", "pipeline.sources.alphavantage", "pipeline.sources.polygon",
)


def _install_log_filter() -> None:
    for name in _LOGGERS_TO_SCRUB:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())


_install_log_filter()


def secret_value(api_key: str | Secret | None) -> Secret | None:
    """Normalise a key given as ``Secret`` or plain ``str`` (blank means none)."""
    if api_key is None:
        return None
    secret = api_key if isinstance(api_key, Secret) else Secret(str(api_key).strip())
    if not secret.get() or not secret.get().strip():
        return None
    register_secret(secret)
    return secret


# --------------------------------------------------------------------------- budget


class RequestBudget:
    """Sliding-window request limiter: at most ``count`` requests in any ``seconds``.

    ``RequestBudget(per_minute=5, per_day=25)`` is Alpha Vantage's free tier. Share one
    instance between sources that use the same API key. Thread-safe.
    """

    def __init__(self, per_minute: int | None = 5, per_day: int | None = 25, *,
                 windows: Iterable[tuple[int, float]] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if windows is None:
            windows = [(n, s) for n, s in ((per_minute, 60.0), (per_day, 86_400.0)) if n]
        self.windows = sorted((int(n), float(s)) for n, s in windows)
        for n, s in self.windows:
            if n < 1 or s <= 0:
                raise ValueError(f"request budget window ({n} per {s}s) must be positive")
        self._clock = clock
        longest = max((n for n, _ in self.windows), default=0)
        self._sent: deque[float] = deque(maxlen=longest or None)
        self._lock = threading.Lock()
        self.waits = 0
        self.waited_seconds = 0.0

    def wait_needed(self) -> float:
        """Seconds until one more request fits every window (0 when it fits now)."""
        with self._lock:
            return self._wait_needed(self._clock())

    def _wait_needed(self, now: float) -> float:
        need = 0.0
        sent = self._sent
        for count, seconds in self.windows:
            if len(sent) >= count:
                # the count-th most recent request must have left the window
                oldest_in_window = sent[-count]
                need = max(need, oldest_in_window + seconds - now)
        return max(0.0, need)

    def acquire(self, stop: threading.Event, max_wait: float | None = None) -> float:
        """Wait (stoppably) until a request fits, record it, return the seconds waited.

        Raises :class:`ApiError` (kind ``budget``) when the wait would exceed ``max_wait``,
        and :class:`Stopped` when ``stop`` is set while waiting.
        """
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                need = self._wait_needed(now)
                if need <= 0:
                    if self.windows:
                        self._sent.append(now)
                    if waited:
                        self.waits += 1
                        self.waited_seconds += waited
                    return waited
            if max_wait is not None and waited + need > max_wait:
                raise ApiError(
                    f"The request budget ({self.describe()}) is used up for the next "
                    f"{_human_seconds(need)}; wait, or raise the budget if your plan allows more.",
                    kind="budget")
            start = time.monotonic()
            if stop.wait(min(need, 3600.0)):
                raise Stopped()
            waited += time.monotonic() - start

    def describe(self) -> str:
        parts = []
        for n, s in self.windows:
            unit = {60.0: "minute", 86_400.0: "day", 3600.0: "hour", 1.0: "second"}.get(s)
            parts.append(f"{n}/{unit}" if unit else f"{n} per {s:g}s")
        return ", ".join(parts) or "unlimited"

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            now = self._clock()
            used = {f"{n}/{s:g}s": sum(1 for t in self._sent if t > now - s) for n, s in self.windows}
            return {"budget": self.describe(), "budget_used": used,
                    "budget_waits": self.waits, "budget_wait_seconds": round(self.waited_seconds, 3)}


def _human_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# --------------------------------------------------------------------------- client


@dataclass(frozen=True)
class HttpPolicy:
    """Timeouts and retry behaviour; tests shrink them to keep runs short."""

    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    retries: int = 3  # extra attempts after a transient failure (timeout, network, 5xx)
    backoff: float = 1.0  # first back-off in seconds, doubled per attempt, jittered
    backoff_max: float = 60.0
    rate_limit_retries: int = 4  # back-offs on 429 / in-body rate limits before giving up
    rate_limit_backoff: float = 15.0  # first rate-limit back-off when no Retry-After is given

    def backoff_for(self, attempt: int, base: float | None = None) -> float:
        """Exponential back-off for the ``attempt``-th retry (1-based), with equal jitter."""
        delay = min(self.backoff_max, (self.backoff if base is None else base) * 2 ** (attempt - 1))
        return delay / 2 + random.uniform(0, delay / 2)


@dataclass
class HttpReply:
    status: int
    payload: Any  # decoded JSON, or None when the body was not JSON
    text: str  # the first 300 characters of the body, redacted


class ApiHttpClient:
    """GETs JSON from one API on behalf of one source (see the module docstring).

    ``service`` names the API in messages ("Alpha Vantage"); ``secrets`` are registered for
    redaction; ``budget`` limits requests (None: unlimited).
    """

    def __init__(self, service: str, *, secrets: Iterable[str | Secret | None] = (),
                 policy: HttpPolicy | None = None, budget: RequestBudget | None = None,
                 user_agent: str = USER_AGENT):
        self.service = service
        self.policy = policy or HttpPolicy()
        self.budget = budget
        self.user_agent = user_agent
        for s in secrets:
            register_secret(s)
        self._session: requests.Session | None = None
        self.counters = {"requests": 0, "retries": 0, "transient_errors": 0,
                         "rate_limited": 0, "rate_limit_wait_seconds": 0.0}
        self.last_error: str | None = None

    # -- public

    def get_json(self, url: str, params: Mapping[str, Any] | None = None, *,
                 stop: threading.Event, what: str,
                 check: Callable[[HttpReply], None] | None = None,
                 max_budget_wait: float | None = None) -> HttpReply:
        """GET ``url`` and return the reply for any status below 500 except 429.

        ``what`` describes the request in messages ("IBM 5m bars"). ``check`` may inspect a
        2xx reply and raise :class:`RateLimited` to have it backed off and retried.
        """
        transient_failures = 0
        rate_limits = 0
        policy = self.policy
        while True:
            if stop.is_set():
                raise Stopped()
            if self.budget is not None:
                self.budget.acquire(stop, max_wait=max_budget_wait)
            failure: str | None = None
            retry_after: float | None = None
            limited = False
            self.counters["requests"] += 1
            started = time.monotonic()
            try:
                response = self.session.get(
                    url, params=params, timeout=(policy.connect_timeout, policy.read_timeout))
                body = response.content  # reads the whole body: a dropped connection raises here
            except requests.exceptions.Timeout as exc:
                failure = f"timed out after {policy.read_timeout:g} s" if not isinstance(
                    exc, requests.exceptions.ConnectTimeout) else "could not connect in time"
            except (requests.exceptions.ConnectionError,
                    requests.exceptions.ChunkedEncodingError,
                    requests.exceptions.ContentDecodingError) as exc:
                failure = _connection_failure(exc)
            except requests.exceptions.RequestException as exc:  # bad URL and the like
                raise ApiError(f"{self.service} request for {what} could not be sent "
                               f"({type(exc).__name__}: {_short(redact(exc))}).",
                               kind="request") from None
            else:
                reply = _reply(response.status_code, body)
                log.debug("%s %s: HTTP %s, %d bytes in %.3f s", self.service, what,
                          response.status_code, len(body), time.monotonic() - started)
                if response.status_code == 429:
                    limited = True
                    retry_after = _retry_after(response.headers.get("Retry-After"))
                    failure = "rate limit (HTTP 429)"
                elif response.status_code >= 500:
                    failure = f"server error HTTP {response.status_code}"
                else:
                    if check is not None and 200 <= response.status_code < 300:
                        try:
                            check(reply)
                        except RateLimited as rl:
                            limited = True
                            retry_after = rl.retry_after
                            failure = f"rate limit ({rl.reason})"
                    if not limited:
                        return reply

            self.last_error = failure
            if limited:
                rate_limits += 1
                self.counters["rate_limited"] += 1
                if rate_limits > policy.rate_limit_retries:
                    raise ApiError(
                        f"{self.service} kept rate-limiting the requests for {what} after "
                        f"{rate_limits} attempts; wait a minute or lower the request rate.",
                        kind="rate_limit", status=429 if "429" in failure else None,
                        detail=failure)
                delay = (min(retry_after, policy.backoff_max) if retry_after is not None
                         else policy.backoff_for(rate_limits, policy.rate_limit_backoff))
                self.counters["rate_limit_wait_seconds"] += delay
            else:
                transient_failures += 1
                self.counters["transient_errors"] += 1
                if transient_failures > policy.retries:
                    raise ApiError(
                        f"{self.service} request for {what} failed {transient_failures} times "
                        f"(last: {failure}); check the network and {self.service}'s status.",
                        kind="transient", detail=failure)
                delay = policy.backoff_for(transient_failures)
            self.counters["retries"] += 1
            log.warning("%s %s: %s; retrying in %.2f s", self.service, what, failure, delay)
            if stop.wait(delay):
                raise Stopped()

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            s = requests.Session()
            s.headers["User-Agent"] = self.user_agent
            s.headers["Accept"] = "application/json"
            s.trust_env = True  # honour HTTPS_PROXY etc.; keys stay in the query, redacted
            self._session = s
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counters)
        out["rate_limit_wait_seconds"] = round(out["rate_limit_wait_seconds"], 3)
        if self.budget is not None:
            out.update(self.budget.snapshot())
        if self.last_error:
            out["last_http_problem"] = self.last_error
        return out


def _reply(status: int, body: bytes) -> HttpReply:
    text = body[:300].decode("utf-8", "replace")
    try:
        payload = json.loads(body) if body else None
    except ValueError:
        payload = None
    return HttpReply(status, payload, redact(text))


def _connection_failure(exc: BaseException) -> str:
    text = redact(exc)
    if "RemoteDisconnected" in text or "IncompleteRead" in text or "Connection broken" in text \
            or "reset" in text.lower() or "aborted" in text.lower():
        return "connection dropped"
    if "refused" in text.lower():
        return "connection refused"
    if "resolve" in text.lower() or "Name or service" in text:
        return "host name not found"
    return f"network error ({type(exc).__name__})"


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def join_url(base_url: str, path: str) -> str:
    """``base_url`` (which may carry a path prefix) joined with an absolute API ``path``."""
    base = base_url.strip()
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SourceError(f"The base URL {redact(base)!r} is not an http(s) URL like "
                          "https://api.example.com.")
    return base.rstrip("/") + "/" + path.lstrip("/")


def short_text(text: str, limit: int = 160) -> str:
    """One line of at most ``limit`` characters, redacted (for upstream messages)."""
    return _short(redact(text), limit)


# --------------------------------------------------------------------------- polling loop


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
                 poll_seconds: float | None, include_incomplete: bool,
                 live_backoff_max: float, max_budget_wait: float | None):
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
        failures = 0
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
                failures = 0
                delay = max(0.0, self.poll_seconds - (time.monotonic() - started))
            else:
                failures += 1
                self._counters["live_errors"] += 1
                self._last_error = str(problem)
                delay = min(self.live_backoff_max,
                            max(self.poll_seconds, 1e-3) * 2 ** (failures - 1))
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
