"""Polite HTTP GET for the market-data APIs (Alpha Vantage, Polygon).

One :class:`ApiHttpClient` per source does every request: it waits for the
:class:`~pipeline.sources.request_budget.RequestBudget` (requests per minute / per day), sets
connect and read timeouts, retries transient failures (timeouts, refused or dropped
connections, HTTP 5xx) with exponential back-off, backs off and retries rate limits (HTTP 429,
or an in-body notice the caller's ``check`` turns into
:class:`~pipeline.sources.api_errors.RateLimited`), and turns everything it gives up on into an
:class:`~pipeline.sources.api_errors.ApiError` whose message is one sentence without the API
key (:mod:`pipeline.sources.redaction`).

The retry loop is tenacity's; the delays are :func:`pipeline.contracts.backoff.exponential_delay` (with
jitter), or the server's ``Retry-After``. Waits use ``stop.wait`` so a stopping source never
sleeps through a stop.
"""
from __future__ import annotations

import email.utils
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import urlsplit

import requests
import tenacity

from pipeline.contracts.backoff import exponential_delay
from pipeline.contracts.config import Secret
from pipeline.sources.api_errors import ApiError, RateLimited, Stopped
from pipeline.sources.base import SourceError
from pipeline.sources.redaction import redact, register_secret, short_text
from pipeline.sources.request_budget import RequestBudget

log = logging.getLogger(__name__)

USER_AGENT = "KappaLab/1.0 (+market-data source)"


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


@dataclass
class HttpReply:
    """One HTTP answer of a market API as :class:`ApiHttpClient` hands it back: the status,
    the decoded JSON and the start of the body with keys redacted."""

    status: int
    payload: Any  # decoded JSON, or None when the body was not JSON
    text: str  # the first 300 characters of the body, redacted


class _Retry(Exception):
    """One attempt failed in a way worth retrying (internal to :meth:`ApiHttpClient.get_json`)."""

    def __init__(self, failure: str, limited: bool, retry_after: float | None = None):
        super().__init__(failure)
        self.failure, self.limited, self.retry_after = failure, limited, retry_after


@dataclass
class _Attempts:
    transient: int = 0
    rate_limits: int = 0


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
        policy = self.policy
        seen = _Attempts()

        def gave_up(state: tenacity.RetryCallState) -> bool:
            return (seen.rate_limits > policy.rate_limit_retries
                    or seen.transient > policy.retries)

        def delay(state: tenacity.RetryCallState) -> float:
            problem = state.outcome.exception()
            if isinstance(problem, _Retry) and problem.limited:
                if problem.retry_after is not None:
                    wait = min(problem.retry_after, policy.backoff_max)
                else:
                    wait = exponential_delay(seen.rate_limits, policy.rate_limit_backoff,
                                             policy.backoff_max, jitter=True)
                self.counters["rate_limit_wait_seconds"] += wait
                return wait
            return exponential_delay(seen.transient, policy.backoff, policy.backoff_max,
                                     jitter=True)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            self.counters["retries"] += 1
            log.warning("%s %s: %s; retrying in %.2f s", self.service, what,
                        state.outcome.exception(), state.upcoming_sleep)

        def sleep(seconds: float) -> None:
            if stop.wait(seconds):
                raise Stopped()

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_Retry), stop=gave_up, wait=delay,
            sleep=sleep, before_sleep=before_sleep, reraise=True)
        try:
            return retrying(self._attempt, url, params, stop, what, check,
                            max_budget_wait, seen)
        except _Retry as last:
            if last.limited:
                raise ApiError(
                    f"{self.service} kept rate-limiting the requests for {what} after "
                    f"{seen.rate_limits} attempts; wait a minute or lower the request rate.",
                    kind="rate_limit", status=429 if "429" in last.failure else None,
                    detail=last.failure) from None
            raise ApiError(
                f"{self.service} request for {what} failed {seen.transient} times "
                f"(last: {last.failure}); check the network and {self.service}'s status.",
                kind="transient", detail=last.failure) from None

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

    # -- one attempt

    def _attempt(self, url: str, params: Mapping[str, Any] | None, stop: threading.Event,
                 what: str, check: Callable[[HttpReply], None] | None,
                 max_budget_wait: float | None, seen: _Attempts) -> HttpReply:
        """One request; returns the reply or raises :class:`_Retry` (counted in ``seen``)."""
        if stop.is_set():
            raise Stopped()
        if self.budget is not None:
            self.budget.acquire(stop, max_wait=max_budget_wait)
        policy = self.policy
        self.counters["requests"] += 1
        started = time.monotonic()
        try:
            response = self.session.get(
                url, params=params, timeout=(policy.connect_timeout, policy.read_timeout))
            body = response.content  # reads the whole body: a dropped connection raises here
        except requests.exceptions.Timeout as exc:
            raise self._failed(seen, f"timed out after {policy.read_timeout:g} s" if not
                               isinstance(exc, requests.exceptions.ConnectTimeout)
                               else "could not connect in time") from None
        except (requests.exceptions.ConnectionError,
                requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError) as exc:
            raise self._failed(seen, _connection_failure(exc)) from None
        except requests.exceptions.RequestException as exc:  # bad URL and the like
            raise ApiError(f"{self.service} request for {what} could not be sent "
                           f"({type(exc).__name__}: {short_text(exc)}).",
                           kind="request") from None
        reply = _reply(response.status_code, body)
        log.debug("%s %s: HTTP %s, %d bytes in %.3f s", self.service, what,
                  response.status_code, len(body), time.monotonic() - started)
        if response.status_code == 429:
            raise self._failed(seen, "rate limit (HTTP 429)", limited=True,
                               retry_after=_retry_after(response.headers.get("Retry-After")))
        if response.status_code >= 500:
            raise self._failed(seen, f"server error HTTP {response.status_code}")
        if check is not None and 200 <= response.status_code < 300:
            try:
                check(reply)
            except RateLimited as rl:
                raise self._failed(seen, f"rate limit ({rl.reason})", limited=True,
                                   retry_after=rl.retry_after) from None
        return reply

    def _failed(self, seen: _Attempts, failure: str, limited: bool = False,
                retry_after: float | None = None) -> _Retry:
        self.last_error = failure
        if limited:
            seen.rate_limits += 1
            self.counters["rate_limited"] += 1
        else:
            seen.transient += 1
            self.counters["transient_errors"] += 1
        return _Retry(failure, limited, retry_after)


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


def join_url(base_url: str, path: str) -> str:
    """``base_url`` (which may carry a path prefix) joined with an absolute API ``path``."""
    base = base_url.strip()
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SourceError(f"The base URL {redact(base)!r} is not an http(s) URL like "
                          "https://api.example.com.")
    return base.rstrip("/") + "/" + path.lstrip("/")
