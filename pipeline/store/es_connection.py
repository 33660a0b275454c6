"""Connecting to Elasticsearch: what the user configured, made safe and explained.

Credentials never shown (:func:`_redact_url`), the index prefix checked, keyword arguments an
older client does not know dropped, NaN refused before it is sent, and every failure a user
can fix turned into one sentence that names the setting to change (:func:`explain`).
"""
from __future__ import annotations

import functools
import inspect
import json
import re
import urllib.parse
from typing import Any, Callable, TypeVar

from elasticsearch import (
    ApiError, AuthenticationException, AuthorizationException, ConnectionError,
    ConnectionTimeout, SSLError, TransportError, UnsupportedProductError,
)
from elasticsearch.serializer import JsonSerializer

from pipeline.store.base import StoreUnavailable

T = TypeVar("T")


def at_edge(method: Callable[..., T]) -> Callable[..., T]:
    """Turn transport and access failures into :class:`StoreUnavailable` with one sentence."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except (TransportError, ApiError) as exc:
            sentence = self.explain_failure(exc)
            if sentence is None:
                raise
        raise StoreUnavailable(sentence)  # outside the except: no chained traceback

    return wrapper


def explain(exc: Exception, *, url: str, index_prefix: str, has_credentials: bool,
            max_retries: int) -> str | None:
    """One sentence for failures a user can fix; ``None`` for anything else (a bug)."""
    if isinstance(exc, SSLError):
        text = str(exc)
        why = ("the certificate is not trusted" if "CERTIFICATE_VERIFY_FAILED" in text
               or "certificate verify failed" in text else
               "the server does not speak TLS" if "WRONG_VERSION_NUMBER" in text
               or "wrong version number" in text else "TLS error")
        return (f"TLS handshake with Elasticsearch at {url} failed ({why}); set "
                "ELASTICSEARCH_CA_CERTS to the cluster's CA certificate (http_ca.crt), "
                "or use an http:// ELASTICSEARCH_URL if the cluster has TLS off.")
    if isinstance(exc, (ConnectionError, ConnectionTimeout)):
        text = str(exc)
        why = ("timed out" if isinstance(exc, ConnectionTimeout) or "timed out" in text
               else "connection refused" if "refused" in text.lower()
               else "host name not found" if "resolution" in text or "not known" in text
               or "getaddrinfo" in text or "nodename" in text
               else "connection failed")
        return (f"Elasticsearch at {url} is unreachable ({why}); start the cluster or set "
                "ELASTICSEARCH_URL to its address (unset it to use the embedded SQLite "
                "store).")
    if isinstance(exc, UnsupportedProductError):
        return (f"The server at {url} is not Elasticsearch; set ELASTICSEARCH_URL to an "
                "Elasticsearch 9.x cluster.")
    if isinstance(exc, AuthenticationException):
        sent = "" if has_credentials else ": no credentials were sent"
        return (f"Elasticsearch at {url} refused the credentials (401 unauthorised{sent}); "
                "set ELASTICSEARCH_API_KEY, or ELASTICSEARCH_USERNAME and "
                "ELASTICSEARCH_PASSWORD, to valid credentials.")
    if isinstance(exc, AuthorizationException):
        return (f"Elasticsearch at {url} denied access (403 forbidden); give the user of "
                "ELASTICSEARCH_API_KEY or ELASTICSEARCH_USERNAME the cluster privileges "
                "monitor and manage_index_templates and all privileges on indices "
                f"{index_prefix}-*, or set ELASTICSEARCH_INDEX_PREFIX to indices it "
                "may use.")
    if isinstance(exc, ApiError):
        status = exc.status_code
        if status in (400, 406) and ("media_type" in str(exc.body) or
                                     "compatib" in str(exc.body).lower()):
            return (f"Elasticsearch at {url} rejected this 9.x client (HTTP {status}, the "
                    "server is probably 8.x or older); use a 9.x cluster, or for an 8.x "
                    "cluster install the matching client: pip install 'elasticsearch>=8,<9'.")
        if status == 429 or status >= 500:
            return (f"Elasticsearch at {url} is unavailable (HTTP {status} {exc.message}) "
                    f"after {max_retries} retries; check GET _cluster/health and try "
                    "again.")
    return None


class _StrictJsonSerializer(JsonSerializer):
    """Refuse NaN/infinity locally (Elasticsearch would reject the whole request)."""

    def json_dumps(self, data: Any) -> bytes:
        return json.dumps(data, default=self.default, ensure_ascii=False,
                          separators=(",", ":"), allow_nan=False).encode("utf-8", "surrogatepass")


def _supported(func: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Drop keyword arguments an older (8.x) client does not name (e.g. ``retry_on_status``
    of the bulk helper, ``retry_backoff_base`` of the client)."""
    params = inspect.signature(func).parameters
    return {k: v for k, v in kwargs.items() if k in params}


def _reveal(secret: Any) -> str | None:
    """Plain value of a :class:`pipeline.contracts.config.Secret` or string."""
    if secret is None:
        return None
    return secret.get() if hasattr(secret, "get") else str(secret)


def _redact_url(url: str) -> str:
    """The URL without user info (``https://user:pw@host:9200`` -> ``https://host:9200``),
    also when the URL is malformed (``user:pw@host:9200`` without a scheme)."""
    url = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)?[^/?#]*@", r"\1", url.strip())
    if "://" not in url:
        return url
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return "<unparsable URL>"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", "")).rstrip("/")


def _valid_prefix(prefix: str) -> str:
    bad = set('\\/*?"<>|, #:') | {c for c in prefix if c.isupper()}
    if not prefix or prefix[0] in "-_+." or any(c in bad for c in prefix) or len(prefix) > 200:
        raise StoreUnavailable(
            f"ELASTICSEARCH_INDEX_PREFIX {prefix!r} is not a valid index name prefix; use "
            "lowercase letters, digits, '-' and '_' (e.g. kappalab or class-3b).")
    return prefix
