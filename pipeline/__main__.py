"""Command line: the pipeline's workers as separate processes (attach mode).

    python -m pipeline broker                 # embedded broker; others find it via the data dir
    python -m pipeline produce --bars 100000  # simulator backfill (or --speed 60 for live)
    python -m pipeline index                  # consume, validate, store; DLQ for bad messages
    python -m pipeline score                  # live scorer (predictions + adaptation)
    python -m pipeline backfill --bars 100000 # produce and index a finite source, then exit
    python -m pipeline status                 # broker, store, and workers seen by heartbeat
    python -m pipeline flink start|stop|status  # the Flink SQL job (docs/FLINK.md)
    python -m pipeline flink run --bounded    # the job over what the topics hold, then index it
    python -m pipeline news --source alphavantage --symbols IBM   # news to finance-news
    python -m pipeline news-index             # consume finance-news into the store
    python -m pipeline fundamentals --symbols IBM   # OVERVIEW snapshots to finance-fundamentals
    python -m pipeline fundamentals-index     # consume finance-fundamentals into the store
    python -m pipeline serve                  # the dashboard: 127.0.0.1, or KAPPALAB_NETWORK=1

The dashboard pointed at the same configuration (env / .streamlit/secrets.toml / data dir)
shows the data and the heartbeats of these processes.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time

from pipeline.workers.broker import BrokerUnavailable, EmbeddedBroker, pid_alive
from pipeline.cli.status import cmd_status
from pipeline.cli.streams import add_index_parsers, cmd_fundamentals, cmd_news
from pipeline.cli.support import (
    CliError, build_source, checked_store_and_broker, progress_line, resolve_bootstrap,
    run_worker, wait_for_signal,
)
from pipeline.contracts.config import Config, load_config
from pipeline.cli.serve import add_serve_parser
from pipeline.contracts.schema import BARS_TOPIC, DLQ_TOPIC, INTERVALS
from pipeline.contracts.streams import BARS, with_provider
from pipeline.sources.base import SourceError
from pipeline.sources.catalog import source_keys
from pipeline.sources.simulator import DEFAULT_SYMBOLS
from pipeline.store import StoreUnavailable, open_store

log = logging.getLogger("pipeline")


DEFAULT_BACKFILL_TIMEOUT_S = 900.0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from pipeline.sources.redaction import RedactingFilter, RedactingStream

    # Every line the CLI prints or logs has passwords in URLs/bootstrap strings masked.
    if not isinstance(sys.stdout, RedactingStream):
        sys.stdout, sys.stderr = RedactingStream(sys.stdout), RedactingStream(sys.stderr)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    from pipeline.workers.runtime import quiet_kafka_logs

    quiet_kafka_logs()
    try:
        config = load_config()
        return args.func(args, config)
    except (CliError, BrokerUnavailable, StoreUnavailable, SourceError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "status", 2)
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("broker", help="run the embedded Kafka-compatible broker until Ctrl-C")
    b.add_argument("--port", type=int, default=None, help="loopback port (default: a free one)")
    b.set_defaults(func=cmd_broker)

    pr = sub.add_parser("produce", help="publish bars from a source to the topic")
    add_source_args(pr)
    pr.add_argument("--news-rate", type=float, default=0.0,
                    help="simulator: also publish news to finance-news, items per symbol per "
                    "bar (0..1; 0 = no news)")
    pr.add_argument("--news-impact", type=float, default=0.0,
                    help="simulator: how much the news tells about the next returns, in bar "
                    "standard deviations per unit of score x relevance (0 = nothing)")
    pr.set_defaults(func=cmd_produce)

    ix = sub.add_parser("index", help="consume the topic into the store until Ctrl-C")
    ix.add_argument("--group", default=BARS.group, help="consumer group id")
    ix.add_argument("--topic", default=BARS_TOPIC, help="bars topic to consume")
    ix.add_argument("--dlq-topic", default=DLQ_TOPIC, help="dead-letter topic for bad messages")
    ix.add_argument("--until-idle", type=float, default=None, metavar="S",
                    help="exit after S seconds without new messages (for backfills)")
    ix.set_defaults(func=cmd_index)

    sc = sub.add_parser("score", help="run the live scorer until Ctrl-C")
    sc.add_argument("--group", default="kappalab-scorer", help="consumer group id")
    sc.add_argument("--topic", default=BARS_TOPIC, help="bars topic to consume")
    for row in with_provider():  # --news-topic, --fundamentals-topic: the stream table's
        sc.add_argument(f"--{row.name}-topic", default=row.topic, help=row.topic_help)
    sc.add_argument("--until-idle", type=float, default=None, metavar="S",
                    help="exit after S seconds without new messages")
    sc.add_argument("--retrain-in", choices=["process", "thread"], default="process",
                    help="train in a child process of its own (default: training never "
                         "delays scoring) or in a thread of the scorer")
    sc.set_defaults(func=cmd_score)

    bf = sub.add_parser("backfill", help="produce and index a finite source, then exit")
    add_source_args(bf)
    bf.add_argument("--dlq-topic", default=DLQ_TOPIC, help="dead-letter topic for bad messages")
    bf.add_argument("--timeout", type=float, default=DEFAULT_BACKFILL_TIMEOUT_S, metavar="S",
                    help="give up (exit 1) if the backfill is not stored within S seconds "
                         f"(default {DEFAULT_BACKFILL_TIMEOUT_S:.0f})")
    bf.add_argument("--indexer", choices=["auto", "process", "thread"], default="auto",
                    help="run the indexer in a child process (a core of its own) or as a "
                         "thread of this process; auto (default): a process on machines with "
                         "4 or more cores")
    bf.set_defaults(func=cmd_backfill)

    nw = sub.add_parser("news", help="publish news items to finance-news (docs/NEWS.md)")
    nw.add_argument("--source", choices=["alphavantage", "csv"], default="alphavantage",
                    help="alphavantage: NEWS_SENTIMENT; csv: headlines scored with VADER")
    nw.add_argument("--symbols", default=None, help="alphavantage: tickers; csv: the symbol "
                    "for a file without a symbol column")
    nw.add_argument("--file", default=None, help="csv: the headline file")
    nw.add_argument("--tz", default="UTC", help="csv: time zone of times without an offset")
    nw.add_argument("--days", type=float, default=None,
                    help="alphavantage: only items of the last N days")
    nw.add_argument("--limit", type=int, default=50, help="alphavantage: items per request")
    nw.add_argument("--live", action="store_true", help="alphavantage: keep polling")
    nw.add_argument("--poll-seconds", type=float, default=900.0,
                    help="alphavantage --live: seconds between polls")
    nw.set_defaults(func=cmd_news)

    fu = sub.add_parser("fundamentals", help="publish Alpha Vantage OVERVIEW snapshots to "
                        "finance-fundamentals (docs/NEWS.md)")
    fu.add_argument("--symbols", required=True, help="comma-separated symbols (e.g. IBM,MSFT)")
    fu.add_argument("--live", action="store_true", help="fetch again every --poll-hours")
    fu.add_argument("--poll-hours", type=float, default=24.0,
                    help="--live: hours between fetches (default 24)")
    fu.set_defaults(func=cmd_fundamentals)

    add_index_parsers(sub)

    st = sub.add_parser("status", help="show broker, store and running workers")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)
    add_serve_parser(sub)

    from pipeline.flink.cli import add_flink_parser

    add_flink_parser(sub)
    return p


class _IntervalGiven(argparse.Action):
    """Records that --interval was typed, so a CSV's interval is inferred only when it was not."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.interval_given = True


