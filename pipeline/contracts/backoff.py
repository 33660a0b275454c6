"""Exponential back-off: the one rule every retry loop in KappaLab waits by.

Delays grow ``base, 2·base, 4·base, …`` up to ``cap``. With ``jitter`` the delay is drawn from
``[d/2, d]`` ("equal jitter") so that many clients retrying the same server spread out.

:class:`Backoff` is the state a worker loop keeps (the indexer and the scorer wait on it while
the store is down; a live HTTP source while the API fails); :func:`exponential_delay` is the
formula alone, for callers whose retry loop is a library's (the HTTP client uses tenacity).
"""
from __future__ import annotations

import random
import threading
from dataclasses import dataclass


def exponential_delay(attempt: int, base: float, cap: float, jitter: bool = False) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based)."""
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    # min() before the power would overflow: 2**1100 is not a float
    delay = cap if attempt > 64 else min(cap, base * 2 ** (attempt - 1))
    if jitter:
        return delay / 2 + random.uniform(0, delay / 2)
    return delay


@dataclass
class Backoff:
    """Back-off state of one retry loop: call :meth:`wait` after a failure, :meth:`reset`
    after a success.

    >>> b = Backoff(base=0.5, cap=2.0)
    >>> [b.next_delay() for _ in range(4)]
    [0.5, 1.0, 2.0, 2.0]
    """

    base: float = 0.5
    cap: float = 10.0
    jitter: bool = False
    failures: int = 0

    def next_delay(self) -> float:
        """Count one more failure and return how long to wait for it."""
        self.failures += 1
        return exponential_delay(self.failures, self.base, self.cap, self.jitter)

    def wait(self, stop: threading.Event) -> bool:
        """Wait the next delay, or less if ``stop`` is set meanwhile; True when stopped."""
        return stop.wait(self.next_delay())

    def reset(self) -> None:
        self.failures = 0
