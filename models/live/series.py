"""The live state of each series the scorer follows, rebuilt from the store after a restart.

:class:`SeriesStates` keeps, per ``(symbol, interval)``, a :class:`SeriesState`: its
streaming features (:mod:`models.streaming`), its last ``lookback`` bars (to rebuild the
features when a champion needs others) and its book of predictions waiting for their bar
(:mod:`models.live.progressive`). A series seen for the first time is rebuilt from the bars stored
just before its first new bar, and from the predictions stored without an actual.

The features of all series live in one :class:`~models.streaming.FeatureBank` (a slot per
series): :meth:`SeriesStates.advance` pushes a poll's new bars of every series through it
together, the ``k``-th new bar of each series in one vectorised update.

Corrections follow *last write wins* (docs/STREAM_ROBUSTNESS.md): a bar at or before a
series' last bar that differs from the one kept (or fills a gap) replaces it, and
:meth:`SeriesStates.revise` rebuilds the series' features from its kept bars; the scorer then
re-derives the predictions still waiting (:func:`rederive_pending`) and re-scores the stored
ones whose bar was corrected (:func:`resettle_stored`).
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from models.live.progressive import PendingBook, unscored_from_store
from models.registry import LoadedModel
from models.targets import from_close_value
from models.streaming import FeatureSet
from pipeline.contracts.schema import PREDICTION_FIELDS, Bar, Prediction, interval_ms
from pipeline.store.base import Store

SeriesKey = tuple[str, str]  # (symbol, interval)
#: Bars kept beyond the features' lookback, so that the rows of the last few bars (the base
#: bars of predictions still waiting, horizon up to this) can be rebuilt after a correction.
REVISE_MARGIN = 16


@dataclass
class SeriesState:
    """One series: its slot in the shared feature bank, recent bars, predictions waiting for
    their bar."""

    feature_set: FeatureSet
    slot: int
    recent: deque
    book: PendingBook = field(default_factory=PendingBook)
    last_ts: int | None = None

    @classmethod
    def new(cls, feature_set: FeatureSet) -> "SeriesState":
        return cls(feature_set, feature_set.new_slot(),
                   deque(maxlen=feature_set.lookback + REVISE_MARGIN))

    def update(self, bar: Bar) -> np.ndarray:
        """One bar through the features (a layer of one; :meth:`SeriesStates.advance` does
        many series at once)."""
        self.recent.append(bar)
        self.last_ts = bar.ts
        return self.feature_set.bank.update_bars([self.slot], [bar])[0]

    def warm(self, bars: Iterable[Bar]) -> None:
        for bar in bars:
            self.update(bar)


class SeriesStates:
    """Every followed series' :class:`SeriesState`, created (and rebuilt) on first sight.

    ``catchup_s``: on a restart, how long in total to wait for the indexer (another consumer
    of the topic) to store the bar just before a series' first new one, so rebuilt features
    have no hole. A hole can be real (a market closed overnight): the wait then runs out, once.
    ``settle``: called with (prediction, bar) for stored predictions whose bar is stored too.
    """

    def __init__(self, store: Store, features: list[str], catchup_s: float = 3.0,
                 settle: Callable[[Prediction, Bar], object] | None = None,
                 on_error: Callable[[str], object] | None = None):
        self.store = store
        self.features = FeatureSet(features)
        self.catchup_left = catchup_s
        self.settle = settle or (lambda p, bar: None)
        self.on_error = on_error or (lambda message: None)
        self._states: dict[SeriesKey, SeriesState] = {}
        self._to_warm: list[tuple[SeriesState, list[Bar]]] = []  # loaded, features not built

    def __contains__(self, key: SeriesKey) -> bool:
        return key in self._states

    def get(self, key: SeriesKey, first_ts: int) -> SeriesState:
        """The series' state, rebuilt from the store on first sight."""
        state = self._states.get(key)
        if state is None:
            state = self.load(key, first_ts)
            self.warm_loaded()
        return state

    def load(self, key: SeriesKey, first_ts: int) -> SeriesState:
        """A series seen for the first time: read its last bars and its unscored predictions
        from the store (the queries); its features are rebuilt by :meth:`warm_loaded`, for
        every series loaded in the same poll at once."""
        state = self._states.get(key)
        if state is not None:
            return state
        recent = self._await_store(key, first_ts)
        state = SeriesState.new(self.features)
        try:
            state.book.pending = unscored_from_store(self.store, key[0], key[1], first_ts,
                                                     recent, self.settle)
        except Exception as exc:
            self.on_error(f"could not read earlier predictions of {key[0]}: {exc}")
        self._states[key] = state
        self._to_warm.append((state, recent))
        if recent:
            state.last_ts = recent[-1].ts
        return state

    def warm_loaded(self) -> None:
        """Rebuild the features of the series loaded since the last call, all together."""
        todo, self._to_warm = self._to_warm, []
        self._warm_all(todo)

    def advance(self, fresh: list[tuple[SeriesState, list[Bar]]]) -> list[np.ndarray]:
        """Each series' new bars (in ts order, after its ``last_ts``) through the features:
        the ``k``-th new bar of every series in one vectorised update. Returns, per series,
        its bars' feature rows, ``(len(bars), len(features))``."""
        out = [np.empty((len(bars), len(self.features.names))) for _, bars in fresh]
        bank = self.features.bank
        depth = max((len(bars) for _, bars in fresh), default=0)
        for k in range(depth):
            layer = [j for j, (_, bars) in enumerate(fresh) if len(bars) > k]
            slots, layer_bars = [], []
            for j in layer:
                state, bars = fresh[j]
                bar = bars[k]
                slots.append(state.slot)
                layer_bars.append(bar)
                state.recent.append(bar)
                state.last_ts = bar.ts
            rows = bank.update_bars(slots, layer_bars)
            for pos, j in enumerate(layer):
                out[j][k] = rows[pos]
        return out

    def revise(self, state: SeriesState, bars: list[Bar]) -> "Revision":
        """Bars at or before the series' last bar, in log order: last write wins. A bar
        that differs from the kept one of its ts (``corrected``) or has none (``late``, within
        the kept window) takes its place and the features are rebuilt from the kept bars; an
        identical bar is ``replayed``; one older than the kept window is ``older`` (the
        features no longer read it; stored predictions it settled are re-scored)."""
        rev = Revision()
        kept = {b.ts: b for b in state.recent}
        first = state.recent[0].ts if state.recent else None
        for bar in bars:
            if first is None or bar.ts < first:
                rev.counts["older"] += 1  # the store's alone: the features no longer read it
                rev.changed.append(bar)
                continue
            old = kept.get(bar.ts)
            if old == bar:
                rev.counts["replayed"] += 1
                continue
            rev.counts["late" if old is None else "corrected"] += 1
            rev.changed.append(bar)
            kept[bar.ts] = bar
            rev.from_ts = bar.ts if rev.from_ts is None else min(rev.from_ts, bar.ts)
        if rev.from_ts is None:
            return rev
        rev.bars = sorted(kept.values(), key=lambda b: b.ts)[-state.recent.maxlen:]
        state.feature_set.bank.reset_slot(state.slot)
        state.recent.clear()
        rows = self.advance([(state, rev.bars)])[0]
        rev.rows = {b.ts: rows[i] for i, b in enumerate(rev.bars)}
        return rev

    def _warm_all(self, todo: list[tuple[SeriesState, list[Bar]]]) -> None:
        todo = [(state, bars) for state, bars in todo if bars]
        for state, bars in todo:
            state.last_ts = None
        self.advance(todo)

    def last_predicted(self, state: SeriesState, key: SeriesKey, model_id: str) -> int | None:
        """The last base bar ``model_id`` predicted in this series (from the store once)."""
        book = state.book
        if model_id not in book.last_predicted:
            last = self.store.query_predictions(symbol=key[0], interval=key[1],
                                                model_id=model_id, limit=1)
            book.last_predicted[model_id] = int(last["base_ts"].iloc[-1]) if len(last) else None
        return book.last_predicted[model_id]

    def use_features(self, names: list[str]) -> None:
        """Switch every series to other features, rebuilt from its recent bars (or the store,
        when it must look further back than it kept)."""
        if names == self.features.names:
            return
        self.warm_loaded()
        self.features = FeatureSet(names)
        n = self.features.lookback
        todo = []
        for key, state in self._states.items():
            recent = list(state.recent)
            if len(recent) < n and state.last_ts is not None:
                stored = self._stored_before(key, state.last_ts + 1, n)
                if stored and stored[-1].ts == state.last_ts:
                    recent = stored
            state.feature_set, state.slot = self.features, self.features.new_slot()
            state.recent = deque(maxlen=n + REVISE_MARGIN)
            todo.append((state, recent))
        self._warm_all(todo)

    def _stored_before(self, key: SeriesKey, before_ts: int, n: int) -> list[Bar]:
        return bars_from_frame(self.store.query_bars(key[0], key[1], end_ms=before_ts, limit=n))

    def _await_store(self, key: SeriesKey, first_ts: int) -> list[Bar]:
        n = self.features.lookback
        bars = self._stored_before(key, first_ts, n)
        step = interval_ms(key[1])
        if not bars or bars[-1].ts >= first_ts - step or self.catchup_left <= 0:
            return bars
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.catchup_left:
            time.sleep(0.1)
            bars = self._stored_before(key, first_ts, n)
            if bars[-1].ts >= first_ts - step:
                break
        self.catchup_left -= time.monotonic() - t0
        return bars


