"""Rewritten history: which stored bars a correction or a late bar changed, per series.

The rule is *last write wins* (docs/STREAM_ROBUSTNESS.md, "Corrections"): the store keeps the
bar written last under an id. Readers that cache what they read (the Live chart's
:class:`~dashboard.candles.CandleFeed`) cannot see such a change in the series' newest ts, so
the indexer, the one writer of bars, records it: one document per series in the
``bar_revisions`` collection, ``{symbol, interval, seq, recent: [[seq, from_ts, to_ts], ...],
corrected, late}``. ``seq`` grows by one per batch that rewrote the series; ``recent`` keeps
the last :data:`KEEP` rewritten ranges, so a reader that saw revision ``s`` re-reads only
the ranges after it (:func:`changed_since`).
"""
from __future__ import annotations

from typing import Any, Sequence

from pipeline.contracts.schema import Bar
from pipeline.store.base import REVISIONS, now_ms

KEEP = 32
SeriesKey = tuple[str, str]


def classify(store, bars: Sequence[Bar], positions: list[int]
             ) -> tuple[dict[str, int], dict[SeriesKey, list[int]]]:
    """The bars at ``positions`` lie at or before their series' last bar: compare each with
    what the store (or an earlier bar of the same batch) holds under its id. Returns the
    counts (``corrected``: other values, ``late``: a new id, ``replayed``: the same bar
    again) and, per series, the ts of the bars that change it."""
    wanted = set(positions)
    keys = {(bars[i].symbol, bars[i].interval) for i in positions}
    by_series: dict[SeriesKey, list[tuple[int, Bar]]] = {k: [] for k in keys}
    for i, b in enumerate(bars):
        mine = by_series.get((b.symbol, b.interval))
        if mine is not None:
            mine.append((i, b))
    counts = {"corrected": 0, "late": 0, "replayed": 0}
    changes: dict[SeriesKey, list[int]] = {}
    for (symbol, interval), series in by_series.items():
        lo = min(b.ts for i, b in series if i in wanted)
        hi = max(b.ts for i, b in series if i in wanted)
        stored = store.query_bars(symbol, interval, start_ms=lo, end_ms=hi + 1)
        have: dict[int, tuple] = {int(r.ts): (r.open, r.high, r.low, r.close, r.volume, r.source)
                                  for r in stored.itertuples(index=False)}
        for i, b in series:  # earlier bars of the batch count as written before
            values = (b.open, b.high, b.low, b.close, b.volume, b.source)
            if i in wanted:
                before = have.get(b.ts)
                kind = ("late" if before is None else
                        "replayed" if before == values else "corrected")
                counts[kind] += 1
                if kind != "replayed":
                    changes.setdefault((symbol, interval), []).append(b.ts)
            have[b.ts] = values
    return counts, changes


def record(store, changes: dict[SeriesKey, list[int]]) -> None:
    """One revision per series: the range of ts the batch rewrote."""
    for (symbol, interval), stamps in changes.items():
        doc_id = f"{symbol}|{interval}"
        old = store.get_doc(REVISIONS, doc_id) or {}
        seq = int(old.get("seq", 0)) + 1
        recent = [*(old.get("recent") or [])[-(KEEP - 1):], [seq, min(stamps), max(stamps)]]
        store.put_doc(REVISIONS, doc_id, {
            "symbol": symbol, "interval": interval, "seq": seq, "recent": recent,
            "bars": int(old.get("bars", 0)) + len(stamps), "created_ms": now_ms()})


def revision(store, symbol: str, interval: str) -> dict[str, Any] | None:
    """The series' revision document, or None when its history was never rewritten."""
    return store.get_doc(REVISIONS, f"{symbol}|{interval}")


def changed_since(doc: dict[str, Any] | None, seq: int) -> tuple[int, int] | None:
    """The ts range ``[from, to]`` rewritten after revision ``seq``, None when nothing was.
    (A reader more than :data:`KEEP` revisions behind must rebuild: :func:`lost_track`.)"""
    if not doc or int(doc.get("seq", 0)) <= seq:
        return None
    ranges = [(lo, hi) for s, lo, hi in doc.get("recent") or [] if s > seq]
    if not ranges:
        return None
    return min(lo for lo, _ in ranges), max(hi for _, hi in ranges)


def lost_track(doc: dict[str, Any] | None, seq: int) -> bool:
    """True when revisions after ``seq`` fell out of the kept ranges (rebuild everything)."""
    recent = (doc or {}).get("recent") or []
    return bool(recent) and int(doc.get("seq", 0)) > seq and recent[0][0] > seq + 1
