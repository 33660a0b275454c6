"""Noticing the topic under a consumer being deleted, re-created or re-partitioned.

A topic deleted and created again under the same name starts a new log at offset 0. A
consumer that keeps its position reads the new log from that old position on: every record
the new log had below it is skipped without a word. :class:`TopicWatch` runs with a worker's
periodic checks and says what happened, in the worker's state and the log:

* **re-created** (the broker's topic id changed, or the log end fell below the highest end
  or position seen; a memory-only broker that restarted empty looks the same): the consumer reads the new log from its start (the store is idempotent, so records
  read twice are stored once); the records of the old log that were never stored are gone
  with it, counted in the ``topic`` gauge (the records between the last position stored and
  the highest log end a fetch showed; records no fetch ever saw are unknown to anyone).
* **deleted** (the broker does not know the topic): ``stalled`` after the worker's stall
  threshold, ``running`` again once it exists.
* **partitions changed**: said; the group rebalances by itself.
"""
from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)


class TopicWatch:
    """Checks one topic for a worker (an :class:`~pipeline.workers.indexer.Indexer`)."""

    def __init__(self, worker: Any, topic: str):
        self.worker, self.topic = worker, topic
        self._topic_id = None
        self._partitions: int | None = None
        self._missing_since: float | None = None
        self._reset_by_offsets = False
        self._ends: dict[Any, int] = {}
        self.resets = 0
        self.unrecoverable = 0

    def check(self, consumer, assigned, ends: dict) -> set:
        """Run after the lag check; returns the partitions it moved to their log start."""
        moved: set = set()
        # No metadata refresh is forced here: Tansu re-creates a deleted topic (4 partitions)
        # on any Metadata request naming it, whatever allow_auto_topic_creation says.
        cluster = getattr(getattr(consumer, "_client", None), "cluster", None)
        topic_id = cluster.topic_id(self.topic) if hasattr(cluster, "topic_id") else None
        if topic_id is not None and self._topic_id is not None and topic_id != self._topic_id:
            if self._reset_by_offsets:  # already handled when its offsets went back
                self._reset_by_offsets = False
            else:
                moved |= self._recreated(consumer, assigned, "its topic id changed")
        if topic_id is not None:
            self._topic_id = topic_id
        for tp in assigned:
            if tp in moved:
                continue
            try:
                highwater, position = consumer.highwater(tp), consumer.position(tp)
            except Exception:
                continue
            seen = max(self._ends.get(tp, 0), position)
            if highwater is not None and highwater < seen:
                self._reset_by_offsets = self._topic_id == topic_id
                moved |= self._recreated(
                    consumer, [tp], f"the log end of partition {tp.partition} fell from "
                    f"{seen} to {highwater}")
        for tp in assigned:
            if tp not in moved:
                self._ends[tp] = max(self._ends.get(tp, 0), ends.get(tp, 0))
        self._gauge()
        return moved

    def saw(self, consumer, batch: dict) -> None:
        """After each poll: the highest log end the fetches have shown, per partition (what
        an old log held when it vanishes, for the count of records lost with it)."""
        for tp in batch:
            try:
                highwater = consumer.highwater(tp)
            except Exception:
                continue
            if highwater is not None and highwater > self._ends.get(tp, 0):
                self._ends[tp] = highwater

    def exists(self, consumer) -> bool:
        """Whether the broker knows the topic; says ``stalled`` when it has not for longer
        than the worker's stall threshold, and when it is back."""
        w = self.worker
        partitions = consumer.partitions_for_topic(self.topic)
        if not partitions:
            self._missing_since = self._missing_since or time.monotonic()
            gone = time.monotonic() - self._missing_since
            if gone > w.stall_after_s:
                w.stall(f"the topic {self.topic} does not exist on the broker (deleted?) for "
                        f"{gone:.0f} s; waiting for it to be created again")
            return False
        if self._missing_since is not None:
            self._missing_since = None
            log.warning("%s: the topic %s exists again", w.kind, self.topic)
            w.unstall()
        if self._partitions is not None and len(partitions) != self._partitions:
            w.error(f"the topic {self.topic} now has {len(partitions)} partitions "
                    f"(was {self._partitions}); the group rebalances onto them")
        self._partitions = len(partitions)
        return True

    def _recreated(self, consumer, tps, why: str) -> set:
        w = self.worker
        tps = [tp for tp in tps if tp.topic == self.topic]
        lost = 0
        for tp in tps:
            done, end = w._committed.pop(tp, None), self._ends.pop(tp, None)
            if done is not None and end is not None:  # else nothing stored yet to compare
                lost += max(0, end - done)
            consumer.seek_to_beginning(tp)
        self.resets += 1
        self.unrecoverable += lost
        w.error(f"the topic {self.topic} was deleted and re-created ({why}); reading the new "
                f"log from its start; {lost:,} records of the old log had not been stored and "
                "are gone with it")
        return set(tps)

    def _gauge(self) -> None:
        if self.resets:
            self.worker.gauge("topic", {"resets": self.resets,
                                        "unrecoverable_records": self.unrecoverable})
