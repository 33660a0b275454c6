"""Producer: publishes a source's bars to the ``finance-data`` topic.

JSON values, key = symbol (per-symbol order within a partition), record timestamp = the
moment of production (the scorer measures its latency from it). Batching is tuned per pace:
a backfill lingers to fill large batches; a live feed sends almost at once.

Throughput: the idempotent producer keeps per-partition order through retries with up to 5
requests in flight (instead of one at a time), with ``acks=all``. Deliveries are accounted by
reaping finished futures every few thousand sends, in send order, rather than by a Python
callback per message run on the client's network thread.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque

from pipeline.schema import BARS_TOPIC
from pipeline.sources.base import Source, SourceError
from pipeline.worker import Worker

log = logging.getLogger(__name__)


def make_kafka_producer(bootstrap: str, live: bool, client_kwargs: dict | None = None):
    from kafka import KafkaProducer

    return KafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="kappalab-producer",
        acks="all",
        retries=10,
        linger_ms=2 if live else 50,
        batch_size=16_384 if live else 512_000,
        # Idempotence: the broker drops retried duplicates and keeps per-partition order
        # with several requests in flight (kafka-python >= 3.0).
        enable_idempotence=True,
        max_in_flight_requests_per_connection=5,
        request_timeout_ms=15_000,
        **(client_kwargs or {}),
    )


class Producer(Worker):
    kind = "producer"
    counter_names = ("produced", "send_errors")
    rate_counter = "produced"

    def __init__(self, source: Source, bootstrap: str, topic: str = BARS_TOPIC,
                 client_kwargs: dict | None = None, live: bool | None = None, store=None,
                 mode: str = "thread", flush_every: int = 50_000):
        super().__init__(store=store, mode=mode)
        self.source = source
        self.bootstrap = bootstrap
        self.topic = topic
        self.client_kwargs = client_kwargs or {}
        self.live = live if live is not None else getattr(source, "speed", None) is not None
        self.flush_every = flush_every
        self.first_ts: int | None = None
        self.last_ts: int | None = None

    def describe(self) -> str:
        return f"{self.source.describe()} → {self.topic}"

    def run(self, stop: threading.Event) -> None:
        producer = make_kafka_producer(self.bootstrap, self.live, self.client_kwargs)
        inflight: deque = deque()
        send, topic, clock = producer.send, self.topic, time.time
        try:
            n = 0
            for bar in self.source.bars(stop):
                inflight.append(send(topic, key=bar.symbol.encode(), value=bar.to_json(),
                                     timestamp_ms=int(clock() * 1000)))
                n += 1
                if self.first_ts is None:
                    self.first_ts = bar.ts
                self.last_ts = bar.ts
                if self.live or n % 2048 == 0:
                    self._reap(inflight)
                    self.gauge("source", self.source.stats())
                    self.gauge("last_bar_ts", bar.ts)
                    self.tick()
                if len(inflight) >= self.flush_every:  # bound memory if the broker is slow
                    try:
                        inflight[0].get(timeout=30)
                    except Exception:  # counted (and reported) by _reap
                        pass
                    self._reap(inflight)
        except SourceError as exc:
            self.error(str(exc))
            raise
        finally:
            producer.flush(timeout=30)
            self._reap(inflight)
            producer.close(timeout=10)
            self.gauge("source", self.source.stats())
            self.tick(force=True)

    def _reap(self, inflight: deque) -> None:
        """Count the finished sends, oldest first (they finish in order per partition)."""
        ok = 0
        while inflight and inflight[0].is_done:
            future = inflight.popleft()
            if future.failed():
                self.count("send_errors")
                self.error(f"send failed: {future.exception}")
            else:
                ok += 1
        if ok:
            self.count("produced", ok)
