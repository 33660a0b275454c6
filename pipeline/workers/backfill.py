"""The backfill's indexer, in its own process or as a thread of the CLI's.

One Python process runs Python code on one core at a time (the GIL). A backfill's producer
(source, JSON, the Kafka client's send path) and its indexer (the client's fetch path,
validation, the store) are both CPU-bound Python, so in one process they take turns on one
core. With the indexer in a child process each has a core (``--indexer process``; the default
``auto`` picks it on machines with at least :data:`MIN_CORES_FOR_PROCESS` cores)::

    CLI process                                      child process (spawned)
      Producer ── acked offsets ──► PipedLedger ══►  OffsetLedger ─► Indexer ─► store
      progress lines, summary   ◄══ stats snapshots (twice a second, and a last one)

The child reads exactly the records the parent's producer got acknowledged (the offset
ledger, forwarded over a pipe), so every guarantee of the in-process backfill holds: no
consumer group, other writers' records skipped, each record stored or dead-lettered once.
Ctrl-C and the timeout are the parent's: the child ignores SIGINT and stops when the parent
says so, or when the pipe from the parent closes (the parent died).
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from typing import Any

from pipeline.workers.indexer import Indexer
from pipeline.workers.producer import OffsetLedger
from pipeline.workers.worker import WorkerThread

log = logging.getLogger(__name__)

STATS_EVERY_S = 0.5


class PipedLedger(OffsetLedger):
    """The producer's ledger, which also forwards each acknowledgement to the child."""

    def __init__(self, conn) -> None:
        super().__init__()
        self._conn = conn
        self._send_lock = threading.Lock()

    def add_many(self, partition: int, offsets) -> None:
        offsets = list(offsets)
        super().add_many(partition, offsets)
        self.send(("acked", partition, offsets))

    def finish(self) -> None:
        super().finish()
        self.send(("finished",))

    def send(self, message: tuple, wait_s: float = -1) -> bool:
        """Send ``message``; False if the pipe is closed, or busy for longer than ``wait_s``
        (a child that stopped reading: the caller then ends it)."""
        if not self._send_lock.acquire(timeout=wait_s):
            return False
        try:
            self._conn.send(message)
            return True
        except OSError as exc:  # the child is gone; the CLI sees it and says so
            log.debug("backfill indexer pipe closed: %s", exc)
            return False
        finally:
            self._send_lock.release()


class IndexerThread:
    """The in-process mode: the indexer as a thread beside the producer (one core)."""

    mode = "thread"

    def __init__(self, store, bootstrap: str, topic: str, dlq_topic: str,
                 starts: dict[int, int], client_kwargs: dict) -> None:
        self.ledger = OffsetLedger()
        self.worker = Indexer(store, bootstrap, topic=topic, dlq_topic=dlq_topic,
                              client_kwargs=client_kwargs, mode="process", bounds=starts,
                              ledger=self.ledger)
        self._thread = WorkerThread(self.worker)

    def start(self) -> "IndexerThread":
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.alive

    def stats(self) -> dict[str, Any]:
        return self.worker.stats(history=False)

    def stop(self, timeout_s: float = 15.0) -> None:
        self._thread.stop(timeout_s)


