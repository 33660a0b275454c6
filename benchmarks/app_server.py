"""Helpers of the app benchmarks (bench_first_candle.py, bench_classroom.py): a real
``streamlit run app.py`` on loopback, the CPU time of its process tree from /proc, headless
Chromium pages, and the store's figures read from its SQLite file.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking"]
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: a candlestick drawn (Plotly draws candlesticks as box traces); an empty chart frame, such as
#: the Live page's while it waits for the first bar, does not count
CHART = ".js-plotly-plot .cartesianlayer .boxlayer .trace"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """One ``streamlit run app.py`` on a data dir; ``t0`` is the moment it was launched."""

    def __init__(self, data_dir: Path, mode: str = "process", app_dir: Path = ROOT):
        self.data_dir = Path(data_dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, KAPPALAB_DATA_DIR=str(data_dir), PYTHONPATH=str(app_dir),
                   KAPPALAB_PIPELINE_MODE=mode)
        for var in ("KAFKA_BOOTSTRAP_SERVERS", "ELASTICSEARCH_URL", "KAPPALAB_AUTOSTART"):
            env.pop(var, None)
        self.log = open(self.data_dir / f"streamlit-{self.port}.log", "w")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(app_dir / "app.py"),
             "--server.port", str(self.port), "--server.address", "127.0.0.1",
             "--server.headless", "true", "--browser.gatherUsageStats", "false"],
            cwd=app_dir, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def since(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    def wait_port(self, timeout_s: float = 60) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self.since()
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the server did not open its port")

    def tree(self) -> set[int]:
        return {self.proc.pid} | descendants(self.proc.pid)

    def cpu_s(self) -> float:
        """CPU seconds (user + system) of the server's process tree so far."""
        return sum(proc_cpu_s(p) for p in self.tree())

    def server_cpu_s(self) -> float:
        return proc_cpu_s(self.proc.pid)

    def stop(self) -> None:
        tree = self.tree()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(alive(p) for p in tree):
            time.sleep(0.2)
        for pid in tree:  # by PID: only what this server started
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        from pipeline.workers.broker import EmbeddedBroker

        info = EmbeddedBroker.read_state(self.data_dir / "broker.json")
        if info and info.pid and alive(info.pid) and info.owner_pid in tree:
            os.kill(info.pid, signal.SIGTERM)
        self.log.close()


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
            pass  # the thread ended between listing and reading: it has no children now
    return found


def descendants(pid: int) -> set[int]:
    out, todo = set(), [pid]
    while todo:
        for c in children(todo.pop()):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def proc_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def store_figures(data_dir: Path) -> tuple[int, int | None]:
    """(bars stored, newest 1m bar ts of the first symbol) from the SQLite file, read-only."""
    path = Path(data_dir) / "kappalab.sqlite"
    if not path.exists():
        return 0, None
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
        try:
            n = con.execute("SELECT COUNT(*) FROM bars").fetchone()[0]
            last = con.execute("SELECT MAX(ts) FROM bars WHERE symbol = (SELECT MIN(symbol) "
                               "FROM bars) AND interval = '1m'").fetchone()[0]
            return int(n), last
        finally:
            con.close()
    except sqlite3.Error:
        return 0, None


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                      args=CHROMIUM_ARGS)


def chart_last_ts(page) -> int | None:
    """The newest candle's time (epoch ms) of the page's candlestick chart, or None."""
    return page.evaluate("""() => {
        const el = Array.from(document.querySelectorAll('.js-plotly-plot')).find(
            p => p.data && p.data.some(t => t.type === 'candlestick'));
        if (!el) return null;
        const c = el.data.find(t => t.type === 'candlestick');
        if (!c || !c.x || !c.x.length) return null;
        const x = c.x[c.x.length - 1];
        const t = Date.parse(typeof x === 'string' && !/[zZ]|[+-]\\d\\d:?\\d\\d$/.test(x)
                             ? x.replace(' ', 'T') + 'Z' : x);
        return isNaN(t) ? null : t;
    }""")


