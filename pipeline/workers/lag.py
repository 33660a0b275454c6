"""Lag of a consumer group measured from outside it: committed offsets against the log end.

A running worker gauges its own lag (:meth:`pipeline.workers.worker.Worker.track_lag`); a stopped one
cannot, yet that is when lag matters most (a stopped indexer while the producer keeps going).
The runtime measures such a group with :class:`GroupLag`. The log end is the high watermark of
one fetch from the last batch (:func:`pipeline.workers.kafka_clients.probe_log_end`): the embedded
broker's ``end_offsets`` answers the start of the last batch, a whole batch low.
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
        from kafka import KafkaAdminClient, TopicPartition

        from pipeline.workers.kafka_clients import make_consumer, probe_log_end

        if self._admin is None:
            self._admin = KafkaAdminClient(bootstrap_servers=self.bootstrap,
                                           client_id="kappalab-lag", request_timeout_ms=3000,
                                           **self.client_kwargs)
            self._consumer = make_consumer(self.bootstrap, None, None, self.client_kwargs,
                                           client_id="kappalab-lag", request_timeout_ms=3500,
                                           fetch_max_wait_ms=100,
                                           max_partition_fetch_bytes=64 * 1024)
        parts = self._consumer.partitions_for_topic(self.topic) or set()
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        if not tps:
            return 0
        ends = probe_log_end(self._consumer, tps)  # end_offsets trails by a batch on Tansu
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
            except Exception as exc:  # a probe's client: nothing to keep, nothing to retry
                log.debug("closing a lag probe client: %s", exc)
        self._admin = self._consumer = None
