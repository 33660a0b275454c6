"""The Pipeline page under AppTest: a pandas-style CSV uploaded, previewed and imported through
the real embedded broker and indexer into a real SQLite store; start errors stay on screen."""
from __future__ import annotations

import io
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from pipeline.store.sqlite import SqliteStore

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "pipeline_control.py")


def pandas_csv(newest_first: bool = True) -> bytes:
    """What `df.to_csv()` writes for daily bars: ``,Open,High,Low,Close,Volume``."""
    idx = pd.bdate_range("2024-01-01", periods=60)
    close = 100 + np.cumsum(np.sin(np.arange(60)))
    df = pd.DataFrame({"Open": close - 0.3, "High": close + 1, "Low": close - 1,
                       "Close": close, "Volume": np.arange(60) * 100 + 1000}, index=idx)
    if newest_first:
        df = df.iloc[::-1]
    buf = io.StringIO()
    df.to_csv(buf)
    return buf.getvalue().encode()


def test_upload_preview_and_import_stores_the_right_bars(data_dir):
    from dashboard.runtime import get_runtime

    body = pandas_csv()
    assert body.decode().splitlines()[0] == ",Open,High,Low,Close,Volume"
    at = AppTest.from_file(PAGE, default_timeout=90).run()
    assert not at.exception
    at.radio(key="pc_source").set_value("csv").run()
    at.file_uploader(key="pc_csv_upload").set_value(("GOOG.csv", body, "text/csv")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    preview = " ".join(m.value for m in at.markdown)
    assert "60 bars of **GOOG**" in preview and "interval **1d (inferred" in preview
    assert any("59 rows were out of time order" in i.value for i in at.info)
    assert at.text_input(key="pc_csv_symbol_GOOG.csv").value == "GOOG"  # editable

    runtime = get_runtime()
    try:
        at.button(key="pc_csv_import").click().run(timeout=120)
        assert not at.exception and not at.error, [e.value for e in at.error]
        store = SqliteStore(data_dir / "kappalab.sqlite")
        deadline = time.time() + 60
        while time.time() < deadline and store.count_bars("GOOG", "1d") < 60:
            time.sleep(0.5)
        bars = store.query_bars("GOOG", "1d")
        assert len(bars) == 60 and store.list_intervals("GOOG") == ["1d"]
        first = datetime(2024, 1, 1, tzinfo=timezone.utc).timestamp() * 1000
        assert bars["ts"].iloc[0] == first  # midnight UTC of the first date
        assert bars["ts"].is_monotonic_increasing
        store.close()
    finally:
        runtime.shutdown()


@pytest.mark.parametrize("source,variable", [("alphavantage", "ALPHAVANTAGE_API_KEY"),
                                             ("polygon", "POLYGON_API_KEY")])
def test_a_start_error_stays_on_screen_until_dismissed(data_dir, source, variable):
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    at.radio(key="pc_source").set_value(source).run()
    at.text_input(key=f"pc_symbols_{source}").set_value("IBM").run()
    at.button(key="start_producer").click().run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert any("Could not start the producer" in e and variable in e
               for e in errors), errors
    at.run()  # any rerun (a fragment refresh, another widget) keeps it
    at.run()
    assert [e.value for e in at.error] == errors
    dismiss = [b for b in at.button if b.key and b.key.startswith("dismiss_")]
    assert len(dismiss) == 1
    dismiss[0].click().run()
    assert not at.error


def test_a_failed_producer_reads_failed_with_its_full_reason(data_dir, tmp_path):
    """A CSV whose line 3 is broken after the check (the file changed under the import):
    the real producer fails; header and table agree, and the reason is shown in full."""
    from dashboard.runtime import get_runtime
    from pipeline.sources.csv_replay import CsvReplaySource

    path = tmp_path / "ACME.csv"
    path.write_text("timestamp,open,high,low,close,volume\n1706693580,1,2,0.5,1.5,3\n"
                    "1706693640,1,2,0.5,1.5,3\n")
    source = CsvReplaySource(path, None, "1m")
    source.inspect()
    path.write_text("timestamp,open,high,low,close,volume\n1706693580,1,2,0.5,1.5,3\n"
                    "1706693640,1,2,0.5,not-a-price,3\n")
    runtime = get_runtime()
    try:
        wt = runtime.start_source(source, live=False)
        wt.thread.join(60)
        assert wt.worker.state == "failed"
        at = AppTest.from_file(PAGE, default_timeout=60).run()
        assert not at.exception
        assert any(m.value.startswith("**Producer** — :orange[failed]") for m in at.markdown)
        reason = wt.worker.last_error
        assert "line 3, column 'close'" in reason
        assert any(reason in w.value for w in at.warning)  # the full reason, not a cut cell
        table = at.dataframe[0].value
        assert table.set_index("worker").loc["producer", "state"] == "failed"
    finally:
        runtime.shutdown()
