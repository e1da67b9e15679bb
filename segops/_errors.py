"""The exception tree. Everything the SDK raises derives from :class:`SegOpsError`."""

from __future__ import annotations

from typing import Optional

import spool


class SegOpsError(Exception):
    """Base class of every error raised by segops."""


class ConfigurationError(SegOpsError, ValueError):
    """The client was constructed with unusable settings."""


class SpoolError(SegOpsError, spool.SpoolError):
    """The local spool could not store or read events."""


class SpoolFull(SpoolError, spool.SpoolFull):
    """The spool reached ``max_spool_bytes`` or the disk is full; the event was not stored."""


class SpoolCorrupt(SpoolError, spool.SpoolCorrupt):
    """The spool file was not a usable database."""


class DeliveryError(SegOpsError, RuntimeError):
    """The server did not accept a request (after the retries the policy allows).

    A ``RuntimeError`` too, as every delivery failure of the official 0.2.2 client is: code
    that catches ``RuntimeError`` around ``flush()`` or checks for it in ``on_error`` keeps
    working.

    ``status`` is the HTTP status, or ``None`` when no response arrived.
    ``detail`` is the server's explanation, when it gave one.
    ``retry_after`` is what is left of the server's ``Retry-After``, in seconds from when the
    error was raised, or ``None`` without one; this client sends nothing before it has passed
    (hints are honoured up to an hour).
    """

    def __init__(
        self,
        message: str,
        *,
        status: Optional[int] = None,
        detail: Optional[str] = None,
        retry_after: Optional[float] = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail
        self.retry_after = retry_after


class AuthError(DeliveryError):
    """401 or 403: the key (or session) is missing, invalid, revoked or not allowed."""


class EventRejected(DeliveryError):
    """The server refused one event (400/422); it was moved to the dead letters."""


class EventsSkipped(DeliveryError):
    """A 2xx answer reported ``skipped > 0``: the server dropped events it found invalid."""

    # Defaults let pickle and copy rebuild it from its message (then restore the fields).
    def __init__(self, message: str, *, skipped: int = 0, status: Optional[int] = None) -> None:
        super().__init__(message, status=status)
        self.skipped = skipped


class FlushTimeout(DeliveryError):
    """``flush()``/``shutdown()`` ran out of time; undelivered events stay in the spool."""

    def __init__(self, message: str, *, pending: int = 0) -> None:
        super().__init__(message)
        self.pending = pending


_SPOOL_ERRORS = {spool.SpoolFull: SpoolFull, spool.SpoolCorrupt: SpoolCorrupt}


def translate_spool_error(exc: spool.SpoolError) -> SpoolError:
    """Map a ``spool`` exception to its segops twin (which is also a ``spool`` exception)."""
    if isinstance(exc, SpoolError):
        return exc
    cls = _SPOOL_ERRORS.get(type(exc), SpoolError)
    return cls(str(exc))
