"""AlphaVantageSource against the loopback Alpha Vantage TEST DOUBLE (real HTTP, no patching)."""
from __future__ import annotations

import logging
import threading
import time
import traceback

import pytest

from pipeline.contracts.config import Secret
from pipeline.contracts.schema import INTERVALS
from pipeline.sources.alphavantage import AlphaVantageSource, classify_notice
from pipeline.sources.base import SourceError
from pipeline.sources.api_errors import ApiError
from pipeline.sources.http_client import HttpPolicy
from pipeline.sources.request_budget import RequestBudget
from tests.stop_event import RecordingStop, join_or_fail
from tests.market_api_double import (
    Drop, MarketApiDouble, Slow, av_error_message, av_information_burst,
    av_information_daily_limit, av_information_demo, av_information_premium, av_missing_key,
    av_note_rate_limit, eastern_ms, make_bars, server_error,
)

KEY = "AVKEY-zz9-PLURAL-Z-ALPHA-7731"
FAST = HttpPolicy(connect_timeout=1.0, read_timeout=0.3, retries=2, backoff=0.01,
                  backoff_max=0.05, rate_limit_retries=3, rate_limit_backoff=0.01)
START = eastern_ms(2024, 1, 31, 9, 30)  # 14:30 UTC (EST)
FIVE_MIN = 300_000

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def api():
    with MarketApiDouble(av_key=KEY) as double:
        double.set_av_bars("IBM", "5min", make_bars(START, 150, FIVE_MIN))
        yield double


def source(api: MarketApiDouble, symbols="IBM", interval="5m", **kw) -> AlphaVantageSource:
    kw.setdefault("api_key", KEY)
    kw.setdefault("policy", FAST)
    kw.setdefault("requests_per_minute", None)
    kw.setdefault("requests_per_day", None)
    return AlphaVantageSource(symbols, interval, base_url=api.base_url, **kw)


def run(src: AlphaVantageSource) -> list:
    return list(src.bars(threading.Event()))


def assert_one_sentence(message: str) -> None:
    assert "\n" not in message and message.endswith(".") and KEY not in message
    assert len(message) < 300


# ------------------------------------------------------------------ success


def test_intraday_backfill_parses_documented_shape(api):
    bars = run(source(api))
    expected = make_bars(START, 150, FIVE_MIN)[-100:]  # compact = latest 100
    assert [b.ts for b in bars] == [t for t, *_ in expected]  # oldest first, ET -> UTC
    first = bars[0]
    t, o, h, low, c, v = expected[0]
    assert (first.open, first.high, first.low, first.close, first.volume) == \
        pytest.approx((o, h, low, c, int(v)))
    assert {b.symbol for b in bars} == {"IBM"} and {b.interval for b in bars} == {"5m"}
    assert {b.source for b in bars} == {"alphavantage"}
    (req,) = api.requests_for("alphavantage")
    assert req.params["function"] == "TIME_SERIES_INTRADAY"
    assert req.params["interval"] == "5min" and req.params["outputsize"] == "compact"
    assert req.params["apikey"] == KEY


def test_full_outputsize_returns_everything(api):
    assert len(run(source(api, outputsize="full"))) == 150
    assert api.requests_for("alphavantage")[0].params["outputsize"] == "full"


def test_eastern_timestamps_convert_across_daylight_saving(api):
    winter = eastern_ms(2024, 1, 31, 9, 30)
    summer = eastern_ms(2024, 7, 1, 9, 30)
    assert winter % 86_400_000 == (14 * 60 + 30) * 60_000  # EST = UTC-5
    assert summer % 86_400_000 == (13 * 60 + 30) * 60_000  # EDT = UTC-4
    api.set_av_bars("IBM", "60min", make_bars(winter, 1, 3_600_000) + make_bars(summer, 1, 3_600_000))
    assert [b.ts for b in run(source(api, interval="1h"))] == [winter, summer]


@pytest.mark.parametrize("interval,av", [("1m", "1min"), ("15m", "15min"), ("30m", "30min"),
                                         ("1h", "60min")])
def test_interval_mapping(api, interval, av):
    api.set_av_bars("IBM", av, make_bars(START, 3, INTERVALS[interval]))  # aligned bars
    bars = run(source(api, interval=interval))
    assert len(bars) == 3 and bars[0].interval == interval
    assert api.requests_for("alphavantage")[0].params["interval"] == av


