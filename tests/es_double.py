"""EsTestServer: a TEST DOUBLE of the Elasticsearch REST API on loopback. It is NOT Elasticsearch.

It exists so the Elasticsearch store backend can be exercised through the official
``elasticsearch`` client over real HTTP on machines without a cluster (CI, this sandbox). It
implements only what :mod:`pipeline.store.elasticsearch` calls, in memory, single shard:

* ``GET /`` (cluster info), ``PUT/GET/HEAD/DELETE /_index_template/{name}`` (composable
  templates: highest priority match applies to new indices), ``PUT/HEAD/GET/DELETE /{index}``
* ``POST /_bulk`` and ``/{index}/_bulk``: NDJSON with ``index``/``create``/``update``
  (``doc``, ``doc_as_upsert``, ``upsert``)/``delete`` and per-item results
* ``PUT|POST|GET|DELETE /{index}/_doc/{id}`` (with ``if_seq_no``/``if_primary_term``
  optimistic concurrency), ``PUT /{index}/_create/{id}``
* ``/{index}/_search``: ``bool`` (filter/must/must_not/should), ``term``, ``terms``,
  ``range``, ``exists``, ``match_all``; ``sort``, ``size``, ``from`` (within the
  10,000 result window), ``search_after``; aggregations ``date_histogram`` (fixed_interval),
  ``terms``, ``composite`` (terms sources), ``min``/``max``/``sum``/``avg``/``value_count``,
  ``top_metrics``, ``bucket_sort``
* ``/{index}/_count``, ``/{index}/_delete_by_query``, ``/_refresh``, ``/{index}/_refresh``

Honest about the parts the backend relies on: near-real-time visibility (writes are visible
to search and count only after a refresh: ``?refresh=true|wait_for`` or ``_refresh``; GET by
id is realtime), mapping checks (``dynamic: strict``, numeric/date parsing answers
``mapper_parsing_exception``, ``enabled: false`` objects are stored but not searchable,
``flattened`` leaves are keywords), ``X-Elastic-Product: Elasticsearch`` on every response
and the 9.x compatible media type. Unknown queries, aggregations and endpoints answer 400
so the double cannot silently pretend. Not modelled: text analysis, scoring, shards and
replicas, scripts, aliases, wildcard index expressions, persistence.

Knobs for failure tests: ``api_key`` / ``basic_auth`` (401 without them),
``forbid_paths`` (403), :meth:`throttle` (per-item 429/503 a number of times, then
success), ``reject_ids`` (per-item ``mapper_parsing_exception``), :meth:`fail_requests`
(whole-request errors). ``item_attempts`` counts how often each bulk item was received.
"""
from __future__ import annotations

import base64
import copy
import datetime as _dt
import fnmatch
import json
import math
import re
import socket
import threading
import urllib.parse
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["EsTestServer"]

VERSION = "9.1.0"
MAX_RESULT_WINDOW = 10_000
_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


class EsError(Exception):
    """An error answered in Elasticsearch's JSON error shape."""

    def __init__(self, status: int, type_: str, reason: str, **extra: Any):
        super().__init__(reason)
        self.status, self.type, self.reason, self.extra = status, type_, reason, extra

    def body(self) -> dict[str, Any]:
        cause = {"type": self.type, "reason": self.reason, **self.extra}
        return {"error": {"root_cause": [cause], **cause}, "status": self.status}


