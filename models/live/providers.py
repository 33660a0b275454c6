"""The scorer's features from other streams than the bars: the provider surface and the holder.

The scorer computes bar features with :mod:`models.streaming` (one state per series). A feature
made from another stream comes from a *provider*: an object that owns a Kafka topic, parses
its messages, keeps incremental state and answers ``update(bar) -> {name: value}`` once per
bar. :class:`ExtraFeatures` holds the scorer's providers, routes each consumed record to the
provider of its topic, and builds each champion's feature row (bar features and provider
features in the champion's order). The providers are
:class:`models.live.news.LiveSentiment` and :class:`models.live.fundamentals.LiveFundamentals`;
each is named by its stream's row of the stream table (:mod:`pipeline.contracts.streams`,
``provider``), built as ``cls(store, topic)``, and has the surface of :class:`FeatureProvider`:
``kind``, ``topic``, ``claims(name)``, ``consume(raw)`` (parse; count and skip a bad message;
apply a good one with ``update_item(item)``), ``use(names)``, ``names``,
``start_series(symbol, interval, first_ts)`` (warm up from the store), ``update(bar) -> dict``
and ``gauge() -> dict``. Adding one is its class and the ``provider`` of its stream's row.
"""
from __future__ import annotations

from typing import Any, Iterable, Protocol

import numpy as np

from models.streaming import StreamingFeatures
from pipeline.contracts.streams import with_provider


class FeatureProvider(Protocol):
    """What the scorer needs from a source of features that do not come from the bars (news,
    fundamentals): the topic it reads, the names it claims, and per-bar values as of each
    bar's end. Implementations are called from the scorer's loop thread only."""

    kind: str
    topic: str
    names: list[str]

    def claims(self, name: str) -> bool: ...
    def parse(self, raw: bytes) -> Any: ...
    def consume(self, raw: bytes | None) -> None: ...
    def use(self, names: Iterable[str]) -> None: ...
    def start_series(self, symbol: str, interval: str, first_ts: int) -> None: ...
    def update_item(self, item: Any) -> None: ...
    def update(self, bar: Any) -> dict[str, float]: ...
    def gauge(self) -> dict[str, Any]: ...


class ExtraFeatures:
    """The scorer's providers of non-bar features, and the merge into each feature row."""

    def __init__(self, providers: Iterable[FeatureProvider] = ()):
        self.providers = list(providers)
        self._by_topic = {p.topic: p for p in self.providers}
        self._layouts: dict[tuple, tuple] = {}

    @property
    def topics(self) -> list[str]:
        return list(self._by_topic)

    @property
    def active(self) -> bool:
        """Whether any provider has features to compute (else the scorer skips the merge)."""
        return any(p.names for p in self.providers)

    def claims(self, name: str) -> bool:
        return any(p.claims(name) for p in self.providers)

    def check(self, features: list[str]) -> None:
        """ValueError naming a feature the scorer cannot compute live (the champions' check)."""
        bar_names = self.split(features)
        for row in with_provider():  # a feature of a stream this scorer does not read
            unread = [f for f in bar_names if row.provider_class().claims(f)]
            if unread:
                raise ValueError(f"its feature {unread[0]} needs the {row.name} stream, which "
                                 f"this scorer does not read (start it with a {row.name} topic)")
        StreamingFeatures(bar_names)  # raises for a name without a streaming form

    def split(self, names: Iterable[str]) -> list[str]:
        """The names the bar state computes (the rest belongs to a provider)."""
        return [n for n in names if not self.claims(n)]

    def use(self, names: Iterable[str]) -> None:
        names = list(names)
        for p in self.providers:
            p.use(n for n in names if p.claims(n))
        self._layouts.clear()

    def handle(self, records: Iterable[Any]) -> None:
        """Records of the providers' topics (any order): each parsed and applied; a bad one is
        counted and skipped (the topic's own indexer dead-letters it)."""
        for msg in records:
            p = self._by_topic.get(msg.topic)
            if p is not None:
                p.consume(msg.value)

    def start_series(self, symbol: str, interval: str, first_ts: int) -> None:
        for p in self.providers:
            p.start_series(symbol, interval, first_ts)

    def update(self, bar: Any) -> dict[str, float]:
        out: dict[str, float] = {}
        for p in self.providers:
            if p.names:
                out.update(p.update(bar))
        return out

    def row(self, features: list[str], bar_names: list[str], bar_row: np.ndarray,
            extra: dict[str, float]) -> np.ndarray:
        """One model's feature row, in ``features`` order, from the bar state's row (over
        ``bar_names``) and the providers' values."""
        key = (tuple(features), tuple(bar_names))
        layout = self._layouts.get(key)
        if layout is None:  # positions in [bar row..., provider values...]
            pos = {n: i for i, n in enumerate(bar_names)}
            others = [f for f in features if f not in pos]
            at = {f: len(bar_names) + j for j, f in enumerate(others)}
            layout = self._layouts[key] = (
                np.array([pos[f] if f in pos else at[f] for f in features], dtype=int), others)
        take, others = layout
        # NaN for a value not computed: the model then skips the row (as during warm-up)
        return np.concatenate((bar_row, [extra.get(f, np.nan) for f in others]))[take]

    def gauge(self) -> dict[str, Any]:
        return {p.kind: p.gauge() for p in self.providers}
