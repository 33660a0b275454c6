"""What a market-data API request can end in, short of a reply."""
from __future__ import annotations

from pipeline.sources.base import SourceError
from pipeline.sources.redaction import redact


class ApiError(SourceError):
    """A request the client gave up on; ``str()`` is one sentence without secrets.

    ``kind`` says what happened so a live source can decide to keep going:
    ``transient`` (network, timeout, 5xx after retries), ``rate_limit`` (still limited after
    the back-offs), ``budget`` (the local request budget would need too long a wait),
    ``auth`` (key missing or invalid), ``forbidden`` (plan lacks access), ``request`` (bad
    symbol, function or parameters), ``response`` (unparseable answer).
    """

    RETRYABLE = frozenset({"transient", "rate_limit", "budget"})

    def __init__(self, message: str, *, kind: str, status: int | None = None,
                 detail: str | None = None):
        super().__init__(redact(message))
        self.kind = kind
        self.status = status
        #: the upstream's own wording (redacted, shortened) for logs; not part of the sentence
        self.detail = redact(detail) if detail else None

    @property
    def retryable(self) -> bool:
        return self.kind in self.RETRYABLE


class RateLimited(Exception):
    """Raised by a response ``check`` to say "rate-limited: back off and retry"."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class Stopped(Exception):
    """``stop`` was set while the client was waiting (budget, back-off)."""
