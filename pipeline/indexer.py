"""Indexer: ``finance-data`` → validate → store, with a dead-letter topic for bad messages.

At-least-once into an idempotent store: offsets are committed only after the store accepted
the batch *and* every rejected message of the batch is acknowledged by the DLQ topic. A crash in
between replays the batch, and the deterministic IDs make the replay harmless.

When the store is down, the batch is not committed: the consumer seeks back to the batch's
first offsets and retries with backoff, so nothing is lost and the worker keeps polling (and so
keeps its group membership).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

from pipeline.schema import BARS_TOPIC, DLQ_TOPIC, Bar, InvalidBar, parse_bar
from pipeline.worker import Worker

log = logging.getLogger(__name__)

DEFAULT_GROUP = "kappalab-indexer"


def make_consumer(bootstrap: str, topic: str, group_id: str, client_kwargs: dict | None = None,
                  max_poll_records: int = 5000, client_id: str = "kappalab"):
    from kafka import KafkaConsumer

    return KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group_id,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # Short intervals: the group join on the embedded broker otherwise waits for minutes.
        max_poll_interval_ms=10_000,
        session_timeout_ms=10_000,
        heartbeat_interval_ms=1_000,
        max_poll_records=max_poll_records,
        fetch_max_wait_ms=200,
        **(client_kwargs or {}),
    )


def make_dlq_producer(bootstrap: str, client_kwargs: dict | None = None):
    from kafka import KafkaProducer

    return KafkaProducer(bootstrap_servers=bootstrap, client_id="kappalab-dlq", acks="all",
                         retries=10, linger_ms=5, **(client_kwargs or {}))


def dlq_headers(reason: str, msg: Any) -> list[tuple[str, bytes]]:
    return [
        ("reason", reason.encode("utf-8", "replace")),
        ("source_topic", str(msg.topic).encode()),
        ("source_partition", str(msg.partition).encode()),
        ("source_offset", str(msg.offset).encode()),
    ]


class Indexer(Worker):
    kind = "indexer"
    counter_names = ("consumed", "stored", "rejected", "store_retries", "commit_failures")
    rate_counter = "consumed"

    def __init__(self, store, bootstrap: str, topic: str = BARS_TOPIC,
                 dlq_topic: str = DLQ_TOPIC, group_id: str = DEFAULT_GROUP,
                 client_kwargs: dict | None = None, batch_max: int = 5000,
                 mode: str = "thread", max_backoff_s: float = 10.0):
        super().__init__(store=store, mode=mode)
        self.bootstrap = bootstrap
        self.topic = topic
        self.dlq_topic = dlq_topic
        self.group_id = group_id
        self.client_kwargs = client_kwargs or {}
        self.batch_max = batch_max
        self.max_backoff_s = max_backoff_s
        self.recent_rejects: list[dict[str, Any]] = []

    def describe(self) -> str:
        return f"{self.topic} → {self.store.describe()} (group {self.group_id})"

    def run(self, stop: threading.Event) -> None:
        consumer = make_consumer(self.bootstrap, self.topic, self.group_id, self.client_kwargs,
                                 self.batch_max, client_id="kappalab-indexer")
        dlq = make_dlq_producer(self.bootstrap, self.client_kwargs)
        backoff = 0.5
        try:
            while not stop.is_set():
                batch = consumer.poll(timeout_ms=500, max_records=self.batch_max)
                if batch:
                    try:
                        self._handle(batch, dlq)
                    except Exception as exc:  # store or DLQ unavailable: replay the batch
                        self.count("store_retries")
                        self.error(f"batch not stored, will retry: {type(exc).__name__}: {exc}")
                        for tp, msgs in batch.items():
                            consumer.seek(tp, msgs[0].offset)
                        stop.wait(backoff)
                        backoff = min(backoff * 2, self.max_backoff_s)
                        continue
                    backoff = 0.5
                    try:
                        consumer.commit()
                    except Exception as exc:  # rebalance: the batch may replay, harmlessly
                        self.count("commit_failures")
                        self.error(f"offset commit failed (batch will replay): {exc}")
                self.track_lag(consumer)
                self.tick()
        finally:
            try:
                dlq.flush(timeout=10)
            finally:
                dlq.close(timeout=5)
                consumer.close()
                self.tick(force=True)

    def _handle(self, batch: dict, dlq) -> None:
        good: list[Bar] = []
        bad: list[tuple[Any, str]] = []
        n = 0
        for msgs in batch.values():
            for msg in msgs:
                n += 1
                if msg.value is None:
                    bad.append((msg, "message has no value"))
                    continue
                try:
                    good.append(parse_bar(msg.value))
                except InvalidBar as exc:
                    bad.append((msg, exc.reason))
        t0 = time.perf_counter()
        result = self.store.upsert_bars(good)
        if result.rejected:
            by_id = {}
            for msgs in batch.values():
                for msg in msgs:
                    by_id.setdefault(_bar_key(msg.value), msg)
            for bar, reason in result.rejected:
                msg = by_id.get(bar.doc_id)
                if msg is not None:
                    bad.append((msg, f"store rejected the bar: {reason}"))
        futures = [dlq.send(self.dlq_topic, key=m.key, value=m.value or b"",
                            headers=dlq_headers(reason, m)) for m, reason in bad]
        if futures:
            dlq.flush(timeout=30)
            for f in futures:
                f.get(timeout=10)  # raises if the DLQ did not take it: batch is retried
        elapsed = time.perf_counter() - t0
        self.count("consumed", n)
        self.count("stored", result.accepted)
        self.count("rejected", len(bad))
        if bad:
            with self._lock:
                for m, reason in bad[-20:]:
                    self.recent_rejects.append({"offset": m.offset, "reason": reason,
                                                "raw": (m.value or b"")[:200].decode("utf-8", "replace")})
                del self.recent_rejects[:-50]
        if good:
            self.gauge("last_bar_ts", max(b.ts for b in good))
        self.gauge("last_batch", {"size": n, "stored": result.accepted, "rejected": len(bad),
                                  "store_ms": round(elapsed * 1000, 1)})
        log.debug("indexed batch: %d consumed, %d stored, %d rejected in %.1f ms",
                  n, result.accepted, len(bad), elapsed * 1000)

    def stats(self, history: bool = True) -> dict[str, Any]:
        snap = super().stats(history)
        with self._lock:
            snap["recent_rejects"] = list(self.recent_rejects[-10:])
        return snap


def _bar_key(raw: bytes | None) -> str | None:
    try:
        return parse_bar(raw).doc_id if raw else None
    except InvalidBar:
        return None
