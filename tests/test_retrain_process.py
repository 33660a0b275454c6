"""The scorer's retrain process (models/live/retrain_schedule.py: RetrainProcess): a real spawned
child on a real SQLite file. It trains what the thread would, reports errors as the thread
would, survives being killed (the job says so, the next job starts a new child) and never
outlives the process that started it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from functools import partial
from pathlib import Path

import pytest
from sklearn.ensemble import RandomForestRegressor

from models.adaptation import NotEnoughData, RetrainPolicy
from models.live.progressive import LiveScoreboard
from models.registry import get_champion, load_model_version
from models.live.retrain_schedule import (RETRAIN_NICENESS, RetrainProcess, RetrainProcessGone,
                                     RetrainScheduler)
from pipeline.sources.simulator import MarketSimulator
from pipeline.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent


def fill(store, bars_per_symbol: int) -> None:
    sim = MarketSimulator(symbols=("ACME", "GLOBX"), bars=bars_per_symbol, seed=3)
    store.upsert_bars(list(sim.bars(threading.Event())))


def _ended(proc: RetrainProcess) -> int | None:
    """Wait (by its handle) for the current child to end; its exit status."""
    handle = proc._proc
    handle.join(60)
    return handle.exitcode


def test_jobs_run_in_another_process_and_decide_as_the_thread_would(sqlite_store):
    fill(sqlite_store, 60)
    proc = RetrainProcess(sqlite_store)
    try:
        waiting = proc.run("bootstrap", {"interval": "1m"})  # too little data: same answer
        assert waiting.waiting and "need 300" in waiting.reason
        pid, handle = proc.pid, proc._proc
        assert pid is not None and pid != os.getpid()
        # Background work: the child runs at a lower CPU priority than the live path.
        assert (os.getpriority(os.PRIO_PROCESS, pid)
                == min(os.getpriority(os.PRIO_PROCESS, 0) + RETRAIN_NICENESS, 19))

        fill(sqlite_store, 500)
        d = proc.run("bootstrap", {"interval": "1m", "bar_ts": 7})
        assert d.promoted and proc.pid == pid  # the same child, kept between jobs
        assert get_champion(sqlite_store)["version_id"] == d.champion_version_id
        (event,) = sqlite_store.list_events("retrain")  # written by the child, seen here
        assert event["bar_ts"] == 7

        champion = load_model_version(sqlite_store, d.champion_version_id)
        r = proc.run("retrain", {"champion": champion, "trigger": "schedule", "reason": "test",
                                 "policy": RetrainPolicy(train_bars=200, holdout_bars=50)})
        assert r.trigger == "schedule" and r.previous_version_id == d.champion_version_id
        # An exception in the child comes back as itself.
        with pytest.raises(NotEnoughData):
            proc.run("retrain", {"champion": champion, "trigger": "schedule", "reason": "t",
                                 "policy": RetrainPolicy(min_train_rows=100_000)})
    finally:
        proc.close()
    assert handle.exitcode == 0  # told to stop: a clean exit


@pytest.fixture
def trained(sqlite_store):
    """A retrain process that has trained the default model on 500 bars per symbol."""
    fill(sqlite_store, 500)
    proc = RetrainProcess(sqlite_store)
    try:
        proc.run("bootstrap", {"interval": "1m"})
        yield proc
    finally:
        proc.close()


def test_a_killed_retrain_process_fails_its_job_and_the_next_job_starts_a_new_one(trained):
    proc = trained
    first = proc.pid
    os.kill(first, signal.SIGKILL)  # by its PID
    assert _ended(proc) == -signal.SIGKILL
    d = proc.run("bootstrap", {"interval": "1m"})  # a champion exists: trains another
    assert proc.pid not in (None, first) and d.promoted


def test_a_job_interrupted_by_the_child_dying_is_reported(trained, sqlite_store):
    proc, errors = trained, []
    pid = proc.pid

    def job():
        try:  # a slow job: a 2,000-tree forest
            proc.run("retrain", {"champion": get_champion(sqlite_store)["version_id"],
                                 "trigger": "manual", "reason": "slow",
                                 "policy": RetrainPolicy(challenger_factory=partial(
                                     RandomForestRegressor, n_estimators=2_000, n_jobs=1))})
        except Exception as exc:
            errors.append(exc)

    t = threading.Thread(target=job)
    t.start()
    time.sleep(0.5)
    os.kill(pid, signal.SIGKILL)
    t.join(120)
    assert not t.is_alive()
    assert errors and isinstance(errors[0], RetrainProcessGone), errors
    assert "ended during the job" in str(errors[0])


def test_the_child_exits_when_the_process_that_started_it_is_killed(tmp_path):
    script = textwrap.dedent(f"""
        import sys, threading, time
        sys.path.insert(0, {str(ROOT)!r})
        from pipeline.store.sqlite import SqliteStore
        from pipeline.sources.simulator import MarketSimulator
        from models.live.retrain_schedule import RetrainProcess
        store = SqliteStore({str(tmp_path / "s.sqlite")!r})
        sim = MarketSimulator(symbols=("ACME",), bars=400, seed=1)
        store.upsert_bars(list(sim.bars(threading.Event())))
        proc = RetrainProcess(store)
        proc.run("bootstrap", {{"interval": "1m"}})
        print(proc.pid, flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        child_pid = int(parent.stdout.readline())
        os.kill(child_pid, 0)  # alive while its parent is
    finally:
        parent.kill()  # SIGKILL by PID: no clean-up code runs in the parent
        parent.wait(30)
    deadline = time.time() + 60
    while time.time() < deadline:  # not our child: it is gone once kill(0) fails
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(child_pid, signal.SIGKILL)
        pytest.fail("the retrain process outlived its killed parent")


def test_scheduler_falls_back_to_a_thread_for_a_store_that_cannot_travel(sqlite_store):
    class Local(SqliteStore):  # a store defined here: it cannot be pickled by reference
        def __reduce__(self):
            raise TypeError("not here")

    store = Local(sqlite_store.path)
    s = RetrainScheduler(store, RetrainPolicy(), LiveScoreboard(RetrainPolicy()))
    assert s.process is None
    assert RetrainScheduler(sqlite_store, RetrainPolicy(),
                            LiveScoreboard(RetrainPolicy())).process is not None
    assert RetrainScheduler(sqlite_store, RetrainPolicy(), LiveScoreboard(RetrainPolicy()),
                            isolation="thread").process is None
    # A policy whose challenger is built by a lambda cannot travel either.
    lam = RetrainPolicy(challenger_factory=lambda: RandomForestRegressor())
    assert RetrainScheduler(sqlite_store, lam, LiveScoreboard(lam)).process is None