def test_daily_bars_start_at_midnight_utc_of_the_trading_date(api):
    # Alpha Vantage labels days in US/Eastern; the store's convention (pipeline.sources.daily)
    # is midnight UTC of that date, the same for every source.
    days = [eastern_ms(2024, 1, d) for d in (29, 30, 31)]
    api.set_av_bars("IBM", "daily", [b for d in days for b in make_bars(d, 1, 86_400_000)])
    bars = run(source(api, interval="1d"))
    utc_days = [1706486400000, 1706572800000, 1706659200000]  # 2024-01-29/30/31T00:00Z
    assert [b.ts for b in bars] == utc_days and bars[0].interval == "1d"
    req = api.requests_for("alphavantage")[0]
    assert req.params["function"] == "TIME_SERIES_DAILY" and "interval" not in req.params


def test_several_symbols_and_secret_key(api):
    api.set_av_bars("MSFT", "5min", make_bars(START, 5, FIVE_MIN, price=300))
    bars = run(source(api, "ibm, msft", api_key=Secret(KEY)))
    assert [b.symbol for b in bars].count("MSFT") == 5 and bars[-1].symbol == "MSFT"


def test_invalid_bar_from_api_is_skipped_and_counted(api):
    good = make_bars(START, 3, FIVE_MIN)
    t, o, h, low, c, v = good[1]
    api.set_av_bars("IBM", "5min", [good[0], (t, o, low - 1, low, c, v), good[2]])  # high < low
    src = source(api)
    assert len(run(src)) == 2
    assert src.stats()["invalid_bars"] == 1 and "below low" in src.stats()["invalid_samples"][0]


# ------------------------------------------------------------------ error shapes


@pytest.mark.parametrize("reply,kind,words", [
    (av_error_message(), "request", "invalid API call"),
    (av_missing_key(), "auth", "ALPHAVANTAGE_API_KEY"),
    (av_information_premium(), "forbidden", "premium"),
    (av_information_demo(), "auth", "demo key"),
    (av_information_daily_limit(KEY), "rate_limit", "daily request limit"),
])
def test_in_body_errors_become_one_clear_sentence(api, reply, kind, words):
    api.script("alphavantage", reply)
    with pytest.raises(ApiError) as err:
        run(source(api))
    assert err.value.kind == kind and words in str(err.value)
    assert_one_sentence(str(err.value))
    assert len(api.requests) == 1  # none of these is retried in backfill


def test_unknown_symbol_names_the_request(api):
    with pytest.raises(SourceError, match=r"NOPE \(TIME_SERIES_INTRADAY 5min\).*symbol exists"):
        run(source(api, "NOPE"))


def test_wrong_key_is_reported_without_the_key(api):
    with pytest.raises(ApiError) as err:
        run(source(api, api_key="wrong-key-123456"))
    assert err.value.kind == "auth" and "wrong-key-123456" not in str(err.value)


def test_non_json_and_http_errors_are_clear(api):
    api.script("alphavantage", server_error(404))
    with pytest.raises(ApiError, match="HTTP 404.*ALPHAVANTAGE_BASE_URL"):
        run(source(api))


def test_notice_classification():
    assert classify_notice("Note", av_note_rate_limit().body["Note"]) == "rate_limit_minute"
    assert classify_notice("Information", av_information_burst().body["Information"]) == \
        "rate_limit_minute"
    assert classify_notice("Information", av_information_daily_limit().body["Information"]) == \
        "rate_limit_day"
    assert classify_notice("Information", av_information_premium().body["Information"]) == "premium"


# ------------------------------------------------------------------ rate limits and budget


def test_rate_limit_notes_are_backed_off_then_succeed(api):
    api.script("alphavantage", av_note_rate_limit(), av_information_burst())
    src = source(api)
    assert len(run(src)) == 100
    assert len(api.requests) == 3 and src.stats()["rate_limited"] == 2


def test_persistent_rate_limit_gives_up_with_a_sentence(api):
    api.always("alphavantage", av_note_rate_limit())
    with pytest.raises(ApiError) as err:
        run(source(api))
    assert err.value.kind == "rate_limit" and "rate-limiting" in str(err.value)
    assert len(api.requests) == FAST.rate_limit_retries + 1


