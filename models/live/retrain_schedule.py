"""When the live scorer retrains: a schedule, a drift rule, and one background job at a time.

:class:`RetrainScheduler` counts the bars each champion predicted since its last decision,
starts :func:`~models.adaptation.train_default_model` (no champion yet) or
:func:`~models.adaptation.retrain` (schedule or drift, per :class:`RetrainPolicy`) in a
background thread so training never blocks consumption, and hands back each finished
decision as an :class:`Outcome` (status line, counters) for the caller to show. Decisions
about *which* model wins are :mod:`models.adaptation`'s; this module only decides *when*.

Where the training runs (``isolation``): ``"process"`` (the default) runs each job in
:class:`RetrainProcess`, a spawned child process kept for the scorer's lifetime. Training holds
the interpreter lock for seconds at a time (pandas, scikit-learn's Python parts): as a thread
next to the scorer it was the largest share of the lock in the 500-symbol profile (37 %), and
every poll waited behind it. ``"thread"`` trains in a thread of the scorer's process (chosen
automatically for a store or policy that cannot be pickled, e.g. a lambda challenger factory).
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import queue
import signal
import sys
import threading
import types
from contextlib import contextmanager
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from models.adaptation import (
    NotEnoughData, RetrainDecision, RetrainPolicy, retrain, train_default_model,
)
from models.live.progressive import LiveScoreboard
from models.registry import GLOBAL_SCOPE, LoadedModel, load_model_version
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
                 worker_id: str | None = None, isolation: str = "process"):
        if isolation not in ("process", "thread"):
            raise ValueError(f"isolation must be 'process' or 'thread', not {isolation!r}")
        self.store = store
        self.process: RetrainProcess | None = None
        if isolation == "process":
            try:
                pickle.dumps((store, policy))  # what the child gets with each job
                self.process = RetrainProcess(store)
            except Exception as exc:
                log.info("retraining in a thread: the store or the policy cannot be sent to "
                         "another process (%s: %s)", type(exc).__name__, exc)
        self.policy = policy
        self.scoreboard = scoreboard
        self.adapt = adapt
        self.train_default = train_default
        self.bootstrap_check_s = bootstrap_check_s
        self.worker_id = worker_id
        self.since_decision: Counter[str] = Counter()  # version_id -> bars predicted since
        self._job: threading.Thread | None = None
        self._job_kind: str | None = None
        self._done: queue.Queue = queue.Queue()
        self._last_bootstrap_try = 0.0

    @property
    def busy(self) -> bool:
        return self._job is not None and self._job.is_alive()

    @property
    def bootstrapping(self) -> bool:
        """The first (default) model is being trained right now."""
        return self.busy and self._job_kind == "bootstrap"

    def prepare(self) -> None:
        """Start the retrain process now (its imports take seconds), so the first job does
        not wait for them."""
        if self.process is not None:
            self.process.start()

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
            self._start("retrain", champion=model, trigger=trigger, reason=reason,
                        policy=self.policy, interval=ivl, scope=scope, bar_ts=last_bar_ts,
                        live=live, worker_id=self.worker_id)
            return f"retraining ({trigger}) the champion of {scope}…"  # one job at a time
        return None

    def _bootstrap(self, models, interval, last_bar_ts) -> str | None:
        now = time.time()
        if self.train_default and now - self._last_bootstrap_try >= self.bootstrap_check_s:
            self._last_bootstrap_try = now
            ivl = interval()
            if ivl is None:
                return "no model yet: waiting for the first bars"
            self._start("bootstrap", interval=ivl, policy=self.policy, bar_ts=last_bar_ts,
                        worker_id=self.worker_id)
        elif not self.train_default and not models:
            return ("no champion: promote a model version (Model lab or Predictions page); "
                    "train_default is off")
        return None

    def _start(self, kind: str, **kwargs: Any) -> None:
        """Run one job (``bootstrap`` or ``retrain``) in the background; a thread waits for it
        (in the child process, or runs it itself with ``isolation="thread"``)."""
        def work() -> None:
            try:
                if self.process is not None:
                    self._done.put(self.process.run(kind, kwargs))
                else:
                    self._done.put(run_job(self.store, kind, kwargs))
            except Exception as exc:  # a failed retrain must not take the scorer down
                log.debug("retrain failed", exc_info=True)
                self._done.put(exc)

        self._job_kind = kind
        self._job = threading.Thread(target=work, name="kappalab-scorer-retrain", daemon=True)
        self._job.start()

    def join(self, timeout: float) -> None:
        if self._job is not None:
            self._job.join(timeout)  # a retrain in flight finishes its decision

    def close(self) -> None:
        """Stop the retrain process (after :meth:`join`: a job still running is abandoned)."""
        if self.process is not None:
            self.process.close()

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


def run_job(store: Store, kind: str, kwargs: dict[str, Any]) -> RetrainDecision:
    """One job, in whichever process runs it. The champion travels as its version id and is
    loaded from the registry here (a model object can be large; the registry has it)."""
    if kind == "bootstrap":
        return train_default_model(store, **kwargs)
    if kind == "retrain":
        kwargs = dict(kwargs)
        champion = kwargs.pop("champion")
        if not isinstance(champion, LoadedModel):
            champion = load_model_version(store, champion)
        return retrain(store, champion, **kwargs)
    raise ValueError(f"unknown retrain job {kind!r}")


class RetrainProcessGone(RuntimeError):
    """The retrain process ended during a job (killed, out of memory, crashed)."""


class RetrainProcess:
    """Retrain jobs in a spawned child process, one at a time, kept for the scorer's lifetime.

    The child reopens the store from its pickled form (a SQLite file, an Elasticsearch address
    with its credentials: sent through the pipe, never on a command line or in a log) and
    imports the models once. Jobs and their decisions (or exceptions) travel over a pipe. A
    child that dies is reported as :class:`RetrainProcessGone` for that job, and the next job
    starts a new one. The child exits when the pipe closes, so it never outlives the scorer's
    process, even one that is killed.
    """

    def __init__(self, store: Store):
        self.store = store
        self._ctx = multiprocessing.get_context("spawn")  # no fork of a process with threads
        self._proc = None
        self._conn = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.is_alive() else None

    def start(self) -> None:
        with self._lock:
            if self._proc is None or not self._proc.is_alive():
                self._spawn()

    def run(self, kind: str, kwargs: dict[str, Any]) -> RetrainDecision:
        job = dict(kwargs)
        if isinstance(job.get("champion"), LoadedModel):
            job["champion"] = job["champion"].version_id
        with self._lock:
            # Readable between jobs means end-of-file: the child is gone (maybe not reaped yet).
            if self._proc is None or not self._proc.is_alive() or self._conn.poll():
                self._spawn()
            try:
                self._conn.send((kind, job))
            except OSError:  # it died while idle: a new one takes the job
                self._proc.join(1)
                self._spawn()
                self._conn.send((kind, job))
            try:
                status, value = self._conn.recv()
            except (EOFError, OSError):
                self._proc.join(5)
                code = self._proc.exitcode
                self._proc = None
                raise RetrainProcessGone(
                    f"the retrain process ended during the job (exit status {code}); the "
                    "next retrain starts a new one") from None
        if status == "error":
            raise value
        return value

    def _spawn(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            self._proc.terminate()  # by its own handle; it had closed its end of the pipe
            self._proc.join(5)
        if self._conn is not None:
            self._conn.close()
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=_child_main, args=(child, self.store),
                                       name="kappalab-retrain", daemon=True)
        with _no_script_main():
            self._proc.start()
        child.close()
        self._conn = parent
        log.info("retrain process started (pid %s)", self._proc.pid)

    def close(self, timeout_s: float = 5.0) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if proc is None:
            return
        try:
            conn.send(None)  # "no more jobs": the child returns from its loop
        except (OSError, ValueError) as exc:  # it is gone already; join below reaps it
            log.debug("retrain process already gone: %s", exc)
        proc.join(timeout_s)
        if proc.is_alive():  # busy with an abandoned job: it is only training
            proc.terminate()  # by its own handle (its PID)
            proc.join(timeout_s)
        conn.close()


@contextmanager
def _no_script_main():
    """Start a spawned child without it running this process's main *script* first.

    ``spawn`` makes the child import the parent's ``__main__`` by path when it has no module
    spec. Under ``streamlit run app.py`` that is app.py itself (Streamlit installs each run's
    script module as ``__main__``): the child would run the whole app in bare mode, filling
    the terminal with "missing ScriptRunContext" and "use streamlit run" lines. A main with a
    spec (``python -m pipeline score``) is left alone; for the start only, a script main is
    replaced by an empty module, and put back unless a new run installed its own meanwhile."""
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__spec__", None) is not None \
            or not getattr(main, "__file__", None):
        yield
        return
    neutral = types.ModuleType("__main__")
    sys.modules["__main__"] = neutral
    try:
        yield
    finally:
        if sys.modules.get("__main__") is neutral:
            sys.modules["__main__"] = main


#: How much lower the retrain process's CPU priority is (``nice``). Training is background
#: work: on a busy machine the live path (producer, indexer, scorer) should get the cores
#: first, and a retrain simply takes longer. On an idle machine it changes nothing.
RETRAIN_NICENESS = 10


def _child_main(conn, store: Store) -> None:
    """The retrain process: jobs from the pipe until ``None`` or the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _lower_priority(RETRAIN_NICENESS)
    try:
        while True:
            try:
                job = conn.recv()
            except (EOFError, OSError):  # the parent is gone
                return
            if job is None:
                return
            kind, kwargs = job
            try:
                reply = ("ok", run_job(store, kind, kwargs))
            except Exception as exc:
                reply = ("error", exc)
            try:
                conn.send(reply)
            except (EOFError, OSError):
                return
            except Exception as exc:  # an exception that cannot be pickled: its text
                conn.send(("error", RuntimeError(f"{type(reply[1]).__name__}: {reply[1]} "
                                                 f"({exc})")))
    finally:
        store.close()


def _lower_priority(niceness: int) -> None:
    """Run this process at a lower CPU priority (where the OS has ``nice``)."""
    if hasattr(os, "nice"):
        try:
            os.nice(niceness)
        except OSError as exc:  # not allowed here: training just competes as before
            log.info("retrain process keeps its priority: %s", exc)
