"""Dead letters: how a rejected message is written to the DLQ topic, once per offset.

The record keeps the original key and bytes (cut to a bounded size) and says in its headers
why it was rejected and where it came from (see docs/STREAM_ROBUSTNESS.md).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

#: A dead letter keeps at most this many bytes of the original value (and key); the headers
#: ``original_size`` and ``sha256`` describe the whole original, ``truncated`` says if it was cut.
DLQ_MAX_VALUE_BYTES = 65_536
DLQ_MAX_KEY_BYTES = 1_024
DLQ_MAX_REASON_CHARS = 1_000


class StoreOutage(Exception):
    """The batch could not be written (store) or dead-lettered (DLQ): retry it later."""


def describe_failure(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    name = type(exc).__name__
    if text.startswith(name + ":"):  # kafka-python's errors already start with their class
        return text
    return f"{name}: {text}" if text else name


@dataclass
class Reject:
    """One message the indexer refuses: the Kafka record and the one-sentence reason that goes
    with it to the dead-letter topic. Built and read in the indexer's loop thread."""

    msg: Any  # a kafka ConsumerRecord
    reason: str  # one sentence, starting with the exception class


def dlq_record(reason: str, msg: Any) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    """Key, value and headers of the dead letter for ``msg``: raw bytes (cut to a bounded
    size), the reason, where it came from, and the original's size and SHA-256."""
    raw = msg.value or b""
    key = msg.key[:DLQ_MAX_KEY_BYTES] if msg.key is not None else None
    value = raw[:DLQ_MAX_VALUE_BYTES]
    error_class = reason.split(":", 1)[0] if ":" in reason else "InvalidBar"
    headers = [
        ("reason", reason[:DLQ_MAX_REASON_CHARS].encode("utf-8", "backslashreplace")),
        ("error_class", error_class.encode("utf-8", "backslashreplace")),
        ("source_topic", str(msg.topic).encode()),
        ("source_partition", str(msg.partition).encode()),
        ("source_offset", str(msg.offset).encode()),
        ("original_size", str(len(raw)).encode()),
        ("sha256", hashlib.sha256(raw).hexdigest().encode()),
        ("truncated", b"true" if len(value) < len(raw) or (key is not None and len(key) < len(msg.key)) else b"false"),
    ]
    return key, value, headers


class DeadLetters:
    """Sends rejects to the DLQ topic, once per (partition, offset) while this process lives."""

    def __init__(self, producer, topic: str):
        self.producer = producer
        self.topic = topic
        self._acked: dict[tuple[str, int], set[int]] = {}

    def remembers_any(self) -> bool:
        """Whether any acknowledged offset awaits its commit (else nothing can be skipped)."""
        return any(self._acked.values())

    def already_sent(self, msg: Any) -> bool:
        return msg.offset in self._acked.get((msg.topic, msg.partition), ())

    def send(self, rejects: list[Reject]) -> None:
        """Send and wait for the acks; raise :class:`StoreOutage` if the DLQ did not take one
        (the batch is then retried, and the offsets already acked are not sent again)."""
        sent = []
        for r in rejects:
            key, value, headers = dlq_record(r.reason, r.msg)
            sent.append((r.msg, self.producer.send(self.topic, key=key, value=value,
                                                   headers=headers)))
        if not sent:
            return
        self.producer.flush(timeout=30)
        failed: BaseException | None = None
        for msg, future in sent:
            try:
                future.get(timeout=10)
            except Exception as exc:  # broker down or refusing: retry the batch later
                failed = failed or exc
                continue
            self._acked.setdefault((msg.topic, msg.partition), set()).add(msg.offset)
        if failed is not None:
            raise StoreOutage(f"the dead-letter topic {self.topic} did not acknowledge "
                              f"a reject ({describe_failure(failed)})")

    def forget_before(self, positions: dict[tuple[str, int], int]) -> None:
        """Drop the memory of offsets below the committed positions (they never replay)."""
        for tp, position in positions.items():
            done = self._acked.get(tp)
            if done:
                done.difference_update([o for o in done if o < position])
