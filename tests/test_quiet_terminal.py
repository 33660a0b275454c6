"""A quiet terminal: the retrain child never runs the parent's main script (under `streamlit
run app.py` that is the whole app, in bare mode: "missing ScriptRunContext" lines), and the
heartbeat producer of every worker process logs no kafka-python idempotence warning."""
from __future__ import annotations

import logging
import sys
import time
import types

from models.live.retrain_schedule import RetrainProcess
from pipeline.workers.worker import KafkaHeartbeats


def test_retrain_child_does_not_run_the_main_script(tmp_path, sqlite_store, monkeypatch):
    marker = tmp_path / "ran"
    script = tmp_path / "app_like.py"
    script.write_text(f"open({str(marker)!r}, 'w').write('the child ran me')\n")
    # What Streamlit does on every run: the page script's module becomes __main__.
    fake_main = types.ModuleType("__main__")
    fake_main.__file__ = str(script)
    fake_main.__spec__ = None
    monkeypatch.setitem(sys.modules, "__main__", fake_main)
    proc = RetrainProcess(sqlite_store)
    try:
        proc.start()
        assert sys.modules["__main__"] is fake_main  # put back after the start
        deadline = time.time() + 5  # the main script would run first thing in the child
        while proc.pid is not None and time.time() < deadline and not marker.exists():
            time.sleep(0.2)
        assert proc.pid is not None, "the retrain child died on start"
        assert not marker.exists()
    finally:
        proc.close()


def test_heartbeat_producer_logs_no_idempotence_warning(broker, caplog):
    caplog.set_level(logging.WARNING, logger="kafka")
    beats = KafkaHeartbeats(broker.bootstrap)
    try:
        beats.send("w-1", {"kind": "test", "state": "running"})
        assert beats._producer is not None
    finally:
        beats.close()
    assert not [r for r in caplog.records if "dempotence" in r.getMessage()]