@dataclass
class Revision:
    """What :meth:`SeriesStates.revise` did to one series."""

    counts: dict[str, int] = field(
        default_factory=lambda: {"corrected": 0, "late": 0, "replayed": 0, "older": 0})
    changed: list[Bar] = field(default_factory=list)  # the corrected and late bars
    from_ts: int | None = None  # the oldest change the features read; None: they read none
    bars: list[Bar] = field(default_factory=list)  # the kept bars after it
    rows: dict[int, np.ndarray] = field(default_factory=dict)  # their feature rows by ts


def rederive_pending(state: SeriesState, rev: Revision, model: LoadedModel | None,
                     row_of: Callable[[np.ndarray], np.ndarray]) -> list[Prediction]:
    """The series' predictions still waiting whose features read a changed bar, predicted
    again from the rebuilt rows (same ids: the store keeps the last). Only the current
    ``model``'s predictions can be re-derived; others keep their value. (A waiting prediction
    counts the bars after its base as they arrive: a late bar inside its horizon is not
    counted.)"""
    out = []
    if rev.from_ts is None or model is None:
        return out
    by_ts = {b.ts: b for b in rev.bars}
    for pend in state.book.pending:
        p = pend.prediction
        row = rev.rows.get(p.base_ts)
        if p.base_ts < rev.from_ts or row is None or p.model_id != model.version_id:
            continue
        x = row_of(row)
        if not np.isfinite(x).all():
            continue  # too little kept history before it: keeps its value
        p.predicted = float(model.predict(pd.DataFrame([x], columns=model.features))[0])
        p.base_close = by_ts[p.base_ts].close
        out.append(p)
    return out