def test_request_budget_spaces_requests(api):
    for sym in ("A", "B", "C"):
        api.set_av_bars(sym, "5min", make_bars(START, 2, FIVE_MIN))
    budget = RequestBudget(windows=[(2, 0.5)])
    src = source(api, "A,B,C", budget=budget)
    assert len(run(src)) == 6
    stamps = [r.at for r in api.requests]
    assert stamps[2] - stamps[0] >= 0.45
    assert src.stats()["budget_waits"] == 1


def test_budget_exhausted_in_backfill_is_a_sentence(api):
    api.set_av_bars("B", "5min", make_bars(START, 2, FIVE_MIN))
    src = source(api, "IBM,B", budget=RequestBudget(windows=[(1, 3600)]), max_budget_wait=0.1)
    with pytest.raises(ApiError, match=r"request budget \(1/hour\) is used up") as err:
        run(src)
    assert err.value.kind == "budget" and len(api.requests) == 1


def test_default_budget_is_the_free_tier(api):
    src = AlphaVantageSource("IBM", "5m", api_key=KEY, base_url=api.base_url)
    assert src.client.budget.describe() == "5/minute, 25/day"


# ------------------------------------------------------------------ transient failures


def test_slow_response_times_out_and_is_retried(api):
    api.script("alphavantage", Slow(2.0))
    src = source(api)
    assert len(run(src)) == 100
    assert len(api.requests) == 2 and src.stats()["transient_errors"] == 1


def test_always_slow_gives_a_timeout_sentence(api):
    api.always("alphavantage", Slow(2.0))
    with pytest.raises(ApiError, match="failed 3 times \\(last: timed out after 0.3 s\\)") as err:
        run(source(api))
    assert err.value.kind == "transient"


@pytest.mark.parametrize("drop", [Drop(mid_body=True), Drop(mid_body=False)])
def test_dropped_connection_is_retried(api, drop):
    api.script("alphavantage", drop)
    src = source(api)
    assert len(run(src)) == 100
    assert len(api.requests) == 2 and src.stats()["last_http_problem"] == "connection dropped"


def test_server_errors_are_retried(api):
    api.script("alphavantage", server_error(503), server_error(502))
    assert len(run(source(api))) == 100 and len(api.requests) == 3


# ------------------------------------------------------------------ live mode


def test_live_polls_publish_each_bar_once(api):
    api.set_av_bars("IBM", "5min", make_bars(START, 10, FIVE_MIN))
    stop = threading.Event()
    src = source(api, mode="live", poll_seconds=0.05)
    gen = src.bars(stop)
    first = [next(gen) for _ in range(10)]
    api.set_av_bars("IBM", "5min", make_bars(START, 15, FIVE_MIN))  # overlaps the first 10
    second = [next(gen) for _ in range(5)]
    stop.set()
    assert list(gen) == []
    ts = [b.ts for b in first + second]
    assert ts == [t for t, *_ in make_bars(START, 15, FIVE_MIN)]  # each bar once, in order
    assert len(api.requests) >= 2 and src.stats()["duplicates_skipped"] >= 10


def test_live_keeps_going_through_transient_errors_and_rate_limits(api):
    api.set_av_bars("IBM", "5min", make_bars(START, 3, FIVE_MIN))
    # first poll: every attempt fails; second poll: rate limit exhausted; third: fine
    failures = [server_error(503)] * (FAST.retries + 1) + \
        [av_note_rate_limit()] * (FAST.rate_limit_retries + 1)
    api.script("alphavantage", *failures)
    stop = threading.Event()
    src = source(api, mode="live", poll_seconds=0.02)
    gen = src.bars(stop)
    got = [next(gen) for _ in range(3)]
    stop.set()
    assert len(got) == 3 and src.stats()["live_errors"] == 2
    assert "rate-limiting" in src.stats()["last_error"]


def test_live_daily_limit_backs_off_instead_of_dying(api):
    api.set_av_bars("IBM", "5min", make_bars(START, 2, FIVE_MIN))
    api.script("alphavantage", av_information_daily_limit())
    stop = threading.Event()
    src = source(api, mode="live", poll_seconds=0.02)
    gen = src.bars(stop)
    assert len([next(gen), next(gen)]) == 2
    stop.set()
    assert src.stats()["live_errors"] == 1


