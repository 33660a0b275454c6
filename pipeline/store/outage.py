"""Which store failures are outages (retry later) and which are the data's fault."""
from __future__ import annotations

from pipeline.store.base import Store, StoreUnavailable


def is_store_outage(exc: BaseException) -> bool:
    """True when ``exc`` means the store could not be reached or written (retry later);
    False when the data handed to it was at fault (dead-letter it). Each backend says which
    of its client's errors are outages (``Store.outage``); a backend in use is imported, so
    asking every loaded backend covers it, and a new backend adds nothing here."""
    if isinstance(exc, (StoreUnavailable, OSError, TimeoutError)):
        return True
    return any(backend.outage(exc) for backend in _backends(Store))


def _backends(cls: type) -> list[type]:
    subs = cls.__subclasses__()
    return subs + [b for s in subs for b in _backends(s)]
