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
