"""Bar contract, configuration loading and secret handling."""
from __future__ import annotations

import json
import logging

import pytest

from pipeline.contracts.config import Secret, load_config
from pipeline.contracts.schema import Bar, InvalidBar, parse_bar


def good(**over):
    d = {"symbol": "ACME", "interval": "1m", "ts": 1735725600000, "open": 10.0, "high": 11.0,
         "low": 9.5, "close": 10.5, "volume": 1200.0, "source": "simulator"}
    d.update(over)
    return json.dumps(d).encode()


def test_round_trip_and_ids():
    bar = parse_bar(good())
    assert bar == Bar("ACME", "1m", 1735725600000, 10.0, 11.0, 9.5, 10.5, 1200.0, "simulator")
    assert parse_bar(bar.to_json()) == bar
    assert bar.doc_id == "ACME|1m|1735725600000"


@pytest.mark.parametrize("over, reason", [
    ({"high": 9.0}, "below low"),
    ({"close": 12.0}, "close 12.0 is outside"),
    ({"volume": -1}, "negative"),
    ({"volume": True}, "volume must be a number"),
    ({"symbol": ""}, "symbol"),
    ({"symbol": 5}, "symbol must be a string"),
    ({"ts": 1.5e12 + 0.5}, "whole number"),
    ({"extra": 1}, "unexpected field"),
    ({"low": 0, "open": 0, "close": 0}, "positive"),
])
def test_each_violation_has_a_reason(over, reason):
    with pytest.raises(InvalidBar) as err:
        parse_bar(good(**over))
    assert reason in err.value.reason


def test_secrets_never_print(tmp_path, caplog):
    cfg = load_config(env={"ALPHAVANTAGE_API_KEY": "sekrit-123", "ELASTICSEARCH_URL": "http://x:9200",
                           "ELASTICSEARCH_PASSWORD": "pw-456", "KAPPALAB_DATA_DIR": str(tmp_path)},
                      secrets_path=tmp_path / "none.toml")
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("t").info("config %s %r", cfg, cfg)
    text = repr(cfg) + str(cfg) + caplog.text
    assert "sekrit-123" not in text and "pw-456" not in text
    assert cfg.alphavantage_api_key.get() == "sekrit-123"
    assert isinstance(cfg.es_password, Secret)


def test_defaults_are_embedded(tmp_path):
    cfg = load_config(env={"KAPPALAB_DATA_DIR": str(tmp_path)}, secrets_path=tmp_path / "none.toml")
    assert cfg.embedded_broker and cfg.embedded_store
    assert cfg.sqlite_path == tmp_path / "kappalab.sqlite"


def test_secrets_toml_fills_what_env_leaves_unset(tmp_path):
    p = tmp_path / "secrets.toml"
    p.write_text('KAFKA_BOOTSTRAP_SERVERS = "from-toml:9092"\nPOLYGON_API_KEY = "pk"\n')
    cfg = load_config(env={"KAFKA_BOOTSTRAP_SERVERS": "from-env:9092"}, secrets_path=p)
    assert cfg.kafka_bootstrap == "from-env:9092"
    assert cfg.polygon_api_key.get() == "pk"


def test_bad_partitions_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="KAPPALAB_TOPIC_PARTITIONS"):
        load_config(env={"KAPPALAB_TOPIC_PARTITIONS": "many"}, secrets_path=tmp_path / "n.toml")


def test_autostart_goes_through_the_one_loader(tmp_path):
    """KAPPALAB_AUTOSTART in secrets.toml counts (README), and the environment still wins."""
    p = tmp_path / "secrets.toml"
    p.write_text('KAPPALAB_AUTOSTART = "0"\n')
    assert load_config(env={}, secrets_path=tmp_path / "none.toml").autostart is True
    assert load_config(env={}, secrets_path=p).autostart is False
    assert load_config(env={"KAPPALAB_AUTOSTART": "1"}, secrets_path=p).autostart is True
    assert load_config(env={"KAPPALAB_AUTOSTART": "off"}, secrets_path=tmp_path / "n").autostart \
        is False
