"""PolygonSource against the loopback Polygon TEST DOUBLE (real HTTP, no patching)."""
from __future__ import annotations

import logging
import threading
import time
import traceback
from datetime import datetime, timedelta, timezone

import pytest

from pipeline.contracts.config import Secret
from pipeline.sources.base import SourceError
from pipeline.sources.api_errors import ApiError
from pipeline.sources.http_client import HttpPolicy
from pipeline.sources.redaction import redact
from pipeline.sources.polygon import PolygonSource
from tests.stop_event import RecordingStop, join_or_fail
from tests.market_api_double import (
    Drop, MarketApiDouble, Reply, Slow, make_bars, polygon_401, polygon_403, polygon_429,
    polygon_not_authorized, polygon_status_error, server_error,
)

KEY = "PGKEY-qq4-Zaphod-Beeblebrox-0042"
FAST = HttpPolicy(connect_timeout=1.0, read_timeout=0.3, retries=2, backoff=0.01,
                  backoff_max=0.05, rate_limit_retries=3, rate_limit_backoff=0.01)
MINUTE = 60_000
# two days ago, on a minute boundary: inside the default 7-day window, long finished
START = (int(time.time() * 1000) - 2 * 86_400_000) // MINUTE * MINUTE

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def api():
    with MarketApiDouble(polygon_key=KEY) as double:
        double.set_polygon_bars("AAPL", 1, "minute", make_bars(START, 10, MINUTE))
        yield double


def source(api: MarketApiDouble, symbols="AAPL", interval="1m", **kw) -> PolygonSource:
    kw.setdefault("api_key", KEY)
    kw.setdefault("policy", FAST)
    kw.setdefault("requests_per_minute", None)
    return PolygonSource(symbols, interval, base_url=api.base_url, **kw)


def run(src: PolygonSource) -> list:
    return list(src.bars(threading.Event()))


def assert_one_sentence(message: str) -> None:
    assert "\n" not in message and message.endswith(".") and KEY not in message
    assert len(message) < 300


# ------------------------------------------------------------------ success


def test_backfill_last_days_in_documented_shape(api):
    bars = run(source(api))
    expected = make_bars(START, 10, MINUTE)
    assert [b.ts for b in bars] == [t for t, *_ in expected]
    t, o, h, low, c, v = expected[3]
    assert (bars[3].open, bars[3].high, bars[3].low, bars[3].close, bars[3].volume) == (o, h, low, c, v)
    assert {b.source for b in bars} == {"polygon"} and bars[0].interval == "1m"
    (req,) = api.requests_for("polygon")
    today = datetime.now(timezone.utc).date()
    assert req.path == (f"/v2/aggs/ticker/AAPL/range/1/minute/"
                        f"{(today - timedelta(days=7)).isoformat()}/{today.isoformat()}")
    assert req.params == {"adjusted": "true", "sort": "asc", "limit": "50000", "apiKey": KEY}


def test_pagination_follows_next_url_with_the_key(api):
    api.polygon_page_size = 4
    src = source(api)
    bars = run(src)
    assert [b.ts for b in bars] == [t for t, *_ in make_bars(START, 10, MINUTE)]
    reqs = api.requests_for("polygon")
    assert len(reqs) == 3 and src.stats()["pages"] == 3
    assert all(r.params.get("apiKey") == KEY for r in reqs)  # next_url omits it; we add it
    assert "cursor" not in reqs[0].params and all("cursor" in r.params for r in reqs[1:])


def test_next_url_on_another_host_is_rerooted_on_the_base_url(api):
    api.polygon_page_size = 5
    api.next_url_base = "http://polygon-mirror.invalid:9"
    assert len(run(source(api))) == 10
    assert len(api.requests_for("polygon")) == 2  # both pages came to the configured host


def test_empty_results_are_no_bars(api):
    src = source(api, "EMPTY")
    assert run(src) == []
    assert src.stats()["pages"] == 1 and src.stats()["bars"] == 0


def test_delayed_status_is_accepted(api):
    api.polygon_status = "DELAYED"
    assert len(run(source(api))) == 10


