"""Champion changes are atomic on both backends (one pointer document per scope)."""
from __future__ import annotations

import threading
import uuid

import pytest
from sklearn.dummy import DummyRegressor

from models import registry
from pipeline.store.base import CHAMPIONS
from pipeline.store.elasticsearch import ElasticsearchStore
from pipeline.store.sqlite import SqliteStore
from tests.es_double import EsTestServer

META = {"name": "dummy", "model_key": "dummy", "features": ["close"], "target": "next_close"}


@pytest.fixture(scope="module")
def es_server():
    with EsTestServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "es-double"])
def store(request, tmp_path, es_server):
    if request.param == "sqlite":
        s = SqliteStore(tmp_path / "store.sqlite")
    else:
        s = ElasticsearchStore(es_server.url, index_prefix=f"kl-{uuid.uuid4().hex[:10]}")
    yield s
    s.close()


def _version(store, **extra) -> str:
    return registry.save_model_version(store, DummyRegressor().fit([[1.0]], [1.0]),
                                       {**META, **extra})


def test_concurrent_promotions_leave_exactly_one_champion(store):
    versions = [_version(store) for _ in range(6)]
    go = threading.Barrier(len(versions))

    def promote(vid: str) -> None:
        go.wait()
        registry.promote(store, vid)

    threads = [threading.Thread(target=promote, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pointer = store.get_doc(CHAMPIONS, "global")
    assert pointer["version_id"] in versions
    assert registry.get_champion(store)["version_id"] == pointer["version_id"]
    assert list(registry.champions(store)) == ["global"]
    # every promotion was recorded, in some order, each after the one it replaced
    assert len(store.list_events("promotion")) == len(versions)


def test_promote_and_rollback_walk_the_history(store):
    a, b, c = _version(store), _version(store), _version(store)
    for vid in (a, b, c):
        registry.promote(store, vid)
    assert registry.get_champion(store)["version_id"] == c
    assert registry.rollback(store)["version_id"] == b
    assert registry.rollback(store)["version_id"] == a
    with pytest.raises(LookupError):
        registry.rollback(store)
    statuses = {m["version_id"]: m["status"] for m in registry.list_versions(store)}
    assert statuses == {a: "champion", b: "retired", c: "retired"}


def test_symbol_scope_falls_back_to_global_and_loads_through_the_artefact_cache(store):
    g = _version(store, status="champion")
    assert registry.get_champion(store, "AAA")["version_id"] == g
    s = _version(store, scope="AAA", status="champion")
    assert registry.get_champion(store, "AAA")["version_id"] == s
    assert set(registry.champions(store)) == {"global", "AAA"}
    first = registry.load_model_version(store, s)
    hits = store.artefact_cache_hits
    again = registry.load_model_version(store, s)
    assert store.artefact_cache_hits == hits + 1 and again.version_id == first.version_id


def test_champions_of_stores_written_before_pointers_are_adopted(store):
    vid = _version(store)
    store.update_model_version(vid, status="champion", scope="global")  # the old way
    assert store.get_doc(CHAMPIONS, "global") is None
    assert registry.get_champion(store)["version_id"] == vid
    assert store.get_doc(CHAMPIONS, "global")["version_id"] == vid
