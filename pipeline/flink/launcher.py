"""Start, stop and watch the Flink job from the app's interpreter (which never imports pyflink).

The job runs as a subprocess of the Flink venv's Python (``job.py``), in a session of its own,
so stopping it ends exactly that process group (by its id). Its files live in
``<data dir>/flink/``: ``settings.json`` (what the job was started with), ``state.json``
(job id and REST port, written by the job), ``job.log`` and ``checkpoints/``.

- **Venv**: ``$KAPPALAB_FLINK_VENV``, else ``<data dir>/flink-venv``; an existing one is reused.
- **Streaming** (:meth:`FlinkJob.start`): sources start from the group's committed offsets
  (``earliest`` the first time); a checkpoint every 10 s is kept on cancel, and the next start
  restores the newest one, so windows and offsets survive a restart.
- **Bounded** (:meth:`FlinkJob.run_bounded`): from the earliest offset to the end offsets
  measured now (:func:`end_offsets`), then the job finishes.
- **Status** (:meth:`FlinkJob.status`): the job's REST API on loopback (state, records in and
  out, watermark) and the lag of its consumer group.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.workers.broker import free_port, pid_alive
from pipeline.flink import (FLINK_DLQ_TOPIC, FLINK_JOB_GROUP, FLINK_SENTIMENT_TOPIC,
                            FLINK_TOPIC)
from pipeline.contracts.news import NEWS_TOPIC
from pipeline.contracts.schema import BARS_TOPIC

HERE = Path(__file__).resolve().parent
JOB_SCRIPT = HERE / "job.py"
REQUIREMENTS = HERE / "requirements-flink.txt"
#: What the Pipeline page and the CLI say when the venv is missing (one sentence).
INSTALL_HINT = ("The Flink job needs its own venv and Java 17: run `python -m pipeline flink "
                "install` (about 1 GB, a few minutes) and `apt-get install "
                "openjdk-17-jre-headless` if `java` is missing.")


def venv_dir(data_dir: Path) -> Path:
    """``$KAPPALAB_FLINK_VENV``, else ``<data dir>/flink-venv``."""
    env = os.environ.get("KAPPALAB_FLINK_VENV")
    return Path(env).expanduser() if env else Path(data_dir) / "flink-venv"


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def missing_parts(venv: Path) -> list[str]:
    """What is missing to run the job: [] when the venv (with the Kafka connector) and Java
    are there."""
    missing = []
    if not venv_python(venv).exists() or not list(venv.glob(
            "lib/python3*/site-packages/pyflink/lib/flink-connector-kafka*.jar")):
        missing.append(f"the Flink venv at {venv}")
    if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
        missing.append("a Java runtime (java)")
    return missing


def install_venv(venv: Path, echo=print) -> float:
    """Create (or reuse) the venv and install requirements-flink.txt; returns seconds taken."""
    t0 = time.monotonic()
    if not venv_python(venv).exists():
        echo(f"creating {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    echo(f"installing {REQUIREMENTS.name} into {venv} (about 1 GB)")
    subprocess.run([str(venv_python(venv)), "-m", "pip", "install", "-q",
                    "--disable-pip-version-check", "-r", str(REQUIREMENTS)], check=True)
    return time.monotonic() - t0


def end_offsets(bootstrap: str, topic: str, client_kwargs: dict | None = None,
                timeout_s: float = 10.0) -> dict[int, int]:
    """The offset after each partition's last record (:func:`pipeline.workers.kafka_clients.
    probe_log_end`: the embedded broker's ``ListOffsets`` answers the start of the last
    batch), fetching again until every non-empty partition has answered with its high
    watermark: a bounded run must not stop a batch short."""
    from kafka import TopicPartition

    from pipeline.workers.kafka_clients import log_end_offsets, make_consumer, probe_log_end

    consumer = make_consumer(bootstrap, None, None, client_kwargs, client_id="kappalab-flink")
    try:
        tps = [TopicPartition(topic, p)
               for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            return {}
        ends = probe_log_end(consumer, tps, wait_ms=500)
        deadline = time.monotonic() + timeout_s
        while (any(ends[tp] > 0 and consumer.highwater(tp) is None for tp in tps)
               and time.monotonic() < deadline):
            consumer.poll(timeout_ms=500)
            ends = log_end_offsets(consumer, tps)
        return {tp.partition: ends[tp] for tp in tps}
    finally:
        consumer.close()


def bounds_option(offsets: dict[int, int]) -> str:
    """The SQL source options that stop a Kafka source at ``offsets`` (a bounded run)."""
    spec = ";".join(f"partition:{p},offset:{o}" for p, o in sorted(offsets.items()))
    if not spec:
        return ""
    return ("'scan.bounded.mode' = 'specific-offsets',\n"
            f"  'scan.bounded.specific-offsets' = '{spec}',")


@dataclass
class FlinkTopics:
    """The topics one job reads and writes (tests give each run its own)."""

    bars: str = BARS_TOPIC
    news: str = NEWS_TOPIC
    out: str = FLINK_TOPIC
    sentiment: str = FLINK_SENTIMENT_TOPIC
    dlq: str = FLINK_DLQ_TOPIC
    group: str = FLINK_JOB_GROUP

    def all(self) -> tuple[str, ...]:
        return (self.bars, self.news, self.out, self.sentiment, self.dlq)


class FlinkJob:
    """The Flink job of one data directory: start, stop, status, bounded run.

    :param data_dir: where ``flink/`` (settings, state, log, checkpoints) lives.
    :param bootstrap: the Kafka bootstrap servers the job reads and writes (None: only
        :meth:`status` and :meth:`stop` work, without the lag).
    :param topics: the topics (defaults: finance-data, finance-news → finance-data.flink...).
    :param lateness_s: the watermark trails the newest bar (and news item) by this: a bar up
        to this much older than the newest updates its window, an older one is dead-lettered
        as late; a news item as late still joins the bars it precedes.
    """

    def __init__(self, data_dir: Path, bootstrap: str | None, topics: FlinkTopics | None = None,
                 venv: Path | None = None, lateness_s: int = 3600,
                 client_kwargs: dict | None = None):
        self.home = Path(data_dir) / "flink"
        self.venv = venv or venv_dir(Path(data_dir))
        self.bootstrap = bootstrap
        self.topics = topics or FlinkTopics()
        self.lateness_s = int(lateness_s)
        self.client_kwargs = client_kwargs or {}
        self.settings_file = self.home / "settings.json"
        self.state_file = self.home / "state.json"
        self.process_file = self.home / "process.json"
        self.log_file = self.home / "job.log"
        self.checkpoints = self.home / "checkpoints"

    # ---- start / stop ---------------------------------------------------------------------
    def start(self, log_id: str | None = None) -> int:
        """Start the streaming job, restoring the newest checkpoint when it was taken on the
        same log (``log_id``, see :func:`log_identity`): an embedded broker keeps topics in
        memory, so after its restart the old offsets point past the new log's end and the
        job starts from the new log instead. Returns the job's pid."""
        if self.pid() is not None:
            raise RuntimeError(f"the Flink job is already running (pid {self.pid()})")
        previous = self._read(self.settings_file).get("log_id")
        settings = self._settings(bounded=False)
        settings["log_id"] = log_id
        restore = latest_checkpoint(self.checkpoints)
        if restore is not None and (log_id is None or previous in (None, log_id)):
            settings["restore_from"] = str(restore)
        elif restore is not None:
            settings["restore_skipped"] = (f"checkpoint {restore.name} was taken on another "
                                           f"log ({previous}); starting from {log_id}")
            shutil.rmtree(self.checkpoints, ignore_errors=True)
        return self._spawn(settings)

    def run_bounded(self, timeout_s: float = 900.0) -> dict[str, Any]:
        """Run the job over what the topics hold now, to the end; returns times and offsets."""
        settings = self._settings(bounded=True)
        t0 = time.monotonic()
        pid = self._spawn(settings)
        proc = self._proc
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.stop()
            raise RuntimeError(f"the bounded Flink run did not finish in {timeout_s:.0f} s; "
                               f"see {self.log_file}") from None
        if rc != 0:
            raise RuntimeError(f"the bounded Flink run failed (exit {rc}); the end of "
                               f"{self.log_file}:\n{self.log_tail()}")
        self.process_file.unlink(missing_ok=True)
        return {"pid": pid, "seconds": round(time.monotonic() - t0, 1),
                "bars_end": settings["bars_end"], "news_end": settings["news_end"]}

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Cancel the job (its checkpoints are kept) and end its process group by pid."""
        pid = self.pid()
        if pid is None:
            return False
        state = self._read(self.state_file)
        if state.get("job_id"):
            try:
                self._rest(f"/jobs/{state['job_id']}?mode=cancel", method="PATCH", timeout=5)
            except OSError:
                pass  # the REST endpoint is gone with the process: terminate it below
        for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.2)
            if not _alive(pid):
                break
        self.process_file.unlink(missing_ok=True)
        return True

    def pid(self) -> int | None:
        """The job's pid (= its process group id) if it is running."""
        pid = self._read(self.process_file).get("pid")
        return int(pid) if pid and _alive(int(pid)) else None

    # ---- status ---------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """State, records in/out, watermark and lag, for the CLI and the Pipeline page."""
        pid = self.pid()
        out: dict[str, Any] = {"state": "stopped", "pid": pid, "venv": str(self.venv),
                               "missing": missing_parts(self.venv)}
        if pid is None:
            return out
        state = self._read(self.state_file)
        if not state.get("job_id") or state.get("pid") != pid:
            out["state"] = "starting"  # the JVM and the planner take ~35 s
            return out
        out["job_id"] = state["job_id"]
        try:
            job = self._rest(f"/jobs/{state['job_id']}", timeout=10)
        except (OSError, ValueError) as exc:
            out["state"] = "unresponsive"
            out["reason"] = (f"the job's REST API did not answer ({type(exc).__name__}); the "
                             f"machine may be busy, or see {self.log_file}")
            return out
        flink_state = job.get("state", "?")
        out["state"] = {"RUNNING": "running", "INITIALIZING": "starting", "CREATED": "starting",
                        "RESTARTING": "stalled", "FAILING": "stalled"}.get(
                            flink_state, flink_state.lower())
        if out["state"] == "stalled":
            out["reason"] = (f"the job is {flink_state.lower()} after a failure (broker "
                             f"unreachable?); the end of {self.log_file} says why")
        vertices = job.get("vertices", [])

        def records(part: str, metric: str = "read-records") -> int:
            return sum(v.get("metrics", {}).get(metric, 0) for v in vertices
                       if part in v.get("name", ""))

        # A source vertex reports what it read as read-records; a sink counts what it was
        # given, updates included (an upsert sink writes the update, not the retraction).
        out["records_in"] = {"bars": records("Source: bars_raw"),
                             "news": records("Source: news_raw")}
        out["records_out"] = {"candles": records("candles["),
                              "sentiment": records("bar_sentiment["),
                              "dead_letters": records("dead_letters[")}
        out["watermark_ms"] = self._watermark(state["job_id"], vertices)
        out["lag"] = self.lag() if self.bootstrap else None
        return out

    def _watermark(self, job_id: str, vertices: list[dict]) -> int | None:
        marks = []
        for v in vertices:
            try:
                for m in self._rest(f"/jobs/{job_id}/vertices/{v['id']}/watermarks"):
                    value = int(float(m.get("value", "nan")))
                    if 0 < value < 4_102_444_800_000:
                        marks.append(value)
            except (OSError, ValueError, TypeError):
                continue
        return min(marks) if marks else None

    def lag(self) -> int | None:
        """Records of the bars topic not yet committed by the job's group (offsets are
        committed on each checkpoint, so this is as fresh as the last checkpoint)."""
        from pipeline.workers.lag import GroupLag

        measure = GroupLag(self.bootstrap, self.topics.group, self.topics.bars,
                           self.client_kwargs)
        try:
            return measure.value()
        finally:
            measure.close_clients()

    def started_with(self) -> dict[str, Any]:
        """The settings of the last start or run (``restore_from``, ``restore_skipped``...)."""
        return self._read(self.settings_file)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # ---- details --------------------------------------------------------------------------
    def _settings(self, bounded: bool) -> dict[str, Any]:
        from pipeline.workers.broker import ensure_topics

        missing = missing_parts(self.venv)
        if not self.bootstrap:
            raise RuntimeError("the Flink job needs a broker: start one first")
        if missing:
            raise RuntimeError(f"missing: {', '.join(missing)}. {INSTALL_HINT}")
        self.home.mkdir(parents=True, exist_ok=True)
        ensure_topics(self.bootstrap, self.topics.all(), **self.client_kwargs)
        t = self.topics
        settings: dict[str, Any] = {
            "bootstrap": self.bootstrap, "bars_topic": t.bars, "news_topic": t.news,
            "out_topic": t.out, "sentiment_topic": t.sentiment, "dlq_topic": t.dlq,
            "group_id": t.group, "lateness_s": self.lateness_s,
            "rest_port": free_port(),
            "state_file": str(self.state_file), "bounded": bounded,
            "startup_mode": "earliest-offset" if bounded else "group-offsets",
            "bars_bounds": "", "news_bounds": "",
            "job_name": f"kappalab-flink{'-bounded' if bounded else ''}",
        }
        if bounded:
            settings["bars_end"] = end_offsets(self.bootstrap, t.bars, self.client_kwargs)
            settings["news_end"] = end_offsets(self.bootstrap, t.news, self.client_kwargs)
            settings["bars_bounds"] = bounds_option(settings["bars_end"])
            settings["news_bounds"] = bounds_option(settings["news_end"])
        else:
            settings["checkpoint_dir"] = str(self.checkpoints)
        return settings

    def _spawn(self, settings: dict[str, Any]) -> int:
        self.state_file.unlink(missing_ok=True)
        self.settings_file.write_text(json.dumps(settings, indent=1), encoding="utf-8")
        log = open(self.log_file, "ab")
        env = dict(os.environ, PYTHONPATH="", PYTHONNOUSERSITE="1")
        self._proc = subprocess.Popen(
            [str(venv_python(self.venv)), str(JOB_SCRIPT), str(self.settings_file)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env, cwd=str(self.home))
        log.close()
        self.process_file.write_text(json.dumps({"pid": self._proc.pid,
                                                 "started": time.time()}), encoding="utf-8")
        return self._proc.pid

    def _rest(self, path: str, method: str = "GET", timeout: float = 3.0) -> Any:
        port = self._read(self.state_file).get("rest_port")
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
        return json.loads(body) if body else {}

    @staticmethod
    def _read(path: Path) -> dict[str, Any]:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}


def log_identity(info) -> str:
    """Which log a checkpoint's offsets refer to: the embedded broker instance (its pid and
    start time; it keeps topics in memory) or the configured Kafka's bootstrap servers."""
    if getattr(info, "embedded", False):
        return f"embedded {info.bootstrap} pid {info.pid} started {info.started_ms}"
    return f"kafka {info.bootstrap}"


def latest_checkpoint(root: Path) -> Path | None:
    """The newest completed checkpoint (a ``chk-N`` directory with ``_metadata``) under
    ``root``, or None."""
    done = [p.parent for p in Path(root).glob("*/chk-*/_metadata")]
    return max(done, key=lambda p: p.stat().st_mtime) if done else None


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # reap our own child if it ended
        if waited == pid:
            return False
    except ChildProcessError:  # not our child (started by another process): ask the OS
        return pid_alive(pid)
    return pid_alive(pid)
