"""Keeping API keys out of logs and messages.

API keys travel in query strings (Alpha Vantage only accepts ``apikey=``), so they would show
up in urllib3's DEBUG request lines and in requests' exception texts. Every key a source is
given is registered here; a logging filter on the urllib3/requests/source loggers scrubs
registered keys and any ``apikey=``/``apiKey=``/``token=`` query value from records before any
handler sees them, and exception texts only ever reach messages through :func:`redact`.
"""
from __future__ import annotations

import logging
import re
import threading
from typing import Any
from urllib.parse import quote, quote_plus

from pipeline.contracts.config import Secret

_SECRETS: set[str] = set()
_SECRETS_LOCK = threading.Lock()
_SECRET_PATTERN: re.Pattern[str] | None = None
# Any credential-looking query parameter, registered or not.
_QUERY_KEY_RE = re.compile(r"(?i)\b((?:api[_-]?key|apikey|access[_-]?token|token)=)[^&\s'\"<>#]+")
REDACTED = "***"
# A password inside a URL or a bootstrap string: scheme://user:password@host, user:password@host.
_USERINFO_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)?([^\s:/@,;'\"<>()\[\]]+):([^\s@/,;'\"<>]+)@(?=[\w\[.\-])")


def register_secret(value: str | Secret | None) -> None:
    """Make :func:`redact` (and the logging filter) hide ``value`` and its URL-encoded forms."""
    raw = value.get() if isinstance(value, Secret) else value
    if not raw or len(raw) < 4:  # redacting 1-3 characters would mangle ordinary text
        return
    global _SECRET_PATTERN
    with _SECRETS_LOCK:
        before = len(_SECRETS)
        _SECRETS.update({raw, quote(raw, safe=""), quote_plus(raw)})
        if len(_SECRETS) != before:
            alternatives = sorted(_SECRETS, key=len, reverse=True)
            _SECRET_PATTERN = re.compile("|".join(re.escape(s) for s in alternatives))


def redact(text: Any) -> str:
    """``text`` as a string with registered secrets, credential query values and the password
    of any ``user:password@host`` masked."""
    s = text if isinstance(text, str) else str(text)
    pattern = _SECRET_PATTERN
    if pattern is not None:
        s = pattern.sub(REDACTED, s)
    s = _USERINFO_RE.sub(lambda m: f"{m.group(1) or ''}{m.group(2)}:{REDACTED}@", s)
    return _QUERY_KEY_RE.sub(lambda m: m.group(1) + REDACTED, s)


class RedactingStream:
    """A text stream that masks secrets in everything written to it (the CLI's stdout and
    stderr: every line it prints, including ones quoting a bootstrap string or a URL)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text))
        return len(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


class RedactingFilter(logging.Filter):
    """Rewrites a record's message with secrets masked (installed on third-party loggers,
    whose records carry full request URLs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is not ours to fix; leave it alone
            return True
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, ()
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


_LOGGERS_TO_SCRUB = (
    "urllib3", "urllib3.connectionpool", "urllib3.connection", "urllib3.poolmanager",
    "urllib3.response", "urllib3.util.retry", "requests", "pipeline.sources",
    "pipeline.sources.http_client", "pipeline.sources.alphavantage", "pipeline.sources.polygon",
    "pipeline.sources.polled_source", "pipeline.sources.request_budget",
)


def scrub_loggers(names) -> None:
    """Install the redacting filter on each logger named (a filter on a parent logger does not
    see its children's records, so every source module's logger is named: the shared HTTP
    parts below, each catalogued source's in ``pipeline/sources/catalog.py``)."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())


scrub_loggers(_LOGGERS_TO_SCRUB)


def secret_value(api_key: str | Secret | None) -> Secret | None:
    """Normalise a key given as ``Secret`` or plain ``str`` (blank means none)."""
    if api_key is None:
        return None
    secret = api_key if isinstance(api_key, Secret) else Secret(str(api_key).strip())
    if not secret.get() or not secret.get().strip():
        return None
    register_secret(secret)
    return secret


def short_text(text: Any, limit: int = 160) -> str:
    """One line of at most ``limit`` characters, redacted (for upstream messages)."""
    text = " ".join(redact(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
