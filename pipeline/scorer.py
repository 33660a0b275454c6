"""Scorer: ``finance-data`` → streaming features → champion → predictions, scored on arrival.

A small worker loop. For each poll of bars (its own consumer group, next to the indexer's):

1. per series, in bar order: settle the pending predictions *about* this bar (progressive
   validation, :mod:`models.progressive`), update the series' streaming features
   (:mod:`models.streaming`: a few microseconds per bar, equal to the lab's batch features);
2. one ``predict`` per champion for the whole poll (:mod:`models.registry`: a symbol's own
   champion, else the global one) on one NumPy array of the rows that get a prediction;
3. store the new and the settled predictions in one batch (deterministic IDs), hand them to a
   thread that publishes them to ``finance-predictions`` (a feed: the store is the record; the
   next poll does not wait for the sends), then commit the offsets.

The same consumer reads ``finance-news`` for the ``sentiment`` features (applied before the
poll's bars, merged into each champion's row: :mod:`models.live_news`).

Retraining (bootstrap, schedule, drift) runs in the background (:mod:`models.retrain_schedule`).
On a restart each series' features and unscored predictions are rebuilt from the store, and
each (model, series) resumes after the last bar it predicted, so a replayed bar is never
predicted twice.

Latency starts at the bar message's Kafka record timestamp (``produced_ms``, set by the
producer). Each stored prediction carries ``latency_ms = stored_ms - produced_ms`` with
``stored_ms`` the moment its batch was handed to the store; the ``latency_ms`` gauge runs to
the store's acknowledgement.
"""
from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from collections import Counter, deque
from typing import Any

import numpy as np
import pandas as pd

from models.adaptation import RetrainPolicy, default_features
from models.arena import Arena
from models.champions import ChampionBook
from models.live_fundamentals import LiveFundamentals
from models.live_news import ExtraFeatures, LiveSentiment
from models.live_series import (
    SeriesKey, SeriesStates, SeriesWork, rederive_pending, resettle_stored,
)
from models.progressive import LiveScoreboard, PlainPrediction
from models.registry import LoadedModel, promoted_by_hand
from models.retrain_schedule import RetrainScheduler
from pipeline.bar_rules import SeriesClock, stored_last
from pipeline.schema import (
    BARS_TOPIC, PREDICTION_FIELDS, PREDICTIONS_TOPIC, Bar, InvalidBar, Prediction, interval_ms,
    key_problem, parse_bar, prediction_values,
)
from pipeline.fundamentals import FUNDAMENTALS_TOPIC
from pipeline.news import NEWS_TOPIC
from pipeline.producer import key_hash_partitioner
from pipeline.store.base import now_ms
from pipeline.worker import Worker

log = logging.getLogger(__name__)

DEFAULT_GROUP = "kappalab-scorer"


