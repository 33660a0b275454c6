"""The champions the live scorer follows: one per scope (a symbol, or ``global``), re-read
from the store every few seconds so promotions and rollbacks (by hand, by a retrain, or by
another process) take effect without a restart."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from models.registry import champions
from models.registry import GLOBAL_SCOPE, LoadedModel, load_model_version
from models.targets import get_target
from pipeline.store.base import Store

log = logging.getLogger(__name__)


@dataclass
class ChampionChanges:
    """What one refresh found: newly followed champions, scopes dropped, unusable ones."""

    loaded: list[LoadedModel] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.loaded or self.dropped)


class ChampionBook:
    """``{scope: LoadedModel}`` of the current champions, refreshed every ``refresh_s``.

    ``check(features)`` raises ``ValueError`` for features the scorer cannot compute live (bar
    features without a streaming form, news features without a news stream); such a champion
    is refused as not usable, and the scope keeps the model it had.
    """

    def __init__(self, store: Store, refresh_s: float = 2.0,
                 check: Callable[[list[str]], object] | None = None):
        self.store = store
        self.check = check
        self.refresh_s = refresh_s
        self.models: dict[str, LoadedModel] = {}
        self.scopes: set[str] = set()  # scopes with a champion in the store (usable or not)
        self._last = 0.0

    @property
    def has_global(self) -> bool:
        return GLOBAL_SCOPE in self.scopes

    def model_for(self, symbol: str, interval: str) -> LoadedModel | None:
        """A symbol's own champion, else the global one; None for another bar interval."""
        model = self.models.get(symbol) or self.models.get(GLOBAL_SCOPE)
        if model is None:
            return None
        model_interval = model.meta.get("interval")
        if model_interval and model_interval != interval:
            return None  # a model of 1m bars says nothing about hourly ones
        return model

    def main(self) -> LoadedModel | None:
        return self.models.get(GLOBAL_SCOPE) or next(iter(self.models.values()), None)

    def refresh(self, force: bool = False) -> ChampionChanges:
        changes = ChampionChanges()
        now = time.time()
        if not force and now - self._last < self.refresh_s:
            return changes
        self._last = now
        try:
            metas = champions(self.store)
        except Exception as exc:
            changes.errors.append(f"could not read the champions: {type(exc).__name__}: {exc}")
            return changes
        self.scopes = set(metas)
        for scope, meta in metas.items():
            current = self.models.get(scope)
            if current is not None and current.version_id == meta["version_id"]:
                continue
            try:
                model = load_model_version(self.store, meta["version_id"])
                if not get_target(model.target).is_forecast:
                    raise ValueError(f"its target {model.target!r} is not a forecast")
                model.lookback  # validates the feature names
                if self.check is not None:
                    self.check(model.features)
            except Exception as exc:
                changes.errors.append(f"champion {meta['version_id']} ({scope}) is not usable: "
                                      f"{exc}")
                continue
            self.models[scope] = model
            changes.loaded.append(model)
            log.info("scorer: champion of %s is %s (%s, %s)", scope, model.version_id,
                     model.meta.get("name"), model.target)
        for scope in [s for s in self.models if s not in metas]:
            del self.models[scope]  # rolled back to nothing, or deleted
            changes.dropped.append(scope)
        return changes
