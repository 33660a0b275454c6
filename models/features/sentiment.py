"""The ``sentiment`` feature group: news joined to bars *as of* each bar's close.

Three parametrised families, all in bar units (``I`` = the bar interval in ms, ``E`` = the
bar's end = ``ts + I``, each news item contributing ``score * relevance``):

- ``sent_decay_<h>``: sum over every item published before ``E`` of
  ``score * relevance * 0.5 ** ((E - published) / (h * I))`` (half-life ``h`` bars; an item
  loses half its weight every ``h`` bars of time). 0 before the first item.
- ``news_count_<k>``: number of items published in ``[E - k I, E)``.
- ``sent_mean_<k>``: relevance-weighted mean score of the items in ``[E - k I, E)``:
  ``sum(score * relevance) / sum(relevance)``; 0 (neutral) when there is none or all have
  relevance 0.

As-of rule: an item published at ``E`` or later never reaches the bar ending at ``E`` (its
window is half-open). Windows are measured in time, not in bar count, so a gap in the bars
(a closed market) does not stretch a window.

One implementation, two shapes: :func:`sentiment_features` for the model lab (bars and news
frames in, feature columns out) and :class:`SentimentTracker` for the live scorer
(``update_news(item)`` whenever an item arrives, ``update(bar)`` once per bar, constant work
per bar for a bounded news rate). tests/test_sentiment.py checks they agree. A late item (one
published before the last bar the tracker saw) cannot change features already emitted; it is
folded into the state so every later bar matches the batch answer.
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pandas as pd

SENTIMENT_GROUP: list[str] = ["sent_decay_1", "sent_decay_10", "news_count_10", "sent_mean_1",
                              "sent_mean_10"]
_NAME_RE = re.compile(r"^(sent_decay|news_count|sent_mean)_([1-9]\d{0,4})$")
NEWS_FRAME_COLUMNS = ["symbol", "ts", "sentiment_score", "relevance"]


def is_sentiment_feature(name: Any) -> bool:
    return isinstance(name, str) and _NAME_RE.match(name) is not None


def sentiment_features(bars: pd.DataFrame, news: pd.DataFrame | None, names: list[str],
                       interval: str | None = None) -> pd.DataFrame:
    """Feature frame (same index as ``bars``) for the sentiment ``names``.

    ``bars`` needs ``ts`` and, when several series are mixed, ``symbol``; the interval comes
    from its ``interval`` column or from ``interval``. ``news`` needs ``symbol, ts,
    sentiment_score, relevance``; ``None`` or empty means no news (every feature 0).
    """
    from pipeline.contracts.schema import interval_ms

    parsed = [_parse(n) for n in names]
    out = np.zeros((len(bars), len(names)))
    if not len(bars):
        return pd.DataFrame(out, index=bars.index, columns=names)
    if "interval" in bars.columns:
        intervals = bars["interval"].astype(str).to_numpy()
    elif interval is not None:
        intervals = np.full(len(bars), interval, dtype=object)
    else:
        raise ValueError("sentiment features need the bar interval (an 'interval' column or "
                         "the interval argument)")
    symbols = (bars["symbol"].astype(str).to_numpy() if "symbol" in bars.columns
               else np.full(len(bars), "?", dtype=object))
    ts = bars["ts"].to_numpy(dtype="int64")
    by_symbol = _news_by_symbol(news)
    keys = pd.MultiIndex.from_arrays([symbols, intervals])
    codes, uniques = pd.factorize(keys)
    for g, (symbol, interval_name) in enumerate(uniques):
        pos = np.flatnonzero(codes == g)
        pos = pos[np.argsort(ts[pos], kind="stable")]
        step = interval_ms(interval_name)
        ends = ts[pos] + step
        nts, contrib, rel = by_symbol.get(symbol, _EMPTY)
        for j, (family, param) in enumerate(parsed):
            out[pos, j] = _batch_family(family, param, ends, step, nts, contrib, rel)
    return pd.DataFrame(out, index=bars.index, columns=names)


def load_news(data: Any, bars: pd.DataFrame) -> pd.DataFrame | None:
    """News for the symbols and time range of ``bars`` from a store (None for a DataFrame or a
    store without news support). Items long before the first bar still count towards the
    decayed level, so the range starts at the epoch."""
    if isinstance(data, pd.DataFrame) or not hasattr(data, "query_news") or not len(bars):
        return None
    end = int(bars["ts"].max()) + 86_400_000  # past the last bar's end, whatever the interval
    parts = [data.query_news(str(s), None, end) for s in bars["symbol"].astype(str).unique()]
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else None


_EMPTY = (np.zeros(0, dtype="int64"), np.zeros(0), np.zeros(0))
_NEG_INF = float("-inf")


def _news_by_symbol(news: pd.DataFrame | None) -> dict[str, tuple[np.ndarray, ...]]:
    if news is None or not len(news):
        return {}
    missing = [c for c in NEWS_FRAME_COLUMNS if c not in news.columns]
    if missing:
        raise ValueError(f"the news frame lacks column(s) {', '.join(missing)}")
    out = {}
    for symbol, part in news.groupby(news["symbol"].astype(str), sort=False):
        part = part.sort_values("ts", kind="stable")
        score = part["sentiment_score"].to_numpy(dtype="float64")
        rel = part["relevance"].to_numpy(dtype="float64")
        out[symbol] = (part["ts"].to_numpy(dtype="int64"), score * rel, rel)
    return out


def _batch_family(family: str, param: int, ends: np.ndarray, step: int, nts: np.ndarray,
                  contrib: np.ndarray, rel: np.ndarray) -> np.ndarray:
    hi = np.searchsorted(nts, ends, side="left")  # items published strictly before the end
    if family == "sent_decay":
        return _batch_decay(ends, param * step, nts, contrib, hi)
    lo = np.searchsorted(nts, ends - param * step, side="left")
    if family == "news_count":
        return (hi - lo).astype("float64")
    num = _window_sums(contrib, lo, hi)
    den = _window_sums(rel, lo, hi)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def _window_sums(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    # Summed item by item (oldest first) over each window rather than by cumulative sums, so
    # the result does not carry rounding from older news and matches the tracker's sum.
    return np.array([float(sum(x[a:b])) if b > a else 0.0 for a, b in zip(lo, hi)])


def _batch_decay(ends: np.ndarray, half_life_ms: int, nts: np.ndarray, contrib: np.ndarray,
                 hi: np.ndarray) -> np.ndarray:
    out = np.zeros(len(ends))
    level, last_end, taken = 0.0, None, 0
    for j, end in enumerate(ends):
        end = int(end)
        if last_end is not None and end > last_end:
            level *= 0.5 ** ((end - last_end) / half_life_ms)
        if last_end is None or end > last_end:
            last_end = end
        while taken < hi[j]:
            level += contrib[taken] * 0.5 ** ((end - int(nts[taken])) / half_life_ms)
            taken += 1
        out[j] = level
    return out


def _parse(name: str) -> tuple[str, int]:
    m = _NAME_RE.match(name) if isinstance(name, str) else None
    if m is None:
        raise ValueError(f"{name!r} is not a sentiment feature (use sent_decay_<bars>, "
                         "news_count_<bars> or sent_mean_<bars>)")
    return m.group(1), int(m.group(2))


# ---------------------------------------------------------------------------------------------
# Streaming form for the live scorer

@dataclass
class _SymbolState:
    step: int
    last_end: int | None = None
    levels: dict[int, float] = field(default_factory=dict)  # half-life -> decayed sum
    pending: list[tuple[int, float, float]] = field(default_factory=list)  # ts >= last_end
    window: list[tuple[int, float, float]] = field(default_factory=list)  # sorted by ts
    values: dict[str, float] = field(default_factory=dict)


class SentimentTracker:
    """Incremental sentiment features for any number of symbols.

    ``update_news(item)`` for each news item (a :class:`pipeline.contracts.news.NewsItem` or a mapping
    with ``symbol, ts, sentiment_score, relevance``), in any order; ``update(bar)`` for each
    new bar of a symbol, in ts order, returns that bar's features (a replayed or older bar
    returns the last values unchanged). ``value(symbol)`` is the latest answer.
    """

    def __init__(self, names: Iterable[str]):
        self.names = list(dict.fromkeys(names))
        self._parsed = [_parse(n) for n in self.names]
        self._half_lives = sorted({p for f, p in self._parsed if f == "sent_decay"})
        self._windows = sorted({p for f, p in self._parsed if f != "sent_decay"})
        self._max_window = max(self._windows, default=0)
        self._states: dict[str, _SymbolState] = {}
        self._early: dict[str, list[tuple[int, float, float]]] = {}  # news before first bar

    def update_news(self, item: Any) -> None:
        get = item.get if isinstance(item, dict) else lambda k: getattr(item, k)
        symbol, ts = str(get("symbol")), int(get("ts"))
        rel = float(get("relevance"))
        entry = (ts, float(get("sentiment_score")) * rel, rel)
        st = self._states.get(symbol)
        if st is None:
            self._early.setdefault(symbol, []).append(entry)
        elif st.last_end is None or ts >= st.last_end:
            st.pending.append(entry)
        else:  # late: published before the last bar end the tracker has already served
            for h in self._half_lives:
                st.levels[h] += entry[1] * 0.5 ** ((st.last_end - ts) / (h * st.step))
            if ts >= st.last_end - self._max_window * st.step:
                bisect.insort(st.window, entry)

    update_item = update_news  # the name other trackers' items use (models/live/news.py)

    def update(self, bar: Any) -> dict[str, float]:
        if isinstance(bar, dict):
            symbol, ts, interval = str(bar["symbol"]), int(bar["ts"]), str(bar["interval"])
        else:
            symbol, ts, interval = str(bar.symbol), int(bar.ts), str(bar.interval)
        st = self._states.get(symbol)
        if st is None:
            from pipeline.contracts.schema import interval_ms

            st = self._states[symbol] = _SymbolState(interval_ms(interval))
            st.levels = {h: 0.0 for h in self._half_lives}
            st.pending = self._early.pop(symbol, [])
        step, last = st.step, st.last_end
        end = ts + step
        if last is not None:
            if end <= last:
                return dict(st.values)
            for h in self._half_lives:
                st.levels[h] *= 0.5 ** ((end - last) / (h * step))
        if st.pending:
            st.pending.sort()
            k = bisect.bisect_left(st.pending, (end, _NEG_INF, _NEG_INF))
            due, st.pending = st.pending[:k], st.pending[k:]
            for item_ts, contrib, rel in due:
                for h in self._half_lives:
                    st.levels[h] += contrib * 0.5 ** ((end - item_ts) / (h * step))
                bisect.insort(st.window, (item_ts, contrib, rel))
        window = st.window
        if window and window[0][0] < end - self._max_window * step:
            del window[:bisect.bisect_left(window, (end - self._max_window * step, _NEG_INF,
                                                    _NEG_INF))]
        st.last_end = end
        sums = {}
        for k in self._windows:  # count, then sums in ts order (the batch's order)
            start = end - k * step
            n, num, den = 0, 0, 0
            for item_ts, contrib, rel in window:
                if item_ts >= start:
                    n, num, den = n + 1, num + contrib, den + rel
            sums[k] = (n, float(num), float(den))
        values = {}
        for name, (family, param) in zip(self.names, self._parsed):
            if family == "sent_decay":
                values[name] = st.levels[param]
            elif family == "news_count":
                values[name] = float(sums[param][0])
            else:
                _, num, den = sums[param]
                values[name] = num / den if den > 0 else 0.0
        st.values = values  # replaced, never changed in place: callers may keep it
        return values

    def value(self, symbol: str) -> dict[str, float]:
        st = self._states.get(symbol)
        return dict(st.values) if st else {}
