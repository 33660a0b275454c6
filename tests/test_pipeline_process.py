"""The demo pipeline's child process (KAPPALAB_PIPELINE_MODE=process, the default) dies with the
Streamlit server, whether the server is stopped (SIGTERM) or killed (SIGKILL), and leaves no
process behind (workers' process, retrain process, embedded broker); with
KAPPALAB_PIPELINE_MODE=threads the same app runs the pipeline in the server itself.

Real servers on loopback, a real session opened over Streamlit's websocket (the browser's
protocol, without a browser), the real store the workers write.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.broker import EmbeddedBroker
from pipeline.store.sqlite import SqliteStore
from test_browser_e2e import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def children(pid: int) -> set[int]:
    found: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            found |= {int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()}
        except OSError:
            pass
    return found


def descendants(pid: int) -> set[int]:
    out, todo = set(), [pid]
    while todo:
        for c in children(todo.pop()):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def running(pid: int) -> bool:
    """Alive and not a zombie (a dead child not yet reaped by whoever adopted it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def start_server(data_dir: Path, mode: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = dict(os.environ, KAPPALAB_DATA_DIR=str(data_dir), PYTHONPATH=str(ROOT),
               KAPPALAB_PIPELINE_MODE=mode)
    for var in ("KAFKA_BOOTSTRAP_SERVERS", "ELASTICSEARCH_URL", "KAPPALAB_AUTOSTART"):
        env.pop(var, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port",
         str(port), "--server.address", "127.0.0.1", "--server.headless", "true",
         "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=open(data_dir / "streamlit.log", "w"),
        stderr=subprocess.STDOUT)
    return proc, port


def open_session(port: int, timeout_s: float = 60) -> None:
    """One session's first run of the root page, over the websocket a browser would use."""
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
    from websockets.sync.client import connect

    deadline = time.time() + timeout_s
    while True:
        try:
            ws = connect(f"ws://127.0.0.1:{port}/_stcore/stream", subprotocols=["streamlit"],
                         max_size=None, open_timeout=5)
            break
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.3)
    with ws:
        msg = BackMsg()
        msg.rerun_script.query_string = ""
        msg.rerun_script.page_script_hash = ""
        ws.send(msg.SerializeToString())
        while time.time() < deadline:
            fwd = ForwardMsg()
            fwd.ParseFromString(ws.recv(timeout=max(0.1, deadline - time.time())))
            if fwd.WhichOneof("type") == "script_finished":
                return
    raise AssertionError("the first run of the page did not finish")


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
    server, port = start_server(tmp_path, "process")
    tree: set[int] = set()
    try:
        open_session(port)
        beats = wait_for_beats(tmp_path, {"producer", "indexer"})
        pids = {b["pid"] for b in beats}
        assert len(pids) == 1 and server.pid not in pids  # the workers run off the server
        child = pids.pop()
        tree = descendants(server.pid)
        broker = EmbeddedBroker.read_state(tmp_path / "broker.json")
        assert child in tree and broker is not None and broker.owner_pid == child
        tree.add(broker.pid)
        server.send_signal(sig)
        server.wait(30)
        deadline = time.time() + 30
        while time.time() < deadline and any(running(p) for p in tree):
            time.sleep(0.2)
        assert not [p for p in tree if running(p)], "left behind after the server's end"
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
        for pid in tree | descendants(server.pid):  # by PID, only what this test started
            if running(pid):
                os.kill(pid, signal.SIGKILL)


def test_threads_mode_runs_the_pipeline_in_the_server(tmp_path):
    server, port = start_server(tmp_path, "threads")
    try:
        open_session(port)
        beats = wait_for_beats(tmp_path, {"producer", "indexer"})
        assert {b["pid"] for b in beats} == {server.pid}
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
        info = EmbeddedBroker.read_state(tmp_path / "broker.json")
        if info and info.owner_pid == server.pid and running(info.pid):
            os.kill(info.pid, signal.SIGTERM)
