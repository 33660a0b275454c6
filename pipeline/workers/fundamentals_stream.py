"""The ``finance-fundamentals`` stream's workers, the news stream's with another contract.

:class:`FundamentalsProducer` publishes :class:`~pipeline.contracts.fundamentals.FundamentalsSnapshot`
batches from a feed (``AlphaVantageOverview(...).items``); :class:`FundamentalsIndexer` is the
bar indexer with :func:`~pipeline.contracts.fundamentals.parse_fundamentals` and
``store.upsert_fundamentals``: the same batching, dead-lettering (``finance-fundamentals.dlq``)
and commit-after-write. Key = symbol, value = the snapshot's JSON.

Why a topic of its own rather than a direct write: like bars and news, a snapshot is part of
the log, so a store rebuilt by replay has the same fundamentals, and a live scorer can follow
them the way it follows news (subscribe, update its tracker) instead of polling the store.
"""
from __future__ import annotations

from typing import Any

from pipeline.contracts.fundamentals import (FUNDAMENTALS_DLQ_TOPIC, FUNDAMENTALS_TOPIC,
                                   parse_fundamentals)
from pipeline.workers.indexer import Indexer
from pipeline.workers.news_stream import NewsProducer

FUNDAMENTALS_GROUP = "kappalab-fundamentals-indexer"


class FundamentalsIndexer(Indexer):
    """Consume ``finance-fundamentals`` into the store."""

    kind = "fundamentals_indexer"
    parse_message = staticmethod(parse_fundamentals)

    def __init__(self, store, bootstrap: str, topic: str = FUNDAMENTALS_TOPIC,
                 dlq_topic: str = FUNDAMENTALS_DLQ_TOPIC, group_id: str = FUNDAMENTALS_GROUP,
                 **kwargs: Any):
        super().__init__(store, bootstrap, topic=topic, dlq_topic=dlq_topic,
                         group_id=group_id, **kwargs)

    def upsert(self, records: list[Any]):
        return self.store.upsert_fundamentals(records)


class FundamentalsProducer(NewsProducer):
    """Publish a fundamentals feed to ``finance-fundamentals`` (the news producer's loop: it
    only needs ``symbol``, ``ts`` and ``to_json()`` of each record)."""

    kind = "fundamentals_producer"

    def __init__(self, feed, bootstrap: str, topic: str = FUNDAMENTALS_TOPIC, **kwargs: Any):
        super().__init__(feed, bootstrap, topic=topic, **kwargs)