class Scorer(Worker):
    """Live predictions with progressive validation and continuous adaptation.

    Parameters
    ----------
    store, bootstrap, topic, group_id, client_kwargs, mode
        As for the indexer: the store, the Kafka bootstrap servers, the bars topic, this
        worker's consumer group, extra kafka-python settings (security), thread or process.
    predictions_topic, publish
        Where predictions are also published as JSON (key = symbol); ``publish=False`` writes
        them to the store only.
    policy, adapt, train_default, bootstrap_check_s
        Retraining (:class:`~models.retrain_schedule.RetrainScheduler`): the policy (default:
        every 5,000 bars or on drift), scheduled/drift retraining on or off, training a default
        model when there is no champion, how often to re-check for enough data to do so.
    batch_max, poll_timeout_ms, fetch_wait_ms
        Records per poll; how long one poll waits; how long the broker holds a fetch open
        when it has nothing (short, so a live bar is picked up at once).
    latency_window, error_window
        Predictions in the latency percentiles; scored predictions in the rolling errors.
    model_refresh_s
        How often the champions are re-read from the store (hand promotions take effect).
    store_catchup_s
        On a restart, how long (in total) to wait for the indexer to store the bars just
        before the first replayed one, so rebuilt features have no hole.
    news_topic
        The news topic read for the ``sentiment`` features (:mod:`models.live_news`, ordering
        rules there); ``None``: no news, and a champion using them is refused.
    fundamentals_topic
        The snapshots topic read for the ``fundamentals`` features
        (:mod:`models.live_fundamentals`); ``None``: a champion using them is refused.
    retrain_in
        ``"process"`` (default): training runs in a child process of its own, so it never
        holds this process's interpreter lock while bars wait; ``"thread"``: in a thread here
        (:mod:`models.retrain_schedule`).
    """

    kind = "scorer"
    INIT_BUDGET_S = 2.0  # per poll, for rebuilding series seen for the first time
    # How long the broker holds an empty fetch: on the embedded broker, the floor of a live
    # bar's wait (benchmarks/bench_fetch_wait.py). 30 ms halves the idle fetch CPU but took
    # the 50-symbol p99 from 37 to 158 ms.
    FETCH_WAIT_MS = 10
    LIVE_ERROR_EVERY_S = 5.0  # the live_error gauge (its rolling windows change slowly)
    #: A (re)started scorer is catching up until it handles a bar produced at most this long
    #: ago; what it predicts before is "catch-up": counted apart (``catch_up``), left out of
    #: the latency figures and of the retrain schedule's bar count.
    CAUGHT_UP_MS = 3000
    counter_names = ("consumed", "predictions", "catch_up", "scored", "invalid", "replayed",
                     "already_predicted", "before_training_end", "no_model", "warming_up",
                     "retrains", "promotions", "hand_promotions", "store_retries", "commit_failures",
                     "publish_errors")
    rate_counter = "consumed"

    def __init__(self, store, bootstrap: str, topic: str = BARS_TOPIC,
                 group_id: str = DEFAULT_GROUP, client_kwargs: dict | None = None,
                 mode: str = "thread", predictions_topic: str = PREDICTIONS_TOPIC,
                 publish: bool = True, policy: RetrainPolicy | None = None, adapt: bool = True,
                 train_default: bool = True, batch_max: int = 2000, poll_timeout_ms: int = 100,
                 fetch_wait_ms: int = FETCH_WAIT_MS, latency_window: int = 2000,
                 error_window: int = 200,
                 model_refresh_s: float = 2.0, bootstrap_check_s: float = 5.0,
                 store_catchup_s: float = 3.0, max_backoff_s: float = 10.0,
                 news_topic: str | None = NEWS_TOPIC,
                 fundamentals_topic: str | None = FUNDAMENTALS_TOPIC,
                 retrain_in: str = "process"):
        super().__init__(store=store, mode=mode)
        self.bootstrap, self.topic, self.group_id = bootstrap, topic, group_id
        self.client_kwargs = client_kwargs or {}
        self.predictions_topic, self.publish = predictions_topic, publish
        self.policy = policy or RetrainPolicy()
        self.batch_max, self.poll_timeout_ms = batch_max, poll_timeout_ms
        self.fetch_wait_ms = fetch_wait_ms
        self.max_backoff_s = max_backoff_s
        self.scoreboard = LiveScoreboard(self.policy, error_window)
        self.scheduler = RetrainScheduler(store, self.policy, self.scoreboard, adapt=adapt,
                                          train_default=train_default,
                                          bootstrap_check_s=bootstrap_check_s,
                                          worker_id=self.worker_id, isolation=retrain_in)
        self.series = SeriesStates(store, default_features(), store_catchup_s,
                                   settle=self._settle_stored, on_error=self.error)
        self.clock = SeriesClock(stored_last(store))  # the time rule (pipeline/bar_rules.py)
        self.extras = ExtraFeatures(
            ([LiveSentiment(store, news_topic)] if news_topic else [])
            + ([LiveFundamentals(store, fundamentals_topic)] if fundamentals_topic else []))
        self.champions = ChampionBook(store, model_refresh_s, check=self.extras.check)
        self.arena = Arena(store, error_window, model_refresh_s)  # shadow models: models/arena.py
        self._latency: deque[float] = deque(maxlen=latency_window)
        self._live_since: dict[str, int] = {}  # version_id -> when this scorer loaded it
        self._models_loaded_once = False  # champions loaded later are promotions seen live
        self._caught_up = False  # reached the live end of the topic since this run started
        self._stale_before: int | None = None  # while catching up: older bars are catch-up
        self._catchup: set[str] = set()  # doc ids of the outbox's catch-up predictions
        self._deferred: dict[SeriesKey, list[tuple[Bar, int | None]]] = {}  # not rebuilt yet
        self._outbox: dict[str, Prediction] = {}
        self._new: list[Prediction] = []  # the outbox's new predictions (not settlements)
        self._intervals: Counter[str] = Counter()
        self._last_bar_ts: int | None = None
        self._last_gauges = self._last_error_gauge = 0.0
        self._status = "starting"
        self._last_decision: dict[str, Any] | None = None

    def describe(self) -> str:
        return (f"{' + '.join([self.topic, *self.extras.topics])} → predictions in "
                f"{self.store.describe()} and "
                f"{self.predictions_topic} (group {self.group_id})")

    # ---- main loop -------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        consumer = self._make_consumer()
        publisher = self._make_publisher() if self.publish else None
        backoff, paused, uncommitted = 0.5, set(), False
        self._refresh_models(force=True)
        self.scheduler.prepare()
        self._housekeeping()  # the first model starts training before the first bars arrive
        try:
            while not stop.is_set():
                if self.scheduler.bootstrapping and not self._outbox:
                    # The first model is training: the bars wait in Kafka (paused, the group
                    # membership kept by polling) instead of going by unpredicted.
                    held = set(consumer.assignment()) - paused
                    if held:
                        consumer.pause(*held)
                        paused |= held
                        self._set_status("training the first model; new bars wait in Kafka "
                                         "until it is ready")
                    batch = consumer.poll(timeout_ms=self.poll_timeout_ms)
                    for tp, msgs in batch.items():  # fetched before the pause: read again later
                        consumer.seek(tp, msgs[0].offset)
                        consumer.pause(tp)
                        paused.add(tp)
                    self._housekeeping()
                    self.track_lag(consumer)
                    self.tick()
                    continue
                if self._outbox and not self._write_outbox(publisher):
                    # Store down: keep the computed batch, stop fetching, keep the membership.
                    if not paused:
                        paused = set(consumer.assignment())
                        consumer.pause(*paused)
                    consumer.poll(timeout_ms=0)
                    stop.wait(backoff)
                    backoff = min(backoff * 2, self.max_backoff_s)
                    self.tick()
                    continue
                backoff = 0.5
                if paused:
                    consumer.resume(*paused)
                    paused = set()
                if uncommitted and not self._deferred:
                    uncommitted = not self._commit(consumer)
                batch = consumer.poll(timeout_ms=0 if self._deferred else self.poll_timeout_ms,
                                      max_records=self.batch_max)
                if batch or self._deferred:
                    if batch:
                        self._handle(batch)
                    else:
                        self._process({})
                    uncommitted = True
                    if (not self._outbox or self._write_outbox(publisher)) and not self._deferred:
                        uncommitted = not self._commit(consumer)
                self._housekeeping()
                self.track_lag(consumer)
                self.tick()
        finally:
            try:
                self.scheduler.join(30)
                self.scheduler.close()
                self._collect_outcomes()
                if publisher is not None:
                    publisher.close(timeout_s=15)
            finally:
                if not self._outbox and not self._deferred:
                    self._commit(consumer, wait=True)  # what the async commits left
                consumer.close()
                self._publish_gauges(force=True)
                self.tick(force=True)

    def _housekeeping(self) -> None:
        self._collect_outcomes()
        self._refresh_models()
        if self.arena.refresh():
            self._resize_features()
        status = self.scheduler.maybe_start(self.champions.models, self.champions.has_global,
                                            self._main_interval, self._last_bar_ts)
        if status:
            self._set_status(status)
        self._publish_gauges()

    def _make_consumer(self):
        from pipeline.kafka_clients import make_consumer  # read_committed, like every consumer

        return make_consumer(self.bootstrap, (self.topic, *self.extras.topics), self.group_id,
                             self.client_kwargs, self.batch_max, client_id="kappalab-scorer",
                             fetch_max_wait_ms=self.fetch_wait_ms,
                             max_partition_fetch_bytes=1024 * 1024)

    def _make_publisher(self) -> "PredictionFeed":
        from kafka import KafkaProducer

        # A feed, not the record: batches of up to 1 MB collected for 50 ms cost far fewer
        # sends (and sender wake-ups) than the 16 kB default at 1,000 predictions a second.
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, client_id="kappalab-scorer",
                                 acks="all", linger_ms=50, batch_size=1 << 20, retries=5,
                                 partitioner=key_hash_partitioner(), **self.client_kwargs)
        return PredictionFeed(producer, self.predictions_topic, self._on_publish_error)

    def _commit(self, consumer, wait: bool = False) -> bool:
        """Commit the consumed offsets. In the loop the commit is asynchronous (a round trip
        to the coordinator per poll would delay the next bars): the predictions are already
        stored under deterministic IDs, so a commit lost to a crash or rebalance only means
        the batch replays and is skipped as already predicted. ``wait`` on the way out."""
        try:
            if wait:
                consumer.commit()
            else:
                consumer.commit_async(callback=self._on_commit)
            return True
        except Exception as exc:  # rebalance: the batch may replay, and is skipped then
            self._commit_failed(exc)
            return False

    def _on_commit(self, _offsets, response) -> None:
        if isinstance(response, Exception):
            self._commit_failed(response)

    def _commit_failed(self, exc: BaseException) -> None:
        self.count("commit_failures")
        self.error(f"offset commit failed (the batch may replay, harmlessly): {exc}")

    # ---- one poll --------------------------------------------------------------------------
    def _handle(self, batch: dict) -> None:
        by_series: dict[SeriesKey, list[tuple[Bar, int | None]]] = {}
        parsed: list[tuple[Bar, int | None]] = []
        n = 0
        extra = [tp for tp in batch if tp.topic != self.topic]
        for tp in extra:  # the poll's news before its bars (models/live_news.py: ordering)
            self.extras.handle(batch[tp])
        for tp, msgs in batch.items():
            if tp.topic != self.topic:
                continue
            for msg in msgs:
                n += 1
                try:
                    bar = parse_bar(msg.value) if msg.value is not None else None
                except InvalidBar:
                    bar = None
                if bar is None or key_problem(msg.key, bar):  # the indexer dead-letters it
                    self.count("invalid")
                    continue
                produced = msg.timestamp if msg.timestamp and msg.timestamp > 0 else None
                parsed.append((bar, produced))
        screen = self.clock.screen([bar for bar, _ in parsed])  # pipeline/bar_rules.py
        self.clock.commit(screen)
        self.count("suspect", len(screen.suspects))
        for i, (bar, produced) in enumerate(parsed):
            if i not in screen.suspects:
                by_series.setdefault((bar.symbol, bar.interval), []).append((bar, produced))
        self.count("consumed", n)
        if not self._caught_up:
            # Each bar of this poll is judged by its age; the first fresh one ends catch-up.
            self._stale_before = now_ms() - self.CAUGHT_UP_MS
            newest = max((p for items in by_series.values() for _, p in items if p),
                         default=None)
            if newest is not None and newest >= self._stale_before:
                self._caught_up = True
                self.gauge("caught_up_ms", now_ms())
        else:
            self._stale_before = None
        self._process(by_series)

    def _process(self, by_series: dict[SeriesKey, list[tuple[Bar, int | None]]]) -> None:
        """Series seen before go straight on. A series seen for the first time is rebuilt
        from the store (a few queries), within ``INIT_BUDGET_S`` per poll: after a restart
        with hundreds of symbols, the rest wait in memory for the next polls, so the loop
        keeps polling (and its group membership); offsets are committed only once nothing
        waits."""
        for key in [k for k in by_series if k in self._deferred]:
            self._deferred[key].extend(by_series.pop(key))  # after its older bars
        deadline = time.monotonic() + self.INIT_BUDGET_S
        ready = {}
        for key, items in [*self._deferred.items(), *by_series.items()]:
            if key not in self.series:
                if time.monotonic() > deadline:
                    self._deferred[key] = items
                    continue
                self.extras.start_series(*key, first_ts=items[0][0].ts)
                self.series.load(key, first_ts=items[0][0].ts)
            self._deferred.pop(key, None)
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

    def _fresh_bars(self, key: SeriesKey,
                    items: list[tuple[Bar, int | None]]) -> "SeriesWork | None":
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
            if extras:  # the bar's news features (models/live_news.py), in bar order
                w.extras.append(self.extras.update(bar))
            last = bar.ts
        if not w.fresh:
            return w if w.revisions else None
        self._intervals[key[1]] += len(w.fresh)
        self._last_bar_ts = max(self._last_bar_ts or 0, w.fresh[-1][0].ts)
        return w

    def _revise(self, w: "SeriesWork", tally: Counter) -> None:
        """Last write wins (docs/STREAM_ROBUSTNESS.md): rebuild the series' features with the
        corrected and late bars, predict its waiting predictions again, re-score the stored
        ones whose bar changed (:meth:`models.live_series.SeriesStates.revise`)."""
        rev = self.series.revise(w.state, w.revisions)
        tally.update({k: n for k, n in rev.counts.items() if n})
        if w.model is not None and not self.extras.active:
            cols = self.series.features.columns(w.model.features)
            for p in rederive_pending(w.state, rev, w.model, lambda row: row[cols]):
                self._queue(p)
                tally["rederived"] += 1
        for p in resettle_stored(self.store, rev, self._outbox.values()):
            self._queue(p)
            tally["rescored"] += 1

    def _rows_to_predict(self, w: "SeriesWork", rows: np.ndarray, tally: Counter) -> None:
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

    def _model_row(self, w: "SeriesWork", i: int, row: np.ndarray, cols: np.ndarray
                   ) -> np.ndarray:
        """The model's input for ``w.fresh[i]``: its columns of the bar's feature row, plus
        the features that do not come from the bars (news: ``w.extras[i]``)."""
        if w.extras:
            return self.extras.row(w.model.features, self.series.features.names, row,
                                   w.extras[i])
        return row[cols]

    def _predict(self, group: list[tuple["SeriesWork", int]]) -> None:
        """One ``predict`` for every row of one model in this poll."""
        model: LoadedModel = group[0][0].model
        X = np.vstack([w.rows[i] for w, i in group])
        y = model.predict(pd.DataFrame(X, columns=model.features))
        for (w, i), value in zip(group, y):
            w.predicted[i] = float(value)

    def _settle_and_book(self, w: "SeriesWork", tally: Counter) -> None:
        """Progressive validation, in bar order: score what each bar settles, then predict."""
        model, book = w.model, w.state.book
        settle, queue_ = self.scoreboard.settle, self._queue
        n_new = n_catchup = 0
        stale_before = self._stale_before
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
                self._catchup.add(p.doc_id)  # a backlog bar: not live
                n_catchup += 1
        if n_new > n_catchup:  # a backlog burst is not "new bars since the decision"
            self.scheduler.predicted(model.version_id, n_new - n_catchup)
        if n_catchup:
            self.count("catch_up", n_catchup)

    def _queue(self, p: Prediction, new: bool = False) -> None:
        self._outbox[p.doc_id] = p
        if new:
            self._new.append(p)

    def _write_outbox(self, publisher) -> bool:
        """Store the poll's new and scored predictions, then publish them; False on failure."""
        preds = list(self._outbox.values())
        t0 = now_ms()
        for p in self._new:
            p.stored_ms = t0
            p.latency_ms = float(t0 - p.produced_ms) if p.produced_ms else None
        try:
            self.store.upsert_predictions(preds)
        except Exception as exc:
            self.count("store_retries")
            self.error(f"predictions not stored, will retry: {type(exc).__name__}: {exc}")
            return False
        acked = now_ms()
        n_new = len(self._new)
        # The gauge describes live scoring: bars produced before their model was ready (the
        # warm-up history, bars held while the first model trained) are in the store with
        # their latency, but left out of these percentiles.
        # Catch-up predictions (a backlog after a restart) are counted apart, not here.
        live_since, catchup = self._live_since, self._catchup
        self._latency.extend(acked - p.produced_ms for p in self._new
                             if p.produced_ms and p.produced_ms >= live_since.get(p.model_id, 0)
                             and p.doc_id not in catchup)
        catchup.clear()
        self.count("predictions", n_new)
        self.gauge("last_batch", {"written": len(preds), "new": n_new,
                                  "scored": len(preds) - n_new, "store_ms": acked - t0})
        if publisher is not None:  # as stored now (a snapshot: a settled one may change later)
            publisher.put([(doc_id, prediction_values(p)) for doc_id, p in self._outbox.items()])
        self._outbox, self._new = {}, []
        return True

    def _on_publish_error(self, exc: Exception) -> None:
        self.count("publish_errors")
        self.error(f"publishing a prediction to {self.predictions_topic} failed: {exc}")

    def _settle_stored(self, p: Prediction, bar: Bar) -> None:
        self._queue(self.scoreboard.settle(p, bar))
        self.count("scored")

    # ---- champions -------------------------------------------------------------------------
    def _refresh_models(self, force: bool = False) -> None:
        changes = self.champions.refresh(force)
        for message in changes.errors:
            self.error(message)
        for model in changes.loaded:
            if self._models_loaded_once and promoted_by_hand(model.meta):
                self.count("hand_promotions")  # promoted by a person while this scorer ran
            self._live_since.setdefault(model.version_id, now_ms())
            self.scoreboard.watch(model.version_id,
                                  (model.meta.get("metrics") or {}).get("mape_pct"))
            self.scheduler.new_champion(model.version_id)
        self._models_loaded_once = True
        if changes:
            self._resize_features()
            self._set_status()

    def _resize_features(self) -> None:
        """Every series computes the default features plus every champion's (the bar ones
        in its streaming state, the others in their provider)."""
        names = list(default_features())
        for m in self.champions.models.values():
            names += [f for f in m.features if f not in names]
        names += [f for f in self.arena.features() if f not in names]
        self.series.use_features(self.extras.split(names))
        self.extras.use(names)

    def _set_status(self, message: str | None = None) -> None:
        if message:
            self._status = message
        elif (m := self.champions.main()) is not None:
            self._status = (f"predicting {m.target} with {m.version_id} "
                            f"({m.meta.get('name')})")
            if any(map(self.extras.claims, m.features)):
                self._status += ", with sentiment from the news stream"
        log.debug("scorer status: %s", self._status)

    def _collect_outcomes(self) -> None:
        for o in self.scheduler.outcomes():
            if o.error:
                self.error(o.error)
                self._set_status()
                continue
            if o.summary:
                self._last_decision = o.summary
            if o.retrained:
                self.count("retrains")
            if o.promoted:
                self.count("promotions")
                self._refresh_models(force=True)
            self._set_status(o.status)

    def _main_interval(self) -> str | None:
        if self._intervals:
            return self._intervals.most_common(1)[0][0]
        try:
            intervals = self.store.list_intervals()
        except Exception:
            return None
        return intervals[0] if intervals else None

    # ---- stats -----------------------------------------------------------------------------
    def _publish_gauges(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last_gauges < 1.0:
            return
        self._last_gauges = now
        if self._latency:
            lat = np.fromiter(self._latency, float)
            p50, p95, p99 = np.percentile(lat, [50, 95, 99])
            self.gauge("latency_ms", {"p50": round(float(p50), 1), "p95": round(float(p95), 1),
                                      "p99": round(float(p99), 1), "n": int(lat.size)})
        if force or now - self._last_error_gauge >= self.LIVE_ERROR_EVERY_S:
            # Every symbol's rolling errors: ~1 ms each, so not every second at 500 symbols.
            self._last_error_gauge = now
            self.gauge("live_error", self.scoreboard.gauges())
            self.gauge("arena", self.arena.leaderboard())
        self.gauge("champions", {scope: {"version_id": m.version_id, "name": m.meta.get("name"),
                                         "target": m.target, "model_key": m.meta.get("model_key")}
                                 for scope, m in self.champions.models.items()})
        self.gauge("status", self._status)
        self.gauge("retraining", self.scheduler.busy)
        proc = self.scheduler.process
        self.gauge("retrain_in", f"process {proc.pid}" if proc and proc.pid else
                   "process (starts with the first retrain)" if proc else "thread")
        if self.extras.providers:
            self.gauge("extra_features", self.extras.gauge())
        self.gauge("bars_since_decision", dict(self.scheduler.since_decision))
        if self._last_decision:
            d = self._last_decision
            self.gauge("last_retrain", {k: d.get(k) for k in (
                "trigger", "promoted", "reason", "champion_version_id", "challenger_version_id",
                "previous_version_id", "event_id")})
        if self._last_bar_ts:
            self.gauge("last_bar_ts", self._last_bar_ts)

    def stats(self, history: bool = True) -> dict[str, Any]:
        snap = super().stats(history)
        snap["policy"] = self.policy.describe()
        return snap


class PredictionFeed:
    """Publishes stored predictions to the predictions topic from a thread of its own.

    The store is the record and the topic a feed, so the scorer hands each stored batch over
    (``(doc_id, prediction_values(p))`` snapshots, ~1 µs each) and goes back to polling; the
    documents, JSON encoding and the Kafka sends happen here.
    Failures go to ``on_error`` (counted, never retried: the store has the predictions).
    """

    def __init__(self, producer, topic: str, on_error):
        self.producer, self.topic, self.on_error = producer, topic, on_error
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="kappalab-prediction-feed",
                                        daemon=True)
        self._thread.start()

    def put(self, batch: list[tuple[str, tuple]]) -> None:
        self._queue.put(batch)

    def close(self, timeout_s: float = 15.0) -> None:
        """Publish what was handed over, then close the producer."""
        self._queue.put(None)
        self._thread.join(timeout_s)
        self.producer.flush(timeout=max(1.0, timeout_s / 2))
        self.producer.close(timeout=5)

    def _run(self) -> None:
        send, topic, on_error, dumps = self.producer.send, self.topic, self.on_error, json.dumps
        while (batch := self._queue.get()) is not None:
            for doc_id, values in batch:
                try:
                    doc = dict(zip(PREDICTION_FIELDS, values))
                    doc["doc_id"] = doc_id
                    send(topic, key=doc["symbol"].encode(),
                         value=dumps(doc, allow_nan=False).encode()).add_errback(on_error)
                except Exception as exc:  # the store is the record; the topic is a feed
                    self.on_error(exc)
