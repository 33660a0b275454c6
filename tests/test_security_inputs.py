"""Hostile input, handled as data: server paths stay inside the data/import dir (real files and
symbolic links), no error echoes a file's content, exports neutralise formula cells, and text
from data reaches Markdown and Plotly escaped."""
from __future__ import annotations

import csv
import io
import threading
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from dashboard.charts import candlestick
from dashboard.plain_text import md_plain, plain_figure
from models.lab_runs import table_to_csv
from pipeline.contracts.csv_export import csv_bytes, export_file_name
from pipeline.contracts.schema import Bar
from pipeline.sources.base import SourceError
from pipeline.sources.csv_replay import CsvReplaySource
from pipeline.sources.import_paths import PathNotAllowed, resolve_import_path
from pipeline.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent
SECRET_LINE = "root:x:0:0:hunter2-SECRET:/root:/bin/bash"


# ---- server paths ------------------------------------------------------------------------------------
@pytest.fixture
def folders(tmp_path):
    data, imports, outside = tmp_path / "data", tmp_path / "imports", tmp_path / "outside"
    for d in (data, imports, outside):
        d.mkdir()
    (data / "ok.csv").write_text("timestamp,open,high,low,close,volume\n")
    (imports / "more.csv").write_text("timestamp,open,high,low,close,volume\n")
    (outside / "passwd").write_text(SECRET_LINE + "\n")
    return data, imports, outside


def test_paths_inside_the_data_or_import_dir_are_read(folders):
    data, imports, _ = folders
    assert resolve_import_path(str(data / "ok.csv"), [data, imports]) == (data / "ok.csv").resolve()
    assert resolve_import_path(str(imports / "more.csv"), [data, imports]).name == "more.csv"
    assert resolve_import_path("ok.csv", [data, imports]).name == "ok.csv"  # relative: data dir
    assert resolve_import_path("  ok.csv ", [data, None]).name == "ok.csv"  # no import dir set


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink", "symlinked_dir", "missing"])
def test_paths_outside_are_refused_before_reading(folders, how):
    data, imports, outside = folders
    typed = {"absolute": str(outside / "passwd"),
             "dotdot": str(data / ".." / "outside" / "passwd"),
             "symlink": str(data / "link.csv"),
             "symlinked_dir": "linked/passwd",
             "missing": str(outside / "nothing-here")}[how]
    (data / "link.csv").symlink_to(outside / "passwd")
    (data / "linked").symlink_to(outside, target_is_directory=True)
    with pytest.raises(PathNotAllowed) as err:
        resolve_import_path(typed, [data, imports])
    # the same sentence whether the outside file exists or not, and nothing read from it
    assert "outside the folders the app may read" in str(err.value)
    assert "hunter2" not in str(err.value)


def test_missing_file_inside_is_said(folders):
    data, imports, _ = folders
    with pytest.raises(SourceError, match="There is no file at 'nope.csv'"):
        resolve_import_path("nope.csv", [data, imports])


def test_header_errors_do_not_echo_the_first_line(tmp_path):
    path = tmp_path / "passwd.csv"
    path.write_text(SECRET_LINE + "\nsecond,line\n")
    for delimiter in (None, ":"):
        with pytest.raises(SourceError) as err:
            CsvReplaySource(path, symbol="X", delimiter=delimiter).inspect()
        assert "hunter2" not in str(err.value) and "/bin/bash" not in str(err.value), err.value
        assert "header" in str(err.value)
    path.write_text("ts,open,open,high,low,close\n")
    with pytest.raises(SourceError, match="column 3 like an earlier one"):
        CsvReplaySource(path, symbol="X").inspect()


def test_pipeline_page_refuses_a_server_path_outside(folders, monkeypatch):
    data, imports, outside = folders
    monkeypatch.setenv("KAPPALAB_DATA_DIR", str(data))
    monkeypatch.setenv("KAPPALAB_IMPORT_DIR", str(imports))
    monkeypatch.setenv("KAPPALAB_AUTOSTART", "0")
    for var in ("KAFKA_BOOTSTRAP_SERVERS", "ELASTICSEARCH_URL", "KAPPALAB_NETWORK"):
        monkeypatch.delenv(var, raising=False)
    at = AppTest.from_file(str(ROOT / "pages/pipeline_control.py"), default_timeout=60).run()
    at.radio(key="pc_source").set_value("csv").run()
    at.text_input(key="pc_csv_path").input(str(outside / "passwd")).run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "outside the folders" in errors[0]
    assert "hunter2" not in " ".join(errors)


# ---- exports -----------------------------------------------------------------------------------------
FORMULAS = ["=HYPERLINK(\"https://evil.example\",\"x\")", "+1+1", "-2+3", "@SUM(A1)", "\tcmd",
            "\rcmd"]


