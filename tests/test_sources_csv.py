"""CsvReplaySource: both templates, column order/case, malformed rows, pacing, streaming."""
from __future__ import annotations

import resource
import threading
import time
import tracemalloc
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pipeline.sources.base import SourceError
from pipeline.sources.csv_replay import CsvFormatError, CsvReplaySource
from tests.stop_event import RecordingStop, join_or_fail

pytestmark = pytest.mark.timeout(20)


def utc_ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=timezone.utc).timestamp() * 1000)


def write(tmp_path: Path, text: str, name: str = "bars.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def replay(path: Path, symbol: str | None = "TEST", interval: str = "1m", **kw) -> list:
    return list(CsvReplaySource(path, symbol, interval, **kw).bars(threading.Event()))


SEED = """Date,Time,Open,High,Low,Close,Volume
31/01/2024,09:30,100.0,101.0,99.5,100.5,1200
31/01/2024,09:31:00,100.5,100.9,100.1,100.2,800
01/02/2024,9:32,100.2,100.4,100.0,100.3,0
"""


# ------------------------------------------------------------------ templates


def test_seed_template_day_first_dates_and_both_time_forms(tmp_path):
    bars = replay(write(tmp_path, SEED))
    assert [b.ts for b in bars] == [utc_ms(2024, 1, 31, 9, 30), utc_ms(2024, 1, 31, 9, 31),
                                    utc_ms(2024, 2, 1, 9, 32)]
    assert (bars[0].open, bars[0].high, bars[0].low, bars[0].close, bars[0].volume) == \
        (100.0, 101.0, 99.5, 100.5, 1200.0)
    assert {(b.symbol, b.interval, b.source) for b in bars} == {("TEST", "1m", "csv")}


def test_seed_template_in_a_local_time_zone(tmp_path):
    bars = replay(write(tmp_path, SEED), tz="America/New_York")
    assert bars[0].ts == utc_ms(2024, 1, 31, 14, 30)  # 09:30 EST


def test_generic_template_iso_and_epoch_in_any_order_and_case(tmp_path):
    text = """CLOSE; Volume ;TimeStamp;open;HIGH;Low
100.5;10;2024-01-31T09:30:00Z;100;101;99
100.5;10;2024-01-31 09:31:00+01:00;100;101;99
100.5;10;2024-01-31 09:32;100;101;99
100.5;10;1706693580;100;101;99
100.5;10;1706693640000;100;101;99
100.5;10;2024-01-31;100;101;99
"""
    bars = replay(write(tmp_path, text), interval="1m")
    # Replayed in time order (the last row is the earliest).
    assert [b.ts for b in bars] == sorted([
        utc_ms(2024, 1, 31, 9, 30), utc_ms(2024, 1, 31, 8, 31), utc_ms(2024, 1, 31, 9, 32),
        1706693580_000, 1706693640_000, utc_ms(2024, 1, 31)])
    assert bars[0].close == 100.5 and bars[0].volume == 10


@pytest.mark.parametrize("column", ["timestamp", "datetime", "date", "time", "ts"])
def test_generic_timestamp_column_names(tmp_path, column):
    path = write(tmp_path, f"open,high,low,close,volume,{column}\n1,2,0.5,1.5,3,2024-03-01T00:00:00\n")
    assert replay(path)[0].ts == utc_ms(2024, 3, 1)


def test_symbol_column_overrides_the_argument(tmp_path):
    text = "ticker,timestamp,open,high,low,close,volume\nAAA,1706693580,1,2,0.5,1.5,3\n,1706693640,1,2,0.5,1.5,3\nBBB,1706693700,1,2,0.5,1.5,3\n"
    bars = replay(write(tmp_path, text), symbol="DEFAULT")
    assert [b.symbol for b in bars] == ["AAA", "DEFAULT", "BBB"]
    # No symbol typed: the file name stands in for the empty cell.
    assert [b.symbol for b in replay(write(tmp_path, text, "msft.csv"), symbol=None)] == \
        ["AAA", "MSFT", "BBB"]
    with pytest.raises(CsvFormatError, match="line 3, column 'ticker': is empty and no symbol"):
        replay(write(tmp_path, text, "_.csv"), symbol=None)


def test_bom_blank_lines_and_trailing_empty_fields(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffDate,Time,Open,High,Low,Close,Volume\r\n\r\n"
                     "31/01/2024,09:30,1,2,0.5,1.5,3,\r\n\r\n".encode("utf-8"))
    assert len(replay(path)) == 1


# ------------------------------------------------------------------ malformed rows


@pytest.mark.parametrize("row,line_col,why", [
    ("31/01/2024,09:31,100,101,99,abc,5", "line 3, column 'Close'", "'abc' is not a number"),
    ("31/01/2024,09:31,100,101,99,,5", "line 3, column 'Close'", "is empty"),
    ("31/02/2024,09:31,100,101,99,100,5", "line 3, column 'Date+Time'", "not a valid day-first date"),
    ("31/01/2024,9h31,100,101,99,100,5", "line 3, column 'Date+Time'", "not a time like 09:30"),
    ("31/01/2024,09:31,100,98,99,100,5", "line 3, column 'High'", "high 98.0 is below low 99.0"),
    ("31/01/2024,09:31,100,101,99,102,5", "line 3, column 'Close'", "close 102.0 is outside"),
    ("31/01/2024,09:31,100,101,99,100,-5", "line 3, column 'Volume'", "volume -5.0 is negative"),
    ("31/01/2024,09:31,100,101,99,nan,5", "line 3, column 'Close'", "not finite"),
    ("31/01/2024,09:31,100,101", "line 3, column 'Low'", "the row has 4 fields but the header has 7"),
    ("31/01/1990,09:31,100,101,99,100,5", "line 3, column 'Date+Time'", "outside 2000-2100"),
])
def test_malformed_row_names_line_and_column(tmp_path, row, line_col, why):
    path = write(tmp_path, "Date,Time,Open,High,Low,Close,Volume\n"
                           "31/01/2024,09:30,100,101,99,100,5\n" + row + "\n")
    with pytest.raises(CsvFormatError) as err:
        replay(path)
    message = str(err.value)
    assert message.startswith(f"bars.csv {line_col}: ") and why in message
    assert err.value.line == 3 and "\n" not in message


def test_header_problems_name_line_one(tmp_path):
    with pytest.raises(CsvFormatError, match=r"line 1, column 'close': the header has no close"):
        replay(write(tmp_path, "timestamp,open,high,low,volume\n1706693580,1,2,0.5,1\n"))
    with pytest.raises(CsvFormatError, match=r"line 1, column 'timestamp': the header has no timestamp"):
        replay(write(tmp_path, "when,open,high,low,close,volume\n"))
    with pytest.raises(CsvFormatError, match="file is empty"):
        replay(write(tmp_path, "\n\n"))
    with pytest.raises(CsvFormatError, match="no symbol column.*--symbols"):
        replay(write(tmp_path, SEED, "__.csv"), symbol=None)


def test_bad_multi_line_row_uses_the_physical_line(tmp_path):
    text = 'timestamp,open,high,low,close,volume,note\n1706693580,1,2,0.5,1.5,3,"two\nlines"\n1706693640,1,2,0.5,x,3,ok\n'
    with pytest.raises(CsvFormatError, match="line 4, column 'close'"):
        replay(write(tmp_path, text))


def test_skip_bad_keeps_the_good_lines(tmp_path):
    text = ("timestamp,open,high,low,close,volume\n"
            "2024-01-31T09:30:00Z,1,2,0.5,1.5,3\n"
            "2024-01-31T09:31:00Z,1,2,0.5,oops,3\n"
            "not-a-time,1,2,0.5,1.5,3\n"
            "2024-01-31T09:33:00Z,1,2,0.5,1.5,3\n"
            "2024-01-31T09:34:00Z,3,2,0.5,1.5,3\n")
    src = CsvReplaySource(write(tmp_path, text), "T", "1m", skip_bad=True)
    bars = list(src.bars(threading.Event()))
    assert [b.ts for b in bars] == [utc_ms(2024, 1, 31, 9, 30), utc_ms(2024, 1, 31, 9, 33)]
    stats = src.stats()
    assert stats["bad_lines"] == 3 and stats["bars"] == 2 and stats["lines"] == 5
    assert [s.split(":")[0] for s in stats["bad_samples"]] == [
        "bars.csv line 3, column 'close'", "bars.csv line 4, column 'timestamp'",
        "bars.csv line 6, column 'open'"]


def test_constructor_errors(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        CsvReplaySource(tmp_path / "missing.csv", "T")
    path = write(tmp_path, SEED)
    with pytest.raises(SourceError, match="interval"):
        CsvReplaySource(path, "T", "2m")
    with pytest.raises(SourceError, match="speed"):
        CsvReplaySource(path, "T", speed=0)
    with pytest.raises(SourceError, match="time zone"):
        CsvReplaySource(path, "T", tz="Mars/Olympus")


# ------------------------------------------------------------------ pacing and stop


def minutes_file(tmp_path: Path, n: int, step_s: int = 60) -> Path:
    rows = [f"{1706693400 + i * step_s},1,2,0.5,1.5,3" for i in range(n)]
    return write(tmp_path, "ts,open,high,low,close,volume\n" + "\n".join(rows) + "\n")


def paced_waits(path: Path, **kw) -> list[float]:
    """The pauses a replay asked for (not timed: asked), after checking every bar came."""
    stop = RecordingStop()
    assert len(list(CsvReplaySource(path, "T", **kw).bars(stop))) == 3
    return [w for w in stop.waits if w]


def test_speed_factor_sleeps_the_scaled_gaps(tmp_path):
    path = minutes_file(tmp_path, 3)  # 2 gaps of 60 s
    waits = paced_waits(path, speed=600)  # 60 s / 600 = 0.1 s per gap, less time already spent
    assert waits and max(waits) <= 0.1 and max(waits) > 0.05


def test_max_gap_caps_long_pauses(tmp_path):
    path = minutes_file(tmp_path, 3, step_s=86_400)
    waits = paced_waits(path, speed=1, max_gap=0.05)
    assert waits and max(waits) <= 0.05


def test_stop_is_prompt_during_a_long_gap(tmp_path):
    src = CsvReplaySource(minutes_file(tmp_path, 3, step_s=3600), "T", speed=1)
    stop = RecordingStop()
    got: list = []
    worker = threading.Thread(target=lambda: got.extend(src.bars(stop)))
    worker.start()
    stop.wait_for_wait(1800)  # inside the hour-long gap
    stop.set()
    join_or_fail(worker)
    assert len(got) == 1


def test_describe_and_stats(tmp_path):
    path = write(tmp_path, SEED)
    assert CsvReplaySource(path, "T", "5m", speed=60).describe() == \
        "CSV replay of bars.csv (T 5m, at 60x)"
    src = CsvReplaySource(path, "T", "1m")  # the rows are a minute apart (aligned to 1m)
    assert src.describe() == "CSV replay of bars.csv (T 1m, as fast as possible)"
    list(src.bars(threading.Event()))
    assert src.stats()["template"] == "seed" and src.stats()["bars"] == 3


# ------------------------------------------------------------------ streaming a large file


def write_large_seed_file(path: Path, n: int) -> int:
    """``n`` one-minute bars in the seed template, written in chunks; returns the size."""
    times = [f"{m // 60:02d}:{m % 60:02d}" for m in range(1440)]
    base = datetime(2024, 1, 1).toordinal()
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("Date,Time,Open,High,Low,Close,Volume\n")
        for day_start in range(0, n, 1440):
            day = datetime.fromordinal(base + day_start // 1440).strftime("%d/%m/%Y")
            count = min(1440, n - day_start)
            fh.write("".join(f"{day},{times[m]},100.{m % 90 + 10},101.5,99.25,100.5,{m + 1}\n"
                             for m in range(count)))
    return path.stat().st_size


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_large_file_is_streamed_not_loaded(tmp_path):
    n = 1_000_000
    path = tmp_path / "large.csv"
    size = write_large_seed_file(path, n)
    assert size > 40_000_000

    src = CsvReplaySource(path, "BIG", "1m")
    bars = src.bars(threading.Event())
    # Trace allocations over the start of the replay: loading the file (or even a fraction
    # of it) up front would show here; streaming keeps the peak to a few hundred kB.
    tracemalloc.start()
    try:
        first = next(bars)
        for _ in range(10_000):
            next(bars)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < size / 50, f"peak {peak} bytes while reading a {size}-byte file"

    # The rest, untraced (tracing every allocation would make this minutes, not seconds):
    # the process's peak resident size must not grow by anything like the file's size.
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    count = 10_001
    last = first
    for last in bars:
        count += 1
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    assert count == n and src.stats()["bars"] == n
    assert first.ts == datetime(2024, 1, 1, tzinfo=timezone.utc).timestamp() * 1000
    assert last.ts == first.ts + (n - 1) * 60_000
    assert rss_growth < size / 4, f"peak RSS grew {rss_growth} bytes for a {size}-byte file"


# ------------------------------------------------------------------ files as users save them


def pandas_daily(tmp_path: Path, name: str = "GOOG.csv", newest_first: bool = False,
                 adj: bool = False) -> Path:
    """A real pandas ``df.to_csv()`` of business-day bars: dates in the unnamed first column."""
    import numpy as np
    import pandas as pd

    idx = pd.bdate_range("2024-01-01", periods=30, name=None)
    close = 100 + np.arange(30, dtype=float)
    df = pd.DataFrame({"Open": close - 0.5, "High": close + 1, "Low": close - 1,
                       "Close": close, "Volume": np.arange(30) * 10 + 5}, index=idx)
    if adj:
        df.insert(4, "Adj Close", df["Close"] * 0.98)
    if newest_first:
        df = df.iloc[::-1]
    path = tmp_path / name
    df.to_csv(path)
    return path


def test_pandas_daily_file_symbol_from_name_interval_inferred(tmp_path):
    path = pandas_daily(tmp_path)
    assert path.read_text().splitlines()[0] == ",Open,High,Low,Close,Volume"
    src = CsvReplaySource(path, symbol=None, interval=None)
    insp = src.inspect()
    assert (insp.layout, insp.symbols, insp.symbol_from, insp.interval) == \
        ("pandas", ["GOOG"], "file name", "1d")
    assert insp.rows == insp.bars == 30 and insp.sorted and len(insp.preview) == 10
    bars = list(src.bars(threading.Event()))
    assert len(bars) == 30 and {(b.symbol, b.interval) for b in bars} == {("GOOG", "1d")}
    assert bars[0].ts == utc_ms(2024, 1, 1) and bars[-1].ts == utc_ms(2024, 2, 9)


def test_newest_first_file_is_replayed_in_time_order_with_counts(tmp_path):
    path = pandas_daily(tmp_path, newest_first=True)
    src = CsvReplaySource(path, None, None)
    insp = src.inspect()
    assert insp.out_of_order == 29 and "29 out of time order" in insp.summary()
    bars = list(src.bars(threading.Event()))
    assert [b.ts for b in bars] == sorted(b.ts for b in bars) and len(bars) == 30
    assert src.stats()["out_of_order"] == 29


def test_duplicate_times_keep_the_last_row(tmp_path):
    text = "timestamp,open,high,low,close,volume\n1706693580,1,2,0.5,1.5,3\n" \
           "1706693640,1,2,0.5,1.5,3\n1706693640,1,2,0.5,1.7,4\n"
    src = CsvReplaySource(write(tmp_path, text), "T", None)
    assert src.inspect().duplicates == 1
    bars = list(src.bars(threading.Event()))
    assert [b.close for b in bars] == [1.5, 1.7] and src.stats()["duplicates"] == 1


def test_adj_close_is_recognised_and_close_used(tmp_path):
    insp = CsvReplaySource(pandas_daily(tmp_path, adj=True), None, None).inspect()
    assert any("Adj Close not used" in n for n in insp.notes)
    only_adj = "Date,Open,High,Low,Adj Close,Volume\n2024-01-02,1,2,0.5,1.5,3\n"
    bars = replay(write(tmp_path, only_adj), "T", "1d")
    assert bars[0].close == 1.5


@pytest.mark.parametrize("first", ["", "index", "Unnamed: 0", "Date", "Datetime", "timestamp"])
def test_first_column_names_pandas_writes(tmp_path, first):
    text = f"{first},Open,High,Low,Close,Volume\n2024-01-02,1,2,0.5,1.5,3\n"
    assert replay(write(tmp_path, text), "T", "1d")[0].ts == utc_ms(2024, 1, 2)


def test_yfinance_file_with_price_ticker_and_date_rows(tmp_path):
    text = ("Price,Close,High,Low,Open,Volume\nTicker,GOOG,GOOG,GOOG,GOOG,GOOG\nDate,,,,,\n"
            "2024-01-02,139.5,140.6,137.7,139.6,20071900\n"
            "2024-01-03,140.3,141.9,139.5,139.7,18974300\n")
    src = CsvReplaySource(write(tmp_path, text, "download.csv"), None, None)
    insp = src.inspect()
    assert (insp.symbols, insp.interval, insp.rows) == (["GOOG"], "1d", 2)
    bars = list(src.bars(threading.Event()))
    assert [b.ts for b in bars] == [utc_ms(2024, 1, 2), utc_ms(2024, 1, 3)]
    assert bars[0].close == 139.5 and bars[0].open == 139.6


def test_a_file_without_volume_stores_zero_and_says_so(tmp_path):
    path = write(tmp_path, "Datetime,Open,High,Low,Close\n2024-03-01 00:00,1.08,1.09,1.07,1.085\n")
    src = CsvReplaySource(path, "EURUSD", "1h")
    assert "no volume column: volume stored as 0" in src.inspect().notes
    assert next(iter(src.bars(threading.Event()))).volume == 0.0


def test_hourly_fx_file_is_inferred_as_1h_and_tz_applies(tmp_path):
    rows = "\n".join(f"2024-03-0{1 + h // 24} {h % 24:02d}:00:00,1.08,1.09,1.07,1.085,0"
                     for h in range(48))
    path = write(tmp_path, "Datetime,Open,High,Low,Close,Volume\n" + rows + "\n", "EURUSD_1h.csv")
    src = CsvReplaySource(path, None, None, tz="America/New_York")
    insp = src.inspect()
    assert (insp.symbols, insp.interval) == (["EURUSD"], "1h")
    first = next(iter(src.bars(threading.Event())))
    assert first.ts == utc_ms(2024, 3, 1, 5)  # midnight New York = 05:00 UTC in March


def test_daily_bars_are_midnight_utc_of_the_date_whatever_the_tz(tmp_path):
    # A US file read with --tz America/New_York still stores each day at 00:00 UTC of its date,
    # the convention Alpha Vantage and Polygon bars follow too (pipeline.sources.daily).
    path = pandas_daily(tmp_path)
    bars = list(CsvReplaySource(path, None, "1d", tz="America/New_York").bars(threading.Event()))
    assert bars[0].ts == utc_ms(2024, 1, 1)


def test_unmatched_spacing_says_which_field_to_set(tmp_path):
    rows = "\n".join(f"{1706693580 + i * 7 * 86400},1,2,0.5,1.5,3" for i in range(5))
    src = CsvReplaySource(write(tmp_path, "ts,open,high,low,close,volume\n" + rows), "T", None)
    with pytest.raises(SourceError, match="7 days apart.*--interval, or the Interval field"):
        src.inspect()


@pytest.mark.parametrize("name,symbol", [("GOOG.csv", "GOOG"), ("eurusd_1h.csv", "EURUSD"),
                                         ("IBM-daily-2024.csv", "IBM"), ("BRK.B.csv", "BRK.B"),
                                         ("_.csv", None)])
def test_symbol_from_filename(name, symbol):
    from pipeline.sources.csv_replay import symbol_from_filename

    assert symbol_from_filename(name) == symbol


# ------------------------------------------------------------------ the command line, end to end


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_cli_backfill_of_a_pandas_file_then_models_compare(broker, tmp_path):
    """`python -m pipeline backfill --source csv --file GOOG.csv` with no --interval or
    --symbols stores GOOG 1d bars; `python -m models compare --symbols GOOG` finds them."""
    import json
    import os
    import subprocess
    import sys

    import numpy as np
    import pandas as pd

    from pipeline.store.sqlite import SqliteStore

    idx = pd.bdate_range("2020-01-01", periods=400)
    close = 100 + np.cumsum(np.random.default_rng(1).normal(0, 1, 400))
    pd.DataFrame({"Open": close, "High": close + 1, "Low": close - 1, "Close": close,
                  "Volume": 1000}, index=idx).iloc[::-1].to_csv(tmp_path / "GOOG.csv")
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap,
               KAPPALAB_DATA_DIR=str(tmp_path), PYTHONPATH=os.getcwd())
    env.pop("ELASTICSEARCH_URL", None)
    done = subprocess.run([sys.executable, "-m", "pipeline", "backfill", "--source", "csv",
                           "--file", str(tmp_path / "GOOG.csv"), "--topic", f"csv-{os.getpid()}"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "400 bars of GOOG (file name); interval 1d" in done.stderr
    assert "399 out of time order (sorted before import)" in done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["stored"] == 400
    store = SqliteStore(tmp_path / "kappalab.sqlite")
    assert store.list_intervals("GOOG") == ["1d"] and store.count_bars("GOOG", "1d") == 400
    store.close()
    lab = subprocess.run([sys.executable, "-m", "models", "compare", "--symbols", "GOOG",
                          "--models", "linear", "--quiet", "--no-save"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert lab.returncode == 0, lab.stderr
    assert "GOOG 1d" in lab.stdout


def test_newest_first_file_is_paced_in_time_order(tmp_path):
    # Sorted before pacing: the gaps are positive, so the replay keeps its speed.
    rows = [f"{1706693400 + i * 60},1,2,0.5,1.5,3" for i in range(5)][::-1]
    path = write(tmp_path, "ts,open,high,low,close,volume\n" + "\n".join(rows) + "\n")
    started = time.monotonic()
    bars = replay(path, speed=600)  # 60 s / 600 = 0.1 s per gap
    assert [b.ts for b in bars] == sorted(b.ts for b in bars)
    assert time.monotonic() - started >= 0.35
