"""The CLI commands of the item streams: the producers ``python -m pipeline news`` and
``fundamentals`` (each with its own sources' options), and one indexer command per stream of
the stream table (``news-index``, ``fundamentals-index``: :func:`add_index_parsers`)."""
from __future__ import annotations

import json
import sys
import time

from pipeline.cli.support import (
    CliError, checked_store_and_broker, resolve_bootstrap, run_worker, wait_for_signal,
)
from pipeline.contracts.config import Config
from pipeline.contracts.streams import STREAMS, stream
from pipeline.store import open_store


def cmd_news(args, config: Config) -> int:
    from pipeline.workers.stream_producer import StreamProducer

    if args.source == "csv":
        from pipeline.sources.headline_csv import HeadlineCsv

        if not args.file:
            raise CliError("--source csv needs --file with the headline CSV.")
        feed = HeadlineCsv(args.file, symbol=args.symbols, time_zone=args.tz)
    else:
        from pipeline.sources.alphavantage_news import AlphaVantageNews

        if not args.symbols:
            raise CliError("--source alphavantage needs --symbols (e.g. --symbols IBM,MSFT).")
        since = None if args.days is None else int((time.time() - args.days * 86_400) * 1000)
        feed = AlphaVantageNews.from_config(config, args.symbols, time_from=since,
                                            limit=args.limit, poll_seconds=args.poll_seconds,
                                            mode="live" if args.live else "backfill")
    info, _ = resolve_bootstrap(config)
    stop = wait_for_signal()
    print(f"producing {feed.describe()} to {info.bootstrap}", file=sys.stderr, flush=True)
    worker = StreamProducer("news", feed.items, info.bootstrap, description=feed.describe(),
                            client_kwargs=config.kafka_client_kwargs(), store=open_store(config),
                            mode="process")
    run_worker(worker, stop)
    print_feed_summary("news source", feed)
    return 0


def cmd_fundamentals(args, config: Config) -> int:
    from pipeline.sources.alphavantage_overview import AlphaVantageOverview
    from pipeline.workers.stream_producer import StreamProducer

    if args.poll_hours <= 0:
        raise CliError("--poll-hours must be a positive number of hours.")
    feed = AlphaVantageOverview.from_config(config, args.symbols,
                                            mode="live" if args.live else "once",
                                            poll_seconds=args.poll_hours * 3600)
    info, _ = resolve_bootstrap(config)
    stop = wait_for_signal()
    print(f"producing {feed.describe()} to {info.bootstrap}", file=sys.stderr, flush=True)
    worker = StreamProducer("fundamentals", feed.items, info.bootstrap,
                            description=feed.describe(), client_kwargs=config.kafka_client_kwargs(),
                            store=open_store(config), mode="process")
    run_worker(worker, stop)
    print_feed_summary("fundamentals source", feed)
    return 0


def add_index_parsers(sub) -> None:
    """``<stream>-index`` for every row of the stream table that names an ``index_command``."""
    for row in STREAMS:
        if row.index_command:
            ix = sub.add_parser(row.index_command,
                                help=f"consume {row.topic} into the store until Ctrl-C")
            ix.add_argument("--until-idle", type=float, default=None, metavar="S",
                            help="exit after S seconds without a new message")
            ix.set_defaults(func=cmd_stream_index, stream=row.name)


def cmd_stream_index(args, config: Config) -> int:
    """Index one stream (``args.stream``) in its own consumer group until Ctrl-C or idle."""
    from pipeline.workers.indexer import Indexer

    row = stream(args.stream)
    store, info, stop = checked_store_and_broker(config)
    print(f"indexing {row.name} from {info.bootstrap} into {store.describe()}", file=sys.stderr,
          flush=True)
    worker = Indexer(store, info.bootstrap, stream=row,
                     client_kwargs=config.kafka_client_kwargs(), mode="process")
    run_worker(worker, stop, until_idle=args.until_idle)
    return 0


def print_feed_summary(name: str, feed) -> None:
    """The source's own figures as the last JSON line (after the worker's summary)."""
    print(json.dumps({"summary": name, **{k: v for k, v in feed.stats().items()
                                          if isinstance(v, (int, float, str))}}))
