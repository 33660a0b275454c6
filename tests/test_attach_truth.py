"""Attach mode tells the truth: with `python -m pipeline broker` and `index` running as
processes started here, the Pipeline page shows that broker and that worker (where it runs, a
Stop that asks it to stop), never a Start button for it; the second-broker refusal and the
port-in-use exit of the broker command."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from pipeline.workers.broker import EmbeddedBroker, pid_alive

ROOT = Path(__file__).resolve().parent.parent
PAGE = str(ROOT / "pages" / "pipeline_control.py")


def cli(data_dir: Path, *args: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, KAPPALAB_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    for var in ("KAFKA_BOOTSTRAP_SERVERS", "ELASTICSEARCH_URL"):
        env.pop(var, None)
    return subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def stop(proc: subprocess.Popen, timeout_s: float = 20) -> tuple[str, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        return proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


def wait_for(pred, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def broker_process(data_dir):
    proc = cli(data_dir, "broker")
    state = data_dir / "broker.json"
    try:
        info = wait_for(lambda: EmbeddedBroker.read_state(state), 40, "broker.json")
        yield proc, info
    finally:
        stop(proc)


@pytest.mark.slow
def test_pipeline_page_shows_the_broker_and_worker_it_attached_to(data_dir, broker_process):
    from pipeline.store.sqlite import SqliteStore

    _, info = broker_process
    indexer = cli(data_dir, "index")
    store = SqliteStore(data_dir / "kappalab.sqlite")
    try:
        beat = wait_for(lambda: [b for b in store.list_heartbeats(10_000)
                                 if b.get("kind") == "indexer" and b.get("state") == "running"],
                        60, "the indexer's heartbeat")[0]
        at = AppTest.from_file(PAGE, default_timeout=60).run()
        assert not at.exception, [e.value for e in at.exception]
        text = " ".join(m.value for m in at.markdown) + " ".join(c.value for c in at.caption)
        assert f"`{info.bootstrap}`" in text and "started by another process" in text
        assert "not started yet" not in text
        assert "**Indexer** — :green[running]" in text
        assert f"process {beat['pid']}" in text
        labels = [b.label for b in at.button]
        assert "Start indexer" not in labels and "Stop indexer" in labels
        # Stop asks the process to stop (a stop request it reads with its heartbeat).
        next(b for b in at.button if b.label == "Stop indexer").click().run()
        out, _ = indexer.communicate(timeout=30)
        assert indexer.returncode == 0
        assert json.loads(out.strip().splitlines()[-1])["state"] == "stopped"
        at = AppTest.from_file(PAGE, default_timeout=60).run()
        assert "Start indexer" in [b.label for b in at.button]
    finally:
        stop(indexer)
        store.close()


@pytest.mark.slow
def test_second_broker_is_refused_and_the_record_kept(data_dir, broker_process):
    first, info = broker_process
    record = (data_dir / "broker.json").read_text()
    second = cli(data_dir, "broker")
    out, err = second.communicate(timeout=30)
    assert second.returncode == 2, (out, err)
    line = err.strip()
    assert line.startswith("error:") and str(info.pid) in line and "\n" not in line
    assert (data_dir / "broker.json").read_text() == record
    assert first.poll() is None and pid_alive(info.pid)


def test_broker_on_a_port_in_use_exits_2(data_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = cli(data_dir, "broker", "--port", str(port))
        out, err = proc.communicate(timeout=40)
    assert proc.returncode == 2, (out, err)
    assert "started" not in out and "ready" not in out
    assert f"Port {port}" in err and len(err.strip().splitlines()) == 1
    assert not (data_dir / "broker.json").exists()


@pytest.mark.slow
def test_csv_import_waits_for_a_producer_running_in_another_process(data_dir, broker_process):
    """One producer at a time holds across processes: with `python -m pipeline produce` (as the
    demo pipeline's child process runs it) the page's Import button is disabled and says why."""
    from pipeline.store.sqlite import SqliteStore
    from tests.test_app_pipeline_csv import pandas_csv

    producer = cli(data_dir, "produce", "--symbols", "AAA", "--speed", "60")
    store = SqliteStore(data_dir / "kappalab.sqlite")
    try:
        wait_for(lambda: [b for b in store.list_heartbeats(10_000)
                          if b.get("kind") == "producer" and b.get("state") == "running"],
                 60, "the producer's heartbeat")
        at = AppTest.from_file(PAGE, default_timeout=60).run()
        at.radio(key="pc_source").set_value("csv").run()
        at.file_uploader(key="pc_csv_upload").set_value(("GOOG.csv", pandas_csv(),
                                                         "text/csv")).run()
        assert not at.exception, [e.value for e in at.exception]
        assert at.button(key="pc_csv_import").disabled
        assert any("One producer at a time" in c.value for c in at.caption)
    finally:
        stop(producer)
        store.close()