def rows(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


def test_export_neutralises_formula_cells_and_keeps_negative_numbers():
    frame = pd.DataFrame({"source": FORMULAS + ["plain"],
                          "predicted_return": [-0.42, -1.5, 0.0, 2.0, -3.0, 1e-9, -7.0]})
    out = rows(csv_bytes(frame))
    assert out[0] == ["source", "predicted_return"]
    assert [r[0] for r in out[1:]] == ["'" + f for f in FORMULAS] + ["plain"]
    assert [float(r[1]) for r in out[1:]] == [-0.42, -1.5, 0.0, 2.0, -3.0, 1e-9, -7.0]
    assert out[1][1] == "-0.42"  # written as a number, no quote


def test_stored_bar_with_a_formula_source_exports_neutralised(tmp_path):
    store = SqliteStore(tmp_path / "kappalab.sqlite")
    store.upsert_bars([Bar("ACME", "1m", 60_000 * i, 10.0, 11.0, 9.0, 10.5, 100.0,
                           FORMULAS[0]) for i in range(3)])
    frame = store.query_bars("ACME", "1m")
    store.close()
    out = rows(csv_bytes(frame))
    col = out[0].index("source")
    assert all(r[col] == "'" + FORMULAS[0] for r in out[1:])


def test_export_file_names_from_data_are_plain():
    assert export_file_name("ACME", "1m", "bars") == "ACME_1m_bars.csv"
    assert export_file_name("../<b>x</b>", "1m", "bars") == "b_x_b_1m_bars.csv"


def test_lab_export_neutralises_labels_and_cells():
    table = pd.DataFrame({"run": ["=cmd|' /C calc'!A0"], "skill": [-0.1]},
                         index=pd.Index(["@model"], name="model"))
    out = rows(table_to_csv(table))
    assert out[1] == ["'@model", "'=cmd|' /C calc'!A0", "-0.1"]


# ---- text from data ----------------------------------------------------------------------------------
MARKUP = "<b>bold</b> <a href=\"https://evil.example\">x</a> [l](https://evil.example) :red[r]"


def test_md_plain_escapes_every_markdown_construct():
    out = md_plain(MARKUP + "\n# heading $x$ `code` **b** a_b :material/home:")
    for raw in ("[l](", "<b>", "**b**", "`code`", "$x$", "\n", ":red[", ":material/home:"):
        assert raw not in out, raw
    assert out.replace("\\", "").replace("\u2060", "") == " ".join(
        (MARKUP + "\n# heading $x$ `code` **b** a_b :material/home:").split())
    assert md_plain("1. item") == "1\\. item" and md_plain("# h") == "\\# h"
    assert md_plain("a@b.example www.e.example").count("\u2060") == 2  # no autolinks
    # what cannot make markup stays as it is: readable in the page source and in tests
    assert md_plain("Set ALPHAVANTAGE_API_KEY; GOOG.csv - python -m pipeline") == (
        "Set ALPHAVANTAGE_API_KEY; GOOG.csv - python -m pipeline")


def test_candlestick_escapes_titles_symbols_and_news_in_hover(tmp_path):
    from dashboard.view_models import news_markers
    from pipeline.contracts.news import NewsItem

    candles = pd.DataFrame({"ts": [0, 60_000], "open": [1.0, 2.0], "high": [2.0, 3.0],
                            "low": [0.5, 1.5], "close": [1.5, 2.5], "volume": [10.0, 20.0]})
    store = SqliteStore(tmp_path / "kappalab.sqlite")
    store.upsert_news([NewsItem("ACME", 1_000 * i, "src", title, "", 0.5, 1.0)
                       for i, title in enumerate([MARKUP, "AT&T <i>up</i>"])])
    news = news_markers(store, "ACME", candles, 60_000)
    store.close()
    fig = candlestick(candles, [], news=news, title="<b>SYM</b> · 1m candles")
    assert fig.layout.title.text == "&lt;b&gt;SYM&lt;/b&gt; · 1m candles"
    hover = [t for t in fig.data if t.name == "news"][0]
    lines = hover.customdata[0][2].split("<br>")  # the app's line breaks, one per title
    assert lines[0].startswith('&lt;b&gt;bold&lt;/b&gt; &lt;a href="https://evil.example"&gt;')
    assert lines[1] == "AT&amp;T &lt;i&gt;up&lt;/i&gt;"
    assert float(hover.customdata[0][1]) == 0.5  # numbers stay numbers for the template
    assert "<br>" in hover.hovertemplate  # the app's own markup stays


def test_plain_figure_escapes_category_labels_and_trace_names():
    import plotly.graph_objects as go

    fig = go.Figure(go.Bar(x=["<b>run</b>", "ok"], y=[1, 2], name="<a href='u'>n</a>"))
    fig.add_annotation(text="<b>note</b>")
    plain_figure(fig)
    assert list(fig.data[0].x) == ["&lt;b&gt;run&lt;/b&gt;", "ok"]
    assert fig.data[0].name.startswith("&lt;a href=")
    assert fig.layout.annotations[0].text == "&lt;b&gt;note&lt;/b&gt;"


def test_simulated_candles_keep_numbers(tmp_path):
    """plain_figure leaves numeric and date arrays alone (no copy of candle data)."""
    from pipeline.sources.simulator import MarketSimulator

    bars = list(MarketSimulator(symbols=("ACME",), bars=50).bars(threading.Event()))
    frame = pd.DataFrame([b.to_dict() for b in bars])
    fig = candlestick(frame, [5], title="ACME")
    assert fig.data[0].close[0] == frame["close"].iloc[0]