@pytest.mark.parametrize("interval,path", [("5m", "/5/minute/"), ("15m", "/15/minute/"),
                                           ("30m", "/30/minute/"), ("1h", "/1/hour/"),
                                           ("1d", "/1/day/")])
def test_interval_mapping(api, interval, path):
    run(source(api, interval=interval))
    assert path in api.requests_for("polygon")[0].path


def test_explicit_window_and_adjusted(api):
    run(source(api, start="2024-01-02", end=1706745600000, adjusted=False, limit=500))
    req = api.requests_for("polygon")[0]
    assert req.path.endswith("/2024-01-02/1706745600000")
    assert req.params["adjusted"] == "false" and req.params["limit"] == "500"


def test_several_tickers_with_secret_key(api):
    api.set_polygon_bars("MSFT", 1, "minute", make_bars(START, 4, MINUTE, price=300))
    bars = run(source(api, ["aapl", "msft"], api_key=Secret(KEY)))
    assert [b.symbol for b in bars] == ["AAPL"] * 10 + ["MSFT"] * 4


def test_bar_still_forming_is_left_for_later(api):
    now_minute = int(time.time() * 1000) // MINUTE * MINUTE
    api.set_polygon_bars("NOW", 1, "minute", make_bars(now_minute - 2 * MINUTE, 3, MINUTE))
    src = source(api, "NOW")
    assert [b.ts for b in run(src)] == [now_minute - 2 * MINUTE, now_minute - MINUTE]
    assert src.stats()["incomplete_skipped"] == 1
    assert len(run(source(api, "NOW", include_incomplete=True))) == 3


def test_malformed_result_is_skipped_and_counted(api):
    body = {"ticker": "AAPL", "status": "OK", "resultsCount": 2, "results": [
        {"t": START, "o": 1, "h": 2, "l": 0.5, "c": 1.5, "v": 10},
        {"t": START + MINUTE, "o": 1, "h": 2, "c": 1.5, "v": 10}]}  # no "l"
    api.script("polygon", Reply(200, body))
    src = source(api)
    assert len(run(src)) == 1 and src.stats()["invalid_bars"] == 1


# ------------------------------------------------------------------ error shapes


@pytest.mark.parametrize("reply,kind,words", [
    (polygon_401(), "auth", "rejected the API key (HTTP 401); set POLYGON_API_KEY"),
    (polygon_403(), "forbidden", "plan does not include AAPL 1m aggregates"),
    (polygon_not_authorized(), "forbidden", "NOT_AUTHORIZED"),
    (polygon_status_error(), "request", "Could not parse the time parameter"),
    (Reply(200, {"status": "WEIRD", "request_id": "x"}), "response", "status 'WEIRD'"),
    (Reply(400, {"status": "ERROR", "error": "limit must be <= 50000"}), "request", "HTTP 400"),
    (Reply(404, {"status": "NOT_FOUND"}), "request", "HTTP 404"),
    (Reply(200, "<html>maintenance</html>"), "response", "not a JSON object"),
])
def test_error_shapes_become_one_clear_sentence(api, reply, kind, words):
    api.script("polygon", reply)
    with pytest.raises(ApiError) as err:
        run(source(api))
    assert err.value.kind == kind and words in str(err.value)
    assert_one_sentence(str(err.value))
    assert len(api.requests) == 1  # none of these is retried


def test_wrong_key_is_refused_by_the_double(api):
    with pytest.raises(ApiError, match="HTTP 401") as err:
        run(source(api, api_key="not-the-key-9999"))
    assert "not-the-key-9999" not in str(err.value)


def test_error_on_a_later_page_stops_the_backfill(api):
    api.polygon_page_size = 4
    src = source(api)
    gen = src.bars(threading.Event())
    first_page = [next(gen) for _ in range(4)]
    api.script("polygon", polygon_403())
    with pytest.raises(ApiError, match="plan does not include"):
        list(gen)
    assert len(first_page) == 4


# ------------------------------------------------------------------ rate limits, transient failures


