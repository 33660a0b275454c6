"""The backfill's indexer process (pipeline/workers/backfill.py) when a process dies or Ctrl-C reaches
both: real `python -m pipeline backfill` processes on the real broker, killed by PID."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from pipeline.store.sqlite import SqliteStore
from tests.test_backfill_cli import error_lines, summary

pytestmark = pytest.mark.slow


def start(broker, data_dir, *args, **popen):
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap,
               KAPPALAB_DATA_DIR=str(data_dir), PYTHONPATH=os.getcwd())
    env.pop("ELASTICSEARCH_URL", None)
    return subprocess.Popen([sys.executable, "-m", "pipeline", "backfill", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def indexer_children(pid: int) -> list[int]:
    """The spawned indexer process(es) of ``pid`` (not multiprocessing's resource tracker)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"spawn_main" in cmdline:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(predicate, timeout_s: float) -> bool:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def stored_at_least(store_path: Path, n: int):
    store = SqliteStore(store_path)

    def check() -> bool:
        return store_path.exists() and store.count_bars() >= n
    return check, store


def test_a_killed_indexer_process_fails_the_backfill_with_one_sentence(broker, tmp_path):
    proc = start(broker, tmp_path, "--bars", "500000", "--symbols", "KIA,KIB",
                 "--topic", f"bf-{uuid.uuid4().hex[:8]}", "--indexer", "process")
    check, store = stored_at_least(tmp_path / "kappalab.sqlite", 1000)
    assert wait_for(check, 120), "the backfill never stored 1,000 bars"
    (child,) = indexer_children(proc.pid)
    os.kill(child, signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    s = summary(out)
    assert s["complete"] is False and s["indexer"] == "process"
    # its last snapshot (twice a second) may predate the last batches it stored
    assert s["stored"] <= store.count_bars() and store.count_bars() >= 1000
    errors = error_lines(err)
    assert len(errors) == 1, err
    assert errors[0].startswith("error: the indexer failed: the indexer process exited")
    store.close()


def test_the_indexer_process_stops_when_the_backfill_is_killed(broker, tmp_path):
    proc = start(broker, tmp_path, "--bars", "500000", "--symbols", "KPA,KPB",
                 "--topic", f"bf-{uuid.uuid4().hex[:8]}", "--indexer", "process")
    check, store = stored_at_least(tmp_path / "kappalab.sqlite", 1000)
    assert wait_for(check, 120), "the backfill never stored 1,000 bars"
    (child,) = indexer_children(proc.pid)
    proc.kill()
    proc.communicate(timeout=30)
    assert wait_for(lambda: not alive(child), 30), "the orphaned indexer process kept running"
    after = store.count_bars()
    time.sleep(1.0)
    assert store.count_bars() == after  # nothing writes any more
    store.close()


def test_ctrl_c_in_a_terminal_reaches_both_processes_and_exits_130(broker, tmp_path):
    """A terminal's Ctrl-C signals the whole process group: the child ignores it and stops
    when the parent says so, so the summary counts exactly what was stored."""
    proc = start(broker, tmp_path, "--bars", "500000", "--symbols", "CCA,CCB",
                 "--topic", f"bf-{uuid.uuid4().hex[:8]}", "--indexer", "process", start_new_session=True)
    check, store = stored_at_least(tmp_path / "kappalab.sqlite", 1000)
    try:
        assert wait_for(check, 120), "the backfill never stored 1,000 bars"
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    s = summary(out)
    assert s["complete"] is False
    assert s["stored"] == store.count_bars() > 0
    assert len(error_lines(err)) == 1 and "interrupted" in err
    store.close()


def test_thread_mode_backfill_stores_every_bar(broker, tmp_path):
    proc = start(broker, tmp_path, "--bars", "2000", "--symbols", "THA,THB",
                 "--topic", f"bf-{uuid.uuid4().hex[:8]}", "--indexer", "thread")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    s = summary(out)
    assert (s["produced"], s["stored"], s["complete"], s["indexer"]) == (4000, 4000, True,
                                                                         "thread")