def add_source_args(p: argparse.ArgumentParser) -> None:
    p.set_defaults(interval_given=False)
    p.add_argument("--topic", default=BARS_TOPIC, help="topic to publish to")
    p.add_argument("--source", choices=source_keys(), default="simulator",
                   help="a source of pipeline/sources/catalog.py")
    p.add_argument("--symbols", default=",".join(DEFAULT_SYMBOLS),
                   help="comma-separated symbols (default: the simulator's five)")
    p.add_argument("--interval", default="1m", choices=list(INTERVALS), action=_IntervalGiven,
                   help="bar interval (default 1m; csv: inferred from the rows' spacing)")
    p.add_argument("--tz", default="UTC",
                   help="csv: zone of times without one (UTC; America/New_York for US exchanges)")
    p.add_argument("--bars", type=int, default=None,
                   help="simulator: bars per symbol (omit for an endless live feed)")
    p.add_argument("--speed", type=float, default=None,
                   help="pace: x real time (60 = a 1m bar per second); omit = as fast as possible")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--phi", type=float, default=None, help="simulator: AR(1) signal in returns")
    p.add_argument("--regime-change-at", type=int, default=None,
                   help="simulator: bar index where the regime flips")
    p.add_argument("--file", default=None, help="csv: the file to replay")
    p.add_argument("--skip-bad", action="store_true", help="csv: skip malformed lines")
    p.add_argument("--days", type=int, default=5, help="polygon: backfill the last N days")
    p.add_argument("--live", action="store_true", help="alphavantage/polygon: keep polling")


