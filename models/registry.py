"""Model versions and champions, kept in the store (one contract for SQLite and Elasticsearch).

A *model version* is a fitted estimator (pickled) plus the metadata needed to use it honestly
elsewhere: the feature names in order, the target and horizon, the interval and symbols it was
trained on, the training time range, its lab metrics and the sha256 of the blob.

Each *scope* (``"global"`` or a symbol) has at most one ``champion``: the version the live
scorer uses. The champion of a scope is one document in the store's ``champions`` collection
(id = scope), changed only by a compare-and-set (:meth:`Store.replace_doc_if`), so two
concurrent promotions can never leave two champions: the second re-reads and goes after the
first. The ``status`` field of the version documents (champion / retired / candidate) is kept
for display and follows the pointer. :func:`promote` makes a version champion and retires the
previous one, recording a ``promotion`` event with the figures; :func:`rollback` brings back
the champion before it. A symbol scope without its own champion falls back to the global one.

The pickled estimator is a content-addressed artefact in the store (:meth:`Store.put_artefact`);
the version document holds its sha256, and the store caches artefacts by that hash.

Pickles execute code when loaded: only load versions from a store you trust.
"""
from __future__ import annotations

import hashlib
import pickle
import platform
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from models.features import max_lookback
from models.targets import get_target, to_close
from pipeline.store.base import CHAMPIONS, Store, now_ms

GLOBAL_SCOPE = "global"
CANDIDATE, CHAMPION, RETIRED = "candidate", "champion", "retired"

_REQUIRED = ("name", "model_key", "features", "target")
_PROMOTE_ATTEMPTS = 10


@dataclass
class LoadedModel:
    """A model version ready to predict from a feature frame (see :mod:`models.features`)."""

    meta: dict[str, Any]
    model: Any = field(repr=False)

    @property
    def version_id(self) -> str:
        return self.meta["version_id"]

    @property
    def features(self) -> list[str]:
        return list(self.meta["features"])

    @property
    def target(self) -> str:
        return self.meta["target"]

    @property
    def horizon(self) -> int:
        return int(self.meta.get("horizon") or 1)

    @property
    def lookback(self) -> int:
        """Bars of history the scorer must keep to compute this model's features exactly."""
        return max_lookback(self.features)

    def predict(self, features_df: pd.DataFrame) -> np.ndarray:
        """Predictions of the target for each row; NaN where a feature is missing (warm-up)."""
        missing = [f for f in self.features if f not in features_df.columns]
        if missing:
            raise ValueError(f"the feature frame lacks {', '.join(missing)} for model "
                             f"{self.meta.get('version_id')}")
        X = features_df[self.features].astype("float64")
        ok = np.isfinite(X.to_numpy()).all(axis=1)
        out = np.full(len(X), np.nan)
        if ok.any():
            out[ok] = np.asarray(self.model.predict(X[ok]), dtype="float64").ravel()
        return out

    def predict_close(self, features_df: pd.DataFrame, base_close) -> np.ndarray:
        """Predictions converted to a predicted close (``base_close``: the row's own close)."""
        return to_close(self.target, self.predict(features_df), base_close)


def save_model_version(store: Store, model: Any, meta: dict[str, Any]) -> str:
    """Pickle ``model`` and store it with ``meta``; returns the new version id.

    ``meta`` needs ``name``, ``model_key``, ``features``, ``target``; ``params``, ``horizon``,
    ``interval``, ``symbols``, ``train_start_ms``, ``train_end_ms``, ``metrics``, ``status``
    (default ``candidate``) and ``scope`` (default ``global``) are recommended.
    """
    missing = [k for k in _REQUIRED if not meta.get(k)]
    if missing:
        raise ValueError(f"model version metadata lacks {', '.join(missing)}")
    blob = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
    doc = {
        "params": {}, "horizon": 1, "interval": None, "symbols": [], "train_start_ms": None,
        "train_end_ms": None, "metrics": {}, "status": CANDIDATE, "scope": GLOBAL_SCOPE,
        **meta,
    }
    doc["features"] = list(doc["features"])
    doc["lookback"] = max_lookback(doc["features"])
    doc["content_hash"] = hashlib.sha256(blob).hexdigest()
    doc["created_ms"] = int(meta.get("created_ms") or now_ms())
    doc["blob_bytes"] = len(blob)
    doc.setdefault("runtime", _runtime())
    status = doc["status"]
    if status == CHAMPION and champion_refusal(doc["target"]):
        raise ValueError(f"{doc['name']} cannot be saved as champion: "
                         f"{champion_refusal(doc['target'])}")
    if status == CHAMPION:  # a champion only ever comes from promote(), which retires the old one
        doc["status"] = CANDIDATE
    version_id = store.save_model_version(doc, blob)
    if status == CHAMPION:
        promote(store, version_id, doc["scope"], reason="saved as champion")
    return version_id