def test_429_is_backed_off_then_succeeds(api):
    api.script("polygon", polygon_429(retry_after=0.05), polygon_429())
    src = source(api)
    assert len(run(src)) == 10
    reqs = api.requests_for("polygon")
    assert len(reqs) == 3 and reqs[1].at - reqs[0].at >= 0.04  # Retry-After honoured
    assert src.stats()["rate_limited"] == 2


def test_rate_limit_reported_in_a_200_body_is_retried(api):
    api.script("polygon", polygon_status_error("You've exceeded the maximum requests per minute"))
    assert len(run(source(api))) == 10 and len(api.requests) == 2


def test_persistent_429_gives_up_with_a_sentence(api):
    api.always("polygon", polygon_429())
    with pytest.raises(ApiError) as err:
        run(source(api))
    assert err.value.kind == "rate_limit" and err.value.status == 429
    assert_one_sentence(str(err.value))
    assert len(api.requests) == FAST.rate_limit_retries + 1


def test_slow_page_is_retried(api):
    api.polygon_page_size = 5
    api.script("polygon", None, Slow(2.0))  # the second page is slow once
    src = source(api)
    assert len(run(src)) == 10
    assert len(api.requests) == 3 and src.stats()["transient_errors"] == 1


def test_always_slow_gives_a_timeout_sentence(api):
    api.always("polygon", Slow(2.0))
    with pytest.raises(ApiError, match=r"timed out after 0.3 s.*check the network") as err:
        run(source(api))
    assert err.value.kind == "transient" and len(api.requests) == FAST.retries + 1


@pytest.mark.parametrize("drop", [Drop(mid_body=True), Drop(mid_body=False)])
def test_dropped_connection_is_retried(api, drop):
    api.script("polygon", drop)
    src = source(api)
    assert len(run(src)) == 10
    assert len(api.requests) == 2 and src.stats()["last_http_problem"] == "connection dropped"


def test_5xx_is_retried(api):
    api.script("polygon", server_error(500), server_error(503))
    assert len(run(source(api))) == 10


def test_refused_connection_is_a_sentence():
    src = PolygonSource("AAPL", "1m", api_key=KEY, base_url="http://127.0.0.1:9", policy=FAST,
                        requests_per_minute=None)
    with pytest.raises(ApiError, match="connection refused"):
        run(src)


# ------------------------------------------------------------------ live mode


def test_live_polls_from_the_last_bar_and_publishes_each_bar_once(api):
    stop = threading.Event()
    src = source(api, mode="live", poll_seconds=0.05)
    gen = src.bars(stop)
    first = [next(gen) for _ in range(10)]
    api.set_polygon_bars("AAPL", 1, "minute", make_bars(START, 14, MINUTE))
    second = [next(gen) for _ in range(4)]
    stop.set()
    assert list(gen) == []
    assert [b.ts for b in first + second] == [t for t, *_ in make_bars(START, 14, MINUTE)]
    later = api.requests_for("polygon")[1]
    assert later.path.split("/")[-2] == str(first[-1].ts)  # from = last bar (overlaps it)
    assert src.stats()["duplicates_skipped"] >= 1


def test_live_keeps_going_through_failures(api):
    api.script("polygon", *[server_error(503)] * (FAST.retries + 1),
               *[polygon_429()] * (FAST.rate_limit_retries + 1))
    stop = threading.Event()
    src = source(api, mode="live", poll_seconds=0.02)
    gen = src.bars(stop)
    assert len([next(gen) for _ in range(10)]) == 10
    stop.set()
    assert src.stats()["live_errors"] == 2


def test_live_raises_on_a_bad_key(api):
    with pytest.raises(ApiError, match="HTTP 401"):
        run(source(api, mode="live", api_key="bad-key-bad-key", poll_seconds=0.01))


def test_stop_is_prompt_during_429_backoff(api):
    api.always("polygon", polygon_429(retry_after=30))
    stop = RecordingStop()
    src = source(api, policy=HttpPolicy(read_timeout=1, backoff_max=60))
    out: list = []
    worker = threading.Thread(target=lambda: out.append(list(src.bars(stop))))
    worker.start()
    stop.wait_for_wait(29)  # inside the server's Retry-After: 30 s
    stop.set()
    join_or_fail(worker)
    assert out == [[]]