# ---- commands ------------------------------------------------------------------------------
def cmd_broker(args, config: Config) -> int:
    if config.kafka_bootstrap:
        raise CliError("KAFKA_BOOTSTRAP_SERVERS is set: this configuration uses that Kafka, "
                       "not the embedded broker; unset it to run one.")
    recorded = EmbeddedBroker.read_state(config.broker_state_file)
    if recorded and pid_alive(recorded.pid):
        raise CliError(f"A broker for {config.data_dir} already runs at {recorded.bootstrap} "
                       f"(pid {recorded.pid}); the other commands use it, so stop it first "
                       "(Ctrl-C in its terminal) if you want a new one.")
    stop = wait_for_signal()
    broker = EmbeddedBroker(config.broker_state_file, port=args.port)
    info = broker.start(reuse=False)
    print(f"embedded broker ready at {info.bootstrap} (pid {info.pid}); "
          f"recorded in {config.broker_state_file}; Ctrl-C to stop", flush=True)
    started = time.monotonic()
    try:
        while not stop.wait(1.0):
            if broker.process and broker.process.poll() is not None:
                if time.monotonic() - started < 30:  # a crash loop, not a one-off: give up
                    raise CliError(f"the broker exited with code {broker.process.returncode} "
                                   f"within 30 s of starting; see "
                                   f"{config.broker_state_file.with_suffix('.log')}", status=1)
                started = time.monotonic()
                # Same port, so the workers reconnect by themselves; topics start empty.
                print(f"the broker exited with code {broker.process.returncode}; starting it "
                      f"again on {info.bootstrap} (topics start empty: producers resume from "
                      "the store)", file=sys.stderr, flush=True)
                broker.stop()
                broker = EmbeddedBroker(config.broker_state_file, port=int(info.bootstrap.rsplit(":", 1)[1]))
                info = broker.start(reuse=False)
    finally:
        broker.stop()
        print(json.dumps({"summary": "broker", "bootstrap": info.bootstrap, "stopped": True}))
    return 0


def cmd_produce(args, config: Config) -> int:
    from pipeline.workers.producer import Producer

    news = None
    if args.news_rate or args.news_impact:
        if args.source != "simulator":
            raise CliError("--news-rate/--news-impact work with --source simulator only; for "
                           "real news run `python -m pipeline news`.")
        if not 0 < args.news_rate <= 1:
            raise CliError("--news-rate must be above 0 and at most 1 (items per symbol per "
                           "bar) when --news-impact is given.")
        from pipeline.workers.stream_producer import NewsQueue

        news = NewsQueue()
    store = open_store(config)
    info, _ = resolve_bootstrap(config)
    source = build_source(args, config, store, news=news)
    stop = wait_for_signal()
    print(f"producing {source.describe()} to {info.bootstrap}", file=sys.stderr, flush=True)
    news_worker = None
    if news is not None:
        from pipeline.workers.stream_producer import StreamProducer
        from pipeline.workers.worker import WorkerThread

        news_worker = WorkerThread(StreamProducer(
            "news", news.batches, info.bootstrap, description="simulated news",
            client_kwargs=config.kafka_client_kwargs(), store=store)).start()
    endless_simulator = args.source == "simulator" and args.bars is None
    worker = Producer(source, info.bootstrap, topic=args.topic,
                      client_kwargs=config.kafka_client_kwargs(),
                      store=store, mode="process", live=args.speed is not None or args.live,
                      # an endless feed can resume after the last stored bar
                      resume_source=(lambda points: build_source(args, config, store,
                                                                 resume=points, news=news))
                      if endless_simulator else None)
    try:
        run_worker(worker, stop)
    finally:
        if news_worker is not None:  # publish what the bars' news left in the queue, then end
            news.close()
            news_worker.thread.join(30)
            counters = news_worker.worker.stats(history=False)["counters"]
            print(json.dumps({"summary": "news_producer", **counters,
                              "dropped": news.dropped}))
            if news_worker.alive:
                news_worker.stop()
    return 0


def cmd_index(args, config: Config) -> int:
    from pipeline.workers.indexer import Indexer

    store, info, stop = checked_store_and_broker(config)
    print(f"indexing {info.bootstrap} into {store.describe()}", file=sys.stderr, flush=True)
    worker = Indexer(store, info.bootstrap, topic=args.topic, dlq_topic=args.dlq_topic,
                     group_id=args.group, client_kwargs=config.kafka_client_kwargs(), mode="process")
    run_worker(worker, stop, until_idle=args.until_idle)
    return 0


def cmd_score(args, config: Config) -> int:
    from pipeline.workers.scorer import Scorer

    store, info, stop = checked_store_and_broker(config)
    worker = Scorer(store, info.bootstrap, topic=args.topic, group_id=args.group,
                    client_kwargs=config.kafka_client_kwargs(), mode="process",
                    stream_topics={row.name: getattr(args, f"{row.name}_topic") or None
                                   for row in with_provider()},
                    retrain_in=args.retrain_in)
    print(f"scoring {info.bootstrap} into {store.describe()}", file=sys.stderr, flush=True)
    run_worker(worker, stop, until_idle=args.until_idle, idle_counter="consumed")
    return 0


