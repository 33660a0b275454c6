"""The demo pipeline's child process (KAPPALAB_PIPELINE_MODE=process, the default) dies with the
Streamlit server, whether the server is stopped (SIGTERM) or killed (SIGKILL), and leaves no
process behind (workers' process, retrain process, embedded broker); with
KAPPALAB_PIPELINE_MODE=threads the same app runs the pipeline in the server itself.

Real servers on loopback (benchmarks/app_server.py), a real session opened over Streamlit's
websocket (the browser's protocol, without a browser), the real store the workers write.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from benchmarks.app_server import AppServer, alive, descendants, session_first_render
from pipeline.workers.broker import EmbeddedBroker
from pipeline.store.sqlite import SqliteStore

pytestmark = pytest.mark.slow


def wait_for_beats(data_dir: Path, kinds: set[str], timeout_s: float = 90) -> list[dict]:
    store = SqliteStore(data_dir / "kappalab.sqlite")
    try:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            beats = store.list_heartbeats(max_age_ms=10_000)
            if kinds <= {b.get("kind") for b in beats} and store.count_bars() > 0:
                return beats
            time.sleep(0.5)
    finally:
        store.close()
    raise AssertionError(f"no heartbeats of {kinds} within {timeout_s} s")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_pipeline_process_dies_with_the_server(tmp_path, sig):
    server = AppServer(tmp_path, "process")
    tree: set[int] = set()
    try:
        session_first_render(server.port, until="script_finished")
        beats = wait_for_beats(tmp_path, {"producer", "indexer"})
        pids = {b["pid"] for b in beats}
        assert len(pids) == 1 and server.proc.pid not in pids  # the workers run off the server
        child = pids.pop()
        tree = descendants(server.proc.pid)
        broker = EmbeddedBroker.read_state(tmp_path / "broker.json")
        assert child in tree and broker is not None and broker.owner_pid == child
        tree.add(broker.pid)
        server.proc.send_signal(sig)
        server.proc.wait(30)
        deadline = time.time() + 30
        while time.time() < deadline and any(alive(p) for p in tree):
            time.sleep(0.2)
        assert not [p for p in tree if alive(p)], "left behind after the server's end"
    finally:
        for pid in tree:  # by PID, only what this test started
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        server.stop()


def test_threads_mode_runs_the_pipeline_in_the_server(tmp_path):
    server = AppServer(tmp_path, "threads")
    try:
        session_first_render(server.port, until="script_finished")
        beats = wait_for_beats(tmp_path, {"producer", "indexer"})
        assert {b["pid"] for b in beats} == {server.proc.pid}
    finally:
        server.stop()



def test_pipeline_process_stands_down_when_other_workers_feed_the_store(tmp_path, monkeypatch):
    """Attach mode: workers of another process already feed the store, so the demo pipeline's
    child (started before the store is checked, dashboard/early_start.py) starts nothing,
    exits with ATTACHED_EXIT, is not restarted, and leaves no broker behind."""
    from pipeline.workers.demo_process import ATTACHED_EXIT, PipelineProcess

    store = SqliteStore(tmp_path / "kappalab.sqlite")
    try:
        # a live indexer of another process, as `python -m pipeline indexer` writes it
        store.heartbeat("indexer-elsewhere", {"kind": "indexer", "state": "running",
                                              "pid": os.getpid()})
    finally:
        store.close()
    monkeypatch.setenv("KAPPALAB_DATA_DIR", str(tmp_path))
    for var in ("KAFKA_BOOTSTRAP_SERVERS", "ELASTICSEARCH_URL"):
        monkeypatch.delenv(var, raising=False)
    proc = PipelineProcess.once(tmp_path)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and proc._thread.is_alive():
            time.sleep(0.2)
        assert proc.stood_down and proc.process.returncode == ATTACHED_EXIT
        assert proc.last_error is None and not proc.alive()
        broker = EmbeddedBroker.read_state(tmp_path / "broker.json")
        assert broker is None or not alive(broker.pid)  # the one it started is stopped
        assert PipelineProcess.once(tmp_path) is proc  # one per data dir and server process
        assert proc.process.returncode == ATTACHED_EXIT  # and not started again
    finally:
        proc.stop()


def test_restart_draws_first_then_starts_the_pipeline(tmp_path):
    """With bars stored (a restart) the session's first run sends the chart before the
    pipeline's process starts (dashboard/early_start.py); the process does start after that
    run, off the server."""
    import threading

    from pipeline.sources.simulator import MarketSimulator

    store = SqliteStore(tmp_path / "kappalab.sqlite")
    try:
        store.upsert_bars(list(MarketSimulator(symbols=("ACME",), bars=300).bars(
            threading.Event())))
    finally:
        store.close()
    server = AppServer(tmp_path, "process")
    try:
        session_first_render(server.port)  # the chart, from the stored bars
        beats = wait_for_beats(tmp_path, {"producer", "indexer"})
        assert server.proc.pid not in {b["pid"] for b in beats}
    finally:
        server.stop()