def test_stop_is_prompt_between_live_polls(api):
    stop = RecordingStop()
    src = source(api, mode="live", poll_seconds=60)
    got: list = []
    worker = threading.Thread(target=lambda: got.extend(src.bars(stop)))
    worker.start()
    stop.wait_for_wait(30)  # inside the pause before the next poll
    stop.set()
    join_or_fail(worker)
    assert len(got) == 10


# ------------------------------------------------------------------ configuration and secrecy


def test_constructor_errors_are_sentences():
    with pytest.raises(SourceError, match="POLYGON_API_KEY"):
        PolygonSource("AAPL", api_key="")
    with pytest.raises(SourceError, match="at least one symbol"):
        PolygonSource([], api_key=KEY)
    with pytest.raises(SourceError, match="mode must be"):
        PolygonSource("AAPL", api_key=KEY, mode="stream")
    with pytest.raises(SourceError, match="start must be a date"):
        PolygonSource("AAPL", api_key=KEY, start="yesterday")
    with pytest.raises(SourceError, match="limit must be"):
        PolygonSource("AAPL", api_key=KEY, limit=0)
    with pytest.raises(SourceError, match="contains '\|'"):
        PolygonSource("AA|PL", api_key=KEY)
    assert PolygonSource(["aapl", "AAPL", " msft "], api_key=KEY).symbols == ["AAPL", "MSFT"]


def test_redact_masks_keys_in_urls_even_unregistered():
    text = "GET /v2/aggs?cursor=abc&apiKey=UNREGISTERED123&x=1 and apikey=ANOTHER"
    assert redact(text) == "GET /v2/aggs?cursor=abc&apiKey=***&x=1 and apikey=***"


def test_api_key_never_reaches_logs_exceptions_stats_or_describe(api, caplog):
    caplog.set_level(logging.DEBUG)
    api.polygon_page_size = 3
    texts: list[str] = []
    scenarios = [
        [], [Drop()], [Drop(mid_body=False)], [Slow(2.0)], [server_error(503)], [polygon_429()],
        [polygon_401()], [polygon_403()], [polygon_not_authorized()], [polygon_status_error()],
        [Reply(400, {"status": "ERROR", "error": f"bad request for apiKey={KEY}"})],
    ]
    for script in scenarios:
        api.script("polygon", *script)
        src = source(api)
        try:
            run(src)
        except Exception as exc:  # noqa: BLE001 - the texts are what is under test
            texts += [str(exc), repr(exc), "".join(traceback.format_exception(exc)),
                      str(getattr(exc, "detail", ""))]
        texts += [repr(src.stats()), src.describe(), repr(vars(src))]
    refused = PolygonSource("AAPL", "1m", api_key=KEY, base_url="http://127.0.0.1:9",
                            policy=FAST, requests_per_minute=None)
    with pytest.raises(ApiError) as err:
        run(refused)
    texts.append("".join(traceback.format_exception(err.value)))
    assert any("apiKey=***" in r.getMessage() for r in caplog.records)
    assert KEY not in caplog.text
    assert all(KEY not in r.getMessage() for r in caplog.records)
    for text in texts:
        assert KEY not in text


def test_daily_bars_start_at_midnight_utc_of_the_trading_date(api):
    # Polygon's daily `t` is midnight US/Eastern for stocks (05:00 UTC in winter, 04:00 in
    # summer) and midnight UTC for crypto; all become midnight UTC of the date (the one
    # convention of pipeline.sources.daily, shared with Alpha Vantage and CSV files).
    day = 86_400_000
    utc_midnight = (int(time.time() * 1000) - 3 * day) // day * day
    eastern = [utc_midnight - 2 * day + 5 * 3_600_000, utc_midnight - day + 4 * 3_600_000,
               utc_midnight]
    bars = [b for t in eastern for b in make_bars(t, 1, day)]
    api.set_polygon_bars("AAPL", 1, "day", bars)
    got = run(source(api, interval="1d"))
    assert [b.ts for b in got] == [utc_midnight - 2 * day, utc_midnight - day, utc_midnight]
