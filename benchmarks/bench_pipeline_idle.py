"""The Kafka side's cost in the demo pipeline's child process: CPU with the demo running and
idle (no new bars), and the live latency it keeps, for this checkout and a baseline in one run.

    python benchmarks/bench_pipeline_idle.py [--baseline-app DIR] [--seconds 15]

For each app (this checkout, and ``--baseline-app``, e.g. an export of the code before a
change), on a fresh data dir: the demo pipeline's child process as the dashboard starts it
(``python -m <its demo_process module> --parent-pid <this process>``: embedded broker, indexer,
news indexer, simulator with news, live scorer). Once the warm-up is stored and the scorer has
written predictions, the child's CPU (its own threads; the broker and the retrain processes
are other processes, reported apart as the tree) is measured over ``--seconds`` with the demo
running (at the earliest 25 s after the spawn); then the simulator is stopped the way the
Pipeline page stops a worker of another process (a stop request in the store) and, once its
heartbeat says stopped and the consumers' idle spell (``IDLE_AFTER_S``) has passed, the same
figures are measured idle. ``running`` also gives the scorer's live latency (bar's record timestamp → its
prediction stored, over the predictions stored in the window) and the bars stored per second.

Prints ONE JSON line with the load; ``ratio`` is this checkout's CPU over the baseline's.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.app_server import ROOT, descendants, loadavg, proc_cpu_s, store_figures  # noqa: E402
from pipeline.store.base import STOP_REQUESTS  # noqa: E402
from pipeline.workers.kafka_clients import IDLE_AFTER_S  # noqa: E402

#: the running window starts this long after the child's spawn at the earliest (start-up work
#: such as the first model's training stays out of it)
SETTLE_S = 25.0


def demo_module(app_dir: Path) -> str:
    """The module path of the app's demo pipeline process (it moved between versions)."""
    found = sorted((app_dir / "pipeline").rglob("demo_process.py"))
    if not found:
        raise SystemExit(f"no demo_process.py under {app_dir / 'pipeline'}")
    return ".".join(found[0].relative_to(app_dir).with_suffix("").parts)


def open_sqlite(data_dir: Path):
    """The child's SQLite store (the store API, so docs are read and written as the app does)."""
    from pipeline.store.sqlite import SqliteStore

    return SqliteStore(data_dir / "kappalab.sqlite")


def heartbeats(store) -> dict[str, dict]:
    """The newest heartbeat of each worker kind."""
    out: dict[str, dict] = {}
    for doc in store.list_heartbeats():
        kind = str(doc.get("kind"))
        if doc.get("created_ms", 0) >= out.get(kind, {}).get("created_ms", 0):
            out[kind] = doc
    return out


def live_latency(store, since_ms: int) -> dict | None:
    """Bar's record timestamp → prediction stored, over the predictions stored since
    ``since_ms`` (the window's, not the start's backlog): p50, p95, max in ms."""
    import numpy as np

    preds = store.query_predictions()
    lat = preds.loc[preds["stored_ms"] >= since_ms, "latency_ms"].dropna().to_numpy(float)
    if not lat.size:
        return None
    return {"p50": round(float(np.percentile(lat, 50)), 1),
            "p95": round(float(np.percentile(lat, 95)), 1),
            "max": round(float(lat.max()), 1), "n": int(lat.size)}


def wait_for(what: str, check, timeout_s: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if check():
            return round(time.monotonic() - t0, 1)
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}")


def window(pid: int, seconds: float, data_dir: Path) -> dict:
    """CPU of the child (its threads) and of its tree over ``seconds``, bars stored meanwhile."""
    tree0 = {p: proc_cpu_s(p) for p in {pid} | descendants(pid)}
    own0, bars0, t0 = proc_cpu_s(pid), store_figures(data_dir)[0], time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    tree1 = {p: proc_cpu_s(p) for p in {pid} | descendants(pid)}
    tree = sum(v - tree0.get(p, 0.0) for p, v in tree1.items())
    return {"child_cpu_pct": round((proc_cpu_s(pid) - own0) / elapsed * 100, 1),
            "tree_cpu_pct": round(tree / elapsed * 100, 1),
            "bars_stored_per_s": round((store_figures(data_dir)[0] - bars0) / elapsed, 1),
            "loadavg_1m": loadavg()}


def measure(app_dir: Path, seconds: float) -> dict:
    data_dir = Path(tempfile.mkdtemp(prefix="kappalab-idle-"))
    env = dict(os.environ, KAPPALAB_DATA_DIR=str(data_dir), PYTHONPATH=str(app_dir))
    for var in ("KAFKA_BOOTSTRAP_SERVERS", "ELASTICSEARCH_URL"):
        env.pop(var, None)
    log = open(data_dir / "pipeline.log", "ab")
    spawned = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", demo_module(app_dir), "--parent-pid",
                             str(os.getpid())], cwd=app_dir, env=env, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    out: dict = {"app": str(app_dir)}
    store = None
    try:
        wait_for("the store", lambda: (data_dir / "kappalab.sqlite").exists(), 60)
        store = open_sqlite(data_dir)
        out["settled_after_s"] = wait_for(
            "the warm-up and the first predictions",
            lambda: store_figures(data_dir)[0] >= 1000 and store.count_predictions()
            and not descendants_named(proc.pid, "retrain"), 240)
        time.sleep(max(3.0, SETTLE_S - (time.monotonic() - spawned)))
        began_ms = int(time.time() * 1000)
        out["running"] = window(proc.pid, seconds, data_dir)
        out["running"]["scorer_latency_ms"] = live_latency(store, began_ms)
        producer = heartbeats(store)["producer"]
        # what the Pipeline page does to stop a worker of another process
        store.put_doc(STOP_REQUESTS, str(producer["worker_id"]),
                      {"requested_ms": int(time.time() * 1000), "by": "bench_pipeline_idle"})
        out["producer_stopped_after_s"] = wait_for(
            "the simulator to stop",
            lambda: heartbeats(store).get("producer", {}).get("state") not in
            ("running", "stalled"), 60)
        time.sleep(IDLE_AFTER_S + 3)  # the consumers' idle waits begin after IDLE_AFTER_S
        out["idle"] = window(proc.pid, seconds, data_dir)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        if store is not None:
            store.close()
    return out


def descendants_named(pid: int, word: str) -> bool:
    """True while a process of ``pid``'s tree has ``word`` in its command line."""
    for child in descendants(pid):
        try:
            if word in Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace"):
                return True
        except OSError:
            pass  # ended meanwhile
    return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline-app", type=Path, default=None,
                    help="the app directory measured first as the baseline")
    ap.add_argument("--seconds", type=float, default=15.0, help="seconds per CPU window")
    args = ap.parse_args()
    load_before = loadavg()
    runs = {}
    if args.baseline_app:
        runs["baseline"] = measure(args.baseline_app.resolve(), args.seconds)
    runs["this"] = measure(ROOT, args.seconds)
    ratio = None
    if "baseline" in runs:
        ratio = {k: round(runs["this"][k]["child_cpu_pct"]
                          / max(runs["baseline"][k]["child_cpu_pct"], 0.1), 2)
                 for k in ("running", "idle")}
    print(json.dumps({"bench": "pipeline_idle", "runs": runs, "child_cpu_ratio": ratio,
                      "seconds": args.seconds, "cpus": os.cpu_count(),
                      "loadavg_1m_before": load_before, "loadavg_1m": loadavg()}))


if __name__ == "__main__":
    main()
