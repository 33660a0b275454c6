"""Indexer: a stream's topic → validate → store, with a dead-letter topic for bad messages.

One class for every stream of the stream table (:mod:`pipeline.contracts.streams`): the row
gives the contract (``parse``), the store write, the topics and the group; the bars' row
(``finance-data``) adds the bar rules (key, time sanity, corrections).

Every message ends either stored or dead-lettered with a reason, once, whatever its bytes.
Failures have two owners:

* **the message's fault** — it cannot be decoded, parsed, validated or encoded for the store:
  it goes to the dead-letter topic with the exception class in the reason, and the stream
  moves on. A batch write that fails for a reason that is not an outage is split in halves
  until the message(s) at fault are found, so the rest of the batch is still stored.
* **the store's (or the DLQ's) fault** — unreachable, locked, read-only, full: nothing is
  committed, the consumer seeks back to the batch's first offsets and retries with backoff.
  After :attr:`Indexer.stall_after_s` of retrying the worker reports ``stalled`` with the
  reason (and keeps measuring lag); it returns to ``running`` when a write succeeds.

At-least-once into an idempotent store: offsets are committed only after the store accepted
the batch *and* the DLQ acknowledged every reject of it. A DLQ record is sent once per bad
offset: an offset the DLQ already acknowledged is skipped when its batch is replayed after a
store outage. (A crash between the DLQ's ack and the offset commit can repeat a DLQ record;
its ``source_partition``/``source_offset`` headers identify the duplicate.)
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

from pipeline.contracts.backoff import Backoff
from pipeline.workers.broker import shown
from pipeline.workers.bar_rules import BarRules
from pipeline.workers.dead_letters import DeadLetters, Reject, StoreOutage, describe_failure
from pipeline.workers.kafka_clients import (fresh_fetch, log_end_offsets, make_consumer, undecodable,
                                     unreadable_reason)
from pipeline.contracts.schema import Bar, InvalidBar, parse_bar
from pipeline.contracts.streams import BARS, Stream, stream as stream_row
from pipeline.store.outage import is_store_outage
from pipeline.workers.topic_watch import TopicWatch
from pipeline.workers.worker import Worker

log = logging.getLogger(__name__)

DEFAULT_GROUP = BARS.group
#: Bounded reads hold at most this many records per partition that their producer has not
#: acknowledged yet; past it they are read again from the broker later.
MAX_HELD_RECORDS = 200_000


def make_dlq_producer(bootstrap: str, client_kwargs: dict | None = None):
    from kafka import KafkaProducer

    return KafkaProducer(bootstrap_servers=bootstrap, client_id="kappalab-dlq", acks="all",
                         retries=10, linger_ms=5, max_block_ms=10_000,
                         request_timeout_ms=10_000, **(client_kwargs or {}))


# ---- the worker ------------------------------------------------------------------------------
class Indexer(Worker):
    """Consume one stream (bars by default) into the store.

    :param store: the store to write to (its write, e.g. ``upsert_bars``, raises for outages).
    :param bootstrap: Kafka bootstrap servers.
    :param stream: the stream's row or name (:data:`pipeline.contracts.streams.STREAMS`); a
        plain ``Indexer`` is named after it (``indexer``, ``news_indexer``...).
    :param topic: the topic (default: the stream's).
    :param dlq_topic: where rejected messages go (default: the stream's).
    :param group_id: consumer group (default: the stream's; several indexers in one group
        share the partitions).
    :param bounds: instead of a group, read ``topic``'s partitions from these offsets
        ``{partition: first}`` and store only the records in ``ledger`` (a backfill's own
        producer), finishing once that producer is done and all its records are handled.
    :param ledger: the :class:`~pipeline.workers.producer.OffsetLedger` that goes with ``bounds``.
    :param stall_after_s: retrying one batch for longer than this reports ``stalled``.
    """

    kind = "indexer"
    #: The stream's message contract (its row's ``parse``, set per instance): raises InvalidBar
    #: (or a subclass, whose class name starts the DLQ reason) for a message at fault.
    parse_message = staticmethod(parse_bar)
    #: A record with no value is skipped instead of dead-lettered (an upsert stream's
    #: tombstone, pipeline/flink/stream.py).
    skip_tombstones = False
    counter_names = ("consumed", "stored", "rejected", "store_retries", "commit_failures")
    rate_counter = "consumed"

    def __init__(self, store, bootstrap: str, topic: str | None = None,
                 dlq_topic: str | None = None, group_id: str | None = None,
                 client_kwargs: dict | None = None, batch_max: int = 5000,
                 mode: str = "thread", max_backoff_s: float = 10.0,
                 stall_after_s: float = 15.0, bounds: dict[int, int] | None = None,
                 ledger=None, stream: Stream | str = BARS):
        self.stream = stream_row(stream)
        if type(self) is Indexer:  # a subclass (the Flink job's candles) names itself
            self.kind = self.stream.indexer
        self.parse_message = self.stream.parse
        super().__init__(store=store, mode=mode)
        self.bootstrap = bootstrap
        self.topic = topic or self.stream.topic
        self.dlq_topic = dlq_topic or self.stream.dlq_topic
        self.group_id = (group_id or self.stream.group) if bounds is None else None
        self.client_kwargs = client_kwargs or {}
        self.batch_max = batch_max
        self.max_backoff_s = max_backoff_s
        self.stall_after_s = stall_after_s
        # A loop blocked inside a client call longer than any backoff wait: ``stalled``.
        self.loop_watchdog_s = max(stall_after_s, max_backoff_s + 5.0)
        self.bounds = bounds
        self.ledger = ledger
        if (bounds is None) != (ledger is None):
            raise ValueError("bounds and ledger go together")
        self.recent_rejects: list[dict[str, Any]] = []
        self._committed: dict[Any, int] = {}
        self._last_check = 0.0
        self._broker_down_since: float | None = None
        self._last_orphan_check = 0.0
        #: bounded reads: records read before the producer saw their ack, per partition
        self._waiting: dict[Any, list] = {}
        self._topic_watch = TopicWatch(self, self.topic)
        #: key, time and correction rules of bars (pipeline/workers/bar_rules.py); not for other streams
        self.rules = BarRules(store) if self.parse_message is parse_bar else None

    def describe(self) -> str:
        how = f"group {self.group_id}" if self.group_id else "assigned ranges"
        return f"{self.topic} → {self.store.describe()} ({how})"

    # ---- main loop -----------------------------------------------------------------------
    def _open_consumer(self):
        consumer = make_consumer(self.bootstrap, None if self.bounds is not None else self.topic,
                                 self.group_id, self.client_kwargs, self.batch_max,
                                 client_id="kappalab-indexer")
        if self.bounds is not None:
            self._assign_bounds(consumer)
        return consumer

    def run(self, stop: threading.Event) -> None:
        consumer = self._open_consumer()
        self.gauge("group", self.group_id)
        dlq = DeadLetters(make_dlq_producer(self.bootstrap, self.client_kwargs), self.dlq_topic)
        backoff, failing_since = Backoff(0.5, self.max_backoff_s), None
        try:
            poll_failing_since = None
            while not stop.is_set() and not self._bounds_done(consumer):
                try:
                    batch = consumer.poll(timeout_ms=50 if self._waiting else 500,
                                          max_records=self.batch_max)
                    poll_failing_since = None
                except Exception as exc:  # e.g. a batch it cannot decode: keep trying, say so
                    poll_failing_since = poll_failing_since or time.monotonic()
                    reason = unreadable_reason(self.topic, exc)
                    if (time.monotonic() - poll_failing_since > self.stall_after_s
                            or undecodable(exc)):
                        self.stall(reason)
                    else:
                        self.error(reason, log_it=False)
                    consumer = fresh_fetch(consumer, self._open_consumer)  # else polls spin
                    self.tick()
                    stop.wait(1.0)
                    continue
                if batch and self.group_id:
                    self._topic_watch.saw(consumer, batch)
                if self.bounds is not None:
                    batch = self._own_records(consumer, batch)
                if batch:
                    attempt_started = time.monotonic()
                    try:
                        self._handle(batch, dlq)
                    except StoreOutage as exc:
                        self.count("store_retries")
                        failing_since = failing_since or attempt_started
                        if time.monotonic() - failing_since > self.stall_after_s:
                            self.stall(f"no batch stored for over {self.stall_after_s:.0f} s, "
                                       f"retrying: {exc}")
                        else:  # a blip: counted and shown, logged only if it lasts
                            self.error(f"batch not stored, retrying: {exc}", log_it=False)
                        for tp, msgs in batch.items():
                            consumer.seek(tp, msgs[0].offset)
                            self._waiting.pop(tp, None)  # read again after the batch
                        self._periodic(consumer)
                        self.tick()
                        backoff.wait(stop)
                        continue
                    backoff, failing_since = Backoff(0.5, self.max_backoff_s), None
                    self.unstall()
                    self._commit(consumer, batch, dlq)
                self._periodic(consumer)
                self.tick()
        finally:
            try:
                dlq.producer.flush(timeout=10)
            except Exception as exc:  # nothing pending matters: every reject was acked
                log.debug("DLQ flush on close: %s", exc)
            finally:
                dlq.producer.close(timeout=5)
                consumer.close()
                self.tick(force=True)

    def _commit(self, consumer, batch: dict, dlq: DeadLetters) -> None:
        positions = {tp: msgs[-1].offset + 1 for tp, msgs in batch.items()}
        if self.group_id is None:
            dlq.forget_before({(tp.topic, tp.partition): o for tp, o in positions.items()})
            return
        from kafka.structs import OffsetAndMetadata

        try:
            consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in positions.items()})
        except Exception as exc:  # rebalance or broker gone: the batch may replay, harmlessly
            self.count("commit_failures")
            self.error(f"offset commit failed, the batch may be replayed: {describe_failure(exc)}")
            return
        self._committed.update(positions)
        dlq.forget_before({(tp.topic, tp.partition): o for tp, o in positions.items()})

    # ---- one batch -----------------------------------------------------------------------
    def _handle(self, batch: dict, dlq: DeadLetters) -> None:
        items: list[tuple[Any, Bar]] = []
        rejects: list[Reject] = []
        n = 0
        parse, replay = self.parse_message, dlq.remembers_any()
        for msgs in batch.values():
            n += len(msgs)
            for msg in msgs:
                if replay and dlq.already_sent(msg):
                    continue  # dead-lettered by an earlier attempt of this batch
                value = msg.value
                if value is None:
                    if self.skip_tombstones:
                        continue
                    rejects.append(Reject(msg, "InvalidBar: message has no value"))
                    continue
                try:
                    items.append((msg, parse(value)))
                except InvalidBar as exc:
                    rejects.append(Reject(msg, f"{type(exc).__name__}: {exc.reason}"))
                except Exception as exc:  # parse_bar is total; this is a bug, not a stall
                    rejects.append(Reject(msg, f"{describe_failure(exc)} while parsing"))
        if self.rules is not None and items:
            items, refused = self._ruled(self.rules.screen, items)
            rejects += [Reject(msg, reason) for msg, reason in refused]
        t0 = time.perf_counter()
        stored, store_rejects = self._write(items)
        rejects += store_rejects
        dlq.send(rejects)
        if self.rules is not None:
            for name, k in self.rules.stored().items():
                self.count(name, k)
            self._ruled(self.rules.record)
        elapsed = time.perf_counter() - t0
        self.count("consumed", n)
        self.count("stored", stored)
        self.count("rejected", len(rejects))
        if rejects:
            with self._lock:
                for r in rejects[-20:]:
                    self.recent_rejects.append({
                        "offset": r.msg.offset, "partition": r.msg.partition, "reason": r.reason,
                        "raw": (r.msg.value or b"")[:200].decode("utf-8", "replace")})
                del self.recent_rejects[:-50]
        if items:
            self.gauge("last_bar_ts", max(b.ts for _, b in items))
        self.gauge("last_batch", {"size": n, "stored": stored, "rejected": len(rejects),
                                  "store_ms": round(elapsed * 1000, 1)})
        log.debug("indexed batch: %d consumed, %d stored, %d rejected in %.1f ms",
                  n, stored, len(rejects), elapsed * 1000)

    @staticmethod
    def _ruled(step, *args):
        """A step of the bar rules, which read and write the store: its outage is one."""
        try:
            return step(*args)
        except Exception as exc:
            if is_store_outage(exc):
                raise StoreOutage(f"the store is unavailable ({describe_failure(exc)})") from exc
            raise

    def _write(self, items: list[tuple[Any, Bar]]) -> tuple[int, list[Reject]]:
        """Upsert; on a failure that is not an outage, bisect to find the bars at fault."""
        if not items:
            return 0, []
        try:
            result = self.upsert([bar for _, bar in items])
        except Exception as exc:
            if is_store_outage(exc):
                raise StoreOutage(f"the store is unavailable ({describe_failure(exc)})") from exc
            if len(items) == 1:
                return 0, [Reject(items[0][0],
                                  f"{describe_failure(exc)} (the store could not take the bar)")]
            mid = len(items) // 2
            left, right = self._write(items[:mid]), self._write(items[mid:])
            return left[0] + right[0], left[1] + right[1]
        rejects: list[Reject] = []
        if result.rejected:
            by_id: dict[str, list[Any]] = {}
            for msg, bar in items:
                by_id.setdefault(bar.doc_id, []).append(msg)
            for bar, reason in result.rejected:
                for msg in by_id.pop(bar.doc_id, []):
                    rejects.append(Reject(msg, f"StoreRejected: {reason}"))
        return result.accepted, rejects

    def upsert(self, records: list[Any]):
        return getattr(self.store, self.stream.store_write)(records)

    # ---- bounded reads (backfill) --------------------------------------------------------
    def _assign_bounds(self, consumer) -> None:
        from kafka import TopicPartition

        tps = [TopicPartition(self.topic, p) for p in sorted(self.bounds)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, self.bounds[tp.partition])

    def _own_records(self, consumer, batch: dict) -> dict:
        """Keep the ledger's records; skip other writers'; hold back the records from the
        first one whose ack the producer has not seen yet, and look at them again with the
        next poll. (The consumer often reads a record before its producer has reaped the
        ack. Seeking back to it instead made the client fetch and decode the same records
        again and again, which cost a backfill up to half its throughput.)"""
        out = {}
        for tp in list(self._waiting) + [tp for tp in batch if tp not in self._waiting]:
            held, new = self._waiting.pop(tp, None), batch.get(tp, [])
            msgs = held + new if held else new
            mine, short = self.ledger.take(tp.partition, (m.offset for m in msgs))
            if short:
                held = msgs[len(mine):]
                if len(held) > MAX_HELD_RECORDS:  # bound memory: read them again later
                    consumer.seek(tp, held[0].offset)
                else:
                    self._waiting[tp] = held
            kept = [m for m, ours in zip(msgs, mine) if ours]
            if kept:
                out[tp] = kept
        return out

    def _bounds_done(self, consumer) -> bool:
        if self.bounds is None:
            return False
        ends = self.ledger.ends()
        if ends is None or self._waiting:
            return False
        from kafka import TopicPartition

        return all(consumer.position(TopicPartition(self.topic, p)) >= end
                   for p, end in ends.items())

    # ---- health checks every few seconds -------------------------------------------------
    def _periodic(self, consumer, every_s: float = 2.0) -> None:
        """Lag, broker reachability, and recovery from a broker that restarted empty."""
        now = time.monotonic()
        if now - self._last_check < every_s:
            return
        self._last_check = now
        try:
            assigned = consumer.assignment()
            self.gauge("partitions", sorted(tp.partition for tp in assigned))
            if self.group_id and not self._topic_watch.exists(consumer):
                return  # deleted: said (stalled after the threshold), no lag to measure
            if not assigned:
                self._broker_ok()
                return
            ends = log_end_offsets(consumer, assigned)
            moved = self._topic_watch.check(consumer, assigned, ends) if self.group_id else set()
            lag = 0
            for tp in assigned:
                if tp in moved:
                    continue
                position = consumer.position(tp)
                if self.group_id and self._offsets_lost(consumer, tp):
                    # The group's committed offset vanished: the (memory-only) broker
                    # restarted. Re-read its new log from the start. (A position past the
                    # new log's end is reset by the client itself: auto_offset_reset.)
                    self.error(f"partition {tp.partition} restarted empty on the broker; "
                               "reading it again from the start")
                    consumer.seek_to_beginning(tp)
                    self._committed.pop(tp, None)
                    continue
                lag += max(0, ends[tp] - position)
            self.gauge("lag", lag)
            self._broker_ok()
            if self.group_id:
                self._adopt_orphans(consumer, assigned)
        except Exception as exc:
            self._broker_down_since = self._broker_down_since or now
            if now - self._broker_down_since > self.stall_after_s:
                self.stall(f"cannot reach the broker at {shown(self.bootstrap)} for "
                           f"{now - self._broker_down_since:.0f} s ({describe_failure(exc)})")

    def _adopt_orphans(self, consumer, assigned, every_s: float = 5.0, grace_s: float = 15.0) -> None:
        """Take over partitions a dead member still holds.

        Kafka evicts a member that stops heartbeating after its session timeout and hands
        its partitions to the others. The embedded broker (Tansu) sometimes does not: the
        survivor keeps its share and the dead member's partitions are consumed by nobody.
        When this indexer holds only part of the topic and no other indexer of its group has
        published a heartbeat (``kappalab.workers``) for ``grace_s``, it rejoins the group,
        which makes the coordinator rebalance without the silent member."""
        now = time.monotonic()
        if now - self._last_orphan_check < every_s:
            return
        self._last_orphan_check = now
        partitions = consumer.partitions_for_topic(self.topic) or set()
        if len(assigned) >= len(partitions):
            return
        from pipeline.workers.worker import latest_heartbeats

        peers = [b for b in latest_heartbeats(self.bootstrap, int(grace_s * 1000), self.client_kwargs)
                 if b.get("kind") == self.kind and b.get("worker_id") != self.worker_id
                 and (b.get("gauges") or {}).get("group") == self.group_id
                 and b.get("state") in ("running", "stalled")]
        if peers:
            return
        mine = {tp.partition for tp in assigned}
        self.error(f"partitions {sorted(set(partitions) - mine)} of {self.topic} have had no live "
                   f"consumer in group {self.group_id} for {grace_s:.0f} s; rejoining the group "
                   "to take them over")
        consumer.unsubscribe()
        consumer.subscribe([self.topic])

    def _offsets_lost(self, consumer, tp) -> bool:
        if tp not in self._committed:
            return False
        return consumer.committed(tp) is None

    def _broker_ok(self) -> None:
        if self._broker_down_since is not None:
            self._broker_down_since = None
            self.unstall()

    def stats(self, history: bool = True) -> dict[str, Any]:
        snap = super().stats(history)
        with self._lock:
            snap["recent_rejects"] = list(self.recent_rejects[-10:])
        return snap
