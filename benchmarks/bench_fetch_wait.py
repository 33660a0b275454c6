"""What a consumer's ``fetch_max_wait_ms`` costs on the embedded broker: delivery latency of a
live message against the CPU an idle-ish consumer burns.

    python benchmarks/bench_fetch_wait.py [--waits 10,30,50,100,200] [--seconds 8] [--every 0.137]

On the embedded broker (Tansu), a fetch with nothing to return is held for about
``fetch_max_wait_ms`` even when a message arrives meanwhile, so the setting is the floor of a
live bar's wait; on Apache Kafka the broker answers as soon as data arrives, and a long wait
costs no latency. A short wait is paid in CPU: the consumer asks again every
``fetch_max_wait_ms`` while nothing comes. The scorer uses ``Scorer.FETCH_WAIT_MS``; this script
is one measurement behind that choice, for lone messages. Bursts behave differently: with
30 ms, which delivers lone messages as fast as 10 ms here, the scorer's 50-symbol p99
(``bench_scorer_latency.py``) went from 37 to 158 ms, so the scorer keeps 10 ms.

For each wait, one fresh consumer group reads a topic to which a thread of the same process
sends one small message every ``--every`` seconds (not a multiple of any wait), for
``--seconds``. Prints ONE JSON line: per wait, the delivery latency (record timestamp → the
poll that returned it) p50/p95/max and the process's CPU in ms per second (consumer and the
sending thread together; the sender's share is the same for every wait).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.workers.broker import EmbeddedBroker  # noqa: E402
from pipeline.workers.runtime import quiet_kafka_logs  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--waits", default="10,30,50,100,200", help="fetch_max_wait_ms values")
    ap.add_argument("--seconds", type=float, default=8.0, help="measured seconds per wait")
    ap.add_argument("--every", type=float, default=0.137, help="seconds between messages")
    args = ap.parse_args()
    quiet_kafka_logs()
    from kafka import KafkaConsumer, KafkaProducer

    work = Path(tempfile.mkdtemp(prefix="kappalab-bench-fetch-"))
    broker = EmbeddedBroker(work / "broker.json")
    info = broker.start(reuse=False)
    runs = []
    try:
        producer = KafkaProducer(bootstrap_servers=info.bootstrap, linger_ms=0)
        producer.send("bench-fetch-wait", b"warm").get(30)  # the topic exists before timing
        for wait in [int(w) for w in args.waits.split(",") if w.strip()]:
            consumer = KafkaConsumer(
                "bench-fetch-wait", bootstrap_servers=info.bootstrap,
                group_id=f"bench-fetch-wait-{wait}", auto_offset_reset="latest",
                max_poll_interval_ms=10_000, session_timeout_ms=10_000,
                heartbeat_interval_ms=1_000, fetch_max_wait_ms=wait)
            while not consumer.assignment():  # joined before timing
                consumer.poll(timeout_ms=100)
            consumer.poll(timeout_ms=300)
            stop = threading.Event()

            def send() -> None:
                while not stop.wait(args.every):
                    producer.send("bench-fetch-wait", b"bar")

            sender = threading.Thread(target=send, name="bench-fetch-sender")
            lat: list[float] = []
            cpu0, t0 = time.process_time(), time.monotonic()
            sender.start()
            while time.monotonic() - t0 < args.seconds:
                for msgs in consumer.poll(timeout_ms=100).values():
                    now = time.time() * 1000
                    lat.extend(now - m.timestamp for m in msgs)
            stop.set()
            sender.join(10)
            elapsed = time.monotonic() - t0
            cpu = time.process_time() - cpu0
            consumer.close()
            a = np.asarray(lat, dtype="float64")
            runs.append({
                "fetch_max_wait_ms": wait, "messages": int(a.size),
                "delivery_ms": ({"p50": round(float(np.percentile(a, 50)), 1),
                                 "p95": round(float(np.percentile(a, 95)), 1),
                                 "max": round(float(a.max()), 1)} if a.size else None),
                "process_cpu_ms_per_s": round(cpu / elapsed * 1000, 1),
            })
        producer.close(timeout=10)
    finally:
        broker.stop()
    print(json.dumps({"bench": "fetch_wait", "broker": "embedded (Tansu)", "runs": runs,
                      "cpus": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