class EsTestServer:
    """In-memory Elasticsearch REST test double on ``127.0.0.1`` (port chosen by the OS).

    :param api_key: if set, requests must send ``Authorization: ApiKey <api_key>``.
    :param basic_auth: ``(user, password)``; if set, ``Authorization: Basic`` must match.
        With both set, either is accepted.
    :param version: version reported by ``GET /``; below 9, requests from a 9.x client are
        refused with ``media_type_header_exception`` as an 8.x server does.
    """

    def __init__(self, *, api_key: str | None = None,
                 basic_auth: tuple[str, str] | None = None, version: str = VERSION):
        self.api_key = api_key
        self.basic_auth = basic_auth
        self.version = version
        self.forbid_paths: set[str] = set()
        self.reject_ids: set[str] = set()
        self.item_attempts: Counter[str] = Counter()
        self.requests: deque[tuple[str, str, Any]] = deque(maxlen=5000)
        self._throttled: dict[str | None, list[int]] = {}  # id -> [times left, status]
        self._failures: list[list[Any]] = []  # [status, times left, path substring]
        self._templates: dict[str, dict[str, Any]] = {}
        self._indices: dict[str, _Index] = {}
        self._lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()  # open keep-alive connections
        self._thread: threading.Thread | None = None
        self.url: str | None = None

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self, port: int = 0) -> str:
        """Serve in a background thread; return the base URL (``http://127.0.0.1:PORT``).
        ``port`` restarts a stopped double on its old port (its data is kept)."""
        handler = type("Handler", (_Handler,), {"double": self})
        ThreadingHTTPServer.allow_reuse_address = True
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        name="es-test-double", daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        return self.url

    def stop(self) -> None:
        """Stop serving and cut every open keep-alive connection (a real outage)."""
        with self._lock:
            for conn in list(self._connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._connections.clear()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "EsTestServer":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---- knobs ---------------------------------------------------------------------------
    def throttle(self, ids: set[str] | None = None, times: int = 1, status: int = 429) -> None:
        """Answer bulk items with ``ids`` (all items if None) ``status`` (429 or 503) for
        their next ``times`` attempts, then process them normally."""
        with self._lock:
            for key in (ids if ids is not None else [None]):
                self._throttled[key] = [times, status]

    def fail_requests(self, status: int, times: int = 1, path_contains: str = "") -> None:
        """Answer the next ``times`` requests whose path contains ``path_contains`` with a
        whole-request error ``status``."""
        with self._lock:
            self._failures.append([status, times, path_contains])

    def doc_count(self, index: str, searchable: bool = False) -> int:
        with self._lock:
            idx = self._indices.get(index)
            if idx is None:
                return 0
            return len(idx.visible if searchable else idx.docs)

    def index_names(self) -> list[str]:
        with self._lock:
            return sorted(self._indices)

    # ---- dispatch ------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, str], headers: Any,
               raw: bytes) -> tuple[int, Any]:
        self._authenticate(headers)
        if int(self.version.split(".")[0]) < 9 and "compatible-with=9" in headers.get("Accept", ""):
            raise EsError(400, "media_type_header_exception",
                          "Invalid media-type value on headers [Accept, Content-Type]",
                          caused_by={"type": "status_exception", "reason":
                                     "Accept version must be either version 8 or 7, but found 9."})
        for needle in self.forbid_paths:
            if needle in path:
                raise EsError(403, "security_exception",
                              f"action [{method} {path}] is unauthorized for user [test]")
        with self._lock:
            for failure in self._failures:
                status, left, needle = failure
                if left > 0 and needle in path:
                    failure[1] -= 1
                    raise EsError(status, "es_rejected_execution_exception" if status == 429
                                  else "unavailable_shards_exception",
                                  f"simulated {status} by EsTestServer")
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/") if p]
        body = None
        if raw and not parts[-1:] == ["_bulk"]:
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise EsError(400, "x_content_parse_exception", f"invalid JSON: {exc}") from None
        self.requests.append((method, path, body if body is not None else query))
        with self._lock:
            return self._route(method, parts, query, body, raw)

    def _route(self, method: str, parts: list[str], query: dict[str, str], body: Any,
               raw: bytes) -> tuple[int, Any]:
        refresh = query.get("refresh") in ("", "true", "wait_for")
        if not parts:
            if method in ("GET", "HEAD"):
                return 200, self._info()
        elif parts[0] == "_index_template" and len(parts) == 2:
            return self._template(method, parts[1], body)
        elif parts == ["_bulk"]:
            return self._bulk(None, raw, refresh)
        elif parts == ["_refresh"]:
            for idx in self._indices.values():
                idx.refresh()
            return 200, _shards()
        elif parts[0].startswith("_"):
            pass
        elif len(parts) == 1:
            return self._index_admin(method, parts[0], body)
        elif len(parts) == 2 and parts[1] == "_bulk":
            return self._bulk(parts[0], raw, refresh)
        elif len(parts) == 2 and parts[1] == "_refresh":
            self._get_index(parts[0]).refresh()
            return 200, _shards()
        elif len(parts) == 2 and parts[1] in ("_search", "_count", "_delete_by_query"):
            idx = self._get_index(parts[0])
            if parts[1] == "_search":
                return 200, idx.search(body or {}, query)
            if parts[1] == "_count":
                return 200, {"count": len(idx.matching((body or {}).get("query"))),
                             "_shards": _shards()["_shards"]}
            deleted = [i for i, _ in idx.matching((body or {}).get("query"))]
            for doc_id in deleted:
                idx.delete(doc_id)
            if refresh:
                idx.refresh()
            return 200, {"deleted": len(deleted), "total": len(deleted), "failures": []}
        elif len(parts) == 3 and parts[1] in ("_doc", "_create"):
            return self._single(method, parts[0], parts[1], parts[2], body, refresh, query)
        raise EsError(400, "illegal_argument_exception",
                      f"EsTestServer does not implement [{method} /{'/'.join(parts)}]")

    # ---- endpoints -----------------------------------------------------------------------
    def _authenticate(self, headers: Any) -> None:
        if self.api_key is None and self.basic_auth is None:
            return
        auth = headers.get("Authorization", "")
        if self.api_key is not None and auth == f"ApiKey {self.api_key}":
            return
        if self.basic_auth is not None:
            token = base64.b64encode(":".join(self.basic_auth).encode()).decode()
            if auth == f"Basic {token}":
                return
        raise EsError(401, "security_exception",
                      "unable to authenticate with provided credentials for REST request"
                      if auth else "missing authentication credentials for REST request",
                      header={"WWW-Authenticate": ['Basic realm="security"', "ApiKey"]})

    def _info(self) -> dict[str, Any]:
        return {"name": "es-test-double", "cluster_name": "es-test-double",
                "cluster_uuid": "test-double", "tagline": "You Know, for Search",
                "version": {"number": self.version, "build_flavor": "default",
                            "lucene_version": "10.0.0",
                            "minimum_wire_compatibility_version": "8.18.0",
                            "minimum_index_compatibility_version": "8.0.0"}}

    def _template(self, method: str, name: str, body: Any) -> tuple[int, Any]:
        if method in ("PUT", "POST"):
            if not body or "index_patterns" not in body:
                raise EsError(400, "action_request_validation_exception",
                              "Validation Failed: 1: index patterns are missing;")
            self._templates[name] = body
            return 200, {"acknowledged": True}
        if name not in self._templates:
            raise EsError(404, "resource_not_found_exception",
                          f"index template matching [{name}] not found")
        if method == "DELETE":
            del self._templates[name]
            return 200, {"acknowledged": True}
        return 200, {"index_templates": [{"name": name,
                                          "index_template": self._templates[name]}]}

    def _index_admin(self, method: str, name: str, body: Any) -> tuple[int, Any]:
        if method == "PUT":
            if name in self._indices:
                raise EsError(400, "resource_already_exists_exception",
                              f"index [{name}/test] already exists", index=name)
            self._create_index(name, body or {})
            return 200, {"acknowledged": True, "shards_acknowledged": True, "index": name}
        idx = self._get_index(name)
        if method == "DELETE":
            del self._indices[name]
            return 200, {"acknowledged": True}
        if method in ("GET", "HEAD"):
            return 200, {name: {"aliases": {}, "mappings": idx.mappings,
                                "settings": {"index": idx.settings}}}
        raise EsError(405, "illegal_argument_exception", f"{method} not allowed on an index")

    def _create_index(self, name: str, body: dict[str, Any]) -> "_Index":
        matches = [t for t in self._templates.values()
                   if any(fnmatch.fnmatchcase(name, p) for p in t["index_patterns"])]
        template = max(matches, key=lambda t: t.get("priority", 0), default={})
        tpl = template.get("template", {})
        mappings = copy.deepcopy(tpl.get("mappings", {}))
        mappings.update(copy.deepcopy(body.get("mappings", {})))
        settings = {**tpl.get("settings", {}), **body.get("settings", {})}
        self._indices[name] = idx = _Index(name, mappings, settings)
        return idx

    def _get_index(self, name: str) -> "_Index":
        idx = self._indices.get(name)
        if idx is None:
            raise EsError(404, "index_not_found_exception", f"no such index [{name}]",
                          index=name, **{"resource.type": "index_or_alias",
                                         "resource.id": name})
        return idx

    def _single(self, method: str, index: str, kind: str, doc_id: str, body: Any,
                refresh: bool, query: dict[str, str] | None = None) -> tuple[int, Any]:
        query = query or {}
        if method in ("PUT", "POST"):
            idx = self._indices.get(index) or self._create_index(index, {})
            if (kind == "_create" or query.get("op_type") == "create") and doc_id in idx.docs:
                raise EsError(409, "version_conflict_engine_exception",
                              f"[{doc_id}]: version conflict, document already exists")
            if "if_seq_no" in query:  # optimistic concurrency control
                current = idx.doc_seq.get(doc_id) if doc_id in idx.docs else None
                if current is None or current != int(query["if_seq_no"]) \
                        or query.get("if_primary_term", "1") != "1":
                    raise EsError(409, "version_conflict_engine_exception",
                                  f"[{doc_id}]: version conflict, required seqNo "
                                  f"[{query['if_seq_no']}], current [{current}]")
            result = idx.put(doc_id, body or {})
            if refresh:
                idx.refresh()
            return (201 if result == "created" else 200), idx.meta(doc_id, result)
        idx = self._get_index(index)
        if method in ("GET", "HEAD"):
            source = idx.get(doc_id)
            if source is None:
                return 404, {"_index": index, "_id": doc_id, "found": False}
            return 200, {**idx.meta(doc_id), "found": True, "_source": source}
        if method == "DELETE":
            if idx.get(doc_id) is None:
                return 404, {**idx.meta(doc_id, "not_found")}
            idx.delete(doc_id)
            if refresh:
                idx.refresh()
            return 200, idx.meta(doc_id, "deleted")
        raise EsError(405, "illegal_argument_exception", f"{method} not allowed on a document")

    def _bulk(self, path_index: str | None, raw: bytes, refresh: bool) -> tuple[int, Any]:
        lines = [ln for ln in raw.split(b"\n") if ln.strip()]
        items: list[dict[str, Any]] = []
        touched: set[str] = set()
        i = 0
        while i < len(lines):
            try:
                header = json.loads(lines[i])
                (op, meta), = header.items()
            except ValueError as exc:
                raise EsError(400, "illegal_argument_exception",
                              f"Malformed action/metadata line [{i + 1}]: {exc}") from None
            i += 1
            source = None
            if op != "delete":
                if i >= len(lines):
                    raise EsError(400, "illegal_argument_exception",
                                  "The bulk request must be terminated by a newline [\\n]")
                source = json.loads(lines[i])
                i += 1
            index = meta.get("_index", path_index)
            doc_id = meta.get("_id") or f"auto-{len(items)}-{id(source)}"
            items.append({op: self._bulk_item(op, index, doc_id, source, touched)})
        if refresh:
            for name in touched:
                self._indices[name].refresh()
        return 200, {"took": 1, "errors": any(next(iter(it.values())).get("error")
                                              for it in items), "items": items}

    def _bulk_item(self, op: str, index: str, doc_id: str, source: Any,
                   touched: set[str]) -> dict[str, Any]:
        self.item_attempts[doc_id] += 1
        throttle = self._throttled.get(doc_id) or self._throttled.get(None)
        try:
            if throttle and throttle[0] > 0:
                throttle[0] -= 1
                raise EsError(throttle[1], "es_rejected_execution_exception" if throttle[1] == 429
                              else "unavailable_shards_exception",
                              f"rejected execution of bulk item [{doc_id}] "
                              "(simulated by EsTestServer)")
            if doc_id in self.reject_ids:
                raise EsError(400, "mapper_parsing_exception",
                              f"failed to parse document with id '{doc_id}' "
                              "(rejected by EsTestServer.reject_ids)")
            idx = self._indices.get(index) or self._create_index(index, {})
            touched.add(index)
            if op in ("index", "create"):
                if op == "create" and doc_id in idx.docs:
                    raise EsError(409, "version_conflict_engine_exception",
                                  f"[{doc_id}]: version conflict, document already exists")
                result = idx.put(doc_id, source)
            elif op == "update":
                result = idx.update(doc_id, source)
            elif op == "delete":
                if idx.get(doc_id) is None:
                    return {**idx.meta(doc_id, "not_found"), "status": 404}
                idx.delete(doc_id)
                result = "deleted"
            else:
                raise EsError(400, "illegal_argument_exception", f"Unknown action [{op}]")
            return {**idx.meta(doc_id, result), "status": 201 if result == "created" else 200}
        except EsError as err:
            return {"_index": index, "_id": doc_id, "status": err.status,
                    "error": {"type": err.type, "reason": err.reason}}


