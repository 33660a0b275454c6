"""The ``sentiment`` features live: the scorer's provider of the news stream
(:class:`LiveSentiment`, surface and holder in :mod:`models.live.providers`).

**Ordering.** A bar's sentiment is its news *published* before the bar's end (the as-of join of
:mod:`models.features.sentiment`). Live, an item can only count once the scorer has read it: an item
published before a bar's end that reaches the topic after that bar was scored cannot change
that prediction (it is counted as ``late`` and folded into the state, so every later bar
matches the batch features again). Within one poll, the news is applied before the bars.
After a restart each symbol's tracker is rebuilt from the store's news (``query_news``), then
fed from the topic; items seen both ways are counted once (deterministic news id). News that a
previous run consumed but the news indexer had not yet stored when the scorer restarted is
missed by the restarted scorer.
"""
from __future__ import annotations

from collections import Counter, deque
from typing import Any, Iterable

from models.features.sentiment import SENTIMENT_GROUP, SentimentTracker, _parse, is_sentiment_feature
from pipeline.contracts.news import NEWS_TOPIC, NewsItem, parse_news
from pipeline.contracts.schema import InvalidBar, interval_ms

#: Decayed sums keep items for this many half-lives: older ones weigh < 2**-60 (1e-18).
HALF_LIVES_KEPT = 60


class LiveSentiment:
    """The ``sentiment`` group (:mod:`models.features.sentiment`) live, fed by ``finance-news``.

    One :class:`~models.features.sentiment.SentimentTracker` per bar interval (its state is per symbol,
    and the bar end decides every value), for the union of the sentiment names the champions
    use. Every item read (from the store on a symbol's first bar, or from the topic) is kept in
    a per-symbol log, keyed by its news id, for as long as it can still change a value
    (``HALF_LIVES_KEPT`` half-lives, or the longest window): the log deduplicates, and a new
    tracker (other names, another interval) starts from it.
    """

    kind = "sentiment"

    def __init__(self, store, topic: str = NEWS_TOPIC, history: int = 10_000):
        self.store, self.topic = store, topic
        self.names: list[str] = []
        self.counts: Counter[str] = Counter()
        #: the latest rows served: (symbol, interval, ts, {name: value}), for inspection
        self.served: deque[tuple[str, str, int, dict[str, float]]] = deque(maxlen=history)
        self._trackers: dict[str, SentimentTracker] = {}  # interval -> tracker
        self._log: dict[str, dict[str, tuple[int, float, float]]] = {}  # symbol -> id -> item
        self._kept: dict[str, int] = {}  # symbol -> log size after its last pruning
        self._symbols: set[str] = set()  # symbols with bars (warmed from the store)
        self._first_ts: dict[str, int] = {}  # symbol -> its first bar in this run
        self._last_end: dict[str, int] = {}  # symbol -> latest bar end served
        self._step: dict[str, int] = {}  # symbol -> longest bar interval served (ms)
        self._step_of: dict[str, int] = {}  # interval -> ms
        self._horizon_bars = _horizon_bars(SENTIMENT_GROUP)

    @staticmethod
    def claims(name: str) -> bool:
        return is_sentiment_feature(name)

    # ---- names and warm-up ---------------------------------------------------------------
    def use(self, names: Iterable[str]) -> None:
        names = list(dict.fromkeys(names))
        if names == self.names:
            return
        was_idle, self.names = not self.names, names
        self._trackers.clear()  # rebuilt from the log on the next bar of each interval
        if not names:
            return
        horizon = _horizon_bars([*names, *SENTIMENT_GROUP])
        if was_idle or horizon > self._horizon_bars:  # read the store (again, further back)
            self._horizon_bars = max(horizon, self._horizon_bars)
            for symbol in self._symbols:
                self._load_stored(symbol, self._last_end.get(symbol, self._first_ts[symbol]))

    def start_series(self, symbol: str, interval: str, first_ts: int) -> None:
        """A series' first bar in this run: the symbol's stored news joins the log (and the
        trackers). Called before the bar is scored, so a restarted scorer matches the batch.
        While no champion uses sentiment, the store is read only once one does."""
        step = interval_ms(interval)
        self._first_ts.setdefault(symbol, int(first_ts))
        new_symbol = symbol not in self._symbols
        if not new_symbol and step <= self._step.get(symbol, 0):
            return
        self._step[symbol] = max(step, self._step.get(symbol, 0))
        if new_symbol:
            self._symbols.add(symbol)
            for tracker in self._trackers.values():  # what the topic brought before its bars
                for entry in self._log.get(symbol, {}).values():
                    tracker.update_news(_as_item(symbol, entry))
        if self.names:
            self._load_stored(symbol, first_ts)  # only items not seen yet reach the trackers

    def _load_stored(self, symbol: str, ref_ts: int | None) -> None:
        start = None
        if ref_ts is not None:
            start = int(ref_ts) - self._horizon_bars * self._step.get(symbol, 86_400_000)
        try:
            frame = self.store.query_news(symbol, start, None)
        except Exception:  # a store without news, or down: the topic still feeds the trackers
            self.counts["store_errors"] += 1
            return
        for r in frame.itertuples(index=False):
            item = NewsItem(str(r.symbol), int(r.ts), str(r.source), str(r.title), str(r.url),
                            float(r.sentiment_score), float(r.relevance))
            if self._remember(item):
                self.counts["from_store"] += 1
                if symbol in self._symbols:
                    for tracker in self._trackers.values():
                        tracker.update_news(item)

    # ---- the topic -----------------------------------------------------------------------
    def parse(self, raw: bytes) -> NewsItem:
        return parse_news(raw)

    def consume(self, raw: bytes | None) -> None:
        try:
            if raw is None:
                raise InvalidBar("empty message")
            item = self.parse(raw)
        except InvalidBar:  # the news indexer dead-letters it; here it is only counted
            self.counts["invalid"] += 1
            return
        self.update_item(item)

    def update_item(self, item: NewsItem) -> None:
        self.counts["read"] += 1
        if not self._remember(item):
            self.counts["duplicates"] += 1
            return
        if item.symbol not in self._symbols:
            return  # kept in the log until the symbol's first bar
        if item.ts < self._last_end.get(item.symbol, item.ts + 1):
            self.counts["late"] += 1  # its bar was already scored without it
        for tracker in self._trackers.values():
            tracker.update_news(item)

    def _remember(self, item: NewsItem) -> bool:
        log = self._log.setdefault(item.symbol, {})
        key = item.doc_id
        if key in log:
            return False
        log[key] = (int(item.ts), float(item.sentiment_score), float(item.relevance))
        if len(log) > 2 * self._kept.get(item.symbol, 0) + 64:
            self._prune(item.symbol)
        return True

    def _prune(self, symbol: str) -> None:
        log = self._log[symbol]
        ref = self._last_end.get(symbol)
        if ref is None:  # no bar yet: keep the horizon behind the newest item
            ref = max(e[0] for e in log.values())
        cutoff = ref - self._horizon_bars * self._step.get(symbol, 86_400_000)
        self._log[symbol] = {k: e for k, e in log.items() if e[0] >= cutoff}
        self._kept[symbol] = len(self._log[symbol])

    # ---- bars ----------------------------------------------------------------------------
    def update(self, bar: Any) -> dict[str, float]:
        tracker = self._trackers.get(bar.interval)
        if tracker is None:
            tracker = self._trackers[bar.interval] = SentimentTracker(self.names)
            for symbol in self._symbols:
                for entry in self._log.get(symbol, {}).values():
                    tracker.update_news(_as_item(symbol, entry))
        step = self._step_of.get(bar.interval) or self._step_of.setdefault(
            bar.interval, interval_ms(bar.interval))
        if step > self._step.get(bar.symbol, 0):
            self._step[bar.symbol] = step
        end = bar.ts + step
        if end > self._last_end.get(bar.symbol, end - 1):
            self._last_end[bar.symbol] = end
        values = tracker.update(bar)
        self.served.append((bar.symbol, bar.interval, bar.ts, values))
        return values

    def gauge(self) -> dict[str, Any]:
        return {"names": list(self.names), "symbols": len(self._symbols),
                "items_kept": sum(len(v) for v in self._log.values()), **self.counts}


