"""Source backfill throughput: CSV replay of a generated file, Polygon paginated backfill.

    python benchmarks/bench_sources.py [--csv-lines 1000000] [--polygon-bars 200000]
                                       [--page-size 50000]

The CSV figure is a 1M-line file in the seed template, every row validated through
schema.bar_from_mapping. The Polygon figure runs against the loopback TEST DOUBLE in
tests/market_api_double.py: real HTTP and JSON, no network latency, but the double serves from
the same process (same GIL), so it is a lower bound of the client's own rate, not Polygon's.
Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.sources.csv_replay import CsvReplaySource  # noqa: E402
from pipeline.sources.http_client import HttpPolicy  # noqa: E402
from pipeline.sources.polygon import PolygonSource  # noqa: E402
from tests.market_api_double import MarketApiDouble, make_bars  # noqa: E402

KEY = "bench-polygon-key"


def write_seed_file(path: Path, n: int) -> int:
    """``n`` one-minute bars in the seed template (day-first dates); returns the size."""
    times = [f"{m // 60:02d}:{m % 60:02d}" for m in range(1440)]
    first_day = datetime(2024, 1, 1).toordinal()
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("Date,Time,Open,High,Low,Close,Volume\n")
        for day_start in range(0, n, 1440):
            day = datetime.fromordinal(first_day + day_start // 1440).strftime("%d/%m/%Y")
            fh.write("".join(f"{day},{times[m]},100.{m % 90 + 10},101.5,99.25,100.5,{m + 1}\n"
                             for m in range(min(1440, n - day_start))))
    return path.stat().st_size


def bench_csv(lines: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bars.csv"
        size = write_seed_file(path, lines)
        src = CsvReplaySource(path, "BENCH", "1m")
        t0 = time.perf_counter()
        n = sum(1 for _ in src.bars(threading.Event()))
        elapsed = time.perf_counter() - t0
    return {"csv_lines": lines, "csv_bytes": size, "csv_bars": n, "csv_s": round(elapsed, 2),
            "csv_bars_per_s": round(n / elapsed)}


def bench_polygon(bars: int, page_size: int) -> dict:
    minute = 60_000
    start = (int(time.time() * 1000) - 2 * 86_400_000) // minute * minute - bars * minute
    with MarketApiDouble(polygon_key=KEY) as api:
        api.set_polygon_bars("BENCH", 1, "minute", make_bars(start, bars, minute))
        api.polygon_page_size = page_size
        days = bars // 1440 + 4
        src = PolygonSource("BENCH", "1m", api_key=KEY, base_url=api.base_url, days=days,
                            requests_per_minute=None, policy=HttpPolicy(read_timeout=60))
        t0 = time.perf_counter()
        n = sum(1 for _ in src.bars(threading.Event()))
        elapsed = time.perf_counter() - t0
        pages = src.stats()["pages"]
    return {"polygon_bars": n, "polygon_pages": pages, "polygon_page_size": page_size,
            "polygon_s": round(elapsed, 2), "polygon_bars_per_s": round(n / elapsed)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv-lines", type=int, default=1_000_000)
    ap.add_argument("--polygon-bars", type=int, default=200_000)
    ap.add_argument("--page-size", type=int, default=50_000)
    args = ap.parse_args()
    result = {"benchmark": "sources"}
    result.update(bench_csv(args.csv_lines))
    result.update(bench_polygon(args.polygon_bars, args.page_size))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
