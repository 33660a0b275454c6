"""The ``fundamentals`` group live: a feature provider for the scorer (:mod:`models.live.news`),
fed by ``finance-fundamentals``.

The surface is the one :class:`models.live.providers.ExtraFeatures` routes to: ``kind``, ``topic``,
``claims(name)``, ``consume(raw)``, ``update_item(snapshot)``, ``use(names)``, ``names``,
``start_series(symbol, interval, first_ts)``, ``update(bar) -> dict`` and ``gauge()``. The
``fundamentals`` row of the stream table (:mod:`pipeline.contracts.streams`) names it, so the
scoring step builds it for the topic it is given.

Snapshots are few (one per symbol per fetch, typically a day apart), so every one read is kept,
keyed by its id (symbol|source|ts): the log deduplicates what arrives both from the store (read
on a symbol's first bar) and from the topic, and a tracker for new names starts from it. A
snapshot whose effective time is before a bar already scored is counted as ``late``: that
prediction went without it; later bars see it exactly as the batch join does.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

from models.features.fundamentals import FundamentalsTracker, is_fundamentals_feature
from pipeline.contracts.fundamentals import (FUNDAMENTAL_VALUES, FUNDAMENTALS_TOPIC, FundamentalsSnapshot,
                                   parse_fundamentals)
from pipeline.contracts.schema import InvalidBar, interval_ms


class LiveFundamentals:
    """The scorer's provider of the ``fundamentals`` features (a :class:`~models.live.providers.FeatureProvider`): reads
    ``finance-fundamentals`` records and the stored snapshots, and gives each bar the values
    as of its end. Owned by the scoring step, called from the scorer's loop thread only."""

    kind = "fundamentals"

    def __init__(self, store, topic: str = FUNDAMENTALS_TOPIC):
        self.store, self.topic = store, topic
        self.names: list[str] = []
        self.counts: Counter[str] = Counter()
        self._tracker: FundamentalsTracker | None = None
        self._log: dict[str, FundamentalsSnapshot] = {}  # doc id -> snapshot
        self._symbols: set[str] = set()  # symbols whose stored snapshots were read
        self._last_end: dict[str, int] = {}

    @staticmethod
    def claims(name: str) -> bool:
        return is_fundamentals_feature(name)

    def use(self, names: Iterable[str]) -> None:
        names = list(dict.fromkeys(names))
        if names == self.names:
            return
        self.names = names
        self._tracker = FundamentalsTracker(names) if names else None
        if self._tracker is not None:
            for snap in self._log.values():
                self._tracker.update_item(snap)

    def start_series(self, symbol: str, interval: str, first_ts: int) -> None:
        """A symbol's first bar in this run: its stored snapshots join the log (all of them:
        the latest before any bar can be arbitrarily old)."""
        if symbol in self._symbols:
            return
        self._symbols.add(symbol)
        try:
            frame = self.store.query_fundamentals(symbol)
        except Exception:  # a store without fundamentals, or down: the topic still feeds us
            self.counts["store_errors"] += 1
            return
        for row in frame.to_dict("records"):
            values = {v: (None if row[v] != row[v] else float(row[v]))
                      for v in FUNDAMENTAL_VALUES}
            snap = FundamentalsSnapshot(str(row["symbol"]), int(row["ts"]), str(row["source"]),
                                        str(row["latest_quarter"] or ""), values)
            if self._remember(snap):
                self.counts["from_store"] += 1

    def consume(self, raw: bytes | None) -> None:
        try:
            if raw is None:
                raise InvalidBar("empty message")
            snap = parse_fundamentals(raw)
        except InvalidBar:  # the fundamentals indexer dead-letters it; here it is counted
            self.counts["invalid"] += 1
            return
        self.update_item(snap)

    def update_item(self, snap: FundamentalsSnapshot) -> None:
        self.counts["read"] += 1
        if not self._remember(snap):
            self.counts["duplicates"] += 1
            return
        if snap.ts < self._last_end.get(snap.symbol, snap.ts + 1):
            self.counts["late"] += 1

    def _remember(self, snap: FundamentalsSnapshot) -> bool:
        if snap.doc_id in self._log:
            return False
        self._log[snap.doc_id] = snap
        if self._tracker is not None:
            self._tracker.update_item(snap)
        return True

    def update(self, bar: Any) -> dict[str, float]:
        if self._tracker is None:
            return {}
        end = int(bar.ts) + interval_ms(bar.interval)
        if end > self._last_end.get(bar.symbol, end - 1):
            self._last_end[bar.symbol] = end
        return self._tracker.update(bar)

    def gauge(self) -> dict[str, Any]:
        return {"names": list(self.names), "snapshots": len(self._log), **self.counts}
