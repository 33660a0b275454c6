"""The stream table: every stream of the pipeline as one row.

Bars, news and fundamentals flow the same way: a producer publishes a source's records to the
stream's topic (key = symbol, value = the record's JSON), an indexer in the stream's consumer
group parses each message with the stream's contract, writes good ones with the stream's store
write and dead-letters the rest to the stream's dead-letter topic; the live scorer reads the
topics of the streams that have a live feature provider. Each part reads its row here:

============================  ===========================================================
reader                        what it takes from a row
============================  ===========================================================
``workers/broker.py``         the topics it creates (``topic``, ``dlq_topic``)
``workers/indexer.py``        ``parse``, ``store_write``, ``group``, the topics, its name
``workers/stream_producer``   the producer's worker kind (``producer``)
``workers/runtime.py``        the worker names (``indexer``) it starts for a stream
``workers/scorer.py``         the topics its providers read (``provider``)
``models/live/step.py``       ``provider``: the live feature provider, built per topic
``pipeline/__main__.py``      ``<index_command>`` and the scorer's ``--<name>-topic``
============================  ===========================================================

A fourth stream is its contract module (the record, ``parse_*`` raising
:class:`~pipeline.contracts.schema.InvalidBar` or a subclass, its topic names) plus one row of
:data:`STREAMS`; its store needs the ``store_write`` method (the store contract), its live
features a provider class named in ``provider``. Topic names, groups and document IDs of the
three streams are those of docs/ARCHITECTURE.md and stay as they are.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pipeline.contracts.fundamentals import (FUNDAMENTALS_DLQ_TOPIC, FUNDAMENTALS_TOPIC,
                                             parse_fundamentals)
from pipeline.contracts.imports import import_object
from pipeline.contracts.news import NEWS_DLQ_TOPIC, NEWS_TOPIC, parse_news
from pipeline.contracts.schema import BARS_TOPIC, DLQ_TOPIC, parse_bar


@dataclass(frozen=True)
class Stream:
    """One stream (a row of :data:`STREAMS`); immutable, shared by every thread.

    :param name: short name (``bars``, ``news``, ``fundamentals``), also the key of the
        scorer's ``stream_topics`` and of ``--<name>-topic``.
    :param topic: its Kafka topic; ``dlq_topic``: where its indexer dead-letters.
    :param group: its indexer's consumer group.
    :param parse: the contract: bytes -> record, raising ``InvalidBar`` (or a subclass) for a
        message at fault; a record has ``symbol``, ``ts``, ``doc_id`` and ``to_json()``.
    :param store_write: the name of the store method that upserts a list of records.
    :param indexer: the indexer's worker name (the runtime's, the Pipeline page's) and kind.
    :param producer: the kind of the worker that publishes it.
    :param provider: ``module:Class`` of its live feature provider (``cls(store, topic)``), or
        ``None`` when the scorer does not read it.
    :param topic_help: the help of the scorer's ``--<name>-topic`` (streams with a provider).
    :param index_command: the ``python -m pipeline`` command that indexes it, or ``None``
        when the command is the stream's own (the bars' ``index``, with ``--group``/``--topic``).
    """

    name: str
    topic: str
    dlq_topic: str
    group: str
    parse: Callable[[bytes | str], Any]
    store_write: str
    indexer: str
    producer: str
    provider: str | None = None
    topic_help: str = ""
    index_command: str | None = None

    def provider_class(self) -> type:
        """The live feature provider's class (imported now; ValueError without one)."""
        if self.provider is None:
            raise ValueError(f"the {self.name} stream has no live feature provider")
        return import_object(self.provider)


BARS = Stream("bars", BARS_TOPIC, DLQ_TOPIC, "kappalab-indexer", parse_bar, "upsert_bars",
              indexer="indexer", producer="producer")

#: Bottom to top of the Pipeline page; the scorer reads the providers' topics in this order.
STREAMS: tuple[Stream, ...] = (
    BARS,
    Stream("news", NEWS_TOPIC, NEWS_DLQ_TOPIC, "kappalab-news-indexer", parse_news,
           "upsert_news", indexer="news_indexer", producer="news_producer",
           provider="models.live.news:LiveSentiment",
           topic_help="news topic for the sentiment features ('' = none: a champion using "
                      "them is refused)",
           index_command="news-index"),
    Stream("fundamentals", FUNDAMENTALS_TOPIC, FUNDAMENTALS_DLQ_TOPIC,
           "kappalab-fundamentals-indexer", parse_fundamentals, "upsert_fundamentals",
           indexer="fundamentals_indexer", producer="fundamentals_producer",
           provider="models.live.fundamentals:LiveFundamentals",
           topic_help="snapshots topic for the fundamentals features ('' = none)",
           index_command="fundamentals-index"),
)


def stream(name: str | Stream) -> Stream:
    """The row called ``name`` (a row is returned as it is); ValueError naming the known ones."""
    if isinstance(name, Stream):
        return name
    for row in STREAMS:
        if row.name == name:
            return row
    raise ValueError(f"unknown stream {name!r}; one of: {', '.join(r.name for r in STREAMS)}")


def with_provider() -> list[Stream]:
    """The streams the live scorer reads beside the bars (those with a feature provider)."""
    return [row for row in STREAMS if row.provider]


def stream_topics() -> tuple[str, ...]:
    """Every stream's topic and dead-letter topic (what the broker creates)."""
    return tuple(t for row in STREAMS for t in (row.topic, row.dlq_topic))
