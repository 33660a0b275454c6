"""Headline CSV → VADER-scored news items (the lexicon ships in the vaderSentiment package)."""
from __future__ import annotations

import threading

import pytest

from pipeline.sources.base import SourceError
from pipeline.sources.headline_csv import HeadlineCsv

T0 = 1_735_725_600_000  # 2025-01-01 10:00 UTC


def write(tmp_path, text: str):
    path = tmp_path / "headlines.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_headlines_are_scored_and_timed(tmp_path):
    path = write(tmp_path, "ticker,published,headline,url\n"
                 "acme,2025-01-01T10:00:00Z,ACME beats estimates with great results and shares soar,https://x.test/1\n"
                 "ACME,2025-01-01 05:00:00,ACME faces lawsuit after terrible losses,\n"
                 f"GLOBX,{T0 // 1000},GLOBX opens an office,\n"
                 f"GLOBX,{T0},,\n"
                 "GLOBX,yesterday,Bad time,\n")
    src = HeadlineCsv(path, time_zone="America/New_York")
    items = [i for batch in src.items(threading.Event()) for i in batch]
    assert [i.symbol for i in items] == ["ACME", "ACME", "GLOBX"]
    good, bad, neutral = items
    assert good.ts == T0 and bad.ts == T0  # 05:00 New York (EST) = 10:00 UTC
    assert good.sentiment_score > 0.3 and bad.sentiment_score < -0.3
    assert neutral.sentiment_score == pytest.approx(0.0, abs=0.1) and neutral.ts == T0
    assert good.url == "https://x.test/1" and good.relevance == 1.0 and good.source == "csv"
    stats = src.stats()
    assert stats["rows"] == 5 and stats["items"] == 3 and stats["skipped"] == 2
    assert any("title" in s for s in stats["skipped_samples"])
    assert any("line 6" in s for s in stats["skipped_samples"])


def test_symbol_for_the_whole_file_and_clear_errors(tmp_path):
    path = write(tmp_path, "time,title\n2025-01-01T10:00:00+00:00,Great quarter\n")
    assert HeadlineCsv(path, symbol="wayne").read()[0].symbol == "WAYNE"
    with pytest.raises(SourceError, match="symbol"):
        HeadlineCsv(path).read()
    with pytest.raises(SourceError, match="headline"):
        HeadlineCsv(write(tmp_path, "symbol,time\nA,1\n")).read()
    with pytest.raises(SourceError, match="does not exist"):
        HeadlineCsv(tmp_path / "nope.csv")
    with pytest.raises(SourceError, match="time zone"):
        HeadlineCsv(path, time_zone="Mars/Olympus")
