"""Small long-running workers (producer, indexer, scorer) with one shape.

Each worker has ``run(stop_event)`` and a thread-safe ``stats()`` snapshot; the dashboard only
ever reads snapshots. The same worker runs as a thread inside the app (:class:`WorkerThread`)
or as its own process (``python -m pipeline …``); in both cases it publishes its snapshot to
the store as a heartbeat, which is how a dashboard attaches to workers in other processes.
"""
from __future__ import annotations

import abc
import logging
import os
import socket
import threading
import time
import traceback
import uuid
from collections import deque
from typing import Any

# A dashboard asks a worker of another process to stop with a doc in this collection (id =
# worker id); the worker reads it with its heartbeat and stops as on Ctrl-C.
from pipeline.store.base import STOP_REQUESTS

# Re-exported for callers of old; pipeline/workers/heartbeats.py is their home.
from pipeline.workers.heartbeats import KafkaHeartbeats, latest_heartbeats  # noqa: F401

log = logging.getLogger(__name__)

HEARTBEAT_EVERY_S = 2.0
HISTORY_POINTS = 600  # one point per second: ten minutes of throughput history


class RateMeter:
    """Events per second over a sliding window, plus a per-second history for charts."""

    def __init__(self, window_s: float = 10.0):
        self.window_s = window_s
        self._points: deque[tuple[float, int]] = deque()

    def rate(self, now: float, total: int) -> float:
        self._points.append((now, total))
        while self._points and now - self._points[0][0] > self.window_s:
            self._points.popleft()
        t0, c0 = self._points[0]
        return (total - c0) / (now - t0) if now > t0 else 0.0


