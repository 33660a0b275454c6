"""What every market source provides to the producer.

A source yields :class:`~pipeline.contracts.schema.Bar` objects in time order per symbol. ``backfill``
sources end; ``live`` sources keep yielding until ``stop`` is set, sleeping between bars or
polls with ``stop.wait`` so they stop promptly.
"""
from __future__ import annotations

import abc
import threading
from typing import Iterator

from pipeline.contracts.schema import Bar


class SourceError(RuntimeError):
    """A source failed in a way the user must act on; the message is one clear sentence
    (never containing an API key)."""


class Source(abc.ABC):
    """A source of bars: ``bars(stop)`` yields them in order and waits only through
    ``stop.wait``. Owned by one producer and iterated in its thread; ``describe`` and ``stats``
    may be read from others. Errors are :class:`SourceError` sentences (docs/SOURCES.md)."""

    #: short name shown in the UI and written into each bar's ``source`` field
    name: str = "source"

    @abc.abstractmethod
    def bars(self, stop: threading.Event) -> Iterator[Bar]:
        """Yield bars until exhausted or ``stop`` is set."""

    def describe(self) -> str:
        return self.name

    def stats(self) -> dict:
        """Source-specific figures (requests made, rate-limit waits, skipped lines...)."""
        return {}

    def problem(self) -> str | None:
        """Why the source delivers nothing right now while it keeps trying (e.g. a live API
        that fails and backs off), as one sentence; None when it is fine. Read from another
        thread: :meth:`bars` may be blocked in a wait."""
        return None
