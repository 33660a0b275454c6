"""``python -m pipeline status``: the store, the broker, and the workers seen by heartbeat."""
from __future__ import annotations

import json
from typing import Any

from pipeline.workers.broker import EmbeddedBroker, is_healthy, pid_alive
from pipeline.contracts.config import Config
from pipeline.store import StoreUnavailable, open_store


def cmd_status(args, config: Config) -> int:
    store = open_store(config)
    out: dict[str, Any] = {"store": store.describe()}
    try:
        store.check()
        out["bars"] = store.count_bars()
        out["symbols"] = store.list_symbols()
    except StoreUnavailable as exc:
        out["store_error"] = str(exc)
    info = None
    if config.kafka_bootstrap:
        out["broker"] = f"Kafka at {config.kafka_bootstrap}"
        out["broker_healthy"] = is_healthy(config.kafka_bootstrap, 5)
    else:
        info = EmbeddedBroker.read_state(config.broker_state_file)
        alive = bool(info and pid_alive(info.pid) and is_healthy(info.bootstrap, 3))
        out["broker"] = info.describe() if info and alive else "no embedded broker running"
        out["broker_healthy"] = alive
    beats = {}
    if "store_error" not in out:
        try:
            beats = {b["worker_id"]: b for b in store.list_heartbeats(max_age_ms=10_000)}
        except StoreUnavailable as exc:
            out["store_error"] = str(exc)
    bootstrap = config.kafka_bootstrap or (info.bootstrap if info else None)
    if bootstrap and out["broker_healthy"]:
        from pipeline.workers.heartbeats import latest_heartbeats

        # The topic copy is newer when the store could not take the heartbeat (outage).
        for b in latest_heartbeats(bootstrap, 10_000, config.kafka_client_kwargs()):
            mine = beats.get(b.get("worker_id"))
            if mine is None or b.get("created_ms", 0) > mine.get("created_ms", 0):
                beats[b.get("worker_id")] = b
    out["workers"] = [{k: b.get(k) for k in ("kind", "state", "pid", "mode", "counters")}
                      | {"lag": (b.get("gauges") or {}).get("lag"),
                         "last_error": b.get("last_error")}
                      for b in beats.values()]
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>15}: {v}")
    return 0