class Worker(abc.ABC):
    """The shape every stream worker shares: ``run(stop)`` in its own thread (or process),
    counters and gauges, errors, and a ``stats()`` snapshot published as a heartbeat in the
    store (and the heartbeat topic), which is how a dashboard in another process attaches.
    ``count``, ``gauge``, ``error`` and ``stats`` take the worker's lock: any thread may call
    them."""

    kind: str = "worker"
    #: counters shown on the Pipeline page, in order
    counter_names: tuple[str, ...] = ()
    #: the counter whose per-second rate is the worker's headline throughput
    rate_counter: str = ""
    #: if set: a loop that has not called :meth:`tick` for this many seconds (blocked inside
    #: a client call) makes the worker ``stalled``, and a watch thread keeps its heartbeat going
    loop_watchdog_s: float | None = None

    def __init__(self, store=None, mode: str = "thread"):
        self.store = store
        self.mode = mode
        self.worker_id = f"{self.kind}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._lock = threading.Lock()
        self._counters: dict[str, int] = {name: 0 for name in self.counter_names}
        self._gauges: dict[str, Any] = {}
        self.state = "created"
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        self.last_error: str | None = None
        self.last_error_ms: int | None = None
        self._logged_error: str | None = None
        self._meter = RateMeter()
        self._history: deque[dict[str, float]] = deque(maxlen=HISTORY_POINTS)
        self._last_sample = 0.0
        self._last_heartbeat = 0.0
        self._beats: KafkaHeartbeats | None = None
        self._beater: _LatestOnly | None = None
        self._loop_seen = time.monotonic()
        self._loop_silent = False
        self._stop_event: threading.Event | None = None
        #: counters of this worker's earlier runs in this process (see :meth:`carry_over`)
        self._before: dict[str, int] = {}
        self.run_number = 1

    def carry_over(self, previous: "Worker") -> None:
        """Continue ``previous`` (the same worker, stopped, now started again): its throughput
        history goes on in this one, and its counters add to this one's totals."""
        with previous._lock:
            history = list(previous._history)
            before = {k: previous._before.get(k, 0) + v for k, v in previous._counters.items()}
        with self._lock:
            self._history.extend(history)
            self._before = {k: before.get(k, 0) + self._before.get(k, 0)
                            for k in set(before) | set(self._before)}
            self.run_number = previous.run_number + 1

    # ---- to implement --------------------------------------------------------------------
    @abc.abstractmethod
    def run(self, stop: threading.Event) -> None:
        """Work until ``stop`` is set; call :meth:`tick` regularly."""

    def describe(self) -> str:
        return self.kind

    # ---- bookkeeping used by subclasses --------------------------------------------------
    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] = self._counters.get(name, 0) + n

    def gauge(self, name: str, value: Any) -> None:
        with self._lock:
            self._gauges[name] = value

    def error(self, message: str, log_it: bool = True) -> None:
        """Record ``message`` (one sentence) as the last error. A message repeated by a retry
        loop is logged once, not once per attempt; the time is kept apart from the text."""
        with self._lock:
            self.last_error = message
            self.last_error_ms = int(time.time() * 1000)
            repeated, self._logged_error = self._logged_error == message, message
        if log_it and not repeated:
            log.warning("%s: %s", self.kind, message)

    def stall(self, reason: str) -> None:
        """Report that the worker cannot make progress (it keeps trying): state ``stalled``."""
        if self.state == "running":
            self.state = "stalled"
        self.error(reason)

    def unstall(self) -> None:
        """Progress again after a stall or a retried failure."""
        with self._lock:
            was_stalled, self._logged_error = self.state == "stalled", None
        if was_stalled:
            self.state = "running"
            log.info("%s: making progress again", self.kind)

    def tick(self, force: bool = False) -> None:
        """Sample throughput once a second and heartbeat to the store every few seconds."""
        self._loop_seen = time.monotonic()
        if self._loop_silent:
            self._loop_silent = False
            self.unstall()
        self._beat(force)

    def _beat(self, force: bool = False) -> None:
        now = time.time()
        if force or now - self._last_sample >= 1.0:
            self._last_sample = now
            with self._lock:
                total = self._counters.get(self.rate_counter, 0)
                rate = self._meter.rate(now, total)
                self._gauges["rate_per_s"] = round(rate, 1)
                self._history.append({"t": now, "rate": rate, "total": total})
        if force or now - self._last_heartbeat >= HEARTBEAT_EVERY_S:
            self._last_heartbeat = now
            snap = self.stats(history=False)
            if force:
                self._heartbeat(snap)
            else:  # written by a thread of its own: a scorer's is ~80 kB of JSON at 500 symbols
                if self._beater is None:
                    self._beater = _LatestOnly(self._heartbeat, f"kappalab-{self.kind}-heartbeat")
                self._beater.put(snap)

    def _watch_loop(self, done: threading.Event) -> None:
        """The heartbeat and the truth while the loop is blocked (see ``loop_watchdog_s``)."""
        while not done.wait(HEARTBEAT_EVERY_S / 2):
            silent = time.monotonic() - self._loop_seen
            if silent > self.loop_watchdog_s and self.state == "running":
                self._loop_silent = True
                self.stall(f"the {self.kind} has made no progress for {silent:.0f} s: its loop "
                           "is blocked inside a client call")
            if silent > HEARTBEAT_EVERY_S:
                try:
                    self._beat()
                except Exception as exc:  # a watch must never take the worker down
                    log.debug("heartbeat from the loop watch failed: %s", exc)

    def _heartbeat(self, snap: dict[str, Any]) -> None:
        """The snapshot to the store and to the workers topic (never raises)."""
        if self.store is not None:
            try:
                self.store.heartbeat(self.worker_id, snap)
                self._obey_stop_request()
            except Exception as exc:  # a heartbeat must never take the worker down
                log.debug("heartbeat failed: %s", exc)
        bootstrap = getattr(self, "bootstrap", None)
        if bootstrap:
            if self._beats is None:
                self._beats = KafkaHeartbeats(bootstrap, getattr(self, "client_kwargs", None))
            self._beats.send(self.worker_id, snap)

    def _obey_stop_request(self) -> None:
        """Stop (as on Ctrl-C) when a dashboard asked this worker to, by a stop request doc."""
        stop = self._stop_event
        if stop is None or stop.is_set() or self.state not in ("running", "stalled"):
            return
        request = self.store.get_doc(STOP_REQUESTS, self.worker_id)
        if request:
            log.info("%s: stopping, as asked %s", self.kind, request.get("by", "by a dashboard"))
            self.store.delete_doc(STOP_REQUESTS, self.worker_id)
            stop.set()

    def track_lag(self, consumer, every_s: float = 2.0) -> None:
        """Gauge ``lag``: messages behind the log end over the assigned partitions.

        The log end is the highest of ``end_offsets`` (which trails by up to a batch on the
        embedded broker), the last fetch's high watermark and the position read to."""
        now = time.time()
        if now - getattr(self, "_last_lag_check", 0.0) < every_s:
            return
        self._last_lag_check = now
        try:
            assigned = consumer.assignment()
            if not assigned:
                return
            from pipeline.workers.kafka_clients import consumer_lag

            self.gauge("lag", consumer_lag(consumer, assigned))
        except Exception as exc:
            log.debug("lag check failed: %s", exc)

    def stats(self, history: bool = True) -> dict[str, Any]:
        with self._lock:
            snap = {
                "worker_id": self.worker_id,
                "kind": self.kind,
                "mode": self.mode,
                "state": self.state,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "description": self.describe(),
                "started_s": self.started_at,
                "uptime_s": (round((self.stopped_at or time.time()) - self.started_at, 1)
                             if self.started_at else 0.0),
                "stopped_s": self.stopped_at,
                "counters": dict(self._counters),
                "run": self.run_number,
                # this run plus the earlier runs of this process (a restart keeps counting)
                "totals": {k: self._before.get(k, 0) + self._counters.get(k, 0)
                           for k in set(self._before) | set(self._counters)},
                "gauges": dict(self._gauges),
                "last_error": self.last_error,
                "last_error_ms": self.last_error_ms,
            }
            if history:
                snap["history"] = list(self._history)
        return snap

    # ---- lifecycle -----------------------------------------------------------------------
    def run_guarded(self, stop: threading.Event) -> None:
        """Run, recording state and any crash instead of letting it escape."""
        self.state, self.started_at, self.stopped_at = "running", time.time(), None
        self._loop_seen, watch_done = time.monotonic(), threading.Event()
        if self.loop_watchdog_s:
            threading.Thread(target=self._watch_loop, args=(watch_done,), daemon=True,
                             name=f"kappalab-{self.kind}-loopwatch").start()
        self._stop_event = stop
        try:
            self.run(stop)
            self.state = "stopped" if stop.is_set() else "finished"
        except Exception as exc:
            self.state = "failed"
            # In a thread the log is the only console; a CLI prints the failure itself, once.
            self.error(_sentence(exc), log_it=self.mode == "thread")
            log.debug("worker crashed\n%s", traceback.format_exc())
        finally:
            watch_done.set()
            self.stopped_at = time.time()
            if self._beater is not None:  # its last write first, then the final state
                self._beater.close()
            self.tick(force=True)
            if self._beats is not None:
                self._beats.close()


