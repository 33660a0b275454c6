"""Live scoring latency: bar produced to Kafka → prediction stored, under a steady live feed.

    python benchmarks/bench_scorer_latency.py [--symbols 50,500] [--seconds 60] [--retrain-every 1000]
                                              [--retrain-in process|thread] [--processes]
                                              [--profile [--profile-out FILE]]
                                              [--shadows 0,3] [--raw-beside]

Everything real and in one process, as the dashboard runs it: the embedded broker (TCP on
loopback; the broker itself is its own binary), the simulator producing ``--symbols`` symbols with one 1m bar per second each (after
an instant warm-up history), the indexer into a fresh SQLite file, and the scorer (which trains
its default model on the warm-up, then predicts every live bar and retrains on its schedule in
the background: in a child process of its own by default, ``--retrain-in thread`` for a thread
of this process). After the champion is live, predictions are measured for ``--seconds``.

``--processes`` runs the scorer as an OS process of its own instead (as the Procfile runs the
workers; same scorer and retrain policy), so it shares no interpreter lock with the producer
and the indexer; its stats come from its heartbeats in the store. Latency is measured the same
way in both modes, from the stored predictions.

``--symbols`` takes a comma-separated list: one fresh broker/store/pipeline per count, run one
after the other. ``--shadows`` (comma-separated, default 0) enrols that many model versions in
the live arena (:mod:`models.live.arena`: copies of the default champion, so each costs what the
champion's own prediction costs) once the champion is live, and waits until every one of them
has scored before measuring: one run per (symbol count, shadow count), so the shadows' cost
shows as the latency difference between runs of the same invocation. ``--profile`` runs cProfile in the scorer's thread and prints its top lines
(by own time, then cumulative) over the measured window to stderr; profile runs are slower,
so take figures from runs without it.

Before each pipeline run, the same broker measures the **raw client floor** for the same feed
(``--raw-seconds``, 0 to skip): a thread sends ``--symbols`` simulator bars a second in one burst
with the live producer's settings, and a consumer with the scorer's fetch settings, in the same
process, does only ``json.loads`` + one SQLite insert per poll. Its latency (record timestamp →
insert) is what kafka-python itself costs for that burst on this machine; the pipeline's figures
are also given as a ratio of it (``p99_vs_raw``), which is fairer than absolute milliseconds on
a shared machine. (The raw job itself: ``benchmarks/raw_kafka.py``.)

``--raw-beside`` (with ``--processes``) also runs that raw job as an OS process of its own
beside the scorer during the measured window, on the pipeline's own bars topic in a group of
its own: the same bars at the same moments under the same machine load, its process CPU
measured like the scorer's. A floor measured before the run sees a quieter machine (no
producer, indexer, scorer or retrain child running), and CPU time per unit of work grows with
the load on this 2-core VM, so this is the like-for-like baseline for the targets.

Prints ONE JSON line: ``runs``, one entry per symbol count, each with
- ``raw_floor_ms``: p50/p95/p99/max of the raw client floor above; ``raw_cpu_ms_per_bar``:
  its consuming thread's CPU per bar; ``raw_client_cpu_ms_per_bar``: that thread plus the
  consumer's own I/O thread (kafka-python 3 does its network I/O there);
- ``raw_beside`` (``--raw-beside``): the beside process's ``latency_ms`` for the bars produced
  in the window and its process ``cpu_ms_per_bar``; ``cpu_vs_raw_beside``,
  ``p99_vs_raw_beside``;
- ``scorer_cpu_ms_per_bar`` (``--processes`` only): the scorer process's own CPU over the
  window per prediction (its retrain child not included), and ``cpu_vs_raw`` (against the
  consuming thread alone), ``cpu_vs_raw_client`` (against thread + I/O thread);
- ``latency_ms``: p50/p95/p99/max of ``latency_ms`` stored with each prediction made in the
  window (Kafka record timestamp of the bar → the moment the prediction batch went to the store);
- ``latency_acked_ms``: the scorer's own gauge, to the store's acknowledgement (last 2,000);
- ``predictions_per_s`` over the window, ``bars_per_s_offered`` by the feed;
- ``retrain_events``: retrain decisions recorded during the run (and how many promoted);
- ``shadows`` and ``arena``: the shadow count and, per arena entry, predictions scored.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.adaptation import RetrainPolicy  # noqa: E402
from benchmarks.app_server import proc_cpu_s  # noqa: E402
from benchmarks.raw_kafka import RawBeside, percentiles, raw_child, raw_floor  # noqa: E402
from models.registry import get_champion  # noqa: E402
from pipeline.workers.broker import EmbeddedBroker  # noqa: E402
from pipeline.workers.indexer import Indexer  # noqa: E402
from pipeline.workers.producer import Producer  # noqa: E402
from pipeline.workers.runtime import quiet_kafka_logs  # noqa: E402
from pipeline.workers.scorer import Scorer  # noqa: E402
from pipeline.contracts.schema import BARS_TOPIC  # noqa: E402
from pipeline.sources.simulator import MarketSimulator  # noqa: E402
from pipeline.store.sqlite import SqliteStore  # noqa: E402
from pipeline.workers.worker import WorkerThread  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--symbols", default="50,500", help="symbol counts, e.g. 50,500")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--warmup-bars", type=int, default=400, help="instant history per symbol")
    ap.add_argument("--retrain-every", type=int, default=1000,
                    help="scheduled retrain every N predicted bars (all symbols)")
    ap.add_argument("--raw-seconds", type=float, default=20.0,
                    help="seconds of the raw client floor before each run (0: skip)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the data directory (store, broker log) for inspection")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile the scorer thread; top lines to stderr")
    ap.add_argument("--profile-out", default=None,
                    help="with --profile: also save the profile to this file (pstats)")
    ap.add_argument("--processes", action="store_true",
                    help="run the scorer as an OS process of its own (default: a thread of "
                         "this process, next to the indexer and the producer)")
    ap.add_argument("--retrain-in", choices=["process", "thread"], default="process",
                    help="where the scorer trains (default: a child process of its own)")
    ap.add_argument("--shadows", default="0",
                    help="shadow models scored beside the champion, e.g. 0,3 (one run each)")
    ap.add_argument("--raw-beside", action="store_true",
                    help="with --processes: also run the raw kafka-python job as a process of "
                         "its own on the pipeline's bars, beside the scorer, in the measured "
                         "window (benchmarks/raw_kafka.py)")
    ap.add_argument("--scorer-child", nargs=2, metavar=("DB", "BOOTSTRAP"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--raw-child", nargs=3, metavar=("BOOTSTRAP", "TOPIC", "OUT"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.scorer_child:
        return scorer_child(*args.scorer_child, args.retrain_every, args.retrain_in)
    if args.raw_child:
        return raw_child(*args.raw_child)
    if args.processes and args.profile:
        ap.error("--profile profiles the scorer thread of this process; leave out --processes")
    if args.raw_beside and not args.processes:
        ap.error("--raw-beside compares two processes: add --processes")
    quiet_kafka_logs()
    runs = []
    for n in [int(x) for x in str(args.symbols).split(",") if x.strip()]:
        for k in [int(x) for x in str(args.shadows).split(",") if x.strip()]:
            try:
                runs.append(run_once(args, n, k))
            except TimedOut as exc:  # report it and go on with the next count
                runs.append({"symbols": n, "shadows": k, "failed": str(exc)})
    print(json.dumps({"bench": "scorer_latency", "runs": runs,
                      "scorer": "process" if args.processes else "thread",
                      "cpus": os.cpu_count(),
                      "loadavg_1m": round(os.getloadavg()[0], 2)}))
    return 0


def run_once(args, n_symbols: int, shadows: int = 0) -> dict:

    work = Path(tempfile.mkdtemp(prefix="kappalab-bench-scorer-"))
    store = SqliteStore(work / "kappalab.sqlite")
    broker = EmbeddedBroker(work / "broker.json")
    info = broker.start(reuse=False)
    symbols = [f"S{i:03d}" for i in range(n_symbols)]
    workers: list[WorkerThread] = []
    child = beside = None
    raw = raw_cpu = raw_client_cpu = None
    try:
        if args.raw_seconds > 0:
            print(f"raw client floor, {n_symbols} bars a second, {args.raw_seconds:g} s",
                  file=sys.stderr, flush=True)
            raw, raw_cpu, raw_client_cpu = raw_floor(info.bootstrap, work / "raw.sqlite",
                                                     symbols, args.raw_seconds)
        indexer = WorkerThread(Indexer(store, info.bootstrap, group_id="bench-indexer")).start()
        workers.append(indexer)
        measuring = threading.Event()
        profile = None
        if args.processes:  # the scorer in an OS process of its own, as the Procfile runs it
            child = subprocess.Popen([sys.executable, str(Path(__file__).resolve()),
                                      "--scorer-child", str(work / "kappalab.sqlite"),
                                      info.bootstrap, "--retrain-every",
                                      str(args.retrain_every), "--retrain-in",
                                      args.retrain_in], stdout=sys.stderr)
            scorer_stats = lambda: _child_stats(store, child)  # noqa: E731
        else:
            scorer_w = _bench_scorer(store, info.bootstrap, args.retrain_every,
                                     retrain_in=args.retrain_in)
            if args.profile:
                profile = _profile_run(scorer_w, measuring, args.profile_out)
            workers.append(WorkerThread(scorer_w).start())
            scorer_stats = lambda: scorer_w.stats(history=False)  # noqa: E731
        _wait(lambda: "lag" in scorer_stats()["gauges"], 90, "scorer join")
        if args.raw_beside:
            beside = RawBeside(Path(__file__).resolve(), info.bootstrap, BARS_TOPIC,
                               work / "raw-beside.json")
            _wait(beside.joined, 90, "the raw consumer process to join")
        source = MarketSimulator(symbols=symbols, interval="1m", seed=7, speed=60.0,
                                 fast_bars=args.warmup_bars)
        producer = WorkerThread(Producer(source, info.bootstrap, store=store, live=True)).start()
        workers.append(producer)
        _wait(lambda: get_champion(store) is not None, 300, "the default champion")
        if shadows:
            _enrol_shadows(store, shadows)
            _wait(lambda: sum(bool(r.get("scored")) for r in
                              scorer_stats()["gauges"].get("arena") or []) > shadows,
                  120, f"the {shadows} shadow models to score")
        # Let the backlog (bars that arrived before the champion) drain, then measure.
        # (held for 6 s: the lag gauge is sampled every 2 s, and a process's reaches this one
        # through heartbeats, so one low reading can come in the middle of the backlog)
        _wait(_held(lambda: (scorer_stats()["gauges"].get("lag", 1e9) < n_symbols
                             and scorer_stats()["counters"].get("predictions", 0) > 0), 6.0),
              300, "the scorer to catch up")
        time.sleep(2.0)
        t0 = int(time.time() * 1000)
        print(f"measuring {n_symbols} symbols for {args.seconds:g} s (pid "
              f"{child.pid if child else os.getpid()})", file=sys.stderr, flush=True)
        cpu0 = proc_cpu_s(child.pid) if child else None
        if beside is not None:
            beside.start()
        measuring.set()
        time.sleep(args.seconds)
        measuring.clear()
        t1 = int(time.time() * 1000)
        cpu_s = proc_cpu_s(child.pid) - cpu0 if child else None
        beside_cpu_s = beside.cpu_s() if beside is not None else None
        if child is not None:
            time.sleep(2.5)  # one more heartbeat
        snap = scorer_stats()
        if profile is not None:
            profile()
    finally:
        if beside is not None:
            beside.stop()
        if child is not None:
            _stop_child(child)
        for wt in reversed(workers):
            wt.stop(20)
        broker.stop()

    preds = store.query_predictions()
    window = preds[(preds["produced_ms"] >= t0) & (preds["produced_ms"] < t1)]
    lat = window["latency_ms"].dropna().to_numpy(dtype="float64")
    events = [e for e in store.list_events("retrain", limit=1000)]
    out = {
        "symbols": n_symbols,
        "seconds": round((t1 - t0) / 1000, 1),
        "bars_per_s_offered": n_symbols,
        "predictions": int(len(window)),
        "predictions_per_s": round(len(window) / ((t1 - t0) / 1000), 1),
        "latency_ms": percentiles(lat),
        "raw_floor_ms": raw,
        "p99_vs_raw": (round(percentiles(lat)["p99"] / raw["p99"], 2)
                       if raw and raw["p99"] and len(lat) else None),
        "latency_acked_ms": snap["gauges"].get("latency_ms"),
        # CPU per bar: the raw consumer's thread (poll + json + insert) and, with --processes,
        # the scorer process's own CPU over the window (its retrain child not included)
        "raw_cpu_ms_per_bar": raw_cpu,
        "raw_client_cpu_ms_per_bar": raw_client_cpu,  # + the consumer's own I/O thread
        "scorer_cpu_ms_per_bar": (round(cpu_s * 1000 / len(window), 3)
                                  if cpu_s is not None and len(window) else None),
        "retrain_events": len(events),
        "retrain_triggers": {t: sum(e["trigger"] == t for e in events)
                             for t in sorted({e["trigger"] for e in events})},
        "promoted": sum(bool(e["promoted"]) for e in events),
        "retrain_every_bars": args.retrain_every,
        "retrain_in": args.retrain_in,
        "scorer_counters": {k: v for k, v in snap["counters"].items() if v},
        "shadows": shadows,
        "arena": {r.get("name"): r.get("scored") for r in snap["gauges"].get("arena") or []},
    }
    if beside is not None:
        rb = out["raw_beside"] = beside.window(t0, t1, beside_cpu_s)
        if rb.get("cpu_ms_per_bar") and out["scorer_cpu_ms_per_bar"]:
            out["cpu_vs_raw_beside"] = round(out["scorer_cpu_ms_per_bar"]
                                             / rb["cpu_ms_per_bar"], 2)
        if (rb.get("latency_ms") or {}).get("p99") and len(lat):
            out["p99_vs_raw_beside"] = round(out["latency_ms"]["p99"]
                                             / rb["latency_ms"]["p99"], 2)
    store.close()
    if args.keep:
        out["data_dir"] = str(work)
    else:
        shutil.rmtree(work, ignore_errors=True)
    if raw_cpu and out["scorer_cpu_ms_per_bar"]:
        out["cpu_vs_raw"] = round(out["scorer_cpu_ms_per_bar"] / raw_cpu, 2)
    if raw_client_cpu and out["scorer_cpu_ms_per_bar"]:
        out["cpu_vs_raw_client"] = round(out["scorer_cpu_ms_per_bar"] / raw_client_cpu, 2)
    return out


def _enrol_shadows(store, k: int) -> None:
    """``k`` copies of the champion saved as versions of their own and enrolled in the arena."""
    from models.live import arena
    from models.registry import load_model_version, save_model_version

    champion = load_model_version(store, get_champion(store)["version_id"])
    for i in range(k):
        meta = {key: v for key, v in champion.meta.items()
                if key not in ("version_id", "status", "created_ms", "content_hash")}
        version = save_model_version(store, champion.model, {**meta, "name": f"shadow {i + 1}"})
        arena.enrol(store, version, reason="benchmark")


def _bench_scorer(store, bootstrap: str, retrain_every: int, mode: str = "thread",
                  retrain_in: str = "process") -> Scorer:
    return Scorer(store, bootstrap, group_id="bench-scorer", bootstrap_check_s=1.0,
                  policy=RetrainPolicy(every_bars=retrain_every), mode=mode,
                  retrain_in=retrain_in)


def scorer_child(db: str, bootstrap: str, retrain_every: int, retrain_in: str) -> int:
    """``--processes``: the scorer process (what ``python -m pipeline score`` runs, with the
    benchmark's retrain policy) until SIGTERM; its stats reach the parent as heartbeats."""
    from pipeline.cli.support import run_worker

    quiet_kafka_logs()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    store = SqliteStore(Path(db))
    run_worker(_bench_scorer(store, bootstrap, retrain_every, mode="process",
                             retrain_in=retrain_in), stop)
    store.close()
    return 0


def _child_stats(store, child) -> dict:
    """The scorer process's last heartbeat (every 2 s), or empty stats before the first."""
    if child.poll() is not None:
        raise TimedOut(f"the scorer process exited with code {child.returncode}")
    beats = [b for b in store.list_heartbeats() if b.get("kind") == "scorer"]
    if not beats:
        return {"gauges": {}, "counters": {}}
    return max(beats, key=lambda b: b.get("created_ms", 0))


def _stop_child(child) -> None:
    child.send_signal(signal.SIGTERM)
    try:
        child.wait(60)
    except subprocess.TimeoutExpired:
        child.kill()  # by its own PID
        child.wait(10)


def _profile_run(worker, measuring: threading.Event, out: str | None = None):
    """cProfile the scorer thread while ``measuring`` is set (the measured window only, not
    the start-up and catch-up). Returns the function that prints its top lines to stderr
    once the window is over."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    inner_tick = worker.tick
    on = [False]

    def tick(force: bool = False) -> None:  # called by the scorer's loop once per poll
        if measuring.is_set() != on[0]:
            on[0] = not on[0]
            prof.enable() if on[0] else prof.disable()
        inner_tick(force)

    def report() -> None:
        _wait(lambda: not on[0], 30, "the profiler to stop")
        if out:
            prof.dump_stats(out)
        stats = pstats.Stats(prof, stream=sys.stderr)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(30)

    worker.tick = tick
    return report


def _held(cond, seconds: float):
    """A condition that is true once ``cond`` has stayed true for ``seconds``."""
    since = [None]

    def check() -> bool:
        if not cond():
            since[0] = None
            return False
        since[0] = since[0] or time.time()
        return time.time() - since[0] >= seconds

    return check


class TimedOut(Exception):
    """The run did not finish within its time limit (reported, not raised to the user)."""


def _wait(cond, timeout_s: float, what: str) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise TimedOut(f"timed out after {timeout_s:.0f} s waiting for {what}")


if __name__ == "__main__":
    sys.exit(main())