def _horizon_bars(names: Iterable[str]) -> int:
    """Bars of age after which an item can no longer change any of ``names``."""
    out = 1
    for family, param in map(_parse, names):
        out = max(out, param * HALF_LIVES_KEPT if family == "sent_decay" else param)
    return out


def _as_item(symbol: str, entry: tuple[int, float, float]) -> dict[str, Any]:
    ts, score, rel = entry
    return {"symbol": symbol, "ts": ts, "sentiment_score": score, "relevance": rel}


def extra_features_note(gauge: dict[str, Any] | None) -> str | None:
    """One sentence on the scorer's live sentiment (its ``extra_features`` gauge), or None when
    no champion uses it: how many items it has read and how many came too late for their bar."""
    g = (gauge or {}).get("sentiment") or {}
    if not g.get("names"):
        return None
    read, late, bad = g.get("read", 0), g.get("late", 0), g.get("invalid", 0)
    note = (f"Sentiment features ({', '.join(g['names'])}) are computed live from the news "
            f"stream: {g.get('from_store', 0):,} stored items loaded at start, {read:,} read "
            f"from the topic ({g.get('duplicates', 0):,} already seen)")
    if late:
        note += (f"; {late:,} arrived after the bar they belong to had been predicted, so that "
                 "prediction went without them (later bars include them)")
    if bad:
        note += f"; {bad:,} unreadable items skipped (see the news dead-letter queue)"
    return note + "."
