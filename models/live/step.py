"""One scoring step, with no Kafka: bars in, predictions (new and settled) out.

For each poll of bars the stream worker (:mod:`pipeline.workers.scorer`) hands over, grouped by series:

1. per series, in bar order: settle the pending predictions *about* this bar (progressive
   validation, :mod:`models.live.progressive`), update the series' streaming features
   (:mod:`models.streaming`: a few microseconds per bar, equal to the lab's batch features);
2. one ``predict`` per champion for the whole poll (:mod:`models.live.champions`: a symbol's own
   champion, else the global one) on one NumPy array of the rows that get a prediction;
3. the shadow models of the arena (:mod:`models.live.arena`) score the same rows;
4. the new and the settled predictions wait in :attr:`ScoringStep.outbox` (deterministic IDs)
   until the worker has stored them (:meth:`ScoringStep.written`).

Retraining (bootstrap, schedule, drift) runs in the background (:mod:`models.live.retrain_schedule`)
and is started from :meth:`ScoringStep.housekeeping`. On a restart each series' features and
unscored predictions are rebuilt from the store (:mod:`models.live.series`), and each (model,
series) resumes after the last bar it predicted, so a replayed bar is never predicted twice.
"""
from __future__ import annotations

import math
import time
from collections import Counter, deque
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from models.adaptation import default_features
from models.live.arena import Arena
from models.live.champions import ChampionBook
from models.live.providers import ExtraFeatures
from models.live.series import (
    SeriesKey, SeriesStates, SeriesWork, rederive_pending, resettle_stored,
)
from models.live.progressive import LiveScoreboard, PlainPrediction
from models.registry import LoadedModel, promoted_by_hand
from models.retrain_policy import RetrainPolicy
from models.live.retrain_schedule import RetrainScheduler
from pipeline.contracts.schema import Bar, Prediction, interval_ms
from pipeline.contracts.streams import with_provider
from pipeline.store.base import now_ms

#: A poll's bars of one series: ``(bar, produced_ms or None)`` in bar order.
SeriesBars = list[tuple[Bar, "int | None"]]


