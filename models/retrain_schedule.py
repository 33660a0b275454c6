"""When the live scorer retrains: a schedule, a drift rule, and one background job at a time.

:class:`RetrainScheduler` counts the bars each champion predicted since its last decision,
starts :func:`~models.adaptation.train_default_model` (no champion yet) or
:func:`~models.adaptation.retrain` (schedule or drift, per :class:`RetrainPolicy`) in a
background thread so training never blocks consumption, and hands back each finished
decision as an :class:`Outcome` (status line, counters) for the caller to show. Decisions
about *which* model wins are :mod:`models.adaptation`'s; this module only decides *when*.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from models.adaptation import (
    NotEnoughData, RetrainDecision, RetrainPolicy, retrain, train_default_model,
)
from models.progressive import LiveScoreboard
from models.registry import GLOBAL_SCOPE, LoadedModel
from pipeline.store.base import Store

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What a finished job means for the scorer: a status line and what to count."""

    status: str | None
    error: str | None = None
    retrained: bool = False
    promoted: bool = False
    summary: dict[str, Any] | None = None  # the decision's summary, when one was made


class RetrainScheduler:
    """Starts bootstrap, scheduled and drift retrains in one background thread.

    ``adapt=False`` turns off scheduled and drift retraining; ``train_default=False`` never
    trains a default model when there is no champion; ``bootstrap_check_s`` is how often to
    re-check whether enough is stored to train that default model.
    """

    def __init__(self, store: Store, policy: RetrainPolicy, scoreboard: LiveScoreboard,
                 adapt: bool = True, train_default: bool = True, bootstrap_check_s: float = 5.0,
                 worker_id: str | None = None):
        self.store = store
        self.policy = policy
        self.scoreboard = scoreboard
        self.adapt = adapt
        self.train_default = train_default
        self.bootstrap_check_s = bootstrap_check_s
        self.worker_id = worker_id
        self.since_decision: Counter[str] = Counter()  # version_id -> bars predicted since
        self._job: threading.Thread | None = None
        self._done: queue.Queue = queue.Queue()
        self._last_bootstrap_try = 0.0

    @property
    def busy(self) -> bool:
        return self._job is not None and self._job.is_alive()

    def predicted(self, version_id: str, n: int = 1) -> None:
        self.since_decision[version_id] += n

    def new_champion(self, version_id: str) -> None:
        self.since_decision[version_id] = 0

    def maybe_start(self, models: dict[str, LoadedModel], has_global_champion: bool,
                    interval: Callable[[], str | None], last_bar_ts: int | None) -> str | None:
        """Start a job if one is due; returns a status line when there is something to say."""
        if self.busy:
            return None
        if not has_global_champion:
            return self._bootstrap(models, interval, last_bar_ts)
        if not self.adapt:
            return None
        for scope, model in list(models.items()):
            vid = model.version_id
            monitor = self.scoreboard.monitors.get(vid)
            since = self.since_decision[vid]
            trigger = reason = None
            if self.policy.every_bars and since >= self.policy.every_bars:
                trigger, reason = "schedule", f"{since:,} new bars since the last decision"
            elif (monitor is not None and monitor.drifted()
                  and since >= self.policy.cooldown_bars):
                trigger = "drift"
                reason = (f"rolling live error {monitor.rolling:.4f}% > "
                          f"{self.policy.drift_factor:g} × reference {monitor.reference:.4f}%")
            if trigger is None:
                continue
            self.since_decision[vid] = 0
            live = {"drift": monitor.summary() if monitor else None,
                    "model": self.scoreboard.model_summary(vid)}
            ivl = model.meta.get("interval") or interval()
            self._start(lambda m=model, t=trigger, r=reason, s=scope, i=ivl, lv=live: retrain(
                self.store, m, t, r, self.policy, interval=i, scope=s, bar_ts=last_bar_ts,
                live=lv, worker_id=self.worker_id))
            return f"retraining ({trigger}) the champion of {scope}…"  # one job at a time
        return None

    def _bootstrap(self, models, interval, last_bar_ts) -> str | None:
        now = time.time()
        if self.train_default and now - self._last_bootstrap_try >= self.bootstrap_check_s:
            self._last_bootstrap_try = now
            ivl = interval()
            if ivl is None:
                return "no model yet: waiting for the first bars"
            self._start(lambda: train_default_model(self.store, ivl, self.policy,
                                                    bar_ts=last_bar_ts, worker_id=self.worker_id))
        elif not self.train_default and not models:
            return ("no champion: promote a model version (Model lab or Predictions page); "
                    "train_default is off")
        return None

    def _start(self, fn: Callable[[], RetrainDecision]) -> None:
        def work() -> None:
            try:
                self._done.put(fn())
            except Exception as exc:  # a failed retrain must not take the scorer down
                log.debug("retrain failed", exc_info=True)
                self._done.put(exc)

        self._job = threading.Thread(target=work, name="kappalab-scorer-retrain", daemon=True)
        self._job.start()

    def join(self, timeout: float) -> None:
        if self._job is not None:
            self._job.join(timeout)  # a retrain in flight finishes its decision

    def outcomes(self) -> list[Outcome]:
        """Finished jobs since the last call, with drift monitors already updated."""
        out = []
        while True:
            try:
                d = self._done.get_nowait()
            except queue.Empty:
                return out
            out.append(self._outcome(d))

    def _outcome(self, d: RetrainDecision | Exception) -> Outcome:
        if isinstance(d, NotEnoughData):
            return Outcome(f"retrain postponed: {d}")
        if isinstance(d, Exception):
            return Outcome(None, error=f"retrain failed: {type(d).__name__}: {d}")
        if d.waiting:
            return Outcome(f"no model yet, {d.reason}")
        log.info("scorer: %s", d.reason)
        retrained = d.trigger != "bootstrap"
        if d.promoted:
            self.scoreboard.watch(d.champion_version_id,
                                  d.challenger_metrics.get("mape_pct"), reset=True)
            what = ("trained and promoted the default model" if d.trigger == "bootstrap"
                    else f"{d.trigger} retrain promoted")
            return Outcome(f"{what}: {d.champion_version_id}", retrained=retrained,
                           promoted=True, summary=d.summary())
        # The champion's error on the latest holdout is its new reference level, unless it
        # trained on most of that holdout (then the figure flatters it).
        monitor = self.scoreboard.monitors.get(d.previous_version_id or "")
        if monitor is not None:
            seen = d.figures.get("holdout_rows_in_champion_training", 0)
            fair = seen < d.figures.get("holdout_rows", 0) / 2
            monitor.rebaseline(d.champion_metrics.get("mape_pct") if fair else None)
        return Outcome(f"{d.trigger} retrain: champion {d.previous_version_id} kept",
                       retrained=retrained, summary=d.summary())
