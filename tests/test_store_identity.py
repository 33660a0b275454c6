"""The SQLite file deleted, replaced or emptied of its tables under a running indexer.

Real parts: the embedded broker over TCP, a real indexer thread, real files on disk (deleted
with unlink, replaced with rename, tables dropped by another connection). Each case is a
store outage: ``stalled`` with the reason, no offset committed past what was stored, nothing
written into an unlinked file, no empty database created at the path; a KappaLab store put
back at the path is adopted (said in the log) and the bars sent meanwhile are stored."""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from pipeline.store.base import StoreUnavailable
from pipeline.store.sqlite import SqliteStore
from tests import stream_cases
from tests.test_kafka_producers import record


def _assert_outage_then_recovery(f: dict, reason: str) -> None:
    assert f["during_fault"]["state"] == "stalled", f
    assert reason in f["during_fault"]["last_error"], f
    assert f["committed_during_fault"] == {0: 20} or f["committed_during_fault"] == {"0": 20}, f
    assert f["after_repair"]["state"] == "running", f
    assert f["stored_after_fault"] == 40 and f["lost_after_fault"] == 0, f


@pytest.mark.slow
def test_sqlite_file_deleted_is_an_outage_and_no_empty_file_appears(broker, tmp_path):
    f = record(stream_cases.case_sqlite_deleted(broker.bootstrap, tmp_path))
    assert f["file_at_path"] is False, "something created a database at the deleted path"
    _assert_outage_then_recovery(f, "was deleted while in use")


@pytest.mark.slow
def test_sqlite_file_replaced_by_a_foreign_file_is_an_outage(broker, tmp_path):
    f = record(stream_cases.case_sqlite_replaced(broker.bootstrap, tmp_path))
    _assert_outage_then_recovery(f, "not a KappaLab store")


@pytest.mark.slow
def test_sqlite_tables_dropped_is_an_outage(broker, tmp_path):
    f = record(stream_cases.case_sqlite_emptied(broker.bootstrap, tmp_path))
    _assert_outage_then_recovery(f, "has lost its tables")


def test_no_thread_creates_a_deleted_database(tmp_path):
    """The checkpoint thread and a new thread's connection open the file read-write only."""
    import threading

    from pipeline.store import sqlite_file as sqlite_module

    path = tmp_path / "k.sqlite"
    store = SqliteStore(path)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    time.sleep(sqlite_module.CHECKPOINT_EVERY_S * 2.5)  # the checkpointer ran twice
    errors = []

    def read():
        try:
            store.count_bars()
        except StoreUnavailable as exc:
            errors.append(str(exc))

    t = threading.Thread(target=read)
    t.start()
    t.join()
    assert not path.exists(), "a database was created at the deleted path"
    assert errors, "a new thread read from a deleted store without an error"
    with pytest.raises(StoreUnavailable, match="was deleted while in use"):
        store.put_doc("runs", "x", {"created_ms": 1})
    store.close()


def test_a_restored_store_is_adopted_by_every_thread(tmp_path):
    path = tmp_path / "k.sqlite"
    store = SqliteStore(path)
    backup = SqliteStore(tmp_path / "backup.sqlite")
    backup.put_doc("runs", "from-backup", {"created_ms": 1})
    backup.close()
    with sqlite3.connect(tmp_path / "backup.sqlite") as conn:  # a backup is one whole file
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    import os

    os.replace(tmp_path / "backup.sqlite", path)
    store.put_doc("runs", "after", {"created_ms": 2})  # adopted: written to the new file
    with sqlite3.connect(path) as conn:
        ids = sorted(r[0] for r in conn.execute("SELECT id FROM docs"))
    assert ids == ["after", "from-backup"]
    assert {d["created_ms"] for d in store.list_docs("runs")} == {1, 2}
    store.close()


def test_a_blocked_loop_says_stalled_and_keeps_its_heartbeat(tmp_path):
    """A worker whose loop is stuck inside a call (as kafka-python's poll was, over a batch
    it could not decode) is ``stalled`` with the reason after ``loop_watchdog_s``, its
    heartbeat keeps reaching the store, and it is ``running`` again once the loop returns."""
    import threading

    from pipeline.workers.worker import Worker, WorkerThread

    class Blocked(Worker):
        kind = "blocked"
        loop_watchdog_s = 1.0

        def __init__(self, store):
            super().__init__(store=store)
            self.release = threading.Event()

        def run(self, stop):
            self.tick()
            self.release.wait(20)  # the blocked client call
            while not stop.is_set():
                self.tick()
                stop.wait(0.1)

    store = SqliteStore(tmp_path / "k.sqlite")
    w = Blocked(store)
    wt = WorkerThread(w).start()
    try:
        deadline = time.time() + 10
        while w.state != "stalled" and time.time() < deadline:
            time.sleep(0.1)
        assert w.state == "stalled" and "loop is blocked" in w.last_error, w.last_error
        first = store.get_doc("workers", w.worker_id)["created_ms"]
        time.sleep(2.5)
        beat = store.get_doc("workers", w.worker_id)
        assert beat["created_ms"] > first and beat["state"] == "stalled", beat
        w.release.set()
        deadline = time.time() + 5
        while w.state != "running" and time.time() < deadline:
            time.sleep(0.1)
        assert w.state == "running"
    finally:
        w.release.set()
        assert wt.stop()
        store.close()
