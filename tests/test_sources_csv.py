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
    assert [b.ts for b in bars] == [
        utc_ms(2024, 1, 31, 9, 30), utc_ms(2024, 1, 31, 8, 31), utc_ms(2024, 1, 31, 9, 32),
        1706693580_000, 1706693640_000, utc_ms(2024, 1, 31)]
    assert bars[0].close == 100.5 and bars[0].volume == 10


@pytest.mark.parametrize("column", ["timestamp", "datetime", "date", "time", "ts"])
def test_generic_timestamp_column_names(tmp_path, column):
    path = write(tmp_path, f"open,high,low,close,volume,{column}\n1,2,0.5,1.5,3,2024-03-01T00:00:00\n")
    assert replay(path)[0].ts == utc_ms(2024, 3, 1)


def test_symbol_column_overrides_the_argument(tmp_path):
    text = "ticker,timestamp,open,high,low,close,volume\nAAA,1706693580,1,2,0.5,1.5,3\n,1706693640,1,2,0.5,1.5,3\nBBB,1706693700,1,2,0.5,1.5,3\n"
    bars = replay(write(tmp_path, text), symbol="DEFAULT")
    assert [b.symbol for b in bars] == ["AAA", "DEFAULT", "BBB"]
    with pytest.raises(CsvFormatError, match="line 3, column 'ticker': is empty"):
        replay(write(tmp_path, text), symbol=None)


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
    with pytest.raises(CsvFormatError, match=r"line 1, column 'volume': the header has no volume"):
        replay(write(tmp_path, "timestamp,open,high,low,close\n1706693580,1,2,0.5,1.5\n"))
    with pytest.raises(CsvFormatError, match=r"line 1, column 'timestamp': the header has no timestamp"):
        replay(write(tmp_path, "when,open,high,low,close,volume\n"))
    with pytest.raises(CsvFormatError, match="file is empty"):
        replay(write(tmp_path, "\n\n"))
    with pytest.raises(CsvFormatError, match="no symbol column"):
        replay(write(tmp_path, SEED), symbol=None)


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
    src = CsvReplaySource(path, "T", "5m")
    assert src.describe() == "CSV replay of bars.csv (T 5m, as fast as possible)"
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
