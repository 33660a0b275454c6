"""The Flink job's output stream into the store: :class:`FlinkIndexer`.

The bar :class:`~pipeline.indexer.Indexer` (same contract, batching, dead letters and
commit-after-write) on ``finance-data.flink``. The job's upsert sink writes a tombstone (null
value) when an aggregate retracts a window before it writes the window again; the next record
under the same id is the window's new value, so a tombstone is skipped, not dead-lettered.
"""
from __future__ import annotations

from typing import Any

from pipeline.flink import FLINK_DLQ_TOPIC, FLINK_INDEX_GROUP, FLINK_TOPIC
from pipeline.indexer import Indexer


class FlinkIndexer(Indexer):
    """Consume the Flink job's candles (``finance-data.flink``) into the store."""

    kind = "flink_indexer"
    skip_tombstones = True

    def __init__(self, store, bootstrap: str, topic: str = FLINK_TOPIC,
                 dlq_topic: str = FLINK_DLQ_TOPIC, group_id: str = FLINK_INDEX_GROUP,
                 **kwargs: Any):
        super().__init__(store, bootstrap, topic=topic, dlq_topic=dlq_topic,
                         group_id=group_id, **kwargs)