def cmd_backfill(args, config: Config) -> int:
    """Produce a finite source and index exactly its bars, then exit.

    The indexer reads the partitions directly (no consumer group, so concurrent backfills and
    the live indexer never share work) and stores exactly the records this run's producer got
    acknowledged, from the offsets recorded at the start; the summary counts only those. It
    runs in a child process or a thread (``--indexer``; pipeline/workers/backfill.py says why)."""
    from kafka import TopicPartition

    from pipeline.workers.backfill import start_indexer
    from pipeline.workers.kafka_clients import make_consumer
    from pipeline.workers.producer import Producer

    if args.source == "simulator" and args.bars is None:
        raise CliError("backfill needs a finite source: pass --bars N for the simulator")
    if args.timeout <= 0:
        raise CliError("--timeout must be a positive number of seconds")
    store = open_store(config)
    store.check()
    info, owned = resolve_bootstrap(config, start_if_missing=True)
    stop = wait_for_signal()
    before = store.count_bars()
    t0 = time.time()
    deadline = t0 + args.timeout
    indexer = None
    try:
        from pipeline.workers.broker import ensure_topics

        ensure_topics(info.bootstrap, (args.topic, args.dlq_topic),
                      partitions=config.topic_partitions, **config.kafka_client_kwargs())
        # (end_offsets may trail by a batch: starting earlier is safe, the ledger filters)
        probe = make_consumer(info.bootstrap, None, None, config.kafka_client_kwargs())
        try:
            parts = probe.partitions_for_topic(args.topic) or {0}
            tps = [TopicPartition(args.topic, p) for p in parts]
            starts = {tp.partition: off for tp, off in probe.end_offsets(tps).items()}
        finally:
            probe.close()
        source = build_source(args, config, store)
        indexer = start_indexer(args.indexer, store, info.bootstrap, args.topic, args.dlq_topic,
                                starts, config.kafka_client_kwargs())
        ledger = indexer.ledger
        producer = Producer(source, info.bootstrap, topic=args.topic,
                            client_kwargs=config.kafka_client_kwargs(), store=store,
                            mode="process", live=False, ledger=ledger)
        print(f"backfilling {source.describe()} via {info.bootstrap} into {store.describe()} "
              f"(indexer in a {indexer.mode})", file=sys.stderr, flush=True)
        produce = threading.Thread(target=producer.run_guarded, args=(stop,), daemon=True)
        produce.start()
        last_print = time.time()
        while indexer.alive and not stop.is_set() and time.time() < deadline:
            time.sleep(0.2)
            if producer.state == "failed":
                break
            if time.time() - last_print >= 5:
                last_print = time.time()
                print(progress_line(indexer.stats()), file=sys.stderr, flush=True)
        interrupted, timed_out = stop.is_set(), indexer.alive and time.time() >= deadline
        stop.set()
        produce.join(30)
        indexer.stop()
        final = indexer.stats()
        counters = final["counters"]
        produced = ledger.count()
        elapsed = time.time() - t0
        print(json.dumps({
            "summary": "backfill", "topic": args.topic, "produced": produced,
            "stored": counters["stored"], "rejected": counters["rejected"],
            "bars_in_store_before": before, "bars_in_store_after": store.count_bars(),
            "elapsed_s": round(elapsed, 2),
            "bars_per_s": round(counters["stored"] / elapsed, 1) if elapsed else None,
            "complete": not (interrupted or timed_out) and producer.state == "finished"
            and final["state"] == "finished",
            "indexer": indexer.mode,
        }), flush=True)
        done = counters["stored"] + counters["rejected"]
        if producer.state == "failed":
            raise CliError(f"the producer failed: {producer.last_error}", status=1)
        if interrupted:
            raise CliError(f"interrupted: {counters['stored']:,} bars of this backfill were "
                           "stored before Ctrl-C; run it again to finish (bars are never "
                           "duplicated)", status=130)
        if timed_out:
            raise CliError(f"the backfill did not finish within {args.timeout:.0f} s: "
                           f"{done:,} of the {produced:,} bars produced so far were handled; run it again with a larger "
                           "--timeout (bars already stored stay stored)", status=1)
        if final["state"] == "failed":
            raise CliError(f"the indexer failed: {final['last_error']}", status=1)
    finally:
        if indexer is not None and indexer.alive:
            indexer.stop()
        if owned:
            owned.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
