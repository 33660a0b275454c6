"""The prediction feed: stored predictions published to ``finance-predictions`` from a thread of
their own (the store is the record; the topic is a feed)."""
from __future__ import annotations

import json
import queue
import threading

from pipeline.workers.producer import key_hash_partitioner
from pipeline.contracts.schema import PREDICTION_FIELDS


class PredictionFeed:
    """Publishes stored predictions to the predictions topic from a thread of its own (owns
    that thread and its Kafka producer; ``put`` is called from the scorer's loop thread).

    The store is the record and the topic a feed, so the scorer hands its stored predictions
    over (``(doc_id, prediction_values(p))`` snapshots, ~1 µs each) at the end of each burst
    of bars (:meth:`pipeline.workers.scorer.Scorer._hand_over`) and goes on polling; the
    documents, JSON encoding and the Kafka sends happen here.
    Failures go to ``on_error`` (counted, never retried: the store has the predictions).
    """

    def __init__(self, producer, topic: str, on_error):
        self.producer, self.topic, self.on_error = producer, topic, on_error
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="kappalab-prediction-feed",
                                        daemon=True)
        self._thread.start()

    @classmethod
    def connect(cls, bootstrap: str, topic: str, on_error, client_kwargs: dict
                ) -> "PredictionFeed":
        """A feed with a Kafka producer of its own (the scorer's ``client_kwargs``)."""
        from kafka import KafkaProducer

        # A feed, not the record: batches of up to 1 MB collected for 50 ms cost far fewer
        # sends (and sender wake-ups) than the 16 kB default at 1,000 predictions a second.
        producer = KafkaProducer(bootstrap_servers=bootstrap, client_id="kappalab-scorer",
                                 acks="all", linger_ms=50, batch_size=1 << 20, retries=5,
                                 partitioner=key_hash_partitioner(), **client_kwargs)
        return cls(producer, topic, on_error)

    def put(self, batch: list[tuple[str, tuple]]) -> None:
        self._queue.put(batch)

    def close(self, timeout_s: float = 15.0) -> None:
        """Publish what was handed over, then close the producer."""
        self._queue.put(None)
        self._thread.join(timeout_s)
        self.producer.flush(timeout=max(1.0, timeout_s / 2))
        self.producer.close(timeout=5)

    def _run(self) -> None:
        send, topic, on_error = self.producer.send, self.topic, self.on_error
        # one encoder for the thread: json.dumps(..., allow_nan=False) builds a new one a call
        dumps = json.JSONEncoder(allow_nan=False).encode
        while (batch := self._queue.get()) is not None:
            for doc_id, values in batch:
                try:
                    doc = dict(zip(PREDICTION_FIELDS, values))
                    doc["doc_id"] = doc_id
                    send(topic, key=doc["symbol"].encode(),
                         value=dumps(doc).encode()).add_errback(on_error)
                except Exception as exc:  # the store is the record; the topic is a feed
                    self.on_error(exc)
