"""The bar rules that need more than the message: the key, the series' time, its past.

:func:`~pipeline.contracts.schema.parse_bar` judges a message alone (fields, ranges, alignment). Three
rules need more, and the indexer and the scorer apply them alike (docs/STREAM_ROBUSTNESS.md,
"Data rules"):

- **the key is the symbol** (:func:`~pipeline.contracts.schema.key_problem`): a bar keyed otherwise is
  dead-lettered (``KeyMismatch``); a null key is accepted and counted (``unkeyed``);
- **one phase per series**: a 30m or 1h bar (whose grid is a quarter hour,
  :data:`~pipeline.contracts.schema.ALIGN_MS`) starts a whole number of intervals after its series'
  last bar, else it is dead-lettered (``Misaligned``);
- **time sanity** (:class:`SeriesClock`): a bar may start at most :data:`MAX_AHEAD_MS` (one
  day) plus one interval after the later of *now* (the wall clock, UTC) and its series' last
  accepted bar. The series' last bar is the simulator's own clock: a simulator running ahead
  of the wall clock moves one interval at a time and stays within the rule; a bar dated 2099
  does not, and is dead-lettered (``SuspectTime``) instead of becoming its series' last bar;
- **corrections: last write wins.** A bar whose id (``symbol|interval|ts``) was written before
  replaces it; a bar older than its series' last bar fills its place. The indexer counts them
  (``corrected``, ``late``; an identical bar again is ``replayed``) and records the rewritten
  range per series (:mod:`pipeline.store.revisions`) for the caches that must drop it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Sequence

from pipeline.contracts.schema import (
    ALIGN_MS, INTERVALS, Bar, KeyMismatch, Misaligned, SuspectTime, key_problem,
)
from pipeline.store.base import now_ms

#: How far past the later of now and its series' last bar a bar may start (plus one interval).
MAX_AHEAD_MS = 86_400_000

SeriesKey = tuple[str, str]  # (symbol, interval)
_NONE = -1  # a series without any bar yet
#: Intervals longer than their grid (ALIGN_MS): their bars also keep their series' phase.
_PHASED = frozenset(i for i, step in INTERVALS.items() if ALIGN_MS[i] < step)


def iso(ts: int) -> str:
    return datetime.fromtimestamp(ts / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Screen:
    """One batch through :meth:`SeriesClock.screen`."""

    suspects: dict[int, str] = field(default_factory=dict)  # position -> "Class: reason"
    revised: list[int] = field(default_factory=list)  # positions at or before the series' last
    latest: dict[SeriesKey, int] = field(default_factory=dict)  # series -> last ts after it


class SeriesClock:
    """Each series' last accepted bar, and which new bars lie too far ahead of it.

    ``last_stored(keys)`` gives the stored last ts of series seen for the first time (a dict,
    series without bars left out); ``now()`` the wall clock in epoch ms. :meth:`screen` judges
    a batch in log order without changing anything; :meth:`commit` keeps its outcome once the
    batch is stored (a batch retried after an outage is then judged again, alike).
    """

    #: How long a series' last bar is trusted from memory before it is read from the store
    #: again: another indexer of the group may have stored the series meanwhile (after a
    #: rebalance moved its partition away and back).
    REFRESH_S = 30.0

    def __init__(self, last_stored: Callable[[list[SeriesKey]], dict[SeriesKey, int]],
                 now: Callable[[], int] = now_ms):
        self.last_stored = last_stored
        self.now = now
        self._last: dict[SeriesKey, int] = {}
        self._seeded = time.monotonic()

    def screen(self, bars: Sequence[Bar]) -> Screen:
        now = self.now()
        if time.monotonic() - self._seeded > self.REFRESH_S:
            self._last.clear()
            self._seeded = time.monotonic()
        wall_limit = now + MAX_AHEAD_MS
        committed, cur = self._last, {}
        out = Screen(latest=cur)
        phased = _PHASED
        for i, b in enumerate(bars):
            k = (b.symbol, b.interval)
            prev = cur.get(k)
            if prev is None:
                prev = committed.get(k)
                if prev is None:
                    self._seed(bars)
                    prev = committed[k]
            ts = b.ts
            if k[1] in phased and prev != _NONE and (ts - prev) % INTERVALS[k[1]]:
                out.suspects[i] = f"{Misaligned.__name__}: {phase_reason(b, prev)}"
                cur[k] = prev
                continue
            if ts > prev:
                if ts > wall_limit and ts - max(prev, now) > MAX_AHEAD_MS + INTERVALS[b.interval]:
                    out.suspects[i] = f"{SuspectTime.__name__}: {ahead_reason(b, prev, now)}"
                    cur[k] = prev
                    continue
                cur[k] = ts
            else:
                cur[k] = prev
                out.revised.append(i)
        return out

    def commit(self, screen: Screen) -> None:
        self._last.update(screen.latest)

    def _seed(self, bars: Iterable[Bar]) -> None:
        new = list({(b.symbol, b.interval) for b in bars} - self._last.keys())
        found = self.last_stored(new)
        for k in new:
            self._last[k] = int(found.get(k, _NONE))


def phase_reason(bar: Bar, last: int) -> str:
    off = (bar.ts - last) % INTERVALS[bar.interval] // 60_000
    return (f"ts {bar.ts} ({iso(bar.ts)}) is {off} min off the phase of its {bar.interval} "
            f"series, whose last bar started at {iso(last)}: its bars start a whole number of "
            f"{bar.interval} apart")


def ahead_reason(bar: Bar, last: int, now: int) -> str:
    after = f"its series' last bar ({iso(last)})" if last != _NONE else "its series (no bar yet)"
    days = (bar.ts - max(last, now)) / 86_400_000
    return (f"ts {bar.ts} ({iso(bar.ts)}) lies {days:,.1f} days after the later of now "
            f"({iso(now)}) and {after}; a {bar.interval} bar may start at most "
            f"{MAX_AHEAD_MS // 3_600_000} h plus one interval after it")


def last_in_chain(store, symbol: str, interval: str, now: int | None = None
                  ) -> tuple[int, float] | None:
    """The series' last stored bar that the time rule accepts, as ``(ts, close)``: bars
    ahead of the wall clock count while each lies within the rule of the one before (a
    simulator ahead of the wall clock); a stray bar far ahead (stored before the rule, or
    around the indexer) ends the chain, and what follows it is not the series' clock."""
    now = now_ms() if now is None else now
    edge = now + MAX_AHEAD_MS
    before = store.query_bars(symbol, interval, end_ms=edge + 1, limit=1)
    ahead = store.query_bars(symbol, interval, start_ms=edge + 1)
    point = ((int(before["ts"].iloc[-1]), float(before["close"].iloc[-1]))
             if len(before) else None)
    base = max(now, point[0]) if point else now
    step = MAX_AHEAD_MS + INTERVALS[interval]
    for ts, close in zip(ahead["ts"].tolist(), ahead["close"].tolist()):
        if ts - base > step:
            break
        point, base = (int(ts), float(close)), ts
    return point