def load_model_version(store: Store, version_id: str) -> LoadedModel:
    found = store.get_model_version(version_id)
    if found is None:
        raise KeyError(f"model version {version_id} not found")
    meta, blob = found
    expected = meta.get("content_hash")
    if expected and hashlib.sha256(blob).hexdigest() != expected:
        raise ValueError(f"model version {version_id} is corrupt: its content hash differs")
    return LoadedModel(meta=meta, model=pickle.loads(blob))


def list_versions(store: Store, scope: str | None = None) -> list[dict[str, Any]]:
    """Version metadata, newest first (optionally only one scope)."""
    return store.list_model_versions(where={"scope": scope} if scope else None)


def get_champion(store: Store, scope: str = GLOBAL_SCOPE) -> dict[str, Any] | None:
    """The champion's metadata for ``scope``; a symbol scope falls back to the global one."""
    meta = _champion_meta(store, scope)
    if meta is None and scope != GLOBAL_SCOPE:
        return get_champion(store, GLOBAL_SCOPE)
    return meta


def champions(store: Store) -> dict[str, dict[str, Any]]:
    """Every scope's champion metadata in one listing: ``{scope: meta}`` (the scorer's
    refresh; a symbol missing here uses ``"global"``, as in :func:`get_champion`)."""
    out: dict[str, dict[str, Any]] = {}
    for pointer in _pointers(store):
        found = store.get_doc("model_versions", pointer["version_id"])
        if found is not None:
            found.pop("blob_b64", None)
            out[pointer["scope"]] = found
    return out


def champion_refusal(target: str | None) -> str | None:
    """Why a model of ``target`` may not be champion (one sentence), or None if it may.

    The live scorer predicts the *next* bar; a target known only when its own bar is over
    (the seed's same-bar close from volume) cannot be served, so it is refused here, before
    the scorer would have to reject it and silently keep the previous champion.
    """
    try:
        spec = get_target(target or "")
    except ValueError:
        return f"its target {target!r} is unknown, so the live scorer cannot use it"
    if not spec.is_forecast:
        return (f"its target ({spec.label}) is not a forecast: it is known only when its own "
                "bar is over, so the live scorer cannot predict with it; train a next close, "
                "close h bars ahead or next return model instead")
    return None


def promote(store: Store, version_id: str, scope: str = GLOBAL_SCOPE,
            reason: str = "manual") -> dict[str, Any]:
    """Make ``version_id`` the one champion of ``scope``; returns its updated metadata."""
    return _promote(store, version_id, scope, reason, record_previous=True)


def promoted_by_hand(meta: dict[str, Any]) -> bool:
    """True when a person made this version champion (Predictions page, Model lab, the CLI,
    a rollback), not the scorer's bootstrap or one of its retrains."""
    reason = str(meta.get("promotion_reason") or "")
    return bool(reason) and not (reason.startswith("bootstrap") or " retrain: " in reason)


def rollback(store: Store, scope: str = GLOBAL_SCOPE,
             reason: str = "rollback") -> dict[str, Any]:
    """Bring back the champion that preceded the current one in ``scope``.

    Repeated rollbacks walk further back along the promotion history.
    """
    current = _champion_meta(store, scope)
    if current is None:
        raise LookupError(f"scope {scope!r} has no champion to roll back")
    previous_id = current.get("previous_version_id")
    if not previous_id or store.get_doc("model_versions", previous_id) is None:
        raise LookupError(f"the champion of scope {scope!r} has no previous champion to restore")
    return _promote(store, previous_id, scope, reason, record_previous=False,
                    expected_version_id=current["version_id"])


# ---------------------------------------------------------------------------------------------

