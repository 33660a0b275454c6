"""Scorer: ``finance-data`` → streaming features → champion → predictions, scored on arrival.

The Kafka loop around one Kafka-free scoring step (:class:`models.live.step.ScoringStep`:
series state, features, predict, settle, progressive validation, champions, the shadow arena,
retraining). For each poll of bars (its own consumer group, next to the indexer's) the loop
parses and screens the bars (the time rule, :mod:`pipeline.workers.bar_rules`), hands them to the
step by series, stores the step's new and settled predictions in one batch (deterministic
IDs), hands them to a thread that publishes them to ``finance-predictions``
(:mod:`pipeline.workers.prediction_feed`: the next poll does not wait for the sends), then commits the
offsets. The same consumer reads ``finance-news`` and ``finance-fundamentals`` for the features
from those streams (applied before the poll's bars: :mod:`models.live.news`).

Latency (``latency_ms = stored_ms - produced_ms``, from the bar's Kafka record timestamp): see
docs/LIVE_SCORING.md.
"""
from __future__ import annotations

import gc
import threading
import time
from typing import Any

from models.live.step import ScoringStep, SeriesBars
from models.retrain_policy import RetrainPolicy
from pipeline.workers.bar_rules import SeriesClock, stored_last
from pipeline.workers.kafka_clients import fresh_fetch, make_consumer, undecodable, unreadable_reason
from pipeline.workers.prediction_feed import PredictionFeed
from pipeline.contracts.schema import (
    BARS_TOPIC, PREDICTIONS_TOPIC, Bar, InvalidBar, key_problem, parse_bar, prediction_values,
)
from pipeline.contracts.streams import with_provider
from pipeline.store.base import now_ms
from pipeline.workers.worker import Worker

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
    batch_max, poll_timeout_ms, fetch_wait_ms
        Records per poll; how long one poll waits; how long the broker holds a fetch open
        when it has nothing (short, so a live bar is picked up at once).
    latency_window
        Predictions in the latency percentiles.
    policy, adapt, train_default, bootstrap_check_s, error_window, model_refresh_s,
    store_catchup_s, retrain_in
        The scoring step's (:class:`models.live.step.ScoringStep`, documented there).
    stream_topics
        ``{stream: topic or None}`` (streams with a live provider); left out: its own topic.
    """

    kind = "scorer"
    FETCH_WAIT_MS = 10  # the broker's hold on an empty fetch (docs/DESIGN_FIGURES.md)
    LIVE_ERROR_EVERY_S = 5.0  # the live_error gauge (its rolling windows change slowly)
    PUBLISH_EVERY_S = 0.5  # stored predictions reach the feed at the end of a burst, or this
    CAUGHT_UP_MS = ScoringStep.CAUGHT_UP_MS  # catch-up ends at a bar this fresh
    counter_names = ("consumed", "predictions", "catch_up", "scored", "invalid", "replayed",
                     "already_predicted", "before_training_end", "no_model", "warming_up",
                     "retrains", "promotions", "hand_promotions", "store_retries",
                     "commit_failures", "publish_errors")
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
                 stream_topics: dict[str, str | None] | None = None,
                 retrain_in: str = "process"):
        super().__init__(store=store, mode=mode)
        self.bootstrap, self.topic, self.group_id = bootstrap, topic, group_id
        self.client_kwargs = client_kwargs or {}
        self.predictions_topic, self.publish = predictions_topic, publish
        self.policy = policy or RetrainPolicy()
        self.batch_max, self.poll_timeout_ms = batch_max, poll_timeout_ms
        self.fetch_wait_ms, self.max_backoff_s = fetch_wait_ms, max_backoff_s
        self.step = ScoringStep(
            store, self.policy, count=self.count, error=self.error, worker_id=self.worker_id,
            adapt=adapt, train_default=train_default, bootstrap_check_s=bootstrap_check_s,
            retrain_in=retrain_in, error_window=error_window, model_refresh_s=model_refresh_s,
            store_catchup_s=store_catchup_s, latency_window=latency_window, stream_topics={
                **{row.name: row.topic for row in with_provider()}, **(stream_topics or {})})
        step = self.step  # its parts, by their old names (tests and tools read them):
        self.scheduler, self.series, self.extras = step.scheduler, step.series, step.extras
        self.champions, self.arena = step.champions, step.arena
        self.clock = SeriesClock(stored_last(store))  # the time rule (pipeline/workers/bar_rules.py)
        self._last_gauges = self._last_error_gauge = 0.0
        self._frozen_for: tuple | None = None  # the champions at the last heap freeze
        self._unpublished: list[tuple[str, tuple]] = []  # stored, not handed to the feed yet
        self._handed_at = 0.0

    def describe(self) -> str:
        return (f"{' + '.join([self.topic, *self.extras.topics])} → predictions in "
                f"{self.store.describe()} and {self.predictions_topic} (group {self.group_id})")

    # ---- main loop -------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        consumer = self._make_consumer()
        publisher = self._make_publisher() if self.publish else None
        backoff, paused, uncommitted = 0.5, set(), False
        step = self.step
        step.refresh_models(force=True)
        step.scheduler.prepare()
        self._housekeeping()  # the first model starts training before the first bars arrive
        try:
            while not stop.is_set():
                if step.scheduler.bootstrapping and not step.outbox:
                    # The first model is training: the bars wait in Kafka (paused, the group
                    # membership kept by polling) instead of going by unpredicted.
                    held = set(consumer.assignment()) - paused
                    if held:
                        consumer.pause(*held)
                        paused |= held
                        step.set_status("training the first model; new bars wait in Kafka "
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
                if step.outbox and not self._write_outbox(publisher):
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
                if uncommitted and not step.deferred:
                    uncommitted = not self._commit(consumer)
                try:
                    batch = consumer.poll(timeout_ms=0 if step.deferred else self.poll_timeout_ms,
                                          max_records=self.batch_max)
                except Exception as exc:  # e.g. a batch it cannot decode: stalled, keeps trying
                    consumer = self._poll_failed(consumer, exc, stop)
                    continue
                if self.state == "stalled" and not step.outbox:
                    self.unstall()
                if batch or step.deferred:
                    step.process(self._bars_by_series(batch) if batch else {})
                    uncommitted = True
                    if (not step.outbox or self._write_outbox(publisher)) and not step.deferred:
                        uncommitted = not self._commit(consumer)
                if publisher is not None and self._unpublished and (
                        not batch or time.monotonic() - self._handed_at >= self.PUBLISH_EVERY_S):
                    self._hand_over(publisher)
                self._housekeeping()
                self.track_lag(consumer)
                self.tick()
        finally:
            try:
                step.close(30)
                if publisher is not None:
                    self._hand_over(publisher)
                    publisher.close(timeout_s=15)
            finally:
                if not step.outbox and not step.deferred:
                    self._commit(consumer, wait=True)  # what the async commits left
                consumer.close()
                self._publish_gauges(force=True)
                self.tick(force=True)

    def _housekeeping(self) -> None:
        self.step.housekeeping()
        self._publish_gauges()
        if self.mode == "process":
            self._freeze_heap()

    def _freeze_heap(self) -> None:
        """A scorer process moves what it has loaded (modules, the champions) out of the
        garbage collector's sight once, and again after a champion change: its full
        collections then scan the live state only (20-60 ms instead of 0.4-1 s at 500
        symbols, docs/LIVE_SCORING.md, "Latency"). Garbage is collected first, so nothing
        that is garbage now is kept."""
        models = tuple(m.version_id for m in self.step.champions.models.values())
        if models != self._frozen_for:
            self._frozen_for = models
            gc.collect()
            gc.freeze()

    def _poll_failed(self, consumer, exc: BaseException, stop: threading.Event):
        """A poll that raised (no codec, a corrupt batch): ``stalled`` with the reason, then a
        retry in a second with the stuck fetch dropped, as in the indexer."""
        (self.stall if undecodable(exc) else self.error)(unreadable_reason(self.topic, exc))
        consumer = fresh_fetch(consumer, self._make_consumer)
        self.tick()
        stop.wait(1.0)
        return consumer

    def _make_consumer(self):
        return make_consumer(self.bootstrap, (self.topic, *self.extras.topics), self.group_id,
                             self.client_kwargs, self.batch_max, client_id="kappalab-scorer",
                             fetch_max_wait_ms=self.fetch_wait_ms,
                             max_partition_fetch_bytes=1024 * 1024)

    def _make_publisher(self) -> PredictionFeed:
        return PredictionFeed.connect(self.bootstrap, self.predictions_topic,
                                      self._on_publish_error, self.client_kwargs)

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
    def _bars_by_series(self, batch: dict) -> dict[tuple[str, str], SeriesBars]:
        """The poll's valid, screened bars by series (the other streams' records go to their
        providers first); judges whether this run has caught up with the live end."""
        by_series: dict[tuple[str, str], SeriesBars] = {}
        parsed: list[tuple[Bar, int | None]] = []
        n = 0
        extra = [tp for tp in batch if tp.topic != self.topic]
        for tp in extra:  # the poll's news before its bars (models/live/news.py: ordering)
            self.step.extras.handle(batch[tp])
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
        screen = self.clock.screen([bar for bar, _ in parsed])  # pipeline/workers/bar_rules.py
        self.clock.commit(screen)
        self.count("suspect", len(screen.suspects))
        for i, (bar, produced) in enumerate(parsed):
            if i not in screen.suspects:
                by_series.setdefault((bar.symbol, bar.interval), []).append((bar, produced))
        self.count("consumed", n)
        if self.step.judge_catch_up(by_series, now_ms()):
            self.gauge("caught_up_ms", now_ms())
        return by_series

    def _write_outbox(self, publisher) -> bool:
        """Store the poll's new and scored predictions, then publish them; False on failure."""
        step = self.step
        preds = list(step.outbox.values())
        t0 = now_ms()
        step.stamp_stored(t0)
        try:
            self.store.upsert_predictions(preds)
        except Exception as exc:
            self.count("store_retries")
            self.error(f"predictions not stored, will retry: {type(exc).__name__}: {exc}")
            return False
        acked = now_ms()
        n_new = len(step.new)
        step.record_latency(acked)
        self.count("predictions", n_new)
        self.gauge("last_batch", {"written": len(preds), "new": n_new,
                                  "scored": len(preds) - n_new, "store_ms": acked - t0})
        if publisher is not None:  # as stored now (a snapshot: a settled one may change later)
            self._unpublished += [(doc_id, prediction_values(p))
                                  for doc_id, p in step.outbox.items()]
        step.written()
        return True

    def _hand_over(self, publisher) -> None:
        """The stored predictions not yet handed to the feed go to its thread now: once the
        poll's burst is over (an empty poll) or every ``PUBLISH_EVERY_S``, so the feed's
        encoding and sends do not compete for the interpreter lock with the rest of a
        burst still being scored."""
        publisher.put(self._unpublished)
        self._unpublished, self._handed_at = [], time.monotonic()

    def _on_publish_error(self, exc: Exception) -> None:
        self.count("publish_errors")
        self.error(f"publishing a prediction to {self.predictions_topic} failed: {exc}")

    # ---- stats -----------------------------------------------------------------------------
    def _publish_gauges(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last_gauges < 1.0:
            return
        self._last_gauges = now
        errors = force or now - self._last_error_gauge >= self.LIVE_ERROR_EVERY_S
        if errors:  # every symbol's rolling errors: costly, so not every second
            self._last_error_gauge = now
        for name, value in self.step.gauges(errors).items():
            self.gauge(name, value)

    def stats(self, history: bool = True) -> dict[str, Any]:
        snap = super().stats(history)
        snap["policy"] = self.policy.describe()
        return snap