def resettle_stored(store: Store, rev: Revision, unsent: Iterable[Prediction] = ()
                    ) -> list[Prediction]:
    """Scored predictions whose bar (at their ``ts``) was corrected, stored or still
    ``unsent``: their actual and error follow the corrected bar (the rolling live errors keep
    the first score). A prediction settled across a gap (by a bar after its ``ts``) keeps its
    score."""
    corrected = {b.ts: b for b in rev.changed}
    if not corrected:
        return []
    symbol, interval = rev.changed[0].symbol, rev.changed[0].interval
    found: dict[str, Prediction] = {}
    rows = store.query_predictions(symbol=symbol, interval=interval,
                                   start_ms=min(corrected), end_ms=max(corrected) + 1)
    for r in rows.itertuples(index=False):
        p = Prediction(**{f: _plain(getattr(r, f)) for f in PREDICTION_FIELDS})
        found[p.doc_id] = p
    for p in unsent:
        if p.symbol == symbol and p.interval == interval:
            found[p.doc_id] = p
    out = []
    for p in found.values():
        bar = corrected.get(p.ts)
        if bar is None or p.actual is None or pd.isna(p.actual):
            continue
        p.actual = from_close_value(p.target, bar.close, p.base_close)
        p.error = p.predicted - p.actual
        out.append(p)
    return out


def _plain(value):
    """A stored field as a Python value (NaN as None, NumPy scalars as int/float)."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def bars_from_frame(df: pd.DataFrame) -> list[Bar]:
    return [Bar(r.symbol, r.interval, int(r.ts), float(r.open), float(r.high), float(r.low),
                float(r.close), float(r.volume), r.source) for r in df.itertuples(index=False)]


@dataclass
class SeriesWork:
    """One series' share of a poll: its new bars, the feature rows to predict, the results."""

    state: SeriesState
    model: LoadedModel | None
    key: SeriesKey | None = None
    fresh: list[tuple[Bar, int | None]] = field(default_factory=list)
    rows: dict[int, np.ndarray] = field(default_factory=dict)  # position in fresh -> row
    predicted: dict[int, float] = field(default_factory=dict)
    extras: list[dict[str, float]] = field(default_factory=list)  # per fresh bar (news)
    revisions: list[Bar] = field(default_factory=list)  # at or before the last bar seen
