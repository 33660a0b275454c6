"""Cost of the scorer's champion refresh (every 2 s) and of loading a champion, on SQLite.

Saves ``--versions`` model versions whose pickles are ``--blob-kb`` each (a random forest of
that size), promotes one per scope, then times the refresh path the scorer runs
(``models.registry.champions``, the champion pointers) and a champion load
(``models.registry.load_model_version``, twice: the second is served by the artefact cache
where there is one).

Prints one JSON line, e.g.::

    python benchmarks/bench_champion_refresh.py --versions 30 --blob-kb 2000
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models import registry  # noqa: E402
from pipeline.store.sqlite import SqliteStore  # noqa: E402


class Ballast:
    """A picklable stand-in for a fitted model of a given size."""

    def __init__(self, size: int):
        self.weights = os.urandom(size)

    def predict(self, X):  # pragma: no cover - never called here
        return [0.0] * len(X)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--versions", type=int, default=30)
    ap.add_argument("--blob-kb", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    meta = {"name": "ballast", "model_key": "ballast", "features": ["close"],
            "target": "next_close"}
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "store.sqlite")
        ids = [registry.save_model_version(store, Ballast(args.blob_kb * 1024),
                                           {**meta, "scope": f"S{i % 5}"})
               for i in range(args.versions)]
        for vid, scope in zip(ids[-5:], [f"S{i}" for i in range(5)]):
            registry.promote(store, vid, scope)
        started = time.perf_counter()
        for _ in range(args.repeat):
            found = registry.champions(store)
        refresh_ms = (time.perf_counter() - started) / args.repeat * 1000
        started = time.perf_counter()
        registry.load_model_version(store, ids[-1])
        first_load_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        registry.load_model_version(store, ids[-1])
        second_load_ms = (time.perf_counter() - started) * 1000
        db_bytes = sum(f.stat().st_size for f in Path(tmp).iterdir())
        store.close()
    print(json.dumps({"versions": args.versions, "blob_kb": args.blob_kb,
                      "champions_found": len(found),
                      "refresh_ms": round(refresh_ms, 2),
                      "load_first_ms": round(first_load_ms, 2),
                      "load_again_ms": round(second_load_ms, 2),
                      "store_mb": round(db_bytes / 2**20, 1)}))


if __name__ == "__main__":
    main()