def stored_last(store) -> Callable[[list[SeriesKey]], dict[SeriesKey, int]]:
    """``last_stored`` for a :class:`SeriesClock` over a store: one query per interval."""
    def lookup(keys: list[SeriesKey]) -> dict[SeriesKey, int]:
        by_interval: dict[str, list[str]] = {}
        for symbol, interval in keys:
            by_interval.setdefault(interval, []).append(symbol)
        out = {}
        for interval, symbols in by_interval.items():
            last = store.latest_bars(symbols, interval, 1)
            out.update({(s, interval): int(t) for s, t in zip(last["symbol"], last["ts"])})
        return out
    return lookup


class BarRules:
    """The indexer's side of the rules: :meth:`screen` a parsed batch (``[(msg, bar)]``) into
    what is written and what is dead-lettered (``(msg, reason)``); after the write,
    :meth:`stored` counts the corrections and late bars it held and :meth:`record` writes
    their revisions."""

    def __init__(self, store, now: Callable[[], int] = now_ms):
        self.store = store
        self.clock = SeriesClock(stored_last(store), now)
        self._screen: Screen | None = None
        self._changes: dict[SeriesKey, list[int]] = {}
        self.tally: dict[str, int] = {}

    def screen(self, items: list[tuple[Any, Bar]]) -> tuple[list[tuple[Any, Bar]],
                                                            list[tuple[Any, str]]]:
        from pipeline.store.revisions import classify

        rejects: list[tuple[Any, str]] = []
        unkeyed = 0
        keyed, bars = items, [b for _, b in items]
        if not all(m.key == b.symbol.encode() for m, b in items):  # the usual batch: one pass
            keyed = []
            for msg, bar in items:
                if msg.key is None:
                    unkeyed += 1
                elif (problem := key_problem(msg.key, bar)) is not None:
                    rejects.append((msg, f"{KeyMismatch.__name__}: {problem}"))
                    continue
                keyed.append((msg, bar))
            bars = [b for _, b in keyed]
        screen = self.clock.screen(bars)
        kept = keyed
        if screen.suspects:
            rejects += [(keyed[i][0], r) for i, r in screen.suspects.items()]
            kept = [item for i, item in enumerate(keyed) if i not in screen.suspects]
        self._screen = screen
        self.tally = {"unkeyed": unkeyed}
        if screen.revised:
            kinds, changes = classify(self.store, bars, screen.revised)
            self.tally.update(kinds)
            for k, stamps in changes.items():  # kept until recorded (a retry adds to them)
                self._changes.setdefault(k, []).extend(stamps)
        return kept, rejects

    def stored(self) -> dict[str, int]:
        """The batch was written: remember its series' last bars; returns the counts to add
        (``unkeyed``, ``corrected``, ``late``, ``replayed``)."""
        if self._screen is not None:
            self.clock.commit(self._screen)
        tally, self._screen, self.tally = self.tally, None, {}
        return {k: n for k, n in tally.items() if n}

    def record(self) -> None:
        """Record the revisions of the stored batches (an outage here: with the retry)."""
        from pipeline.store.revisions import record

        if self._changes:
            record(self.store, self._changes)
            self._changes = {}
