"""The source contract, run on every source of the catalog (pipeline/sources/catalog.py),
beside the store's (tests/test_store_contract.py): built through the catalog as the CLI and
the Pipeline page build it, every source

* yields bars in the schema (each survives ``parse_bar`` of its own JSON unchanged, with the
  requested interval and one of the requested symbols, in time order per symbol);
* says its errors as sentences (one line ending in a full stop, short), as a ``SourceError``
  (or the ``ValueError`` of a bad argument);
* never puts a key in a message: not in the error, ``describe()``, ``stats()``,
  ``problem()`` or any log record.

The simulator runs in process, CSV replay on a temp file, Alpha Vantage and Polygon against
the loopback TEST DOUBLE of their APIs (tests/market_api_double.py: a real HTTP server, real
``requests``; nothing patched). A source added to the catalog without a case here fails
``test_every_catalogued_source_has_a_case``.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from pipeline.contracts.config import load_config
from pipeline.contracts.schema import parse_bar
from pipeline.sources import catalog
from pipeline.sources.base import SourceError
from pipeline.sources.catalog import SourceRequest
from tests.market_api_double import MarketApiDouble, eastern_ms, make_bars

AV_KEY = "AVKEY-contract-Marvin-4242"
PG_KEY = "PGKEY-contract-Trillian-4343"
MINUTE, FIVE_MIN = 60_000, 300_000
AV_START = eastern_ms(2024, 1, 31, 9, 30)

pytestmark = pytest.mark.timeout(60)


@dataclass
class Case:
    """How to run one catalogued source: its config variables, a request that yields bars,
    and a way to make it fail (a request, maybe variables, that must end in an error)."""

    env: dict[str, str]
    request: SourceRequest
    failing: SourceRequest
    failing_env: dict[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()


def _simulator(tmp: Path, api: MarketApiDouble) -> Case:
    return Case({}, SourceRequest(["AAA", "BBB"], "1m", options={"bars": 30, "seed": 3}),
                SourceRequest(["AAA"], "1m", options={"bars": 5, "speed": -1.0}))


def _csv(tmp: Path, api: MarketApiDouble) -> Case:
    good = tmp / "ticks.csv"
    good.write_text("timestamp,open,high,low,close,volume\n"
                    + "".join(f"2024-01-31T09:{m:02d}:00Z,10,11,9.5,10.5,{100 + m}\n"
                              for m in range(30, 50)))
    bad = tmp / "broken.csv"
    bad.write_text("timestamp,open,high,low,close,volume\n2024-01-31T09:30:00Z,10,11,9.5,x,1\n")
    return Case({}, SourceRequest(["TCK"], "1m", options={"file": str(good)}),
                SourceRequest(["TCK"], "1m", options={"file": str(bad)}))


def _alphavantage(tmp: Path, api: MarketApiDouble) -> Case:
    api.set_av_bars("IBM", "5min", make_bars(AV_START, 40, FIVE_MIN))
    env = {"ALPHAVANTAGE_API_KEY": AV_KEY, "ALPHAVANTAGE_BASE_URL": api.base_url}
    return Case(env, SourceRequest(["IBM"], "5m"), SourceRequest(["IBM"], "5m"),
                failing_env={**env, "ALPHAVANTAGE_API_KEY": "AVKEY-wrong-Slartibartfast-1"},
                secrets=(AV_KEY, "AVKEY-wrong-Slartibartfast-1"))


def _polygon(tmp: Path, api: MarketApiDouble) -> Case:
    import time

    start = (int(time.time() * 1000) - 2 * 86_400_000) // MINUTE * MINUTE
    api.set_polygon_bars("AAPL", 1, "minute", make_bars(start, 25, MINUTE))
    env = {"POLYGON_API_KEY": PG_KEY, "POLYGON_BASE_URL": api.base_url}
    return Case(env, SourceRequest(["AAPL"], "1m", days=5), SourceRequest(["AAPL"], "1m"),
                failing_env={**env, "POLYGON_API_KEY": "PGKEY-wrong-Zarniwoop-0007"},
                secrets=(PG_KEY, "PGKEY-wrong-Zarniwoop-0007"))


CASES: dict[str, Callable[[Path, MarketApiDouble], Case]] = {
    "simulator": _simulator, "csv": _csv, "alphavantage": _alphavantage, "polygon": _polygon,
}


def test_every_catalogued_source_has_a_case():
    assert set(catalog.CATALOG) == set(CASES), "add a case for each catalogued source"


@pytest.fixture
def api():
    with MarketApiDouble(av_key=AV_KEY, polygon_key=PG_KEY) as double:
        yield double


def _config(tmp: Path, env: dict[str, str]):
    return load_config(env={"KAPPALAB_DATA_DIR": str(tmp / "data"), **env},
                       secrets_path=tmp / "no-secrets.toml")


def _assert_sentence(message: str, secrets: tuple[str, ...]) -> None:
    assert message and "\n" not in message and len(message) < 400, message
    assert message.rstrip().endswith((".", ".)")), f"not a sentence: {message!r}"
    for secret in secrets:
        assert secret not in message, f"a key in the message: {message!r}"


@pytest.mark.parametrize("key", list(CASES))
def test_yields_bars_in_the_schema(key, tmp_path, api, caplog):
    case = CASES[key](tmp_path, api)
    caplog.set_level(logging.DEBUG)
    source = catalog.build(key, _config(tmp_path, case.env), case.request)
    bars = []
    for bar in source.bars(threading.Event()):
        bars.append(bar)
        if len(bars) >= 200:
            break
    assert bars, f"{key} yielded no bars"
    last: dict[str, int] = {}
    for bar in bars:
        assert parse_bar(bar.to_json()) == bar  # the schema, as the indexer reads it
        assert bar.interval == case.request.interval and bar.symbol in case.request.symbols
        assert bar.ts > last.get(bar.symbol, -1), "bars of a symbol come in time order"
        last[bar.symbol] = bar.ts
    shown = [source.describe(), repr(source.stats()), str(source.problem() or "")]
    shown += [r.getMessage() for r in caplog.records]
    for secret in case.secrets:
        assert not any(secret in text for text in shown), f"{key} shows its key"


@pytest.mark.parametrize("key", list(CASES))
def test_errors_are_sentences_without_keys(key, tmp_path, api, caplog):
    case = CASES[key](tmp_path, api)
    caplog.set_level(logging.DEBUG)
    config = _config(tmp_path, case.failing_env or case.env)
    source = None
    with pytest.raises((SourceError, ValueError)) as err:
        source = catalog.build(key, config, case.failing)
        for _ in source.bars(threading.Event()):
            continue  # drain it: the failure must surface as a sentence while iterating
    _assert_sentence(str(err.value), case.secrets)
    shown: list[Any] = [r.getMessage() for r in caplog.records]
    shown += [(r.exc_text or "") for r in caplog.records]
    if source is not None:
        shown += [source.describe(), repr(source.stats()), str(source.problem() or "")]
    for secret in case.secrets:
        assert not any(secret in text for text in shown), f"{key} shows a key"


def test_an_unknown_source_is_a_sentence(tmp_path):
    with pytest.raises(SourceError) as err:
        catalog.build("carrier-pigeon", _config(tmp_path, {}), SourceRequest(["X"]))
    _assert_sentence(str(err.value), ())
    assert "simulator" in str(err.value)


def test_a_source_reads_its_key_by_name_from_the_config(tmp_path):
    """A new source's key needs no field in config.py: the catalog reads it by its name."""
    config = _config(tmp_path, {"NEWSOURCE_API_KEY": "NSKEY-Hotblack-Desiato-77"})
    assert config.secret("NEWSOURCE_API_KEY").get() == "NSKEY-Hotblack-Desiato-77"
    assert "NSKEY" not in repr(config)
    assert config.secret("POLYGON_API_KEY") is None and config.setting("NOPE", "d") == "d"
