"""The request budget of a market-data API key: at most N requests per window.

A small sliding-window limiter rather than a library: it must wait *stoppably* (a source being
stopped never sleeps through the stop), refuse up front when the wait would exceed what the
caller accepts (a backfill of 100 symbols on 25 requests a day says so at once), and report
its usage to the Pipeline page.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable, Iterable

from pipeline.sources.api_errors import ApiError, Stopped


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
