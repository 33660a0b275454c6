"""The fundamentals feature group: the as-of join never looks ahead, the batch and incremental
forms agree bar for bar (whatever order snapshots arrive in), and the model lab reads the
store's snapshots the same as a frame."""
from __future__ import annotations

import dataclasses
import math
import threading

import numpy as np
import pandas as pd
import pytest

from models.features import FEATURE_GROUPS, compute_features, expand_features, max_lookback
from models.features.fundamentals import (FUNDAMENTALS_GROUP, FundamentalsTracker,
                                 fundamentals_features)
from models.lab import LabConfig, run_comparison
from pipeline.contracts.fundamentals import FUNDAMENTALS_COLUMNS, FundamentalsSnapshot
from pipeline.contracts.schema import Bar
from pipeline.sources.simulator import MarketSimulator
from pipeline.store.sqlite import SqliteStore

MIN = 60_000
NAMES = FUNDAMENTALS_GROUP + ["fund_forward_pe"]


def make_bars(n=400, symbols=("ACME", "GLOBX"), seed=3) -> pd.DataFrame:
    bars = MarketSimulator(symbols=symbols, bars=n, seed=seed).bars(threading.Event())
    return pd.DataFrame([dataclasses.asdict(b) for b in bars])


def make_snaps(bars: pd.DataFrame, every=37, seed=5) -> list[FundamentalsSnapshot]:
    """Snapshots at random moments, some exactly at a bar's end, some with missing figures."""
    rng = np.random.default_rng(seed)
    out = []
    for symbol, g in bars.groupby("symbol"):
        t0, t1 = int(g["ts"].min()), int(g["ts"].max())
        moments = sorted(rng.integers(t0 - 30 * MIN, t1 + 2 * MIN, size=len(g) // every))
        moments += [t0 + 50 * MIN, t0 + 50 * MIN + 1, t0 + 120 * MIN]  # at an end, just after
        for k, ts in enumerate(sorted(moments)):
            values = {"pe_ratio": float(rng.normal(20, 3)), "eps": float(rng.normal(5, 1)),
                      "market_cap": float(rng.uniform(1e10, 1e12)),
                      "dividend_yield": None if k % 4 == 0 else float(rng.uniform(0, 0.05)),
                      "price_to_book": float(rng.normal(3, 0.5)), "beta": float(rng.normal(1))}
            out.append(FundamentalsSnapshot(symbol, int(ts), "alphavantage", "2025-09-30",
                                            values))
    return out


def frame(snaps) -> pd.DataFrame:
    return pd.DataFrame([s.to_row() for s in snaps], columns=FUNDAMENTALS_COLUMNS)


@pytest.fixture(scope="module")
def data():
    bars = make_bars()
    return bars, make_snaps(bars)


def test_the_group_is_registered_and_counts_as_one_bar(data):
    assert FEATURE_GROUPS["fundamentals"] == FUNDAMENTALS_GROUP
    assert expand_features(["fundamentals"]) == FUNDAMENTALS_GROUP
    assert max_lookback(["fund_pe_ratio"]) == 1
    with pytest.raises(ValueError, match="unknown feature"):
        expand_features(["fund_shoe_size"])


def test_each_bar_sees_the_latest_snapshot_before_its_end(data):
    bars, snaps = data
    feats = compute_features(bars, ["ret_1", *NAMES], fundamentals=frame(snaps))
    acme = bars["symbol"].eq("ACME")
    ends = bars.loc[acme, "ts"].to_numpy() + MIN
    mine = sorted((s for s in snaps if s.symbol == "ACME"), key=lambda s: s.ts)
    for row, end in zip(np.flatnonzero(acme.to_numpy())[:200], ends[:200]):
        before = [s for s in mine if s.ts < end]
        got = feats.iloc[row]["fund_pe_ratio"]
        if before:
            assert got == before[-1].values["pe_ratio"]
        else:
            assert math.isnan(got)  # unknown before the first snapshot, not 0
    assert feats["fund_forward_pe"].isna().all()  # never given
    assert feats["fund_dividend_yield"].isna().any() and feats["fund_dividend_yield"].notna().any()


def test_no_look_ahead_snapshots_at_or_after_a_bar_end_change_nothing_up_to_it(data):
    bars, snaps = data
    base = fundamentals_features(bars, frame(snaps), NAMES, "1m")
    acme_ts = np.sort(bars.loc[bars["symbol"].eq("ACME"), "ts"].to_numpy())
    for k in (49, 50, 119, 300):
        end = int(acme_ts[k]) + MIN
        changed = [FundamentalsSnapshot(s.symbol, s.ts, s.source, s.latest_quarter,
                                        {v: 999.0 for v in s.values})
                   if s.ts >= end else s for s in snaps]
        changed.append(FundamentalsSnapshot("ACME", end, "alphavantage", "", {"pe_ratio": -1.0}))
        after = fundamentals_features(bars, frame(changed), NAMES, "1m")
        upto = bars["ts"].to_numpy() + MIN <= end
        pd.testing.assert_frame_equal(base[upto], after[upto])
        assert not base[~upto].equals(after[~upto])  # the perturbation did reach later bars


def bars_in_order(bars: pd.DataFrame):
    return bars.sort_values(["ts", "symbol"], kind="stable").to_dict("records")


def test_batch_equals_incremental_with_snapshots_first(data):
    bars, snaps = data
    batch = fundamentals_features(bars, frame(snaps), NAMES, "1m")
    tracker = FundamentalsTracker(NAMES)
    for s in reversed(snaps):  # any order
        tracker.update_item(s)
    check_tracker(tracker, bars, batch)


def test_batch_equals_incremental_when_snapshots_arrive_as_they_are_fetched(data):
    """Live order: a snapshot arrives at its effective time, a bar once it has ended; mappings
    (the message JSON decoded) are accepted like snapshot objects."""
    bars, snaps = data
    batch = fundamentals_features(bars, frame(snaps), NAMES, "1m")
    tracker = FundamentalsTracker(NAMES)
    events = [(s.ts, 0, s.to_dict()) for s in snaps]
    events += [(int(b["ts"]) + MIN, 1, b) for b in bars_in_order(bars)]
    got = {}
    for _, kind, obj in sorted(events, key=lambda e: (e[0], e[1])):
        if kind == 0:
            tracker.update_item(obj)
        else:
            got[(obj["symbol"], obj["ts"])] = tracker.update(obj)
    compare(got, bars, batch)


def test_a_late_snapshot_changes_only_later_bars(data):
    bars, snaps = data
    late = FundamentalsSnapshot("ACME", int(bars["ts"].min()) + 10 * MIN, "alphavantage", "",
                                {"pe_ratio": 77.0})
    batch = fundamentals_features(bars, frame(snaps + [late]), NAMES, "1m")
    tracker = FundamentalsTracker(NAMES)
    for s in snaps:
        tracker.update_item(s)
    rows = bars_in_order(bars)
    got = {}
    for i, b in enumerate(rows):
        if i == 60:  # ACME's bars up to about minute 30 have been served already
            tracker.update_item(late)
        got[(b["symbol"], b["ts"])] = tracker.update(b)
    served_after = {(b["symbol"], b["ts"]) for b in rows[60:]}
    compare({k: v for k, v in got.items() if k in served_after}, bars, batch)
    assert tracker.update(rows[-1]) == got[(rows[-1]["symbol"], rows[-1]["ts"])]  # replay


def check_tracker(tracker, bars, batch):
    got = {(b["symbol"], b["ts"]): tracker.update(b) for b in bars_in_order(bars)}
    compare(got, bars, batch)


def compare(got: dict, bars: pd.DataFrame, batch: pd.DataFrame) -> None:
    assert got
    index = {(s, t): i for i, (s, t) in enumerate(zip(bars["symbol"], bars["ts"]))}
    for key, values in got.items():
        row = batch.iloc[index[key]]
        assert list(values) == NAMES
        for name in NAMES:
            a, b = values[name], row[name]
            assert (math.isnan(a) and math.isnan(b)) or a == b, (key, name, a, b)


def test_the_lab_reads_snapshots_from_the_store_like_a_frame(tmp_path, data):
    bars, snaps = data
    store = SqliteStore(tmp_path / "s.sqlite")
    try:
        store.upsert_bars([Bar(**r) for r in bars.to_dict("records")])
        store.upsert_fundamentals(snaps)
        cfg = LabConfig(features=["ret_1", "ret_5", "fund_pe_ratio", "fund_eps"],
                        models=[("linear", {})], importance_rows=100, importance_repeats=1)
        from_store = run_comparison(store, cfg)
        from_frames = run_comparison(bars, cfg, fundamentals=frame(snaps))
        assert "fund_pe_ratio" in from_store.summary["features"]
        a = from_store.table.loc["Linear regression", "skill"]
        b = from_frames.table.loc["Linear regression", "skill"]
        assert a == pytest.approx(b, abs=1e-12)
    finally:
        store.close()


def test_two_intervals_of_one_symbol_each_match_the_batch(data):
    bars, snaps = data
    acme = bars[bars["symbol"].eq("ACME")]
    five = acme[acme["ts"] % (5 * MIN) == 0].assign(interval="5m")
    both = pd.concat([acme, five], ignore_index=True)
    batch = fundamentals_features(both, frame(snaps), NAMES)
    tracker = FundamentalsTracker(NAMES)
    for s in snaps:
        tracker.update_item(s)
    rows = both.sort_values("ts", kind="stable").to_dict("records")  # 1m and 5m interleaved
    got = {(r["symbol"], r["interval"], r["ts"]): tracker.update(r) for r in rows}
    for i, r in both.iterrows():
        values = got[(r["symbol"], r["interval"], r["ts"])]
        for name in NAMES:
            a, b = values[name], batch.loc[i, name]
            assert (math.isnan(a) and math.isnan(b)) or a == b, (r["interval"], r["ts"], name)


def test_the_live_provider_plugs_into_the_scorer_extra_features(tmp_path, data):
    """LiveFundamentals inside the scorer's ExtraFeatures: stored snapshots warm it on a
    symbol's first bar, topic messages (raw JSON) feed it, duplicates and bad messages are
    counted, and every bar's values equal the batch join."""
    from models.live.fundamentals import LiveFundamentals
    from models.live.providers import ExtraFeatures
    from pipeline.contracts.schema import Bar

    bars, snaps = data
    acme = bars[bars["symbol"].eq("ACME")].reset_index(drop=True)
    mine = sorted((s for s in snaps if s.symbol == "ACME"), key=lambda s: s.ts)
    stored, streamed = mine[: len(mine) // 2], mine[len(mine) // 2:]
    store = SqliteStore(tmp_path / "s.sqlite")
    try:
        store.upsert_fundamentals(stored)
        provider = LiveFundamentals(store)
        extra = ExtraFeatures([provider])
        assert extra.claims("fund_pe_ratio") and not extra.claims("ret_1")
        assert extra.split(["ret_1", "fund_eps"]) == ["ret_1"]
        extra.check(["ret_1", "fund_eps"])  # a champion with fundamentals is accepted
        extra.use(["ret_1", *NAMES])
        batch = fundamentals_features(acme, frame(mine), NAMES)
        rows = acme.to_dict("records")
        extra.start_series("ACME", "1m", int(rows[0]["ts"]))
        pending = sorted(streamed, key=lambda s: s.ts)
        for i, r in enumerate(rows):
            end = int(r["ts"]) + MIN
            while pending and pending[0].ts < end:  # arrives at its fetch time
                snap = pending.pop(0)
                provider.consume(snap.to_json())
                provider.consume(snap.to_json())  # a replayed message
            values = extra.update(Bar(**r))
            for name in NAMES:
                a, b = values[name], batch.iloc[i][name]
                assert (math.isnan(a) and math.isnan(b)) or a == b, (i, name)
        provider.consume(b'{"symbol": "ACME"}')
        gauge = extra.gauge()["fundamentals"]
        assert gauge["from_store"] == len(stored) and gauge["invalid"] == 1
        assert gauge["duplicates"] == gauge["read"] // 2 and gauge.get("late", 0) == 0
    finally:
        store.close()
