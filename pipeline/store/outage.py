"""Which store failures are outages (retry later) and which are the data's fault."""
from __future__ import annotations

import sqlite3

from pipeline.store.base import StoreUnavailable


def is_store_outage(exc: BaseException) -> bool:
    """True when ``exc`` means the store could not be reached or written (retry later);
    False when the data handed to it was at fault (dead-letter it)."""
    if isinstance(exc, (StoreUnavailable, OSError, TimeoutError)):
        return True
    if isinstance(exc, sqlite3.Error):
        # locked, busy, read-only, disk full, I/O error, not a database: the store's fault.
        return not isinstance(exc, (sqlite3.IntegrityError, sqlite3.InterfaceError,
                                    sqlite3.DataError, sqlite3.ProgrammingError))
    try:
        from elastic_transport import TransportError
        from elasticsearch import ApiError
    except ImportError:  # pragma: no cover - the client is a dependency
        return False
    if isinstance(exc, TransportError):
        return True
    if isinstance(exc, ApiError):
        return exc.meta.status in (408, 429) or exc.meta.status >= 500
    return False