def is_preload(element) -> bool:
    """True for the hidden chart a session's first run sends so the browser loads plotly.js
    early (dashboard/early_start.py): not a chart of the page."""
    from dashboard.early_start import PRELOAD_META

    return (element.WhichOneof("type") == "plotly_chart"
            and PRELOAD_META in element.plotly_chart.spec)


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def session_first_render(port: int, until: str = "plotly_chart", timeout_s: float = 60) -> float:
    """Open one session over Streamlit's websocket (the browser's protocol, no browser) and
    return the seconds from its first run request to the server's ``until`` element (a
    chart) or, with ``until="script_finished"``, to the end of that first run."""
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
    from websockets.sync.client import connect

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ws = connect(f"ws://127.0.0.1:{port}/_stcore/stream", subprotocols=["streamlit"],
                         max_size=None, open_timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
    with ws:
        msg = BackMsg()
        msg.rerun_script.query_string = ""
        msg.rerun_script.page_script_hash = ""
        t0 = time.monotonic()
        ws.send(msg.SerializeToString())
        while time.monotonic() < deadline:
            fwd = ForwardMsg()
            fwd.ParseFromString(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            kind = fwd.WhichOneof("type")
            if until == "script_finished" and kind == "script_finished":
                return time.monotonic() - t0
            if (kind == "delta" and fwd.delta.HasField("new_element")
                    and fwd.delta.new_element.WhichOneof("type") == until
                    and not is_preload(fwd.delta.new_element)):
                return time.monotonic() - t0
    raise TimeoutError(f"no {until} within {timeout_s} s")


class ProtocolViewer:
    """A viewer without a browser: one Streamlit session over the websocket, doing what the
    page's JavaScript does for the server (the first run, then every fragment's auto-reruns at
    the period the server asks for it, with the hashes of the elements it already holds), and
    noting what it receives: the first chart's time, the newest candle of the latest chart.
    Runs in its own thread."""

    def __init__(self, port: int):
        import threading

        self.port = port
        self.first_chart_s: float | None = None
        self.last_candle_ts: int | None = None
        self.reruns = 0
        self.refs = 0  # elements the server sent as a hash reference (already held)
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "ProtocolViewer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        try:
            self._session()
        except Exception as exc:  # noted, reported by the benchmark
            self.error = f"{type(exc).__name__}: {exc}"

    def _session(self) -> None:
        import json

        from streamlit.proto.BackMsg_pb2 import BackMsg
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
        from websockets.sync.client import connect

        held: set[str] = set()
        page_hash = ""
        timers: dict[str, list[float]] = {}  # fragment id -> [period, next rerun], as a browser
        with connect(f"ws://127.0.0.1:{self.port}/_stcore/stream", subprotocols=["streamlit"],
                     max_size=None, open_timeout=30) as ws:
            msg = BackMsg()
            msg.rerun_script.query_string = ""
            t0 = time.monotonic()
            ws.send(msg.SerializeToString())
            while not self._stop.is_set():
                for fragment, timer in timers.items():  # every fragment at its own period
                    if time.monotonic() < timer[1]:
                        continue
                    msg = BackMsg()
                    msg.rerun_script.fragment_id = fragment
                    msg.rerun_script.is_auto_rerun = True
                    msg.rerun_script.page_script_hash = page_hash
                    msg.rerun_script.cached_message_hashes.extend(held)
                    ws.send(msg.SerializeToString())
                    self.reruns += 1
                    timer[1] += timer[0]
                try:
                    raw = ws.recv(timeout=0.05)
                except TimeoutError:
                    continue
                fwd = ForwardMsg()
                fwd.ParseFromString(raw)
                kind = fwd.WhichOneof("type")
                if fwd.metadata.cacheable and fwd.hash:
                    held.add(fwd.hash)
                if kind == "ref_hash":
                    self.refs += 1
                elif kind == "new_session":
                    page_hash = fwd.new_session.page_script_hash
                elif kind == "auto_rerun" and fwd.auto_rerun.fragment_id:
                    if fwd.auto_rerun.fragment_id not in timers:
                        period = fwd.auto_rerun.interval
                        timers[fwd.auto_rerun.fragment_id] = [period, time.monotonic() + period]
                elif (kind == "delta" and fwd.delta.HasField("new_element")
                      and fwd.delta.new_element.WhichOneof("type") == "plotly_chart"
                      and not is_preload(fwd.delta.new_element)):
                    if self.first_chart_s is None:
                        self.first_chart_s = time.monotonic() - t0
                    spec = json.loads(fwd.delta.new_element.plotly_chart.spec)
                    price = next((t for t in spec.get("data", [])
                                  if t.get("type") == "candlestick"), None)
                    if price and price.get("x"):
                        self.last_candle_ts = iso_ms(price["x"][-1])


def iso_ms(value: str) -> int:
    """Epoch ms of a Plotly date string (UTC wall time, with or without an offset)."""
    import pandas as pd

    ts = pd.Timestamp(value)
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    return int(ts.timestamp() * 1000)
