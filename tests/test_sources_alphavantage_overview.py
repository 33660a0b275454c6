"""AlphaVantageOverview (OVERVIEW) against the loopback Alpha Vantage TEST DOUBLE (real HTTP, no
patching): the documented answer, missing figures, a symbol without an overview, every in-body
error, rate limits and the shared budget; and the fundamentals message contract."""
from __future__ import annotations

import math
import threading

import pytest

from pipeline.contracts.fundamentals import (FUNDAMENTAL_VALUES, FundamentalsSnapshot,
                                   InvalidFundamentals, parse_fundamentals)
from pipeline.sources.alphavantage_overview import AlphaVantageOverview
from pipeline.sources.api_errors import ApiError
from pipeline.sources.base import SourceError
from pipeline.sources.http_client import HttpPolicy
from pipeline.sources.request_budget import RequestBudget
from tests.market_api_double import (
    MarketApiDouble, Reply, av_error_message, av_information_burst, av_information_daily_limit,
    av_information_demo, av_information_premium, av_missing_key, av_note_rate_limit,
    av_overview, server_error,
)

KEY = "AVKEY-overview-7781-ZZ"
FAST = HttpPolicy(connect_timeout=1.0, read_timeout=0.5, retries=2, backoff=0.01,
                  backoff_max=0.05, rate_limit_retries=3, rate_limit_backoff=0.01)
NOW_S = 1_764_000_000.0  # the fetch time the tests' clock reports

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def api():
    with MarketApiDouble(av_key=KEY) as double:
        double.set_av_overview("IBM", av_overview("IBM", PERatio="24.5", EPS="9.61"))
        double.set_av_overview("LOSS", av_overview("LOSS", PERatio="None", PEGRatio="-",
                                                   EPS="-1.20"))
        yield double


def overview(api, symbols="IBM", **kw) -> AlphaVantageOverview:
    kw.setdefault("api_key", KEY)
    kw.setdefault("policy", FAST)
    kw.setdefault("requests_per_minute", None)
    kw.setdefault("requests_per_day", None)
    kw.setdefault("clock", lambda: NOW_S)
    return AlphaVantageOverview(symbols, base_url=api.base_url, **kw)


def run(src: AlphaVantageOverview) -> list[FundamentalsSnapshot]:
    return [s for batch in src.items(threading.Event()) for s in batch]


def test_the_documented_answer_becomes_one_snapshot_effective_at_the_fetch(api):
    [snap] = run(overview(api))
    assert snap.symbol == "IBM" and snap.source == "alphavantage"
    assert snap.ts == int(NOW_S * 1000)  # the fetch time, not LatestQuarter
    assert snap.latest_quarter == "2025-09-30"
    assert snap.values["pe_ratio"] == 24.5 and snap.values["eps"] == 9.61
    assert snap.values["market_cap"] == 250e9 and snap.values["dividend_yield"] == 0.0251
    assert set(snap.values) == set(FUNDAMENTAL_VALUES)
    sent = api.requests_for("alphavantage")[0].params
    assert sent["function"] == "OVERVIEW" and sent["symbol"] == "IBM"
    # through the message contract and back
    assert parse_fundamentals(snap.to_json()) == snap


def test_missing_figures_are_none_and_unknown_symbols_are_skipped(api):
    src = overview(api, "LOSS,NOPE,IBM")
    snaps = run(src)
    assert [s.symbol for s in snaps] == ["LOSS", "IBM"]
    loss = snaps[0]
    assert loss.values["pe_ratio"] is None and loss.values["peg_ratio"] is None
    assert math.isnan(loss.value("pe_ratio")) and loss.value("eps") == -1.2
    assert src.stats()["no_overview"] == 1 and src.stats()["snapshots"] == 2
    assert len(api.requests_for("alphavantage")) == 3


@pytest.mark.parametrize("reply,kind,words", [
    (av_error_message("OVERVIEW"), "request", "invalid API call"),
    (av_missing_key(), "auth", "ALPHAVANTAGE_API_KEY"),
    (av_information_premium(), "forbidden", "premium"),
    (av_information_demo(), "auth", "demo key"),
    (av_information_daily_limit(KEY), "rate_limit", "daily request limit"),
    (Reply(200, {"Name": "no symbol field"}), "response", "no 'Symbol'"),
    (Reply(200, ["not", "an", "object"]), "response", "not a JSON object"),
    (server_error(404), "request", "HTTP 404"),
])
def test_every_in_body_error_is_one_clear_sentence(api, reply, kind, words):
    api.script("alphavantage", reply)
    with pytest.raises(ApiError) as err:
        run(overview(api))
    message = str(err.value)
    assert err.value.kind == kind and words in message, message
    assert "\n" not in message and message.endswith(".") and KEY not in message
    assert len(api.requests) == 1


def test_rate_limit_notices_are_backed_off_then_succeed(api):
    api.script("alphavantage", av_note_rate_limit(), av_information_burst())
    src = overview(api)
    assert len(run(src)) == 1
    assert len(api.requests) == 3 and src.stats()["rate_limited"] == 2


def test_budget_is_shared_and_enforced(api):
    budget = RequestBudget(per_minute=None, per_day=1)
    run(overview(api, budget=budget, max_budget_wait=0.2))
    with pytest.raises(ApiError):
        run(overview(api, budget=budget, max_budget_wait=0.2))
    assert len(api.requests) == 1


def test_live_mode_fetches_again_with_a_later_effective_time(api):
    times = iter([NOW_S, NOW_S + 86_400])
    src = overview(api, mode="live", poll_seconds=0.05, clock=lambda: next(times))
    stop = threading.Event()
    got = []
    for batch in src.items(stop):
        got += batch
        if len(got) == 2:
            stop.set()
    assert [s.ts for s in got] == [int(NOW_S * 1000), int((NOW_S + 86_400) * 1000)]
    assert got[0].doc_id != got[1].doc_id


def test_configuration_errors_are_sentences():
    with pytest.raises(SourceError, match="ALPHAVANTAGE_API_KEY"):
        AlphaVantageOverview("IBM", api_key=None)
    with pytest.raises(SourceError, match="at least one symbol"):
        AlphaVantageOverview(" , ", api_key="k")


@pytest.mark.parametrize("raw,words", [
    (b'{"symbol":"A","ts":1735725600000,"source":"s","latest_quarter":"","values":{"pe":1}}',
     "unknown value"),
    (b'{"symbol":"A","ts":1735725600000,"source":"s","latest_quarter":"","values":'
     b'{"eps":NaN}}', "NaN"),
    (b'{"symbol":"A","ts":1735725600000,"source":"s","latest_quarter":"Q3","values":{}}',
     "latest_quarter"),
    (b'{"symbol":"A","ts":12,"source":"s","latest_quarter":"","values":{}}', "2000-2100"),
    (b'{"symbol":"A","ts":1735725600000,"source":"s","values":{}}', "missing"),
    (b'{"symbol":"A","ts":1735725600000,"source":"s","latest_quarter":"","values":{},'
     b'"x":1}', "unexpected"),
    (b'{"symbol":"A","ts":1735725600000,"source":"s","latest_quarter":"","values":'
     b'{"eps":"9.6"}}', "finite number"),
])
def test_the_message_contract_refuses_bad_snapshots(raw, words):
    with pytest.raises(InvalidFundamentals) as err:
        parse_fundamentals(raw)
    assert words in err.value.reason, err.value.reason
