"""``python -m pipeline flink install|start|stop|status|index|run --bounded`` (docs/FLINK.md)."""
from __future__ import annotations

import argparse
import json
import sys
import time

from pipeline.cli.support import CliError, checked_store_and_broker, resolve_bootstrap, run_worker
from pipeline.contracts.config import Config


def add_flink_parser(sub) -> None:
    fl = sub.add_parser("flink", help="the Flink SQL job: install, start, stop, status, index, "
                                      "run --bounded (docs/FLINK.md)")
    fl.add_argument("action", choices=["install", "start", "stop", "status", "index", "run"])
    fl.add_argument("--bounded", action="store_true",
                    help="run: over what the topics hold now, then exit (and index the output)")
    fl.add_argument("--lateness", type=int, default=3600, metavar="S",
                    help="start/run: allowed lateness in seconds (default 3600)")
    fl.add_argument("--until-idle", type=float, default=None, metavar="S",
                    help="index: exit after S seconds without a new message")
    fl.add_argument("--json", action="store_true", help="status: as JSON")
    fl.set_defaults(func=cmd_flink)


def cmd_flink(args: argparse.Namespace, config: Config) -> int:
    from pipeline.flink.launcher import FlinkJob, install_venv, log_identity, venv_dir

    if args.action == "install":
        seconds = install_venv(venv_dir(config.data_dir),
                               echo=lambda m: print(m, file=sys.stderr, flush=True))
        print(json.dumps({"venv": str(venv_dir(config.data_dir)), "seconds": round(seconds)}))
        return 0
    if args.action == "index":
        return _index(args, config)
    if args.action == "run" and not args.bounded:
        raise CliError("`flink run` needs --bounded (use `flink start` for the streaming job).")
    try:
        info = resolve_bootstrap(config)[0]
        bootstrap = info.bootstrap
    except CliError:
        if args.action in ("start", "run"):
            raise
        info = bootstrap = None  # status and stop work without a broker (no lag figure then)
    job = FlinkJob(config.data_dir, bootstrap, lateness_s=args.lateness,
                   client_kwargs=config.kafka_client_kwargs())
    try:
        if args.action == "start":
            pid = job.start(log_identity(info))
            skipped = job.started_with().get("restore_skipped")
            if skipped:
                print(f"not restored: {skipped}", file=sys.stderr)
            print(f"flink job started (pid {pid}, log {job.log_file}); index its candles with "
                  "`python -m pipeline flink index`", file=sys.stderr)
        elif args.action == "stop":
            print("flink job stopped" if job.stop() else "flink job was not running",
                  file=sys.stderr)
        elif args.action == "status":
            status = job.status()
            print(json.dumps(status) if args.json else _status_line(status))
        elif args.action == "run":
            print("running the bounded Flink job (about a minute: JVM, planner, then the "
                  "records)…", file=sys.stderr, flush=True)
            result = job.run_bounded()
            print(json.dumps({"summary": "flink bounded run", **result}), flush=True)
            args.until_idle = 5.0
            return _index(args, config)
    except RuntimeError as exc:
        raise CliError(str(exc)) from None
    return 0


def _index(args: argparse.Namespace, config: Config) -> int:
    from pipeline.flink.stream import FlinkIndexer

    store, info, stop = checked_store_and_broker(config)
    worker = FlinkIndexer(store, info.bootstrap, client_kwargs=config.kafka_client_kwargs(),
                          mode="process")
    print(f"indexing the Flink job's candles into {store.describe()}", file=sys.stderr,
          flush=True)
    run_worker(worker, stop, until_idle=args.until_idle)
    return 0


def _status_line(status: dict) -> str:
    parts = [f"flink job: {status['state']}"]
    if status.get("missing"):
        parts.append("missing " + ", ".join(status["missing"]))
    for key, label in (("records_in", "read"), ("records_out", "written")):
        if status.get(key):
            parts.append(f"{label} " + ", ".join(f"{n} {v:,}" for n, v in status[key].items()))
    if status.get("lag") is not None:
        parts.append(f"lag {status['lag']:,} bars")
    if status.get("watermark_ms"):
        parts.append("watermark " + time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                  time.gmtime(status["watermark_ms"] / 1000)))
    if status.get("reason"):
        parts.append(status["reason"])
    return "; ".join(parts)
