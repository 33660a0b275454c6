"""Write throughput of the store backends: N bars into SQLite and into the Elasticsearch backend.

The Elasticsearch figure is measured against the cluster in ``ELASTICSEARCH_URL`` when it is set
(credentials from the usual ``ELASTICSEARCH_*`` variables, a throwaway index prefix that is
dropped afterwards), otherwise against ``tests/es_double.EsTestServer``: a pure-Python test
double in this same process, so that figure measures the client, the bulk helper and the
double's parsing, NOT Elasticsearch. The output says which.

Prints one JSON line, e.g.::

    python benchmarks/bench_store.py --bars 100000 --batch 5000
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.contracts.config import load_config  # noqa: E402
from pipeline.contracts.schema import Bar  # noqa: E402
from pipeline.store.base import Store  # noqa: E402
from pipeline.store.elasticsearch import ElasticsearchStore  # noqa: E402
from pipeline.store.sqlite import SqliteStore  # noqa: E402

T0 = 1_700_000_040_000


def make_bars(n: int, symbols: int) -> list[Bar]:
    bars = []
    for i in range(n):
        sym, step = f"SYM{i % symbols:03d}", i // symbols
        price = 100.0 + (step % 50) * 0.1
        bars.append(Bar(sym, "1m", T0 + step * 60_000, price, price + 0.5, price - 0.5,
                        price + 0.2, 1000.0 + step, "bench"))
    return bars


def write_all(store: Store, bars: list[Bar], batch: int) -> dict[str, float]:
    started = time.perf_counter()
    accepted = 0
    for i in range(0, len(bars), batch):
        result = store.upsert_bars(bars[i:i + batch])
        if result.rejected:
            raise SystemExit(f"{store.describe()} rejected {len(result.rejected)} bars: "
                             f"{result.rejected[0][1]}")
        accepted += result.accepted
    seconds = time.perf_counter() - started
    stored = store.count_bars()
    if stored != len(bars):
        raise SystemExit(f"{store.describe()} holds {stored} bars after writing {len(bars)}")
    return {"seconds": round(seconds, 3), "bars_per_s": round(accepted / seconds)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bars", type=int, default=100_000, help="bars to write (100000)")
    parser.add_argument("--batch", type=int, default=5000,
                        help="bars per upsert_bars call, like one indexer batch (5000)")
    parser.add_argument("--chunk-size", type=int, default=1000,
                        help="documents per Elasticsearch bulk request (1000)")
    parser.add_argument("--symbols", type=int, default=10, help="distinct symbols (10)")
    args = parser.parse_args(argv)
    if args.bars <= 0 or args.batch <= 0 or args.symbols <= 0 or args.chunk_size <= 0:
        parser.error("--bars, --batch, --chunk-size and --symbols must be positive")
    bars = make_bars(args.bars, args.symbols)

    with tempfile.TemporaryDirectory() as tmp:
        sqlite = SqliteStore(Path(tmp) / "bench.sqlite")
        sqlite_fig = write_all(sqlite, bars, args.batch)
        sqlite.close()

    prefix = f"kappalab-bench-{uuid.uuid4().hex[:8]}"
    double = None
    if os.environ.get("ELASTICSEARCH_URL"):
        es = ElasticsearchStore.from_config(load_config(es_index_prefix=prefix))
        es.chunk_size = args.chunk_size
        es_label = f"real cluster {es.url}"
    else:
        from tests.es_double import EsTestServer

        double = EsTestServer()
        url = double.start()
        es = ElasticsearchStore(url, index_prefix=prefix, chunk_size=args.chunk_size)
        es_label = "EsTestServer test double in this process (not Elasticsearch)"
    try:
        es.check()
        es_fig = write_all(es, bars, args.batch)
    finally:
        es.drop()
        es.close()
        if double is not None:
            double.stop()

    print(json.dumps({
        "benchmark": "store_upsert_bars",
        "bars": args.bars,
        "batch_size": args.batch,
        "es_chunk_size": args.chunk_size,
        "symbols": args.symbols,
        "sqlite_bars_per_s": sqlite_fig["bars_per_s"],
        "sqlite_seconds": sqlite_fig["seconds"],
        "sqlite_label": "embedded SQLite file (WAL)",
        "es_bars_per_s": es_fig["bars_per_s"],
        "es_seconds": es_fig["seconds"],
        "es_label": es_label,
    }))


if __name__ == "__main__":
    main()