class ScoringStep:
    """The scorer's state and its Kafka-free step: the series (features, pending predictions),
    the champions, the shadow arena, the live scoreboard, the retrain scheduler, and the outbox
    of predictions computed but not stored yet.

    Owned by one :class:`pipeline.workers.scorer.Scorer` and called only from its loop thread; the
    retrain scheduler's background work reports back through :meth:`housekeeping`. ``count``
    and ``error`` are the worker's (thread-safe) counters and error log.

    Parameters
    ----------
    policy, adapt, train_default, bootstrap_check_s, retrain_in
        Retraining (:class:`~models.live.retrain_schedule.RetrainScheduler`): the policy (default:
        every 5,000 bars or on drift), scheduled/drift retraining on or off, training a default
        model when there is no champion, how often to re-check for enough data to do so;
        ``"process"``: training runs in a child process of its own, so it never holds this
        process's interpreter lock while bars wait; ``"thread"``: in a thread here.
    error_window
        Scored predictions in the rolling errors.
    model_refresh_s
        How often the champions are re-read from the store (hand promotions take effect).
    store_catchup_s
        On a restart, how long (in total) to wait for the indexer to store the bars just
        before the first replayed one, so rebuilt features have no hole.
    latency_window
        Predictions in the latency percentiles.
    stream_topics
        ``{stream: topic}``: for each stream of the stream table with a live feature provider
        (:mod:`pipeline.contracts.streams`: ``news`` for the ``sentiment`` features,
        :mod:`models.live.news`, ordering rules there; ``fundamentals``,
        :mod:`models.live.fundamentals`), the topic its provider reads; a stream left out or
        ``None`` is not read, and a champion using its features is refused.
    """

    INIT_BUDGET_S = 2.0  # per poll, for rebuilding series seen for the first time
    #: A (re)started scorer is catching up until it handles a bar produced at most this long
    #: ago; what it predicts before is "catch-up": counted apart (``catch_up``), left out of
    #: the latency figures and of the retrain schedule's bar count.
    CAUGHT_UP_MS = 3000

    def __init__(self, store, policy: RetrainPolicy, *, count: Callable[..., None],
                 error: Callable[[str], None], worker_id: str, adapt: bool = True,
                 train_default: bool = True, bootstrap_check_s: float = 5.0,
                 retrain_in: str = "process", error_window: int = 200,
                 model_refresh_s: float = 2.0, store_catchup_s: float = 3.0,
                 stream_topics: Mapping[str, str | None] | None = None,
                 latency_window: int = 2000):
        self.store, self.policy, self.count, self.error = store, policy, count, error
        self.scoreboard = LiveScoreboard(policy, error_window)
        self.scheduler = RetrainScheduler(store, policy, self.scoreboard, adapt=adapt,
                                          train_default=train_default,
                                          bootstrap_check_s=bootstrap_check_s,
                                          worker_id=worker_id, isolation=retrain_in)
        self.series = SeriesStates(store, default_features(), store_catchup_s,
                                   settle=self._settle_stored, on_error=error)
        topics = stream_topics or {}
        self.extras = ExtraFeatures(row.provider_class()(store, topics[row.name])
                                    for row in with_provider() if topics.get(row.name))
        self.champions = ChampionBook(store, model_refresh_s, check=self.extras.check)
        self.arena = Arena(store, error_window, model_refresh_s)  # shadow models
        self._latency: deque[float] = deque(maxlen=latency_window)
        self._caught_up = False  # reached the live end of the stream since this run started
        self.live_since: dict[str, int] = {}  # version_id -> when this scorer loaded it
        self._models_loaded_once = False  # champions loaded later are promotions seen live
        self.stale_before: int | None = None  # while catching up: older bars are catch-up
        self.catchup: set[str] = set()  # doc ids of the outbox's catch-up predictions
        self.deferred: dict[SeriesKey, SeriesBars] = {}  # series not rebuilt yet
        self.outbox: dict[str, Prediction] = {}
        self.new: list[Prediction] = []  # the outbox's new predictions (not settlements)
        self._intervals: Counter[str] = Counter()
        self.last_bar_ts: int | None = None
        self.status = "starting"
        self.last_decision: dict[str, Any] | None = None

    # ---- one poll --------------------------------------------------------------------------
    def process(self, by_series: dict[SeriesKey, SeriesBars]) -> None:
        """Series seen before go straight on. A series seen for the first time is rebuilt
        from the store (a few queries), within ``INIT_BUDGET_S`` per poll: after a restart
        with hundreds of symbols, the rest wait in :attr:`deferred` for the next polls, so the
        worker keeps polling (and its group membership); it commits offsets only once nothing
        waits."""
        for key in [k for k in by_series if k in self.deferred]:
            self.deferred[key].extend(by_series.pop(key))  # after its older bars
        deadline = time.monotonic() + self.INIT_BUDGET_S
        ready = {}
        for key, items in [*self.deferred.items(), *by_series.items()]:
            if key not in self.series:
                if time.monotonic() > deadline:
                    self.deferred[key] = items
                    continue
                self.extras.start_series(*key, first_ts=items[0][0].ts)
                self.series.load(key, first_ts=items[0][0].ts)
            self.deferred.pop(key, None)
            ready[key] = items
        self.series.warm_loaded()  # the series loaded above, in one pass
        work = [w for key, items in ready.items()
                if (w := self._fresh_bars(key, items)) is not None]
        tally: Counter[str] = Counter()
        feature_rows = self.series.advance([(w.state, [bar for bar, _ in w.fresh])
                                            for w in work])
        for w, rows in zip(work, feature_rows):
            self._rows_to_predict(w, rows, tally)
        by_model: dict[str, list[tuple[SeriesWork, int]]] = {}
        for w in work:
            for i in w.rows:
                by_model.setdefault(w.model.version_id, []).append((w, i))
        for group in by_model.values():
            self._predict(group)
        if self.arena.active:  # enrolled models, scored in shadow on the same bars
            self.arena.observe(work, feature_rows, self.series.features)
        for w in work:
            self._settle_and_book(w, tally)
            if w.revisions:
                self._revise(w, tally)
        for name, n in tally.items():
            self.count(name, n)

    def judge_catch_up(self, by_series: dict[SeriesKey, SeriesBars], now: int) -> bool:
        """Judge each bar of this poll by its age (``produced_ms``) until the first fresh one
        ends catch-up; True on the poll that does."""
        if self._caught_up:
            self.stale_before = None
            return False
        self.stale_before = now - self.CAUGHT_UP_MS
        newest = max((p for items in by_series.values() for _, p in items if p), default=None)
        self._caught_up = newest is not None and newest >= self.stale_before
        return self._caught_up

    def stamp_stored(self, stored_ms: int) -> None:
        """The outbox's new predictions are handed to the store at ``stored_ms``."""
        for p in self.new:
            p.stored_ms = stored_ms
            p.latency_ms = float(stored_ms - p.produced_ms) if p.produced_ms else None

    def record_latency(self, acked_ms: int) -> None:
        """The store acknowledged the outbox at ``acked_ms``: the live predictions' latency.

        The gauge describes live scoring: bars produced before their model was ready (the
        warm-up history, bars held while the first model trained) are in the store with their
        latency, but left out of these percentiles; catch-up predictions (a backlog after a
        restart) are counted apart, not here."""
        live_since, catchup = self.live_since, self.catchup
        self._latency.extend(acked_ms - p.produced_ms for p in self.new
                             if p.produced_ms and p.produced_ms >= live_since.get(p.model_id, 0)
                             and p.doc_id not in catchup)

    def written(self) -> None:
        """The outbox is stored: start the next one."""
        self.outbox, self.new = {}, []
        self.catchup.clear()

    def _fresh_bars(self, key: SeriesKey, items: SeriesBars) -> SeriesWork | None:
        """The series' bars not seen before; a bar at or before the last one seen (a replay,
        a correction, a late bar) waits in ``revisions`` for :meth:`_revise`."""
        state = self.series.get(key, first_ts=items[0][0].ts)
        w = SeriesWork(state, self.champions.model_for(*key), key)
        last = state.last_ts
        extras = self.extras.active
        for bar, produced in items:
            if last is not None and bar.ts <= last:
                w.revisions.append(bar)  # after this poll's new bars: last write wins
                continue
            w.fresh.append((bar, produced))
            if extras:  # the bar's news features (models/live/news.py), in bar order
                w.extras.append(self.extras.update(bar))
            last = bar.ts
        if not w.fresh:
            return w if w.revisions else None
        self._intervals[key[1]] += len(w.fresh)
        self.last_bar_ts = max(self.last_bar_ts or 0, w.fresh[-1][0].ts)
        return w

    def _revise(self, w: SeriesWork, tally: Counter) -> None:
        """Last write wins (docs/STREAM_ROBUSTNESS.md): rebuild the series' features with the
        corrected and late bars, predict its waiting predictions again, re-score the stored
        ones whose bar changed (:meth:`models.live.series.SeriesStates.revise`)."""
        rev = self.series.revise(w.state, w.revisions)
        tally.update({k: n for k, n in rev.counts.items() if n})
        if w.model is not None and not self.extras.active:
            cols = self.series.features.columns(w.model.features)
            for p in rederive_pending(w.state, rev, w.model, lambda row: row[cols]):
                self._queue(p)
                tally["rederived"] += 1
        for p in resettle_stored(self.store, rev, self.outbox.values()):
            self._queue(p)
            tally["rescored"] += 1

    def _rows_to_predict(self, w: SeriesWork, rows: np.ndarray, tally: Counter) -> None:
        """Which of the series' new bars get a prediction, and their model's feature rows
        (``rows``: the bars' rows of the scorer's feature set)."""
        model = w.model
        if model is None:
            tally["no_model"] += len(w.fresh)
            return
        cols = None if w.extras else self.series.features.columns(model.features)
        last_pred = self.series.last_predicted(w.state, w.key, model.version_id)
        train_end = model.meta.get("train_end_ms")
        for i, (bar, _) in enumerate(w.fresh):
            if train_end is not None and bar.ts < train_end:
                tally["before_training_end"] += 1  # its target was in the training data
            elif last_pred is not None and bar.ts <= last_pred:
                tally["already_predicted"] += 1
            else:
                w.rows[i] = self._model_row(w, i, rows[i], cols)

    def _model_row(self, w: SeriesWork, i: int, row: np.ndarray, cols: np.ndarray
                   ) -> np.ndarray:
        """The model's input for ``w.fresh[i]``: its columns of the bar's feature row, plus
        the features that do not come from the bars (news: ``w.extras[i]``)."""
        if w.extras:
            return self.extras.row(w.model.features, self.series.features.names, row,
                                   w.extras[i])
        return row[cols]

    def _predict(self, group: list[tuple[SeriesWork, int]]) -> None:
        """One ``predict`` for every row of one model in this poll."""
        model: LoadedModel = group[0][0].model
        X = np.vstack([w.rows[i] for w, i in group])
        y = model.predict(pd.DataFrame(X, columns=model.features))
        for (w, i), value in zip(group, y):
            w.predicted[i] = float(value)

    def _settle_and_book(self, w: SeriesWork, tally: Counter) -> None:
        """Progressive validation, in bar order: score what each bar settles, then predict."""
        model, book = w.model, w.state.book
        settle, queue_ = self.scoreboard.settle, self._queue
        n_new = n_catchup = 0
        stale_before = self.stale_before
        for i, (bar, produced) in enumerate(w.fresh):
            if book.pending:
                for p in book.due(bar):
                    queue_(settle(p, bar))
                    tally["scored"] += 1
            value = w.predicted.get(i)
            if value is None:
                continue
            if not math.isfinite(value):
                tally["warming_up"] += 1  # the features are not warm yet
                continue
            h = model.horizon
            p = PlainPrediction(model.version_id, bar.symbol, bar.interval,
                                bar.ts + h * interval_ms(bar.interval), bar.ts, model.target,
                                value, bar.close, produced_ms=produced)
            book.add(p, h)
            queue_(p, new=True)
            n_new += 1
            if stale_before is not None and (produced or 0) < stale_before:
                self.catchup.add(p.doc_id)  # a backlog bar: not live
                n_catchup += 1
        if n_new > n_catchup:  # a backlog burst is not "new bars since the decision"
            self.scheduler.predicted(model.version_id, n_new - n_catchup)
        if n_catchup:
            self.count("catch_up", n_catchup)

    def _queue(self, p: Prediction, new: bool = False) -> None:
        self.outbox[p.doc_id] = p
        if new:
            self.new.append(p)

    def _settle_stored(self, p: Prediction, bar: Bar) -> None:
        self._queue(self.scoreboard.settle(p, bar))
        self.count("scored")

    # ---- champions, arena, retraining ------------------------------------------------------
    def housekeeping(self) -> None:
        """Between polls: collect retrain outcomes, re-read the champions and the arena, start
        a retrain when one is due."""
        self.collect_outcomes()
        self.refresh_models()
        if self.arena.refresh():
            self._resize_features()
        status = self.scheduler.maybe_start(self.champions.models, self.champions.has_global,
                                            self._main_interval, self.last_bar_ts)
        if status:
            self.set_status(status)

    def refresh_models(self, force: bool = False) -> None:
        changes = self.champions.refresh(force)
        for message in changes.errors:
            self.error(message)
        for model in changes.loaded:
            if self._models_loaded_once and promoted_by_hand(model.meta):
                self.count("hand_promotions")  # promoted by a person while this scorer ran
            self.live_since.setdefault(model.version_id, now_ms())
            self.scoreboard.watch(model.version_id,
                                  (model.meta.get("metrics") or {}).get("mape_pct"))
            self.scheduler.new_champion(model.version_id)
        self._models_loaded_once = True
        if changes:
            self._resize_features()
            self.set_status()

    def _resize_features(self) -> None:
        """Every series computes the default features plus every champion's (the bar ones
        in its streaming state, the others in their provider)."""
        names = list(default_features())
        for m in self.champions.models.values():
            names += [f for f in m.features if f not in names]
        names += [f for f in self.arena.features() if f not in names]
        self.series.use_features(self.extras.split(names))
        self.extras.use(names)

    def set_status(self, message: str | None = None) -> None:
        if message:
            self.status = message
        elif (m := self.champions.main()) is not None:
            self.status = (f"predicting {m.target} with {m.version_id} "
                           f"({m.meta.get('name')})")
            if any(map(self.extras.claims, m.features)):
                self.status += ", with sentiment from the news stream"

    def collect_outcomes(self) -> None:
        for o in self.scheduler.outcomes():
            if o.error:
                self.error(o.error)
                self.set_status()
                continue
            if o.summary:
                self.last_decision = o.summary
            if o.retrained:
                self.count("retrains")
            if o.promoted:
                self.count("promotions")
                self.refresh_models(force=True)
            self.set_status(o.status)

    def _main_interval(self) -> str | None:
        if self._intervals:
            return self._intervals.most_common(1)[0][0]
        try:
            intervals = self.store.list_intervals()
        except Exception:
            return None
        return intervals[0] if intervals else None

    def close(self, timeout_s: float = 30.0) -> None:
        """Wait for a running retrain (up to ``timeout_s``), stop the retrain child."""
        self.scheduler.join(timeout_s)
        self.scheduler.close()
        self.collect_outcomes()

    # ---- figures ---------------------------------------------------------------------------
    def gauges(self, errors: bool) -> dict[str, Any]:
        """The step's gauges for the worker's heartbeat; ``errors``: include the rolling live
        errors and the arena's leaderboard (costly per symbol, so not on every beat)."""
        g: dict[str, Any] = {}
        if self._latency:
            lat = np.fromiter(self._latency, float)
            p50, p95, p99 = np.percentile(lat, [50, 95, 99])
            g["latency_ms"] = {"p50": round(float(p50), 1), "p95": round(float(p95), 1),
                               "p99": round(float(p99), 1), "n": int(lat.size)}
        if errors:
            g["live_error"] = self.scoreboard.gauges()
            g["arena"] = self.arena.leaderboard()
        g["champions"] = {scope: {"version_id": m.version_id, "name": m.meta.get("name"),
                                  "target": m.target, "model_key": m.meta.get("model_key")}
                          for scope, m in self.champions.models.items()}
        g["status"] = self.status
        g["retraining"] = self.scheduler.busy
        proc = self.scheduler.process
        g["retrain_in"] = (f"process {proc.pid}" if proc and proc.pid else
                           "process (starts with the first retrain)" if proc else "thread")
        if self.extras.providers:
            g["extra_features"] = self.extras.gauge()
        g["bars_since_decision"] = dict(self.scheduler.since_decision)
        if self.last_decision:
            d = self.last_decision
            g["last_retrain"] = {k: d.get(k) for k in (
                "trigger", "promoted", "reason", "champion_version_id", "challenger_version_id",
                "previous_version_id", "event_id")}
        if self.last_bar_ts:
            g["last_bar_ts"] = self.last_bar_ts
        return g
