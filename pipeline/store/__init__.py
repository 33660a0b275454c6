"""Store backends behind one contract, and the backend registry :func:`open_store` reads.

A backend is its module (a :class:`~pipeline.store.base.Store` subclass with ``from_config``,
``identity``, ``__reduce__`` and ``outage``) plus one :class:`StoreBackend` row in
:data:`BACKENDS`: the config variable that chooses it and how the Pipeline page names where it
comes from. Its own settings are config variables read by name (``Config.setting`` /
``Config.secret``), so ``pipeline/contracts/config.py`` does not change for it.
"""
from __future__ import annotations

from dataclasses import dataclass

import pipeline.contracts.config as _config
from pipeline.contracts.imports import import_object
from pipeline.store.base import Store, StoreUnavailable, UpsertResult

__all__ = ["BACKENDS", "Store", "StoreBackend", "StoreUnavailable", "UpsertResult",
           "backend_for", "open_store", "store_key", "store_origin"]


@dataclass(frozen=True)
class StoreBackend:
    """One row of the backend registry: its name, its class (``module:Class``, imported only
    when chosen), the config variable whose being set chooses it (``None``: the default, chosen
    when no other is set) and the words the Pipeline page uses for it."""

    name: str
    cls: str
    variable: str | None = None
    origin: str = "embedded"

    def store_class(self) -> type[Store]:
        return import_object(self.cls)


#: the backends, asked in order; the first whose variable is set wins, the default last
BACKENDS: tuple[StoreBackend, ...] = (
    StoreBackend("elasticsearch", "pipeline.store.elasticsearch:ElasticsearchStore",
                 "ELASTICSEARCH_URL", "configured (ELASTICSEARCH_URL)"),
    StoreBackend("sqlite", "pipeline.store.sqlite:SqliteStore"),
)


def backend_for(config) -> StoreBackend:
    """The backend ``config`` chooses."""
    for backend in BACKENDS:
        if backend.variable is None or config.setting(backend.variable):
            return backend
    raise StoreUnavailable("No store backend is chosen by this configuration.")


def open_store(config) -> Store:
    """Elasticsearch when ``ELASTICSEARCH_URL`` is set, else embedded SQLite in the data dir
    (in general: the first backend of :data:`BACKENDS` the config chooses)."""
    return backend_for(config).store_class().from_config(config)


def store_key(config) -> tuple:
    """Identity of the store ``config`` points at (for caching one store per target): the
    chosen backend's ``identity(config)``; what ``Config.store_key()`` returns."""
    return backend_for(config).store_class().identity(config)


def store_origin(config) -> str:
    """Where the chosen store comes from, in the Pipeline page's words."""
    return backend_for(config).origin


_config.store_identity = store_key
