"""Candles for the Live market page: refreshed only when the store has a newer bar, and
aggregated only where something can have changed.

:class:`CandleFeed` (one per server, shared by every session through ``st.cache_resource``)
answers "the latest ``n`` candles of this series" by

1. :meth:`CandleFeed.last_ts`: the series' newest bar ts (one index lookup). The page asks it
   first and, when it is the one already drawn, redraws its chart without aggregating
   anything, so an idle Live tab costs one tiny query per refresh;
2. :meth:`CandleFeed.latest`: re-aggregating only from the last (still growing) candle on: candles before it are
   closed and kept from the previous answer. The first answer for a series reads only the
   visible range (:meth:`~pipeline.store.base.Store.ohlc_latest`).

Older history added later (a backfill reaching further back) moves the series' first ts and
rebuilds the cached candles. A correction or a late bar (last write wins) does not move the
newest ts: the indexer records the rewritten range as a revision of the series
(:mod:`pipeline.store.revisions`), :meth:`CandleFeed.marker` includes its number, and
:meth:`CandleFeed.latest` re-aggregates just the candles of the rewritten ranges. Candles are
also rebuilt every ``rebuild_s`` seconds (a safety net, e.g. for bars written around the
indexer).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pandas as pd

from pipeline.store.base import Store
from pipeline.store.revisions import changed_since, lost_track, revision

WHOLE_HISTORY_CANDLES = 600


@dataclass
class _Entry:
    frame: pd.DataFrame  # the candles, the last one possibly still growing
    n: int  # how many were asked for (fewer in the frame: that is the whole series)
    first_ts: int
    last_ts: int
    built: float
    seq: int = 0  # the series' revision the candles include


class CandleFeed:
    """The candles of the live chart, per series, kept in memory and extended with the bars
    stored since the last read (rebuilt after ``rebuild_s`` or a rewritten history). One per
    dashboard server; script threads share it under its lock."""

    def __init__(self, store: Store, keep: int = 5_000, rebuild_s: float = 600.0):
        self.store = store
        self.keep = keep
        self.rebuild_s = rebuild_s
        self._cache: dict[tuple[str, str, int], _Entry] = {}
        self._lock = threading.Lock()

    def last_ts(self, symbol: str, interval: str) -> int | None:
        return self.store.last_bar_ts(symbol, interval)

    def marker(self, symbol: str, interval: str) -> tuple[int | None, int]:
        """What changes whenever the series' candles can: its newest ts and its revision."""
        doc = revision(self.store, symbol, interval)
        return self.last_ts(symbol, interval), int((doc or {}).get("seq", 0))

    def latest(self, symbol: str, interval: str, bucket_ms: int, n: int) -> pd.DataFrame:
        """The latest ``n`` candles (closed ones from the previous answer)."""
        last = self.last_ts(symbol, interval)
        doc = revision(self.store, symbol, interval)
        seq = int((doc or {}).get("seq", 0))
        key = (symbol, interval, int(bucket_ms))
        with self._lock:
            entry = self._cache.get(key)
            if last is None:
                self._cache.pop(key, None)
                return self.store.ohlc_latest(symbol, interval, bucket_ms, n)
            if entry is not None and entry.seq != seq:
                rewritten = changed_since(doc, entry.seq)
                if lost_track(doc, entry.seq) or entry.seq > seq:
                    entry = None  # too far behind (or the store was reset): rebuild
                elif rewritten is not None:
                    entry = self._revise(entry, symbol, interval, bucket_ms, *rewritten)
            if (entry is None or n > entry.n or time.time() - entry.built > self.rebuild_s):
                entry = self._build(symbol, interval, bucket_ms, max(n, 1), last)
            elif entry.last_ts != last:
                span = self.store.bar_time_range(symbol, interval)
                if span is None or span[0] != entry.first_ts:
                    entry = self._build(symbol, interval, bucket_ms, max(n, 1), last)
                else:
                    entry = self._extend(entry, symbol, interval, bucket_ms, last)
            entry.seq = seq
            self._cache[key] = entry
            return entry.frame.iloc[-n:].reset_index(drop=True) if n > 0 else entry.frame[:0]

    def whole_history(self, symbol: str, interval: str, step_ms: int,
                      candles: int = WHOLE_HISTORY_CANDLES) -> tuple[pd.DataFrame, int]:
        """About ``candles`` candles over everything stored; (frame or None, candle size)."""
        span = self.store.bar_time_range(symbol, interval)
        if span is None:
            return self.store.ohlc_latest(symbol, interval, step_ms, 0), step_ms
        bucket = whole_history_bucket(span[0], span[1], step_ms, candles)
        return self.latest(symbol, interval, bucket, candles + 1), bucket

    def _build(self, symbol, interval, bucket_ms, n, last) -> _Entry:
        frame = self.store.ohlc_latest(symbol, interval, bucket_ms, n)
        span = self.store.bar_time_range(symbol, interval)
        return _Entry(frame, n, span[0] if span else last, last, time.time())

    def _revise(self, entry: _Entry, symbol, interval, bucket_ms, lo: int, hi: int
                ) -> _Entry | None:
        """Re-aggregate the candles holding bars ``lo..hi`` (rewritten: corrected or late)."""
        old = entry.frame
        if old.empty:
            return None
        start, end = lo - lo % bucket_ms, hi - hi % bucket_ms + bucket_ms
        if len(old) >= entry.n:  # the latest n: a candle before them stays out of view
            start = max(start, int(old["ts"].iloc[0]))
        if start >= end:
            return entry
        part = self.store.ohlc_buckets(symbol, interval, bucket_ms, start_ms=start, end_ms=end)
        frame = pd.concat([old[old["ts"] < start], part, old[old["ts"] >= end]],
                          ignore_index=True)
        return _Entry(frame, entry.n, min(entry.first_ts, lo), entry.last_ts, entry.built,
                      entry.seq)

    def _extend(self, entry: _Entry, symbol, interval, bucket_ms, last) -> _Entry:
        old = entry.frame
        if old.empty:
            return self._build(symbol, interval, bucket_ms, 1, last)
        growing = int(old["ts"].iloc[-1])  # re-read from the last candle on
        tail = self.store.ohlc_buckets(symbol, interval, bucket_ms, start_ms=growing)
        frame = pd.concat([old[old["ts"] < growing], tail], ignore_index=True)
        if len(frame) > self.keep:
            frame = frame.iloc[-self.keep:].reset_index(drop=True)
        return _Entry(frame, entry.n, entry.first_ts, last, entry.built, entry.seq)


def whole_history_bucket(first_ts: int, last_ts: int, step_ms: int, candles: int) -> int:
    """The smallest multiple of the bar step giving at most ``candles`` candles, rounded up
    to a readable size (minutes, hours, days)."""
    span = max(last_ts - first_ts + step_ms, step_ms)
    raw = -(-span // max(candles, 1))
    for nice in (60_000, 300_000, 900_000, 1_800_000, 3_600_000, 4 * 3_600_000,
                 12 * 3_600_000, 86_400_000, 7 * 86_400_000):
        if nice >= raw and nice % step_ms == 0:
            return nice
    days = -(-raw // 86_400_000)
    return days * 86_400_000
