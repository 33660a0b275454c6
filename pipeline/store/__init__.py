"""Store backends behind one contract; :func:`open_store` picks one from the configuration."""
from __future__ import annotations

from pipeline.store.base import Store, StoreUnavailable, UpsertResult

__all__ = ["Store", "StoreUnavailable", "UpsertResult", "open_store"]


def open_store(config) -> Store:
    """Elasticsearch when ``ELASTICSEARCH_URL`` is set, else embedded SQLite in the data dir."""
    if config.es_url:
        from pipeline.store.elasticsearch import ElasticsearchStore

        return ElasticsearchStore.from_config(config)
    from pipeline.store.sqlite import SqliteStore

    return SqliteStore(config.sqlite_path)