class _Index:
    """One single-shard index: ``docs`` is the realtime view (GET), ``visible`` the view
    of the last refresh (search, count)."""

    def __init__(self, name: str, mappings: dict[str, Any], settings: dict[str, Any]):
        self.name, self.mappings, self.settings = name, mappings, settings
        self.docs: dict[str, dict[str, Any]] = {}
        self.visible: dict[str, dict[str, Any]] = {}
        self._pending: dict[str, dict[str, Any] | None] = {}
        self.versions: Counter[str] = Counter()
        self.seq_no = 0
        self.doc_seq: dict[str, int] = {}  # each document's _seq_no (its last write)

    # ---- writes --------------------------------------------------------------------------
    def put(self, doc_id: str, source: dict[str, Any]) -> str:
        self._validate(doc_id, source)
        result = "updated" if doc_id in self.docs else "created"
        self._store(doc_id, source)
        return result

    def update(self, doc_id: str, body: dict[str, Any]) -> str:
        unknown = set(body) - {"doc", "doc_as_upsert", "upsert", "detect_noop"}
        if unknown:
            raise EsError(400, "x_content_parse_exception",
                          f"EsTestServer: unsupported update keys {sorted(unknown)}")
        current = self.docs.get(doc_id)
        if current is None:
            if body.get("doc_as_upsert"):
                return self.put(doc_id, body.get("doc", {}))
            if "upsert" in body:
                return self.put(doc_id, body["upsert"])
            raise EsError(404, "document_missing_exception", f"[{doc_id}]: document missing")
        merged = _deep_merge(current, body.get("doc", {}))
        if merged == current and body.get("detect_noop", True):
            return "noop"
        self._validate(doc_id, merged)
        self._store(doc_id, merged)
        return "updated"

    def delete(self, doc_id: str) -> None:
        self.docs.pop(doc_id, None)
        self._pending[doc_id] = None
        self.versions[doc_id] += 1

    def refresh(self) -> None:
        for doc_id, source in self._pending.items():
            if source is None:
                self.visible.pop(doc_id, None)
            else:
                self.visible[doc_id] = source
        self._pending.clear()

    def _store(self, doc_id: str, source: dict[str, Any]) -> None:
        self.docs[doc_id] = source
        self._pending[doc_id] = source
        self.versions[doc_id] += 1
        self.seq_no += 1
        self.doc_seq[doc_id] = self.seq_no

    def get(self, doc_id: str) -> dict[str, Any] | None:
        return self.docs.get(doc_id)

    def meta(self, doc_id: str, result: str | None = None) -> dict[str, Any]:
        out = {"_index": self.name, "_id": doc_id, "_version": self.versions[doc_id] or 1,
               "_seq_no": self.doc_seq.get(doc_id, self.seq_no), "_primary_term": 1}
        if result:
            out["result"] = result
            out["_shards"] = {"total": 1, "successful": 1, "failed": 0}
        return out

    # ---- mappings ------------------------------------------------------------------------
    def _validate(self, doc_id: str, source: Any) -> None:
        if not isinstance(source, dict):
            raise EsError(400, "mapper_parsing_exception", "failed to parse, document is empty")
        props = self.mappings.setdefault("properties", {})
        dynamic = str(self.mappings.get("dynamic", "true")).lower()
        for name, value in source.items():
            spec = props.get(name)
            if spec is None:
                if dynamic == "strict":
                    raise EsError(400, "strict_dynamic_mapping_exception",
                                  f"[1:2] mapping set to strict, dynamic introduction of "
                                  f"[{name}] within [_doc] is not allowed")
                if dynamic == "false" or value is None:
                    continue
                spec = props[name] = _dynamic_mapping(value)
            _parse_value(spec, name, value, doc_id)

    def field_type(self, field: str) -> tuple[str | None, str | None]:
        """(type, flattened key) of a searchable field; (None, None) if not searchable."""
        props = self.mappings.get("properties", {})
        if field in props:
            spec = props[field]
            if spec.get("enabled", True) is False or spec.get("type") in (None, "object"):
                return None, None
            return spec.get("type"), None
        head, _, key = field.partition(".")
        if key and props.get(head, {}).get("type") == "flattened":
            return "flattened", key
        return None, None

    def values(self, source: dict[str, Any], field: str) -> list[Any]:
        """Indexed values of ``field`` in a document (empty if absent or not indexed)."""
        ftype, key = self.field_type(field)
        if ftype is None:
            return []
        if ftype == "flattened":
            container = source.get(field.partition(".")[0])
            value = container.get(key) if isinstance(container, dict) else None
            ignore_above = self.mappings["properties"][field.partition(".")[0]].get(
                "ignore_above", 1 << 30)
            vals = value if isinstance(value, list) else [value]
            return [str(v).lower() if isinstance(v, bool) else str(v) for v in vals
                    if v is not None and not isinstance(v, dict) and len(str(v)) <= ignore_above]
        raw = source.get(field)
        vals = raw if isinstance(raw, list) else [raw]
        return [_coerce(ftype, v) for v in vals if v is not None]

    # ---- search --------------------------------------------------------------------------
    def matching(self, query: dict[str, Any] | None) -> list[tuple[str, dict[str, Any]]]:
        query = query or {"match_all": {}}
        return [(i, s) for i, s in self.visible.items() if self._match(s, query)]

    def _match(self, source: dict[str, Any], query: dict[str, Any]) -> bool:
        (kind, spec), = query.items()
        if kind == "match_all":
            return True
        if kind == "bool":
            def listed(key: str) -> list[dict[str, Any]]:
                v = spec.get(key, [])
                return v if isinstance(v, list) else [v]
            if not all(self._match(source, q) for q in listed("filter") + listed("must")):
                return False
            if any(self._match(source, q) for q in listed("must_not")):
                return False
            should = listed("should")
            if should and (not (listed("filter") or listed("must"))
                           or spec.get("minimum_should_match")):
                return any(self._match(source, q) for q in should)
            return True
        if kind in ("term", "terms", "range", "exists"):
            if kind == "exists":
                return bool(self.values(source, spec["field"]))
            (field, arg), = ((k, v) for k, v in spec.items() if k != "boost")
            ftype, _ = self.field_type(field)
            have = self.values(source, field)
            if kind == "term":
                wanted = arg["value"] if isinstance(arg, dict) else arg
                return _coerce(ftype, wanted) in have if ftype else False
            if kind == "terms":
                return bool({_coerce(ftype, w) for w in arg} & set(have)) if ftype else False
            checks = [(op, _coerce(ftype, arg[op])) for op in ("gt", "gte", "lt", "lte")
                      if arg.get(op) is not None]
            return any(all(_compare(v, op, bound) for op, bound in checks) for v in have)
        raise EsError(400, "parsing_exception", f"unknown query [{kind}] (EsTestServer)")

    def search(self, body: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
        known = {"query", "sort", "size", "from", "search_after", "aggs", "aggregations",
                 "track_total_hits", "_source"}
        unknown = set(body) - known
        if unknown:
            raise EsError(400, "parsing_exception",
                          f"EsTestServer: unsupported search keys {sorted(unknown)}")
        hits = self.matching(body.get("query"))
        size = int(body.get("size", params.get("size", 10)))
        start = int(body.get("from", params.get("from", 0)))
        if start + size > MAX_RESULT_WINDOW:
            raise EsError(400, "illegal_argument_exception",
                          f"Result window is too large, from + size must be less than or equal "
                          f"to: [{MAX_RESULT_WINDOW}] but was [{start + size}].")
        sort = _sort_spec(body.get("sort"))
        out: dict[str, Any] = {"took": 1, "timed_out": False, **_shards(),
                               "hits": {"total": {"value": len(hits), "relation": "eq"},
                                        "max_score": None, "hits": []}}
        aggs = body.get("aggs", body.get("aggregations"))
        if aggs:
            out["aggregations"] = self._aggregate(aggs, [s for _, s in hits])
        if size == 0:
            return out
        keyed = [(self._sort_values(doc_id, s, sort), doc_id, s) for doc_id, s in hits]
        keyed.sort(key=lambda k: _sort_key(k[0], sort))
        if "search_after" in body:
            if start:
                raise EsError(400, "illegal_argument_exception",
                              "Cannot use [from] parameter with [search_after]")
            after = _sort_key(body["search_after"], sort)
            keyed = [k for k in keyed if _sort_key(k[0], sort) > after]
        out["hits"]["hits"] = [
            {"_index": self.name, "_id": doc_id, "_score": None, "_source": s,
             **({"sort": vals} if body.get("sort") else {})}
            for vals, doc_id, s in keyed[start:start + size]
        ]
        return out

    def _sort_values(self, doc_id: str, source: dict[str, Any],
                     sort: list[tuple[str, str]]) -> list[Any]:
        out = []
        for field, order in sort:
            if field == "_doc":
                out.append(0)
                continue
            vals = self.values(source, field)
            out.append((min(vals) if order == "asc" else max(vals)) if vals else None)
        return out

    # ---- aggregations --------------------------------------------------------------------
    def _aggregate(self, aggs: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, Any]:
        out = {}
        for name, spec in aggs.items():
            spec = dict(spec)
            sub = spec.pop("aggs", spec.pop("aggregations", None)) or {}
            spec.pop("meta", None)
            (kind, args), = spec.items()
            out[name] = self._one_agg(kind, args, sub, docs)
        return out

    def _one_agg(self, kind: str, args: dict[str, Any], sub: dict[str, Any],
                 docs: list[dict[str, Any]]) -> dict[str, Any]:
        if kind in ("min", "max", "sum", "avg", "value_count"):
            field = args["field"]
            vals = [v for d in docs for v in self.values(d, field)]
            ftype, _ = self.field_type(field)
            if kind == "value_count":
                return {"value": len(vals)}
            if kind == "sum":
                return {"value": float(math.fsum(vals))}
            if not vals:
                return {"value": None}
            value = float(min(vals) if kind == "min" else max(vals) if kind == "max"
                          else math.fsum(vals) / len(vals))
            res: dict[str, Any] = {"value": value}
            if ftype == "date":
                res["value_as_string"] = _iso(int(value))
            return res
        if kind == "top_metrics":
            (sfield, order), = _sort_spec(args["sort"])
            metrics = args["metrics"] if isinstance(args["metrics"], list) else [args["metrics"]]
            ranked = [(self._sort_values("", d, [(sfield, order)])[0], d) for d in docs]
            ranked = [r for r in ranked if r[0] is not None]
            ranked.sort(key=lambda r: r[0], reverse=(order == "desc"))
            top = []
            for key, d in ranked[:int(args.get("size", 1))]:
                vals = {m["field"]: (self.values(d, m["field"]) or [None])[0] for m in metrics}
                top.append({"sort": [key], "metrics": vals})
            return {"top": top}
        if kind in ("date_histogram", "terms", "composite"):
            pipelines = {n: s for n, s in sub.items() if "bucket_sort" in s}
            nested = {n: s for n, s in sub.items() if n not in pipelines}
            if kind == "date_histogram":
                result = self._date_histogram(args, nested, docs)
            elif kind == "terms":
                result = self._terms(args, nested, docs)
            else:
                return self._composite(args, nested, docs)
            for spec in pipelines.values():
                result["buckets"] = _bucket_sort(spec["bucket_sort"], result["buckets"])
            return result
        raise EsError(400, "parsing_exception",
                      f"unknown aggregation type [{kind}] (EsTestServer)")

    def _bucket(self, key: Any, members: list[dict[str, Any]], sub: dict[str, Any],
                **extra: Any) -> dict[str, Any]:
        return {**extra, "key": key, "doc_count": len(members), **self._aggregate(sub, members)}

    def _date_histogram(self, args: dict[str, Any], sub: dict[str, Any],
                        docs: list[dict[str, Any]]) -> dict[str, Any]:
        if "fixed_interval" not in args:
            raise EsError(400, "illegal_argument_exception",
                          "EsTestServer supports only date_histogram fixed_interval")
        m = re.fullmatch(r"(\d+)(ms|s|m|h|d)", str(args["fixed_interval"]))
        if not m:
            raise EsError(400, "illegal_argument_exception",
                          f"failed to parse setting [fixed_interval] with value "
                          f"[{args['fixed_interval']}]")
        step = int(m.group(1)) * _UNITS_MS[m.group(2)]
        offset = args.get("offset", 0)
        if offset not in (0, "0", "0ms", "+0ms"):
            raise EsError(400, "illegal_argument_exception", "EsTestServer: offset unsupported")
        groups: dict[int, list[dict[str, Any]]] = {}
        for d in docs:
            for ts in self.values(d, args["field"]):
                groups.setdefault(int(ts) // step * step, []).append(d)
        keys = sorted(groups)
        if int(args.get("min_doc_count", 0)) == 0 and keys:
            keys = list(range(keys[0], keys[-1] + step, step))
        min_count = int(args.get("min_doc_count", 0))
        buckets = [self._bucket(k, groups.get(k, []), sub, key_as_string=_iso(k))
                   for k in keys if len(groups.get(k, [])) >= min_count]
        return {"buckets": buckets}

    def _terms(self, args: dict[str, Any], sub: dict[str, Any],
               docs: list[dict[str, Any]]) -> dict[str, Any]:
        groups: dict[Any, list[dict[str, Any]]] = {}
        for d in docs:
            for v in set(self.values(d, args["field"])):
                groups.setdefault(v, []).append(d)
        ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        size = int(args.get("size", 10))
        buckets = [self._bucket(k, members, sub) for k, members in ordered[:size]]
        other = sum(len(m) for _, m in ordered[size:])
        return {"doc_count_error_upper_bound": 0, "sum_other_doc_count": other,
                "buckets": buckets}

    def _composite(self, args: dict[str, Any], sub: dict[str, Any],
                   docs: list[dict[str, Any]]) -> dict[str, Any]:
        sources = []
        for source in args["sources"]:
            (name, spec), = source.items()
            (kind, opts), = spec.items()
            if kind != "terms":
                raise EsError(400, "illegal_argument_exception",
                              "EsTestServer supports only terms sources in composite")
            sources.append((name, opts["field"], opts.get("order", "asc")))
        groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        for d in docs:
            vals = [self.values(d, field) for _, field, _ in sources]
            if all(vals):
                key = tuple(v[0] for v in vals)
                groups.setdefault(key, []).append(d)
        order = [(name, o) for name, _, o in sources]
        ordered = sorted(groups, key=lambda k: _sort_key(list(k), order))
        if "after" in args:
            after = _sort_key([args["after"][name] for name, _, _ in sources], order)
            ordered = [k for k in ordered if _sort_key(list(k), order) > after]
        page = ordered[:int(args.get("size", 10))]
        buckets = [self._bucket({name: v for (name, _, _), v in zip(sources, k)}, groups[k], sub)
                   for k in page]
        out: dict[str, Any] = {"buckets": buckets}
        if buckets:
            out["after_key"] = buckets[-1]["key"]
        return out


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    double: EsTestServer
    timeout = 60

    def setup(self) -> None:
        super().setup()
        # one small response per request: without this, Nagle + delayed ACK add ~40 ms each
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.double._lock:
            self.double._connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.double._lock:
                self.double._connections.discard(self.connection)

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_DELETE = do_HEAD = do_GET

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def _serve(self) -> None:
        split = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            status, body = self.double.handle(self.command, split.path, query, self.headers, raw)
        except EsError as err:
            status, body = err.status, err.body()
        except Exception as exc:  # a bug in the double: say so instead of hanging the client
            status, body = 500, EsError(500, "es_test_double_error", repr(exc)).body()
        payload = json.dumps(body).encode()
        accept = self.headers.get("Accept", "")
        ctype = ("application/vnd.elasticsearch+json;compatible-with=9"
                 if "vnd.elasticsearch" in accept else "application/json")
        self.send_response(status)
        self.send_header("X-Elastic-Product", "Elasticsearch")
        self.send_header("Content-Type", ctype)
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="security", ApiKey')
        if self.command == "HEAD":
            payload = b""
        self.send_header("Content-Length", str(len(payload)))
        self._headers_buffer.append(b"\r\n" + payload)  # headers and body in one write
        self.flush_headers()


# ---- helpers ------------------------------------------------------------------------------
def _shards() -> dict[str, Any]:
    return {"_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0}}


def _iso(ms: int) -> str:
    return _dt.datetime.fromtimestamp(ms / 1000, _dt.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _dynamic_mapping(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "long"}
    if isinstance(value, float):
        return {"type": "float"}
    if isinstance(value, str):
        return {"type": "keyword"}
    return {"type": "object", "enabled": False}  # dynamic sub-objects are not modelled


_NUMERIC = {"double", "float", "long", "integer", "short", "byte", "half_float", "scaled_float"}


def _parse_value(spec: dict[str, Any], name: str, value: Any, doc_id: str) -> None:
    ftype = spec.get("type", "object")
    if value is None or ftype == "object" and spec.get("enabled", True) is False:
        return
    ok = True
    for v in (value if isinstance(value, list) else [value]):
        if ftype in _NUMERIC or ftype == "date":
            if isinstance(v, bool) or isinstance(v, (dict, list)):
                ok = False
            else:
                try:
                    ok = math.isfinite(float(v))
                except (TypeError, ValueError):
                    ok = False
        elif ftype == "keyword":
            ok = not isinstance(v, (dict, list))
        elif ftype == "boolean":
            ok = isinstance(v, bool) or v in ("true", "false")
        elif ftype in ("flattened", "object"):
            ok = isinstance(v, dict)
        if not ok:
            preview = json.dumps(v)[:60]
            raise EsError(400, "document_parsing_exception",
                          f"[1:2] failed to parse field [{name}] of type [{ftype}] in document "
                          f"with id '{doc_id}'. Preview of field's value: '{preview}'")


def _coerce(ftype: str | None, value: Any) -> Any:
    if ftype in _NUMERIC:
        return float(value)
    if ftype == "date":
        return int(float(value))
    if ftype in ("keyword", "flattened"):
        return str(value).lower() if isinstance(value, bool) else str(value)
    if ftype == "boolean":
        return value in (True, "true")
    return value


def _compare(value: Any, op: str, bound: Any) -> bool:
    return {"gt": value > bound, "gte": value >= bound, "lt": value < bound,
            "lte": value <= bound}[op]


def _sort_spec(sort: Any) -> list[tuple[str, str]]:
    if not sort:
        return []
    out = []
    for s in (sort if isinstance(sort, list) else [sort]):
        if isinstance(s, str):
            out.append((s, "desc" if s == "_score" else "asc"))
            continue
        for field, opt in s.items():
            order = opt.get("order", "asc") if isinstance(opt, dict) else opt
            out.append((field, order))
    return out


class _Reversed:
    """Wraps a value so that ascending sorting orders it descending."""

    __slots__ = ("v",)

    def __init__(self, v: Any):
        self.v = v

    def __lt__(self, other: "_Reversed") -> bool:
        return self.v > other.v

    def __gt__(self, other: "_Reversed") -> bool:
        return self.v < other.v

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and self.v == other.v


def _sort_key(values: list[Any], sort: list[tuple[str, str]]) -> tuple[Any, ...]:
    """Comparable key; missing values sort last in both orders (Elasticsearch's default)."""
    key = []
    for v, (_, order) in zip(values, sort):
        key.append((1, 0) if v is None else (0, v if order == "asc" else _Reversed(v)))
    return tuple(key)


def _bucket_sort(spec: dict[str, Any], buckets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = list(buckets)
    for s in reversed(_sort_spec(spec.get("sort"))):
        field, order = s
        if field not in ("_key", "_count"):
            raise EsError(400, "illegal_argument_exception",
                          "EsTestServer bucket_sort supports only _key and _count")
        attr = "key" if field == "_key" else "doc_count"
        out.sort(key=lambda b: b[attr], reverse=(order == "desc"))
    start = int(spec.get("from", 0))
    size = spec.get("size")
    return out[start:start + int(size)] if size is not None else out[start:]


def _deep_merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out
