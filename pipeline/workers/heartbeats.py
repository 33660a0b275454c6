"""Worker heartbeats on the ``kappalab.workers`` topic, beside the store's copy: when the store
is the thing that is down, ``python -m pipeline status`` and the dashboard still see which worker
is ``stalled`` and why. :class:`pipeline.workers.worker.Worker` sends them; the status command, the
runtime and the indexer read them back (:func:`latest_heartbeats`).
"""
from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger("pipeline.workers.worker")


class KafkaHeartbeats:
    """Worker snapshots on the ``kappalab.workers`` topic (key = worker id), beside the
    store's copy: when the store is the thing that is down, `python -m pipeline status`
    still sees which worker is ``stalled`` and why."""

    RETRY_CONNECT_S = 30.0

    def __init__(self, bootstrap: str, client_kwargs: dict | None = None):
        self.bootstrap = bootstrap
        self.client_kwargs = client_kwargs or {}
        self._producer = None
        self._next_try = 0.0

    def send(self, worker_id: str, snapshot: dict[str, Any]) -> None:
        import json

        from pipeline.contracts.schema import WORKERS_TOPIC

        if self._producer is None:
            if time.monotonic() < self._next_try:
                return
            self._next_try = time.monotonic() + self.RETRY_CONNECT_S
            try:
                from kafka import KafkaProducer

                self._producer = KafkaProducer(
                    bootstrap_servers=self.bootstrap, client_id="kappalab-heartbeat",
                    # acks=1 (a heartbeat, not a record): idempotence off, said so, so
                    # kafka-python does not warn in every process that it turned it off
                    acks=1, enable_idempotence=False, linger_ms=0, max_block_ms=1000,
                    **self.client_kwargs)
            except Exception as exc:
                log.debug("heartbeat producer unavailable: %s", exc)
                return
        try:
            value = json.dumps(dict(snapshot, created_ms=int(time.time() * 1000)),
                               default=str).encode()
            self._producer.send(WORKERS_TOPIC, key=worker_id.encode(), value=value)
        except Exception as exc:  # never take the worker down
            log.debug("heartbeat to Kafka failed: %s", exc)

    def close(self) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=2)
            except Exception as exc:  # closing on the way out: the last beats may be lost
                log.debug("closing the heartbeat producer: %s", exc)
            self._producer = None


def latest_heartbeats(bootstrap: str, max_age_ms: int, client_kwargs: dict | None = None,
                      scan: int = 2000) -> list[dict[str, Any]]:
    """The newest snapshot of every worker seen on ``kappalab.workers`` within ``max_age_ms``."""
    import json

    from kafka import TopicPartition

    from pipeline.workers.kafka_clients import make_consumer
    from pipeline.contracts.schema import WORKERS_TOPIC

    consumer = make_consumer(bootstrap, None, None, client_kwargs, client_id="kappalab-status",
                             consumer_timeout_ms=1500, fetch_max_wait_ms=500)
    try:
        parts = consumer.partitions_for_topic(WORKERS_TOPIC)
        if not parts:
            return []
        tps = [TopicPartition(WORKERS_TOPIC, p) for p in parts]
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, max(0, ends[tp] - scan))
        latest: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + 10
        # Read up to the end offsets seen at the start (an empty poll may only mean the
        # first fetch is still on its way).
        while time.monotonic() < deadline and any(consumer.position(tp) < ends[tp] for tp in tps):
            batch = consumer.poll(timeout_ms=300)
            for msgs in batch.values():
                for m in msgs:
                    try:
                        snap = json.loads(m.value)
                    except (ValueError, TypeError):
                        continue
                    latest[snap.get("worker_id", "")] = snap
    finally:
        consumer.close()
    cutoff = int(time.time() * 1000) - max_age_ms
    return [s for s in latest.values() if s.get("created_ms", 0) >= cutoff]