class IndexerProcess:
    """The indexer in a spawned child process (a core of its own)."""

    mode = "process"

    def __init__(self, store, bootstrap: str, topic: str, dlq_topic: str,
                 starts: dict[int, int], client_kwargs: dict) -> None:
        ctx = multiprocessing.get_context("spawn")  # no fork of a process holding SQLite
        self._orders_in, orders_out = ctx.Pipe(duplex=False)
        self._stats_in, self._stats_out = ctx.Pipe(duplex=False)
        self.ledger = PipedLedger(orders_out)
        self.process = ctx.Process(
            target=child_main, name="kappalab-backfill-indexer", daemon=True,
            args=(self._orders_in, self._stats_out, bootstrap, topic, dlq_topic, starts,
                  client_kwargs))
        self._snapshot: dict[str, Any] = {
            "kind": Indexer.kind, "state": "starting", "last_error": None, "gauges": {},
            "counters": {name: 0 for name in Indexer.counter_names}}
        self._reader = threading.Thread(target=self._read_stats, daemon=True,
                                        name="kappalab-backfill-stats")

    def start(self) -> "IndexerProcess":
        self.process.start()
        self._orders_in.close()  # the child's ends: closed here so EOF means "peer gone"
        self._stats_out.close()
        self._reader.start()
        return self

    def _read_stats(self) -> None:
        while True:
            try:
                self._snapshot = self._stats_in.recv()
            except (EOFError, OSError):
                return

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    def stats(self) -> dict[str, Any]:
        return self._snapshot

    def stop(self, timeout_s: float = 15.0) -> None:
        """Ask the child to stop, wait for its last snapshot, then make sure it is gone."""
        told = self.ledger.send(("stop",), wait_s=2.0)
        self.process.join(timeout_s if told else 2.0)
        if self.process.is_alive():
            log.warning("the backfill's indexer process did not stop; terminating it")
            self.process.terminate()
            self.process.join(5)
        self._reader.join(5)
        if self.process.exitcode not in (0, None) and self._snapshot["state"] != "failed":
            self._snapshot = dict(self._snapshot, state="failed",
                                  last_error=f"the indexer process exited with status "
                                             f"{self.process.exitcode}")


def child_main(orders, stats, bootstrap: str, topic: str, dlq_topic: str,
               starts: dict[int, int], client_kwargs: dict) -> None:
    """The child: the ledger from the pipe, the indexer until it has every record (or is
    told to stop), a stats snapshot twice a second and a last one."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from pipeline.contracts.config import load_config
    from pipeline.workers.runtime import quiet_kafka_logs
    from pipeline.store import open_store

    quiet_kafka_logs()
    ledger, stop = OffsetLedger(), threading.Event()

    def read_orders() -> None:
        while True:
            try:
                message = orders.recv()
            except (EOFError, OSError):  # the parent is gone: stop
                stop.set()
                return
            if message[0] == "acked":
                ledger.add_many(message[1], message[2])
            elif message[0] == "finished":
                ledger.finish()
            elif message[0] == "stop":
                stop.set()

    threading.Thread(target=read_orders, daemon=True).start()
    try:
        store = open_store(load_config())
        worker = Indexer(store, bootstrap, topic=topic, dlq_topic=dlq_topic,
                         client_kwargs=client_kwargs, mode="process", bounds=starts,
                         ledger=ledger)
    except Exception as exc:  # e.g. the store cannot be opened: the parent says why
        stats.send({"kind": Indexer.kind, "state": "failed", "last_error": str(exc),
                    "gauges": {}, "counters": {name: 0 for name in Indexer.counter_names}})
        return
    thread = threading.Thread(target=worker.run_guarded, args=(stop,), daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(STATS_EVERY_S)
        try:
            stats.send(worker.stats(history=False))
        except OSError:  # the parent is gone
            stop.set()
    store.close()
    stats.close()


#: ``--indexer auto`` gives the indexer its own process from this many cores on. On two
#: cores the broker, the app and two busy backfill processes oversubscribe the machine: there
#: (measured on a shared 2-core box) the extra process's start-up and clients cost more than
#: the second core gives back, and the thread mode was as fast or faster in most runs.
MIN_CORES_FOR_PROCESS = 4


def resolve_mode(mode: str) -> str:
    if mode == "auto":
        return "process" if (os.cpu_count() or 1) >= MIN_CORES_FOR_PROCESS else "thread"
    return mode


def start_indexer(mode: str, store, bootstrap: str, topic: str, dlq_topic: str,
                  starts: dict[int, int], client_kwargs: dict):
    cls = IndexerProcess if resolve_mode(mode) == "process" else IndexerThread
    return cls(store, bootstrap, topic, dlq_topic, starts, client_kwargs).start()

