"""Producer: publishes a source's bars to the ``finance-data`` topic.

JSON values, key = symbol (per-symbol order within a partition), record timestamp = the
moment of production (the scorer measures its latency from it). Batching is tuned per pace:
a backfill lingers to fill large batches; a live feed sends almost at once.
"""
from __future__ import annotations

import logging
import threading
import time

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
        max_in_flight_requests_per_connection=1,  # keeps per-key order through retries
        request_timeout_ms=15_000,
        **(client_kwargs or {}),
    )


class Producer(Worker):
    kind = "producer"
    counter_names = ("produced", "send_errors")
    rate_counter = "produced"

    def __init__(self, source: Source, bootstrap: str, topic: str = BARS_TOPIC,
                 client_kwargs: dict | None = None, live: bool | None = None, store=None,
                 mode: str = "thread", flush_every: int = 10_000):
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

    def _on_sent(self, _metadata) -> None:
        self.count("produced")

    def _on_error(self, exc: Exception) -> None:
        self.count("send_errors")
        self.error(f"send failed: {exc}")

    def run(self, stop: threading.Event) -> None:
        producer = make_kafka_producer(self.bootstrap, self.live, self.client_kwargs)
        try:
            n = 0
            for bar in self.source.bars(stop):
                future = producer.send(
                    self.topic, key=bar.symbol.encode(), value=bar.to_json(),
                    timestamp_ms=int(time.time() * 1000),
                )
                future.add_callback(self._on_sent).add_errback(self._on_error)
                n += 1
                if self.first_ts is None:
                    self.first_ts = bar.ts
                self.last_ts = bar.ts
                if self.live or n % 512 == 0:
                    self.gauge("source", self.source.stats())
                    self.gauge("last_bar_ts", bar.ts)
                    self.tick()
                if n % self.flush_every == 0:
                    producer.flush()
        except SourceError as exc:
            self.error(str(exc))
            raise
        finally:
            producer.flush(timeout=30)
            producer.close(timeout=10)
            self.gauge("source", self.source.stats())
            self.tick(force=True)
