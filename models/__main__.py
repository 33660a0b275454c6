"""Command line for the model lab: ``python -m models compare --help``.

``compare`` reads bars from the configured store (``KAPPALAB_DATA_DIR`` / ``ELASTICSEARCH_URL``)
or simulates them in memory with ``--simulate N``; prints progress to stderr and the results
table to stdout (``--json`` for one machine-readable JSON document). Runs on store data are
recorded in the store unless ``--no-save``. ``features`` lists feature groups; ``runs`` lists
stored runs. Bad arguments or no data: exit 2 (1 for other failures) with one clear line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from datetime import datetime, timezone

import pandas as pd

from pipeline.contracts.jsonsafe import json_safe
from pipeline.contracts.schema import INTERVALS

from models.features import DEFAULT_FEATURES, DEFAULT_GROUP, FEATURE_GROUPS, max_lookback
from models.splits import SPLIT_METHODS
from models.targets import TARGETS
from models.zoo import MODEL_KEYS, MODEL_SPECS, coerce_params, get_spec


class UsageError(ValueError):
    """A command line the models CLI cannot run; the message says what to type instead."""

    pass


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m models", description="KappaLab model lab.")
    sub = p.add_subparsers(dest="command")

    c = sub.add_parser("compare", help="train and compare models on bars",
                       description="Train and compare models plus baselines on market bars.")
    src = c.add_argument_group("data")
    src.add_argument("--symbols", default="", help="comma-separated symbols (default: all)")
    src.add_argument("--interval", default=None,
                     help="bar interval (default: the one stored for --symbols when there is "
                          "only one, else 1m)")
    src.add_argument("--start", help="first bar time, ISO date/time UTC or epoch ms")
    src.add_argument("--end", help="end time (exclusive), ISO date/time UTC or epoch ms")
    src.add_argument("--simulate", type=int, metavar="N",
                     help="simulate N bars per symbol in memory instead of reading the store")
    src.add_argument("--seed", type=int, default=0, help="seed for simulation, splits and models")
    src.add_argument("--phi", type=float, help="simulated AR(1) signal in returns (0 = random walk)")
    src.add_argument("--seeds", type=int, default=1, metavar="K",
                     help="with --simulate: repeat the comparison on K simulated paths (seeds "
                          "SEED..SEED+K-1) and show the spread, so a one-off win shows as one")
    src.add_argument("--max-rows", type=int, default=500_000, help="hard bound on bars loaded")
    m = c.add_argument_group("experiment")
    m.add_argument("--features", default=DEFAULT_GROUP,
                   help=f"comma-separated groups or features (default: {DEFAULT_GROUP}); "
                        f"groups: {', '.join(FEATURE_GROUPS)}")
    m.add_argument("--target", default="next_return", choices=list(TARGETS))
    m.add_argument("--horizon", type=int, default=1, help="bars ahead for close_ahead")
    m.add_argument("--split", default="chronological", choices=list(SPLIT_METHODS))
    m.add_argument("--test-fraction", type=float, default=0.2)
    m.add_argument("--folds", type=int, default=5, help="walk-forward folds")
    m.add_argument("--gap", type=int, default=0, help="bars dropped between train and test")
    m.add_argument("--models", default=",".join(MODEL_KEYS),
                   help=f"comma-separated, from: {', '.join(MODEL_SPECS)} (baselines always run)")
    m.add_argument("--set", action="append", default=[], metavar="MODEL.PARAM=VALUE",
                   help="override a hyperparameter, e.g. random_forest.n_estimators=50")
    m.add_argument("--search", action="store_true", help="randomized search within training")
    m.add_argument("--budget", type=int, default=10, help="search iterations per model")
    m.add_argument("--n-jobs", type=int, default=1, help="threads per model (at most 2)")
    o = c.add_argument_group("output")
    o.add_argument("--json", action="store_true", help="print one JSON document")
    o.add_argument("--no-save", action="store_true", help="do not record the run in the store")
    o.add_argument("--quiet", action="store_true", help="no progress on stderr")
    c.set_defaults(func=_compare)

    f = sub.add_parser("features", help="list feature groups and their features")
    f.set_defaults(func=_features)
    r = sub.add_parser("runs", help="list model-lab runs recorded in the store")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=_runs)
    return p


def _compare(args) -> int:
    from models.lab import LabCancelled, LabConfig, LabError, run_comparison, save_run

    config = LabConfig(
        symbols=_csv(args.symbols), interval=args.interval, start_ms=_time(args.start, "--start"),
        end_ms=_time(args.end, "--end"), features=_csv(args.features) or [DEFAULT_GROUP],
        target=args.target, horizon=args.horizon, split=args.split,
        test_fraction=args.test_fraction, n_folds=args.folds, gap=args.gap,
        models=_models(args.models, args.set), search=args.search, search_budget=args.budget,
        seed=args.seed, n_jobs=args.n_jobs, max_rows=args.max_rows)
    store = None
    if args.simulate is None:
        store = data = _open_store()
        config.interval = args.interval or _stored_interval(store, config.symbols)
    else:
        config.interval = args.interval or "1m"
    _check(args, config)
    if args.seeds > 1:
        return _compare_seeds(args, config)
    if args.simulate is not None:
        data = _simulate(args, config)
    progress = None if args.quiet else _print_progress
    cancel = threading.Event()
    try:
        result = run_comparison(data, config, progress=progress, cancel=cancel)
    except LabCancelled as exc:
        raise UsageError(str(exc)) from None
    except LabError as exc:
        raise UsageError(str(exc)) from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if store is not None and not args.no_save:
        save_run(store, result)
    if args.json:
        print(json.dumps(_result_json(result), allow_nan=False, default=str))
    else:
        _print_result(result)
    return 0


def _check(args, config) -> None:
    if args.simulate is not None and args.simulate < 1:
        raise UsageError("--simulate needs a positive number of bars")
    if args.seeds < 1 or (args.seeds > 1 and args.simulate is None):
        raise UsageError("--seeds K needs K >= 1, and --simulate N when K > 1")
    if args.phi is not None and args.simulate is None:
        raise UsageError("--phi only applies with --simulate N")
    if args.phi is not None and not -1 < args.phi < 1:
        raise UsageError("--phi must be between -1 and 1")
    if not 0 < args.test_fraction < 1:
        raise UsageError("--test-fraction must be between 0 and 1")
    if args.horizon < 1:
        raise UsageError("--horizon must be at least 1")
    if args.folds < 1 or args.gap < 0 or args.budget < 1:
        raise UsageError("--folds and --budget must be at least 1 and --gap not negative")
    from models.features import expand_features

    if config.interval not in INTERVALS:
        raise UsageError(f"unknown interval {config.interval!r}; use one of {', '.join(INTERVALS)}")
    try:
        expand_features(config.features)
    except ValueError as exc:
        raise UsageError(str(exc).split("; use")[0] + f"; groups: {', '.join(FEATURE_GROUPS)}, "
                         f"{DEFAULT_GROUP} (see `python -m models features`)") from None


def _models(text: str, overrides: list[str]) -> list[tuple[str, dict]]:
    keys = _csv(text)
    params: dict[str, dict] = {}
    for item in overrides:
        name, sep, value = item.partition("=")
        key, dot, param = name.partition(".")
        if not sep or not dot:
            raise UsageError(f"--set expects MODEL.PARAM=VALUE, got {item!r}")
        try:
            spec = get_spec(key)
            params.setdefault(key, {}).update(coerce_params(spec, {param: value}))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if key not in keys:
            keys.append(key)
    try:
        for key in keys:
            get_spec(key)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not any(MODEL_SPECS[k].kind == "model" for k in keys):
        raise UsageError(f"--models needs at least one of {', '.join(MODEL_KEYS)}")
    return [(k, params.get(k, {})) for k in keys]


def _simulate(args, config) -> pd.DataFrame:
    from pipeline.sources.simulator import DEFAULT_SYMBOLS, MarketSimulator, SimulatorParams

    params = SimulatorParams() if args.phi is None else SimulatorParams(phi=args.phi)
    symbols = config.symbols or [DEFAULT_SYMBOLS[0]]
    sim = MarketSimulator(symbols, config.interval, seed=args.seed, bars=args.simulate,
                          params=params)
    if not args.quiet:
        print(f"simulating {args.simulate:,} {config.interval} bars for {', '.join(symbols)} "
              f"(seed {args.seed}, phi {params.phi:g})", file=sys.stderr)
    return pd.DataFrame([b.to_dict() for b in sim.bars(threading.Event())])


def _compare_seeds(args, config) -> int:
    """The comparison on ``--seeds`` simulated paths: per-seed readings and the spread."""
    from models.lab import LabError
    from models.seeds import run_seeds, seed_spread, simulated_bars

    def bars(seed: int) -> pd.DataFrame:
        return simulated_bars(seed, args.simulate, config.interval, args.phi, config.symbols)

    try:
        per_seed = run_seeds(bars, config, args.seeds,
                             progress=None if args.quiet else _print_progress)
    except (LabError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    spread = seed_spread(per_seed)
    if args.json:
        print(json.dumps({"config": config.to_dict(), "simulate": args.simulate,
                          "phi": args.phi, "seeds": list(range(args.seed,
                                                                args.seed + args.seeds)),
                          "per_seed": [json_safe(r) for r in per_seed.to_dict("records")],
                          "spread": [json_safe(r) for r in
                                     spread.reset_index().to_dict("records")]},
                         allow_nan=False, default=str))
        return 0
    with pd.option_context("display.width", 250, "display.max_columns", 20,
                           "display.max_colwidth", 80, "display.float_format", "{:.4g}".format):
        print(f"{args.seeds} simulated paths of {args.simulate:,} {config.interval} bars "
              f"(seeds {args.seed}..{args.seed + args.seeds - 1}, phi "
              f"{args.phi if args.phi is not None else 'default'}) | target {config.target} | "
              f"split {config.split}")
        print(spread.to_string())
        print("per seed:")
        print(per_seed.pivot_table(index="model", columns="seed", values="skill",
                                   sort=False).to_string())
    return 0


def _stored_interval(store, symbols: list[str]) -> str:
    """The interval stored for all of ``symbols`` when there is exactly one; else 1m, or the
    choice the user has to make spelled out."""
    per_symbol = [set(store.list_intervals(s)) for s in symbols] if symbols \
        else [set(store.list_intervals())]
    common = set.intersection(*per_symbol) if per_symbol else set()
    if len(common) == 1:
        return common.pop()
    if "1m" in common or not common:
        return "1m"
    ordered = [i for i in INTERVALS if i in common]
    raise UsageError(f"{', '.join(symbols) or 'the store'} has bars at {', '.join(ordered)}; "
                     "choose one with --interval.")


def _open_store():
    from pipeline.contracts.config import load_config
    from pipeline.store import StoreUnavailable, open_store

    try:
        store = open_store(load_config())
        store.check()
    except (StoreUnavailable, ValueError) as exc:
        raise UsageError(str(exc)) from None
    return store


def _print_progress(fraction: float, message: str) -> None:
    print(f"[{fraction:4.0%}] {message}", file=sys.stderr, flush=True)


def _print_result(result) -> None:
    from models.metrics import METRIC_COLUMNS

    s = result.summary
    print(f"{', '.join(s['symbols'])} {s['interval']} | target {result.config.target} | "
          f"split {result.config.split} | train {s['n_train']:,} rows, test {s['n_test']:,} rows"
          f" | {len(s['features'])} features")
    from models.significance import SIGNIFICANCE_COLUMNS

    cols = [c for c in [*METRIC_COLUMNS, *SIGNIFICANCE_COLUMNS] if c in result.table.columns]
    table = result.table[cols].copy()
    with pd.option_context("display.width", 250, "display.max_columns", 30,
                           "display.float_format", "{:.6g}".format):
        print(table.to_string())
        if result.config.split == "walk_forward" and len(result.fold_table):
            print("per fold (walk-forward):")
            print(result.fold_table.to_string(index=False))
    errors = result.table["error"].dropna()
    for e in errors:
        print(f"! {e}")
    print(f"best: {result.best_label()}")
    for w in result.warnings:
        print(f"warning: {w}")
    for g in result.guidance:
        print(f"note: {g}")
    if result.best_params:
        print(f"best params: {json.dumps(result.best_params, default=str)}")
    if result.run_id:
        print(f"run saved: {result.run_id}")


def _result_json(result) -> dict:
    table = [json_safe(row) for row in result.table.reset_index().to_dict("records")]
    folds = [json_safe(row) for row in result.fold_table.to_dict("records")]
    return {"run_id": result.run_id, "config": result.config.to_dict(),
            "summary": result.summary, "best_model": result.best_label(), "table": table,
            "fold_table": folds,
            "best_params": result.best_params, "guidance": result.guidance,
            "warnings": result.warnings}


def _features(args) -> int:
    print(f"{DEFAULT_GROUP}: {', '.join(DEFAULT_FEATURES)}  (lookback "
          f"{max_lookback(DEFAULT_FEATURES)} bars)")
    for group, names in FEATURE_GROUPS.items():
        print(f"{group}: {', '.join(names)}  (lookback {max_lookback(names)} bars)")
    return 0


def _runs(args) -> int:
    from models.lab import list_runs

    runs = list_runs(_open_store())
    if args.json:
        print(runs.to_json(orient="records", date_format="iso"))
    elif runs.empty:
        print("no model-lab runs recorded yet")
    else:
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            print(runs.to_string(index=False))
    return 0


def _csv(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _time(text: str | None, flag: str) -> int | None:
    if text is None:
        return None
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{flag} {text!r} is not an ISO date/time (2025-01-31T14:00) nor epoch "
                         "ms") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


if __name__ == "__main__":
    sys.exit(main())
