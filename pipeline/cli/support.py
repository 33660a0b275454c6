"""What every `python -m pipeline` command shares: the one-sentence error, finding the broker,
building the source from the flags, Ctrl-C handling, and running a worker with progress lines
and a summary."""
from __future__ import annotations
import argparse
import json
import signal
import sys
import threading
import time
from pipeline.workers.broker import BrokerInfo, BrokerUnavailable, EmbeddedBroker
from pipeline.contracts.config import Config
from pipeline.store import open_store


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2 (or ``status``)."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(message)
        self.status = status


def resolve_bootstrap(config: Config, start_if_missing: bool = False) -> tuple[BrokerInfo, EmbeddedBroker | None]:
    """The configured Kafka, or the running embedded broker recorded in the data dir."""
    from pipeline.workers.broker import find_or_start_broker

    try:
        return find_or_start_broker(config, start=start_if_missing)
    except BrokerUnavailable as exc:
        raise CliError(str(exc)) from None


def build_source(args: argparse.Namespace, config: Config, store=None, resume=None, news=None):
    """The bars source the CLI flags describe; ``news`` (a :class:`NewsQueue`): the simulator
    also publishes news items into it (``produce --news-rate``)."""
    from pipeline.sources.catalog import CATALOG, source_from_cli

    symbols = [s.strip() for s in args.symbols.split(",") if s.strip()]
    spec = CATALOG.get(args.source)
    if spec is not None and spec.resumes and resume is None and store is not None:
        from pipeline.workers.runtime import resume_points

        resume = resume_points(store, symbols, args.interval)
    return source_from_cli(args, config, symbols, resume=resume,
                           on_news=news.put if news is not None else None)


def checked_store_and_broker(config: Config):
    """The store (checked), the running broker, and a stop event wired to Ctrl-C/SIGTERM."""
    store = open_store(config)
    store.check()
    info, _ = resolve_bootstrap(config)
    return store, info, wait_for_signal()


def wait_for_signal() -> threading.Event:
    stop = threading.Event()

    def handler(signum, frame):
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def run_worker(worker, stop: threading.Event, until_idle: float | None = None,
               idle_counter: str | None = None) -> None:
    """Run a worker in a thread, print progress every 5 s and a final summary."""
    from pipeline.workers.worker import WorkerThread

    wt = WorkerThread(worker)
    wt.stop_event = stop
    wt.thread = threading.Thread(target=worker.run_guarded, args=(stop,), daemon=True)
    wt.thread.start()
    last_print = time.time()
    last_total, last_change = -1, time.time()
    while wt.alive:
        time.sleep(0.5)
        snap = worker.stats(history=False)
        total = snap["counters"].get(idle_counter or worker.rate_counter, 0)
        if total != last_total:
            last_total, last_change = total, time.time()
        if until_idle is not None and worker.state == "running":
            # Before the first message the group join may still be under way (a killed
            # member holds its partitions until its session times out): wait longer then.
            limit = until_idle if total > 0 else until_idle + 60
            if time.time() - last_change > limit:
                stop.set()
        if time.time() - last_print >= 5:
            last_print = time.time()
            print(progress_line(snap), file=sys.stderr, flush=True)
    wt.thread.join()
    snap = worker.stats(history=False)
    summary = {"summary": worker.kind, "state": snap["state"], **snap["counters"],
               "uptime_s": snap["uptime_s"]}
    if snap["state"] == "failed":  # the error line below says why, once
        print(json.dumps(summary))
        raise CliError(f"{worker.kind} failed: {snap['last_error']}")
    print(json.dumps({**summary, "last_error": snap["last_error"]}))


def progress_line(snap: dict) -> str:
    counters = ", ".join(f"{k} {v:,}" for k, v in snap["counters"].items())
    g = snap["gauges"]
    lag = f", lag {g['lag']:,}" if "lag" in g else ""
    return f"[{snap['kind']}] {counters}; {g.get('rate_per_s', 0):,.0f}/s{lag}"
