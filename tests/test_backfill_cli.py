"""`python -m pipeline backfill` as a user runs it: real processes on the real broker."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from pipeline.store.sqlite import SqliteStore

pytestmark = pytest.mark.slow


def backfill(broker, data_dir, *args, wait=True):
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap,
               KAPPALAB_DATA_DIR=str(data_dir), PYTHONPATH=os.getcwd())
    env.pop("ELASTICSEARCH_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "backfill", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def summary(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "error" in line.lower()]


def test_concurrent_backfills_each_count_their_own_bars_on_their_topic(broker, tmp_path):
    topic = f"bf-{uuid.uuid4().hex[:8]}"
    a = backfill(broker, tmp_path, "--bars", "3000", "--symbols", "AAA,BBB", "--topic", topic,
                 wait=False)
    b = backfill(broker, tmp_path, "--bars", "2000", "--symbols", "CCC", "--topic", topic,
                 "--seed", "9", wait=False)
    out_a, err_a = a.communicate(timeout=300)
    out_b, err_b = b.communicate(timeout=300)
    assert a.returncode == 0 and b.returncode == 0, (err_a, err_b)
    sa, sb = summary(out_a), summary(out_b)
    assert (sa["produced"], sa["stored"], sa["topic"]) == (6000, 6000, topic)
    assert (sb["produced"], sb["stored"]) == (2000, 2000)
    assert sa["complete"] and sb["complete"]
    store = SqliteStore(tmp_path / "kappalab.sqlite")
    assert store.count_bars() == 8000
    assert {s: store.count_bars(s) for s in ("AAA", "BBB", "CCC")} == \
        {"AAA": 3000, "BBB": 3000, "CCC": 2000}
    store.close()


def test_backfill_of_zero_bars_then_another_one_finishes(broker, tmp_path):
    topic = f"bf-{uuid.uuid4().hex[:8]}"
    rc, out, err = backfill(broker, tmp_path, "--bars", "0", "--topic", topic)
    assert rc == 0, err
    assert summary(out)["produced"] == 0
    rc, out, err = backfill(broker, tmp_path, "--bars", "500", "--symbols", "ZZZ", "--topic", topic)
    assert rc == 0, err
    assert summary(out)["stored"] == 500


def test_backfill_past_its_timeout_exits_1_with_one_sentence(broker, tmp_path):
    rc, out, err = backfill(broker, tmp_path, "--bars", "500000", "--symbols", "SLOW,SLOW2",
                            "--topic", f"bf-{uuid.uuid4().hex[:8]}", "--timeout", "3")
    assert rc == 1
    s = summary(out)
    assert s["complete"] is False and s["stored"] <= s["produced"]
    errors = error_lines(err)
    assert len(errors) == 1, err
    assert errors[0].startswith("error: the backfill did not finish within 3 s")
    assert "--timeout" in errors[0]


def test_backfill_interrupted_exits_non_zero_with_what_was_stored(broker, tmp_path):
    proc = backfill(broker, tmp_path, "--bars", "500000", "--symbols", "INT1,INT2",
                    "--topic", f"bf-{uuid.uuid4().hex[:8]}", wait=False)
    store = SqliteStore(tmp_path / "kappalab.sqlite")
    deadline = time.time() + 120
    while time.time() < deadline and (not (tmp_path / "kappalab.sqlite").exists()
                                      or store.count_bars() < 1000):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    s = summary(out)
    assert s["complete"] is False
    assert s["stored"] == store.count_bars() > 0
    assert len(error_lines(err)) == 1 and "interrupted" in err
    store.close()