class SourceWatch:
    """A watchdog for a worker whose loop blocks inside its source (a live API failing and
    backing off, say): it cannot report anything itself, so every ``every_s`` this thread
    runs ``on_idle`` (e.g. counting acks), reads ``source.problem()`` (one sentence while the
    source delivers nothing, else None) and ``source.stats()`` (the ``source`` gauge), says
    ``stalled`` with the reason, and ``running`` again once the problem is gone."""

    def __init__(self, worker: "Worker", source: Any, every_s: float = 2.0,
                 on_idle: Any = None, what: str = "bars"):
        self.worker, self.source, self.every_s = worker, source, every_s
        self.on_idle, self.what = on_idle, what
        self._done = threading.Event()
        self._stalled = False
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"kappalab-{worker.kind}-watchdog")

    def start(self) -> "SourceWatch":
        self._thread.start()
        return self

    def close(self) -> None:
        self._done.set()

    def _run(self) -> None:
        w = self.worker
        while not self._done.wait(self.every_s):
            try:
                if self.on_idle is not None:
                    self.on_idle()
                problem = self.source.problem()
                w.gauge("source", self.source.stats())
            except Exception as exc:  # a watchdog must never take the worker down
                log.debug("source watchdog: %s", exc)
                continue
            if problem and w.state == "running":
                self._stalled = True
                w.stall(f"the source delivers no {self.what}: {problem}")
            elif not problem and self._stalled:
                self._stalled = False
                w.unstall()
            w.tick()


class _LatestOnly:
    """Hands values to ``fn`` in a thread of its own; a value not taken yet is replaced by a
    newer one (a heartbeat only ever needs the latest snapshot)."""

    def __init__(self, fn, name: str):
        self._fn, self._value, self._closed = fn, None, False
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, value: Any) -> None:
        with self._ready:
            self._value = value
            self._ready.notify()

    def close(self, timeout_s: float = 10.0) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            with self._ready:
                while self._value is None and not self._closed:
                    self._ready.wait()
                value, self._value = self._value, None
                if value is None:  # closed, nothing left
                    return
            self._fn(value)


def _sentence(exc: BaseException) -> str:
    """An exception as one line: the message, or its class when it has none."""
    text = " ".join(str(exc).split())
    return text if text else type(exc).__name__


class WorkerThread:
    """A worker running in a daemon thread of this process."""

    def __init__(self, worker: Worker):
        self.worker = worker
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=worker.run_guarded, args=(self.stop_event,),
                                       name=f"kappalab-{worker.kind}", daemon=True)

    def start(self) -> "WorkerThread":
        self.thread.start()
        return self

    def stop(self, timeout_s: float = 15.0) -> bool:
        self.stop_event.set()
        self.thread.join(timeout_s)
        return not self.thread.is_alive()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()
