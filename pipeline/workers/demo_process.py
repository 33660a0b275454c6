"""The dashboard's demo pipeline in one supervised child process, off the UI's interpreter.

    python -m pipeline.workers.demo_process --parent-pid PID

The Streamlit server (``dashboard/runtime.py``, ``KAPPALAB_PIPELINE_MODE=process``, the
default) starts this process through :class:`PipelineProcess`. It runs what the server used to
run as its own threads (embedded broker if none is configured, indexer, the simulator feed with
its news, the live scorer), each a worker thread here; the pages see them through their store
heartbeats (attach mode), as they see any ``python -m pipeline …`` worker.

It dies with the server: ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` on Linux (the kernel signals it
when the thread that started it ends, so :class:`PipelineProcess` starts it from a thread that
lives as long as the server), and a watchdog thread that ends it once ``--parent-pid`` is gone
(any platform, within half a second). SIGTERM and SIGINT stop the workers and the broker it
started. The configuration comes from the same environment and ``secrets.toml`` as the
server's; no secret is passed on the command line.
"""
from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
WATCH_PARENT_S = 0.5
#: a child that exits sooner than this after its start counts as a failed start
QUICK_EXIT_S = 10.0
MAX_QUICK_EXITS = 3
#: the child's exit code when workers of another process already feed the store: not restarted
ATTACHED_EXIT = 3


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGTERM this process when its parent ends (Linux), then check the
    parent is still there (it may have died before the request)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError) as exc:  # no prctl: the watchdog still covers it
            log.debug("prctl(PR_SET_PDEATHSIG) unavailable: %s", exc)
    if os.getppid() != parent_pid:
        raise SystemExit(0)


def watch_parent(parent_pid: int, stop: threading.Event) -> threading.Thread:
    """Set ``stop`` once this process is no longer the child of ``parent_pid``."""

    def watch() -> None:
        while not stop.wait(WATCH_PARENT_S):
            if os.getppid() != parent_pid:
                log.warning("the dashboard (pid %s) is gone: stopping the pipeline", parent_pid)
                stop.set()

    t = threading.Thread(target=watch, name="kappalab-parent-watch", daemon=True)
    t.start()
    return t


def run_demo(stop: threading.Event) -> int:
    """Start the demo pipeline, wait for ``stop``, stop it all. Returns the exit code.

    The embedded broker starts first, in a thread, while this process imports the workers'
    modules (pandas, the store): its group joins can begin the moment they are loaded
    (docs/CLASSROOM.md, "The first minute"). Stands down (:data:`ATTACHED_EXIT`) when
    workers of another process already feed this store, as the dashboard did before it
    started this process (attach mode)."""
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.contracts.config import load_config
    from pipeline.workers.broker import BrokerUnavailable, find_or_start_broker
    from pipeline.workers.kafka_clients import quiet_kafka_logs

    quiet_kafka_logs()
    config = load_config()
    with ThreadPoolExecutor(1, thread_name_prefix="kappalab-broker-start") as pool:
        broker = pool.submit(find_or_start_broker, config)
        try:
            from pipeline.workers.runtime import DEFAULT_DEMO, Runtime

            rt = Runtime(config)
            attached = rt.attached_stats()  # the store's heartbeats (no broker adopted yet)
            rt.ensure_broker(broker.result())
        except BaseException as exc:
            _stop_started(broker)
            if isinstance(exc, BrokerUnavailable):
                print(f"kappalab pipeline: {exc}", file=sys.stderr, flush=True)
                return 2
            raise
    try:
        if attached:
            log.info("workers of another process feed this store: nothing to start")
            return ATTACHED_EXIT
        rt.start_indexer()
        rt.start_simulator(DEFAULT_DEMO)
        try:  # its imports (scikit-learn) while the indexer's group join is under way
            rt.start_scorer()
        except ImportError as exc:  # the models' packages are missing: no live scorer
            log.warning("no live scorer: %s", exc)
        stop.wait()
        return 0
    except BrokerUnavailable as exc:
        print(f"kappalab pipeline: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        rt.shutdown()


def _stop_started(broker) -> None:
    """Stop the embedded broker the start thread launched, if it launched one."""
    try:
        _, started = broker.result()
    except Exception:  # it did not start one
        return
    if started is not None:
        started.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.workers.demo_process",
                                 description="The dashboard's demo pipeline (one process).")
    ap.add_argument("--parent-pid", type=int, required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s "
                        "%(message)s")
    die_with_parent(args.parent_pid)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    watch_parent(args.parent_pid, stop)
    return run_demo(stop)


class PipelineProcess:
    """Starts the demo pipeline child, restarts it if it dies, stops it with the server.

    The child is started (and waited for) by one long-lived thread of this process, so the
    kernel's parent-death signal fires only when this process ends. A child that keeps exiting
    within ``QUICK_EXIT_S`` of its start is given up after ``MAX_QUICK_EXITS`` tries, with the
    reason in :attr:`last_error` (the tail of its log); one that stood down because other
    workers feed the store (:data:`ATTACHED_EXIT`) is not restarted (:attr:`stood_down`).
    :meth:`once` gives one per data dir and server process, so the dashboard can start it at
    the top of its first script run and its runtime adopt it later.
    """

    _started: dict[Path, "PipelineProcess"] = {}
    _started_lock = threading.Lock()

    @classmethod
    def once(cls, data_dir: Path) -> "PipelineProcess":
        """The pipeline process of ``data_dir`` in this server process, started on first call."""
        key = Path(data_dir).resolve()
        with cls._started_lock:
            if key not in cls._started:
                cls._started[key] = cls(data_dir)
            proc = cls._started[key]
        return proc.start()

    def __init__(self, data_dir: Path, app_dir: Path | None = None):
        self.data_dir = Path(data_dir)
        self.app_dir = Path(app_dir) if app_dir else Path(__file__).resolve().parents[2]
        self.log_path = self.data_dir / "pipeline.log"
        self.process: subprocess.Popen | None = None
        self.last_error: str | None = None
        self.stood_down = False  # the child found other workers feeding the store
        self.started = threading.Event()  # the first child was spawned
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "PipelineProcess":
        with self._started_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._supervise, daemon=True,
                                                name="kappalab-pipeline-supervisor")
                self._thread.start()
        self.started.wait(10)
        return self

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _spawn(self) -> subprocess.Popen:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(self.app_dir), env.get("PYTHONPATH")) if p)
        with open(self.log_path, "ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "pipeline.workers.demo_process", "--parent-pid", str(os.getpid())],
                cwd=os.getcwd(), env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT)

    def _supervise(self) -> None:
        quick_exits = 0
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                self.process = self._spawn()
            except OSError as exc:
                self.last_error = f"could not start the pipeline process: {exc}"
                self.started.set()
                return
            self.started.set()
            code = self.process.wait()
            if self._stop.is_set():
                return
            if code == ATTACHED_EXIT:
                self.stood_down = True
                return
            quick_exits = quick_exits + 1 if time.monotonic() - began < QUICK_EXIT_S else 0
            self.last_error = (f"the pipeline process exited with code {code}: "
                               f"{self._log_tail()}")
            log.warning("%s", self.last_error)
            if quick_exits >= MAX_QUICK_EXITS:
                return
            self._stop.wait(1.0)

    def _log_tail(self, lines: int = 1) -> str:
        try:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            return f"see {self.log_path}"
        return " ".join(tail) or f"see {self.log_path}"

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop the child (SIGTERM, then SIGKILL after ``timeout_s``) and its supervision."""
        self._stop.set()
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


if __name__ == "__main__":
    raise SystemExit(main())