def test_live_raises_errors_the_user_must_fix(api):
    src = source(api, "NOPE", mode="live", poll_seconds=0.02)
    with pytest.raises(ApiError, match="invalid API call"):
        run(src)


def test_stop_is_prompt_between_polls(api):
    stop = RecordingStop()
    src = source(api, mode="live", poll_seconds=60)
    got: list = []
    worker = threading.Thread(target=lambda: got.extend(src.bars(stop)))
    worker.start()
    assert stop.wait_for_wait(30) <= 60  # inside the pause before the next poll
    stop.set()
    join_or_fail(worker)
    assert len(got) == 100


def test_stop_is_prompt_during_rate_limit_backoff(api):
    api.always("alphavantage", av_note_rate_limit())
    stop = RecordingStop()
    slow_backoff = HttpPolicy(read_timeout=1, backoff=30, backoff_max=60, rate_limit_backoff=30)
    src = source(api, policy=slow_backoff)
    result: list = []
    worker = threading.Thread(target=lambda: result.append(run_until(src, stop)))
    worker.start()
    stop.wait_for_wait(15)  # the rate-limit back-off (30 s, jittered to 15-30 s) has begun
    assert src.stats()["rate_limited"] >= 1
    stop.set()
    join_or_fail(worker)
    assert result == [[]]  # stopping is not an error


def run_until(src, stop):
    return list(src.bars(stop))


# ------------------------------------------------------------------ configuration and secrecy


def test_constructor_errors_are_sentences(api):
    with pytest.raises(SourceError, match="ALPHAVANTAGE_API_KEY"):
        AlphaVantageSource("IBM", "5m", api_key=None)
    with pytest.raises(SourceError, match="ALPHAVANTAGE_API_KEY"):
        AlphaVantageSource("IBM", "5m", api_key=Secret("  "))
    with pytest.raises(SourceError, match="interval '2m'"):
        AlphaVantageSource("IBM", "2m", api_key=KEY)
    with pytest.raises(SourceError, match="outputsize"):
        AlphaVantageSource("IBM", "5m", api_key=KEY, outputsize="huge")
    with pytest.raises(SourceError, match="not an http"):
        AlphaVantageSource("IBM", "5m", api_key=KEY, base_url="ftp://x")


def test_from_config_uses_key_and_base_url(api):
    from pipeline.contracts.config import load_config

    cfg = load_config(env={"ALPHAVANTAGE_API_KEY": KEY, "ALPHAVANTAGE_BASE_URL": api.base_url},
                      secrets_path=api_path_nonexistent())
    src = AlphaVantageSource.from_config(cfg, "IBM", "5m", policy=FAST)
    assert len(run(src)) == 100


def api_path_nonexistent():
    from pathlib import Path

    return Path("/nonexistent/secrets.toml")


def test_api_key_never_reaches_logs_exceptions_stats_or_describe(api, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, urllib3's request lines included
    texts: list[str] = []
    scenarios = [
        [], [Drop()], [Drop(mid_body=False)], [Slow(2.0)], [server_error(503)],
        [av_note_rate_limit()], [av_error_message()], [av_missing_key()],
        [av_information_daily_limit(KEY)], [av_information_premium()],
    ]
    for script in scenarios:
        api.script("alphavantage", *script)
        src = source(api, mode="backfill")
        try:
            run(src)
        except Exception as exc:  # noqa: BLE001 - the texts are what is under test
            texts += [str(exc), repr(exc), "".join(traceback.format_exception(exc)),
                      str(getattr(exc, "detail", ""))]
        texts += [repr(src.stats()), src.describe(), repr(src), repr(vars(src))]
    always_slow = source(api, mode="backfill")
    api.always("alphavantage", Slow(2.0))
    with pytest.raises(ApiError) as err:
        run(always_slow)
    texts.append("".join(traceback.format_exception(err.value)))
    assert caplog.records, "expected DEBUG records (urllib3 request lines) to be captured"
    assert any("apikey=***" in r.getMessage() for r in caplog.records)
    assert KEY not in caplog.text
    assert all(KEY not in r.getMessage() for r in caplog.records)
    for text in texts:
        assert KEY not in text
