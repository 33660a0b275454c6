"""Scorer: ``finance-data`` → features → champion → predictions, scored when their bar comes.

For every valid bar the scorer (its own consumer group, next to the indexer's):

1. scores the pending predictions *about* this bar (progressive validation: a prediction is
   made first and scored only when its bar really arrives, so the live error is measured on
   data the model had not seen);
2. appends the bar to its series' rolling window (the last ``max_lookback`` bars per
   ``(symbol, interval)``) and computes the features with the model lab's own
   :func:`models.features.compute_features` on that window — the same numbers as in batch;
3. predicts the champion's target for the next bar (:mod:`models.registry`: a symbol's own
   champion, else the global one) and writes the :class:`~pipeline.schema.Prediction` to the
   store (deterministic IDs, one batch per poll) and to the ``finance-predictions`` topic.

Offsets are committed only after the store acknowledged the batch. On a restart the windows
and the unscored predictions are rebuilt from the store, and each (model, series) resumes after
the last bar it predicted, so a replayed bar is never predicted twice.

Adaptation (:mod:`models.adaptation`) runs in one background thread of the scorer, so training
never blocks consumption: with no champion it trains the default model once enough is stored;
then it retrains on a schedule (every N bars) and on drift (rolling live error above k × the
model's reference level), promoting a challenger only if it beats the champion on the latest
holdout. Every decision is a ``retrain`` event in the store.

Latency starts at the bar message's Kafka record timestamp (``produced_ms``, set by the
producer when it sent the bar). Each stored prediction carries ``latency_ms = stored_ms -
produced_ms`` with ``stored_ms`` the moment its batch was handed to the store; the
``latency_ms`` gauge (p50/p95/p99 over the last ``latency_window`` predictions) runs to the
store's acknowledgement of the batch.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from models.adaptation import (
    DriftMonitor, LiveErrors, NotEnoughData, RetrainDecision, RetrainPolicy, champions,
    close_error, default_features, retrain, train_default_model,
)
from models.features import compute_features, max_lookback
from models.registry import GLOBAL_SCOPE, LoadedModel, load_model_version
from models.targets import from_close, get_target
from pipeline.indexer import make_consumer
from pipeline.schema import (
    BARS_TOPIC, PREDICTIONS_TOPIC, Bar, InvalidBar, Prediction, interval_ms, parse_bar,
)
from pipeline.store.base import now_ms
from pipeline.worker import Worker

log = logging.getLogger(__name__)

DEFAULT_GROUP = "kappalab-scorer"
SeriesKey = tuple[str, str]  # (symbol, interval)


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
    policy
        :class:`~models.adaptation.RetrainPolicy`: schedule, drift rule, windows, holdout,
        promotion margin. Default: retrain every 5,000 bars or when the rolling live error is
        above 2 × its reference.
    adapt
        ``False`` turns off scheduled and drift retraining (the champion is still followed,
        including promotions and rollbacks made by hand).
    train_default
        With no champion, train the default model once enough bars are stored.
    batch_max, poll_timeout_ms
        Records per poll, and how long one poll waits for records.
    latency_window, error_window
        Predictions in the latency percentiles; scored predictions in the rolling errors.
    model_refresh_s
        How often the champions are re-read from the store (promotions/rollbacks by hand or by
        another process take effect within this time).
    bootstrap_check_s
        How often to re-check whether enough is stored to train the default model.
    store_catchup_s
        On a restart, how long (in total) to wait for the indexer to store the bars just
        before the first replayed one, so rebuilt windows have no hole.
    """

    kind = "scorer"
    counter_names = ("consumed", "predictions", "scored", "invalid", "replayed",
                     "already_predicted", "before_training_end", "no_model", "warming_up",
                     "retrains", "promotions", "store_retries", "commit_failures",
                     "publish_errors")
    rate_counter = "consumed"

    def __init__(self, store, bootstrap: str, topic: str = BARS_TOPIC,
                 group_id: str = DEFAULT_GROUP, client_kwargs: dict | None = None,
                 mode: str = "thread", predictions_topic: str = PREDICTIONS_TOPIC,
                 publish: bool = True, policy: RetrainPolicy | None = None, adapt: bool = True,
                 train_default: bool = True, batch_max: int = 2000, poll_timeout_ms: int = 200,
                 latency_window: int = 2000, error_window: int = 200,
                 model_refresh_s: float = 2.0, bootstrap_check_s: float = 5.0,
                 store_catchup_s: float = 3.0, max_backoff_s: float = 10.0):
        super().__init__(store=store, mode=mode)
        self.bootstrap = bootstrap
        self.topic = topic
        self.group_id = group_id
        self.client_kwargs = client_kwargs or {}
        self.predictions_topic = predictions_topic
        self.publish = publish
        self.policy = policy or RetrainPolicy()
        self.adapt = adapt
        self.train_default = train_default
        self.batch_max = batch_max
        self.poll_timeout_ms = poll_timeout_ms
        self.error_window = error_window
        self.model_refresh_s = model_refresh_s
        self.bootstrap_check_s = bootstrap_check_s
        self.max_backoff_s = max_backoff_s

        self.windows = FeatureWindows(max_lookback(default_features()), store)
        self._series: dict[SeriesKey, SeriesState] = {}
        self._models: dict[str, LoadedModel] = {}  # scope -> champion
        self._champion_scopes: set[str] = set()  # scopes with a champion in the store
        self._monitors: dict[str, DriftMonitor] = {}  # version_id -> drift monitor
        self._since_decision: Counter[str] = Counter()  # version_id -> bars predicted since
        self._by_symbol: dict[str, LiveErrors] = {}
        self._by_model: dict[str, LiveErrors] = {}
        self._latency: deque[float] = deque(maxlen=latency_window)
        self._outbox: dict[str, Prediction] = {}
        self._new_in_outbox: set[str] = set()
        self._intervals: Counter[str] = Counter()
        self._last_bar_ts: int | None = None
        self._last_refresh = 0.0
        self._last_bootstrap_try = 0.0
        self._last_gauges = 0.0
        self._job: threading.Thread | None = None
        self._decisions: queue.Queue = queue.Queue()
        self._status = "starting"
        self._last_decision: dict[str, Any] | None = None
        self._catchup_left = store_catchup_s

    def describe(self) -> str:
        return (f"{self.topic} → predictions in {self.store.describe()} and "
                f"{self.predictions_topic} (group {self.group_id})")

    # ---- main loop -------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        consumer = make_consumer(self.bootstrap, self.topic, self.group_id, self.client_kwargs,
                                 self.batch_max, client_id="kappalab-scorer")
        publisher = self._make_publisher() if self.publish else None
        backoff, paused, uncommitted = 0.5, set(), False
        self._refresh_models(force=True)
        try:
            while not stop.is_set():
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
                if uncommitted:
                    uncommitted = not self._commit(consumer)
                batch = consumer.poll(timeout_ms=self.poll_timeout_ms, max_records=self.batch_max)
                if batch:
                    self._handle(batch)
                    uncommitted = True
                    if not self._outbox or self._write_outbox(publisher):
                        uncommitted = not self._commit(consumer)
                self._collect_decisions()
                self._refresh_models()
                self._adapt()
                self.track_lag(consumer)
                self._publish_gauges()
                self.tick()
        finally:
            try:
                if self._job is not None:
                    self._job.join(30)  # a retrain in flight finishes its decision
                self._collect_decisions()
                if publisher is not None:
                    publisher.flush(timeout=10)
                    publisher.close(timeout=5)
            finally:
                consumer.close()
                self._publish_gauges(force=True)
                self.tick(force=True)

    def _make_publisher(self):
        from kafka import KafkaProducer

        return KafkaProducer(bootstrap_servers=self.bootstrap, client_id="kappalab-scorer",
                             acks="all", linger_ms=5, retries=5, **self.client_kwargs)

    def _commit(self, consumer) -> bool:
        try:
            consumer.commit()
            return True
        except Exception as exc:  # rebalance: the batch may replay, and is skipped then
            self.count("commit_failures")
            self.error(f"offset commit failed (the batch may replay, harmlessly): {exc}")
            return False

    # ---- one batch -------------------------------------------------------------------------
    def _handle(self, batch: dict) -> None:
        by_series: dict[SeriesKey, list[tuple[Bar, int | None]]] = {}
        n = 0
        for msgs in batch.values():
            for msg in msgs:
                n += 1
                try:
                    bar = parse_bar(msg.value) if msg.value is not None else None
                except InvalidBar:
                    bar = None
                if bar is None:  # the indexer sends it to the DLQ; here it is just skipped
                    self.count("invalid")
                    continue
                produced = msg.timestamp if msg.timestamp and msg.timestamp > 0 else None
                by_series.setdefault((bar.symbol, bar.interval), []).append((bar, produced))
        self.count("consumed", n)
        work = [w for key, items in by_series.items()
                if (w := self._prepare_series(key, items)) is not None]
        self._predict(work)
        for w in work:
            self._advance_series(w)

    def _prepare_series(self, key: SeriesKey,
                        items: list[tuple[Bar, int | None]]) -> "SeriesWork | None":
        """New bars of one series, which of them get a prediction, and their features."""
        state = self._state(key, first_ts=items[0][0].ts)
        window = self.windows.get(key)
        fresh: list[tuple[Bar, int | None]] = []
        last = window.last_ts
        for bar, produced in items:
            if last is not None and bar.ts <= last:
                self.count("replayed")  # already seen (a replay) or out of order
                continue
            fresh.append((bar, produced))
            last = bar.ts
        if not fresh:
            return None
        self._intervals[key[1]] += len(fresh)
        self._last_bar_ts = max(self._last_bar_ts or 0, fresh[-1][0].ts)
        w = SeriesWork(key, state, window, fresh, self._model_for(*key))
        if w.model is None:
            self.count("no_model", len(fresh))
            return w
        last_pred = self._last_predicted(state, key, w.model.version_id)
        train_end = w.model.meta.get("train_end_ms")
        for i, (bar, _) in enumerate(fresh):
            if train_end is not None and bar.ts < train_end:
                self.count("before_training_end")  # its target was in the training data
            elif last_pred is not None and bar.ts <= last_pred:
                self.count("already_predicted")
            else:
                w.todo.append(i)
        if w.todo:
            feats = window.features_of([b for b, _ in fresh], w.model.features)
            w.features = feats.iloc[w.todo].to_numpy(dtype="float64")
        return w

    def _predict(self, work: list["SeriesWork"]) -> None:
        """One ``predict`` call per model for the whole batch (all series together)."""
        by_model: dict[str, list[SeriesWork]] = {}
        for w in work:
            if w.todo:
                by_model.setdefault(w.model.version_id, []).append(w)
        for group in by_model.values():
            model = group[0].model
            X = pd.DataFrame(np.vstack([w.features for w in group]), columns=model.features)
            y = model.predict(X)
            at = 0
            for w in group:
                w.predicted = y[at:at + len(w.todo)]
                at += len(w.todo)
                warming = int((~np.isfinite(w.predicted)).sum())
                if warming:
                    self.count("warming_up", warming)  # the window is not full yet

    def _advance_series(self, w: "SeriesWork") -> None:
        """Progressive validation, in bar order: score what each bar settles, then predict."""
        step = interval_ms(w.key[1])
        made = dict(zip(w.todo, w.predicted)) if w.todo else {}
        model = w.model
        for i, (bar, produced) in enumerate(w.fresh):
            self._score_pending(w.state, bar)
            y = made.get(i)
            if y is None or not np.isfinite(y):
                continue
            h = model.horizon
            p = LivePrediction(model.version_id, bar.symbol, bar.interval, bar.ts + h * step,
                               bar.ts, model.target, float(y), bar.close, produced_ms=produced)
            w.state.pending.append(Pending(p, h))
            w.state.last_predicted[model.version_id] = bar.ts
            self._outbox[p.doc_id] = p
            self._new_in_outbox.add(p.doc_id)
            self._since_decision[model.version_id] += 1
        w.window.extend([b for b, _ in w.fresh])

    def _score_pending(self, state: "SeriesState", bar: Bar) -> None:
        keep = []
        for pend in state.pending:
            if bar.ts > pend.prediction.base_ts:
                pend.bars_after += 1
            if pend.bars_after < pend.horizon:
                keep.append(pend)
                continue
            self._settle(pend.prediction, bar)
        state.pending = keep

    def _settle(self, p: Prediction, bar: Bar) -> None:
        """Record the actual and the error of ``p`` now that its bar has arrived."""
        p.actual = float(from_close(p.target, bar.close, p.base_close))
        p.error = p.predicted - p.actual
        self._outbox[p.doc_id] = p
        abs_err, pct, hit = close_error(p.target, p.predicted, p.actual, p.base_close)
        self._by_symbol.setdefault(p.symbol, LiveErrors(self.error_window)).add(abs_err, pct, hit)
        self._by_model.setdefault(p.model_id, LiveErrors(self.error_window)).add(abs_err, pct, hit)
        monitor = self._monitors.get(p.model_id)
        if monitor is not None:
            monitor.add(pct)
        self.count("scored")

    def _write_outbox(self, publisher) -> bool:
        """Store the batch's new and scored predictions, then publish them; False on failure."""
        preds = list(self._outbox.values())
        new_ids = self._new_in_outbox
        t0 = now_ms()
        for p in preds:
            if p.doc_id in new_ids:
                p.stored_ms = t0
                p.latency_ms = float(t0 - p.produced_ms) if p.produced_ms else None
        for p in preds:
            p.freeze()
        try:
            self.store.upsert_predictions(preds)
        except Exception as exc:
            self.count("store_retries")
            self.error(f"predictions not stored, will retry: {type(exc).__name__}: {exc}")
            return False
        finally:
            for p in preds:
                p.thaw()
        acked = now_ms()
        n_new = 0
        for p in preds:
            if p.doc_id in new_ids:
                n_new += 1
                if p.produced_ms:
                    self._latency.append(acked - p.produced_ms)
        self.count("predictions", n_new)
        self.gauge("last_batch", {"written": len(preds), "new": n_new,
                                  "scored": len(preds) - n_new, "store_ms": acked - t0})
        if publisher is not None:
            for p in preds:
                doc = {**p.to_dict(), "doc_id": p.doc_id}
                try:
                    publisher.send(self.predictions_topic, key=p.symbol.encode(),
                                   value=json.dumps(doc, allow_nan=False).encode()
                                   ).add_errback(self._on_publish_error)
                except Exception as exc:  # the store is the record; the topic is a feed
                    self._on_publish_error(exc)
        self._outbox = {}
        self._new_in_outbox = set()
        return True

    def _on_publish_error(self, exc: Exception) -> None:
        self.count("publish_errors")
        self.error(f"publishing a prediction to {self.predictions_topic} failed: {exc}")

    # ---- per-series state, rebuilt from the store on first sight -------------------------
    def _state(self, key: SeriesKey, first_ts: int) -> "SeriesState":
        state = self._series.get(key)
        if state is None:
            window = self._await_store(key, self.windows.load(key, before_ts=first_ts), first_ts)
            state = SeriesState()
            state.pending = self._unscored_from_store(key, window, first_ts)
            self._series[key] = state
        return state

    def _await_store(self, key: SeriesKey, window: "FeatureWindow",
                     first_ts: int) -> "FeatureWindow":
        """Give the indexer (another consumer of the topic) a short, bounded time to store the
        bar just before ``first_ts``, so a restarted window has no hole in it.

        A hole can also be real (a market closed overnight): then the wait simply runs out,
        once; the whole run spends at most ``store_catchup_s`` waiting.
        """
        step = interval_ms(key[1])
        if window.last_ts is None or window.last_ts >= first_ts - step or self._catchup_left <= 0:
            return window
        t0 = time.monotonic()
        while time.monotonic() - t0 < self._catchup_left:
            time.sleep(0.1)
            window = self.windows.load(key, before_ts=first_ts)
            if window.last_ts >= first_ts - step:
                break
        self._catchup_left -= time.monotonic() - t0
        return window

    def _unscored_from_store(self, key: SeriesKey, window: "FeatureWindow",
                             first_ts: int) -> list["Pending"]:
        """Predictions made before a restart whose bar had not arrived yet."""
        symbol, interval = key
        try:
            rows = self.store.query_predictions(symbol=symbol, interval=interval,
                                                end_ms=first_ts + 64 * interval_ms(interval),
                                                limit=200)
        except Exception as exc:
            self.error(f"could not read earlier predictions of {symbol}: {exc}")
            return []
        rows = rows[rows["actual"].isna()]
        step = interval_ms(interval)
        seen = list(window.bars)
        out = []
        for r in rows.itertuples(index=False):
            p = LivePrediction(r.model_id, r.symbol, r.interval, int(r.ts), int(r.base_ts),
                               r.target, float(r.predicted), float(r.base_close),
                               produced_ms=_int_or_none(r.produced_ms),
                               stored_ms=_int_or_none(r.stored_ms),
                               latency_ms=None if pd.isna(r.latency_ms) else float(r.latency_ms))
            h = max(1, round((p.ts - p.base_ts) / step))
            after = [b for b in seen if b.ts > p.base_ts]
            if len(after) >= h:
                self._settle(p, after[h - 1])  # its bar is already stored
            else:
                out.append(Pending(p, h, len(after)))
        return out

    def _last_predicted(self, state: "SeriesState", key: SeriesKey, model_id: str) -> int | None:
        if model_id not in state.last_predicted:
            last = self.store.query_predictions(symbol=key[0], interval=key[1],
                                                model_id=model_id, limit=1)
            state.last_predicted[model_id] = int(last["base_ts"].iloc[-1]) if len(last) else None
        return state.last_predicted[model_id]

    # ---- champions -------------------------------------------------------------------------
    def _model_for(self, symbol: str, interval: str) -> LoadedModel | None:
        model = self._models.get(symbol) or self._models.get(GLOBAL_SCOPE)
        if model is None:
            return None
        model_interval = model.meta.get("interval")
        if model_interval and model_interval != interval:
            return None  # a model of 1m bars says nothing about hourly ones
        return model

    def _refresh_models(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last_refresh < self.model_refresh_s:
            return
        self._last_refresh = now
        try:
            metas = champions(self.store)
        except Exception as exc:
            self.error(f"could not read the champions: {type(exc).__name__}: {exc}")
            return
        self._champion_scopes = set(metas)
        changed = False
        for scope, meta in metas.items():
            current = self._models.get(scope)
            if current is not None and current.version_id == meta["version_id"]:
                continue
            try:
                model = load_model_version(self.store, meta["version_id"])
                if not get_target(model.target).is_forecast:
                    raise ValueError(f"its target {model.target!r} is not a forecast")
                model.lookback  # validates the feature names
            except Exception as exc:
                self.error(f"champion {meta['version_id']} ({scope}) is not usable: {exc}")
                continue
            self._models[scope] = model
            ref = (model.meta.get("metrics") or {}).get("mape_pct")
            self._monitors.setdefault(model.version_id, DriftMonitor(self.policy, ref))
            self._since_decision[model.version_id] = 0
            log.info("scorer: champion of %s is %s (%s, %s)", scope, model.version_id,
                     model.meta.get("name"), model.target)
            changed = True
        for scope in [s for s in self._models if s not in metas]:
            del self._models[scope]  # rolled back to nothing, or deleted
            changed = True
        if changed:
            self.windows.resize(max([max_lookback(default_features())]
                                    + [m.lookback for m in self._models.values()]))
            self._set_status()

    def _set_status(self, message: str | None = None) -> None:
        if message:
            self._status = message
        elif self._models:
            m = self._models.get(GLOBAL_SCOPE) or next(iter(self._models.values()))
            self._status = (f"predicting {m.target} with {m.version_id} "
                            f"({m.meta.get('name')})")
        log.debug("scorer status: %s", self._status)

    # ---- adaptation (background thread) ---------------------------------------------------
    def _adapt(self) -> None:
        if self._job is not None and self._job.is_alive():
            return
        now = time.time()
        if GLOBAL_SCOPE not in self._champion_scopes:
            if self.train_default and now - self._last_bootstrap_try >= self.bootstrap_check_s:
                self._last_bootstrap_try = now
                interval = self._main_interval()
                if interval is None:
                    self._set_status("no model yet: waiting for the first bars")
                    return
                self._start_job(lambda: train_default_model(
                    self.store, interval, self.policy, bar_ts=self._last_bar_ts,
                    worker_id=self.worker_id))
            elif not self.train_default and not self._models:
                self._set_status("no champion: promote a model version (Model lab or "
                                 "Predictions page); train_default is off")
            return
        if not self.adapt:
            return
        for scope, model in list(self._models.items()):
            vid = model.version_id
            monitor = self._monitors[vid]
            since = self._since_decision[vid]
            trigger = reason = None
            if self.policy.every_bars and since >= self.policy.every_bars:
                trigger, reason = "schedule", f"{since:,} new bars since the last decision"
            elif monitor.drifted() and since >= self.policy.cooldown_bars:
                trigger = "drift"
                reason = (f"rolling live error {monitor.rolling:.4f}% > "
                          f"{self.policy.drift_factor:g} × reference {monitor.reference:.4f}%")
            if trigger is None:
                continue
            self._since_decision[vid] = 0
            live = {"drift": monitor.summary(),
                    "model": self._by_model.get(vid, LiveErrors()).summary()}
            interval = model.meta.get("interval") or self._main_interval()
            self._set_status(f"retraining ({trigger}) the champion of {scope}…")
            self._start_job(lambda m=model, t=trigger, r=reason, s=scope, i=interval, lv=live:
                            retrain(self.store, m, t, r, self.policy, interval=i, scope=s,
                                    bar_ts=self._last_bar_ts, live=lv, worker_id=self.worker_id))
            return  # one job at a time

    def _start_job(self, fn: Callable[[], RetrainDecision]) -> None:
        def work() -> None:
            try:
                self._decisions.put(fn())
            except NotEnoughData as exc:
                self._decisions.put(exc)
            except Exception as exc:  # a failed retrain must not take the scorer down
                log.debug("retrain failed", exc_info=True)
                self._decisions.put(exc)

        self._job = threading.Thread(target=work, name="kappalab-scorer-retrain", daemon=True)
        self._job.start()

    def _collect_decisions(self) -> None:
        while True:
            try:
                d = self._decisions.get_nowait()
            except queue.Empty:
                return
            if isinstance(d, NotEnoughData):
                self._set_status(f"retrain postponed: {d}")
                continue
            if isinstance(d, Exception):
                self.error(f"retrain failed: {type(d).__name__}: {d}")
                self._set_status()
                continue
            if d.waiting:
                self._set_status(f"no model yet, {d.reason}")
                continue
            self._last_decision = d.summary()
            if d.trigger != "bootstrap":
                self.count("retrains")
            if d.promoted:
                self.count("promotions")
                ref = d.challenger_metrics.get("mape_pct")
                self._monitors[d.champion_version_id] = DriftMonitor(self.policy, ref)
                self._refresh_models(force=True)
                what = ("trained and promoted the default model" if d.trigger == "bootstrap"
                        else f"{d.trigger} retrain promoted")
                self._set_status(f"{what}: {d.champion_version_id}")
            else:
                # The champion's error on the latest holdout is its new reference level, unless
                # it trained on most of that holdout (then the figure flatters it).
                monitor = self._monitors.get(d.previous_version_id or "")
                seen = d.figures.get("holdout_rows_in_champion_training", 0)
                if monitor is not None:
                    fair = seen < d.figures.get("holdout_rows", 0) / 2
                    monitor.rebaseline(d.champion_metrics.get("mape_pct") if fair else None)
                self._set_status(f"{d.trigger} retrain: champion {d.previous_version_id} kept")
            log.info("scorer: %s", d.reason)

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
        by_model = {}
        for vid, errs in self._by_model.items():
            entry = errs.summary()
            if vid in self._monitors:
                entry["drift"] = self._monitors[vid].summary()
            by_model[vid] = entry
        self.gauge("live_error", {"by_symbol": {s: e.summary() for s, e in self._by_symbol.items()},
                                  "by_model": by_model})
        self.gauge("champions", {scope: {"version_id": m.version_id, "name": m.meta.get("name"),
                                         "target": m.target, "model_key": m.meta.get("model_key")}
                                 for scope, m in self._models.items()})
        self.gauge("status", self._status)
        self.gauge("retraining", bool(self._job and self._job.is_alive()))
        self.gauge("bars_since_decision", dict(self._since_decision))
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


# ---------------------------------------------------------------------------------------------
# Rolling windows: the stream side of the one feature pipeline

class FeatureWindow:
    """The last ``size`` bars of one series.

    :meth:`features_of` computes the features of bars that follow the window with
    :func:`models.features.compute_features` on ``window + new bars``. Every feature depends
    on at most ``max_lookback`` consecutive bars, so with ``size >= max_lookback`` each new
    bar's row is exactly the row the batch computation over the whole history gives.
    """

    def __init__(self, size: int, bars: Iterable[Bar] = ()):
        self.bars: deque[Bar] = deque(bars, maxlen=max(1, size))

    @property
    def last_ts(self) -> int | None:
        return self.bars[-1].ts if self.bars else None

    def features_of(self, new_bars: Sequence[Bar], features: list[str]) -> pd.DataFrame:
        """One row per bar of ``new_bars`` (which must follow the window, in ts order)."""
        frame = bars_frame([*self.bars, *new_bars])
        feats = compute_features(frame, features)
        return feats.iloc[len(self.bars):].reset_index(drop=True)

    def extend(self, new_bars: Sequence[Bar]) -> None:
        self.bars.extend(new_bars)


class FeatureWindows:
    """A :class:`FeatureWindow` per (symbol, interval), filled from the store on first use."""

    def __init__(self, size: int, store=None):
        self.size = size
        self.store = store
        self._windows: dict[SeriesKey, FeatureWindow] = {}

    def get(self, key: SeriesKey) -> FeatureWindow:
        if key not in self._windows:
            self._windows[key] = FeatureWindow(self.size)
        return self._windows[key]

    def load(self, key: SeriesKey, before_ts: int) -> FeatureWindow:
        """The window of bars stored just before ``before_ts`` (a restart's state)."""
        bars: list[Bar] = []
        if self.store is not None:
            stored = self.store.query_bars(key[0], key[1], end_ms=before_ts, limit=self.size)
            bars = bars_from_frame(stored)
        self._windows[key] = FeatureWindow(self.size, bars)
        return self._windows[key]

    def resize(self, size: int) -> None:
        """Grow (from the store) or shrink every window, e.g. for a champion that looks
        further back."""
        if size == self.size:
            return
        grow = size > self.size
        self.size = size
        for key, window in list(self._windows.items()):
            if grow and self.store is not None and window.last_ts is not None:
                stored = self.store.query_bars(key[0], key[1], end_ms=window.last_ts + 1,
                                               limit=size)
                if len(stored) and int(stored["ts"].iloc[-1]) == window.last_ts:
                    self._windows[key] = FeatureWindow(size, bars_from_frame(stored))
                    continue
            self._windows[key] = FeatureWindow(size, window.bars)


class LivePrediction(Prediction):
    """A :class:`~pipeline.schema.Prediction` whose ``to_dict`` is a plain field copy.

    ``dataclasses.asdict`` deep-copies recursively, and store backends call ``to_dict`` once
    per column; at live rates that copying was the scorer's biggest cost after the features.
    """

    __slots__ = ("_frozen",)

    def to_dict(self) -> dict[str, Any]:
        frozen = getattr(self, "_frozen", None)
        if frozen is not None:
            return frozen
        return {name: getattr(self, name) for name in _PREDICTION_FIELDS}

    def freeze(self) -> None:
        """Build the dict once for a write (the store reads it once per column)."""
        self._frozen = None
        self._frozen = self.to_dict()

    def thaw(self) -> None:
        self._frozen = None


_PREDICTION_FIELDS = tuple(f for f in Prediction.__dataclass_fields__ if f != "extra")


@dataclass
class SeriesWork:
    """One series' share of a poll: its new bars, which get a prediction, and the numbers."""

    key: SeriesKey
    state: "SeriesState"
    window: "FeatureWindow"
    fresh: list[tuple[Bar, int | None]]
    model: LoadedModel | None
    todo: list[int] = field(default_factory=list)  # positions in ``fresh`` to predict
    features: np.ndarray | None = None  # rows of ``todo``, columns = model.features
    predicted: np.ndarray | None = None


@dataclass
class Pending:
    """A prediction waiting for its bar: the ``horizon``-th bar after its base bar (the next
    bar that arrives, for horizon 1, even across a gap such as a market close: that is the
    row the model was trained to predict)."""

    prediction: Prediction
    horizon: int
    bars_after: int = 0  # bars seen so far after the base bar


@dataclass
class SeriesState:
    pending: list[Pending] = None  # type: ignore[assignment]
    last_predicted: dict[str, int | None] = None  # type: ignore[assignment]

    def __post_init__(self):
        self.pending = self.pending or []
        self.last_predicted = self.last_predicted or {}


_FRAME_COLUMNS = ["ts", "open", "high", "low", "close", "volume"]


def bars_frame(bars: Sequence[Bar]) -> pd.DataFrame:
    """Bars as the numeric frame :func:`compute_features` reads.

    One float64 block is the cheapest frame to build per bar. ``ts`` is exact in float64
    (epoch ms < 2**53) and the feature code reads it back as int64, so the numbers are the
    same as from the store's int64 column.
    """
    data = np.array([(b.ts, b.open, b.high, b.low, b.close, b.volume) for b in bars],
                    dtype="float64").reshape(len(bars), 6)
    return pd.DataFrame(data, columns=_FRAME_COLUMNS)


def bars_from_frame(df: pd.DataFrame) -> list[Bar]:
    return [Bar(r.symbol, r.interval, int(r.ts), float(r.open), float(r.high), float(r.low),
                float(r.close), float(r.volume), r.source) for r in df.itertuples(index=False)]


def _int_or_none(x) -> int | None:
    return None if x is None or pd.isna(x) else int(x)
