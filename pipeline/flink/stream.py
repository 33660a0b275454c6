"""The Flink job's output stream into the store: :class:`FlinkIndexer`.

The bar :class:`~pipeline.workers.indexer.Indexer` (same contract, rules, batching, dead letters and
commit-after-write) on ``finance-data.flink``, with two differences that come from the job's
upsert sink:

- its records are keyed by the bar id ``symbol|interval|ts`` (an upsert topic's key is the
  row's key), so the bar rule "the key is the symbol" accepts the bar's own id as well;
- it writes a tombstone (null value) when an aggregate retracts a window before it writes the
  window again; the next record under the same id is the window's new value, so a tombstone
  is skipped, not dead-lettered.
"""
from __future__ import annotations

from typing import Any

from pipeline.workers.bar_rules import BarRules
from pipeline.flink import FLINK_DLQ_TOPIC, FLINK_INDEX_GROUP, FLINK_TOPIC
from pipeline.workers.indexer import Indexer


class IdKeyedBarRules(BarRules):
    """The bar rules for a topic keyed by the bar id: a record whose key is its bar's id is
    judged as if keyed by the symbol; any other key is checked as usual."""

    def screen(self, items):
        originals: dict[int, Any] = {}
        judged = []
        for msg, bar in items:
            if msg.key is not None and msg.key == bar.doc_id.encode():
                proxy = msg._replace(key=bar.symbol.encode())
                originals[id(proxy)] = msg
                msg = proxy
            judged.append((msg, bar))
        kept, rejects = super().screen(judged)
        return ([(originals.get(id(m), m), b) for m, b in kept],
                [(originals.get(id(m), m), r) for m, r in rejects])


class FlinkIndexer(Indexer):
    """Consume the Flink job's candles (``finance-data.flink``) into the store."""

    kind = "flink_indexer"
    skip_tombstones = True

    def __init__(self, store, bootstrap: str, topic: str = FLINK_TOPIC,
                 dlq_topic: str = FLINK_DLQ_TOPIC, group_id: str = FLINK_INDEX_GROUP,
                 **kwargs: Any):
        super().__init__(store, bootstrap, topic=topic, dlq_topic=dlq_topic,
                         group_id=group_id, **kwargs)
        self.rules = IdKeyedBarRules(store)
