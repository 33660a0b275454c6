"""Shared fixtures: a real embedded broker, real stores, unique topics per test."""
from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from pipeline.workers.broker import EmbeddedBroker, ensure_topics
from pipeline.workers.runtime import quiet_kafka_logs
from pipeline.store.sqlite import SqliteStore

quiet_kafka_logs()


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """One real Tansu broker over TCP on loopback for the test session; stopped by PID."""
    state = Path(tmp_path_factory.mktemp("broker")) / "broker.json"
    b = EmbeddedBroker(state)
    info = b.start(reuse=False)
    yield info
    b.stop()


@pytest.fixture
def topics(broker):
    """Fresh topic names (bars, dlq, predictions) so tests never see each other's messages."""
    tag = uuid.uuid4().hex[:8]
    names = {"bars": f"t-{tag}", "dlq": f"t-{tag}.dlq", "predictions": f"t-{tag}.pred"}
    ensure_topics(broker.bootstrap, tuple(names.values()))
    return names


@pytest.fixture
def sqlite_store(tmp_path):
    store = SqliteStore(tmp_path / "kappalab.sqlite")
    yield store
    store.close()


@pytest.fixture(params=["sqlite", "es-double"])
def any_store(request, tmp_path):
    """The same test against both store backends (Elasticsearch through a test double)."""
    if request.param == "sqlite":
        store = SqliteStore(tmp_path / "kappalab.sqlite")
        yield store
        store.close()
        return
    from tests import es_double
    from pipeline.store.elasticsearch import ElasticsearchStore

    server = es_double.EsTestServer()
    url = server.start()
    store = ElasticsearchStore(url, index_prefix=f"t{uuid.uuid4().hex[:6]}")
    yield store
    store.close()
    server.stop()


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """A fresh data directory for an app test: embedded default (no Kafka/Elasticsearch
    settings, no API keys), nothing started on its own."""
    monkeypatch.setenv("KAPPALAB_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("KAPPALAB_AUTOSTART", "0")
    for var in ("KAFKA_BOOTSTRAP_SERVERS", "ELASTICSEARCH_URL", "ALPHAVANTAGE_API_KEY",
                "POLYGON_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path
