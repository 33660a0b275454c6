"""Lag of a consumer group measured from outside it: committed offsets against the log end.

A running worker gauges its own lag (:meth:`pipeline.worker.Worker.track_lag`); a stopped one
cannot, yet that is when lag matters most (a stopped indexer while the producer keeps going).
The runtime measures such a group with :class:`GroupLag`. On the embedded broker the log end
reported by ``end_offsets`` may trail the true end by one producer batch, so the figure can
read a batch low; it still grows with every batch the producer sends.
"""
from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)


class GroupLag:
    """Messages of ``topic`` not yet committed by ``group_id``, re-measured at most every
    ``every_s`` seconds (one admin client and one group-less consumer, kept open)."""

    def __init__(self, bootstrap: str, group_id: str, topic: str,
                 client_kwargs: dict | None = None, every_s: float = 2.0):
        self.bootstrap, self.group_id, self.topic = bootstrap, group_id, topic
        self.client_kwargs = client_kwargs or {}
        self.every_s = every_s
        self._lock = threading.Lock()
        self._admin = self._consumer = None
        self._at = 0.0
        self._value: int | None = None

    def value(self) -> int | None:
        """The lag (None when it cannot be measured, e.g. the broker is down)."""
        with self._lock:
            if time.monotonic() - self._at >= self.every_s:
                self._at = time.monotonic()
                try:
                    self._value = self._measure()
                except Exception as exc:
                    log.debug("group lag of %s unavailable: %s", self.group_id, exc)
                    self.close_clients()
                    self._value = None
            return self._value

    def _measure(self) -> int:
        from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

        if self._admin is None:
            self._admin = KafkaAdminClient(bootstrap_servers=self.bootstrap,
                                           client_id="kappalab-lag", request_timeout_ms=3000,
                                           **self.client_kwargs)
            self._consumer = KafkaConsumer(bootstrap_servers=self.bootstrap,
                                           client_id="kappalab-lag", enable_auto_commit=False,
                                           request_timeout_ms=3500, **self.client_kwargs)
        parts = self._consumer.partitions_for_topic(self.topic) or set()
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        if not tps:
            return 0
        ends = self._consumer.end_offsets(tps)
        committed = self._admin.list_group_offsets({self.group_id: tps}).get(self.group_id, {})
        lag = 0
        for tp in tps:
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else 0
            lag += max(0, ends.get(tp, 0) - done)
        return lag

    def close_clients(self) -> None:
        for client in (self._admin, self._consumer):
            try:
                if client is not None:
                    client.close()
            except Exception:
                pass
        self._admin = self._consumer = None