def _pointers(store: Store) -> list[dict[str, Any]]:
    """The champion documents, adopting champions of stores written before pointers existed
    (the newest version whose status says champion, per scope)."""
    pointers = store.list_docs(CHAMPIONS)
    have = {p["scope"] for p in pointers}
    legacy: dict[str, dict[str, Any]] = {}
    for meta in store.list_model_versions(where={"status": CHAMPION}):
        legacy.setdefault(meta.get("scope") or GLOBAL_SCOPE, meta)  # newest first
    for scope, meta in legacy.items():
        if scope in have:
            continue
        pointer = _pointer_doc(scope, meta["version_id"], meta.get("previous_version_id"),
                               meta.get("promoted_ms") or meta.get("created_ms") or now_ms(),
                               meta.get("promotion_reason") or "adopted")
        store.replace_doc_if(CHAMPIONS, scope, pointer, expected=None)
        pointers.append(store.get_doc(CHAMPIONS, scope) or pointer)
    return pointers


def _pointer(store: Store, scope: str) -> dict[str, Any] | None:
    found = store.get_doc(CHAMPIONS, scope)
    if found is not None:
        return found
    return next((p for p in _pointers(store) if p["scope"] == scope), None)


def _champion_meta(store: Store, scope: str) -> dict[str, Any] | None:
    pointer = _pointer(store, scope)
    if pointer is None:
        return None
    meta = store.get_doc("model_versions", pointer["version_id"])
    if meta is not None:
        meta.pop("blob_b64", None)
    return meta


def _pointer_doc(scope: str, version_id: str, previous_version_id: str | None,
                 promoted_ms: int, reason: str) -> dict[str, Any]:
    return {"scope": scope, "version_id": version_id, "previous_version_id": previous_version_id,
            "promoted_ms": int(promoted_ms), "reason": reason, "created_ms": int(promoted_ms)}


def _promote(store: Store, version_id: str, scope: str, reason: str, record_previous: bool,
             expected_version_id: str | None = None) -> dict[str, Any]:
    meta = store.get_doc("model_versions", version_id)
    if meta is None:
        raise KeyError(f"model version {version_id} not found")
    meta.pop("blob_b64", None)
    refusal = champion_refusal(meta.get("target"))
    if refusal:
        raise ValueError(f"{version_id} cannot be champion: {refusal}")
    for _ in range(_PROMOTE_ATTEMPTS):
        current = _pointer(store, scope)
        if expected_version_id is not None and (current or {}).get("version_id") \
                != expected_version_id:
            raise LookupError(f"the champion of scope {scope!r} changed meanwhile; look again "
                              "before rolling back")
        now = now_ms()
        previous_id = current["version_id"] if current else None
        if previous_id == version_id:
            previous_id = current.get("previous_version_id")
        chain = previous_id if record_previous else meta.get("previous_version_id")
        pointer = _pointer_doc(scope, version_id, chain, now, reason)
        if store.replace_doc_if(CHAMPIONS, scope, pointer, expected=current):
            break
    else:
        raise RuntimeError(f"could not promote {version_id}: the champion of {scope!r} kept "
                           "changing; try again")
    # The pointer is the truth; the status fields follow it for display.
    old_id = current["version_id"] if current and current["version_id"] != version_id else None
    stale = {m["version_id"] for m in store.list_model_versions(
        where={"status": CHAMPION, "scope": scope})} | ({old_id} if old_id else set())
    for vid in stale - {version_id}:
        try:
            store.update_model_version(vid, status=RETIRED, retired_ms=now,
                                       retired_reason=reason)
        except KeyError:  # the version was deleted meanwhile: nothing left to mark retired
            pass
    changes: dict[str, Any] = {"status": CHAMPION, "scope": scope, "promoted_ms": now,
                               "promotion_reason": reason}
    if record_previous:
        changes["previous_version_id"] = chain
    store.update_model_version(version_id, **changes)
    old = store.get_doc("model_versions", old_id) if old_id else None
    store.record_event(
        "promotion", scope=scope, reason=reason, version_id=version_id,
        name=meta.get("name"), model_key=meta.get("model_key"), target=meta.get("target"),
        metrics=meta.get("metrics") or {},
        previous_version_id=old_id,
        previous_metrics=(old.get("metrics") or {}) if old else {},
    )
    meta.update(changes)
    return meta


def _runtime() -> dict[str, str]:
    import sklearn

    versions = {"python": platform.python_version(), "sklearn": sklearn.__version__}
    try:
        import xgboost

        versions["xgboost"] = xgboost.__version__
    except ImportError:  # pragma: no cover
        pass
    return versions
