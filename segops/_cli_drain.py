"""Shared by the command line and the demo: open a spool for inspection, and drain one
with the client's own delivery engine while reporting progress.

``segops replay``, ``segops dead-letters retry`` and ``segops demo`` all go through
:func:`drain_spool`, so there is exactly one way the CLI sends events.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import httpx

import spool

from ._client import SegOpsClient
from ._errors import (
    AuthError,
    DeliveryError,
    EventRejected,
    EventsSkipped,
    FlushTimeout,
    SegOpsError,
    translate_spool_error,
)
from ._paths import display_url, normalize_url, redact
from ._types import UserContext


class UsageError(Exception):
    """A usage or configuration problem: exit code 2, one line on stderr."""


@dataclass(frozen=True)
class SpoolStatus:
    """What ``segops status`` reports about one spool file."""

    path: str
    pending: int
    leased: int
    dead_letters: int
    oldest_age: Optional[float]
    file_bytes: int

    def as_json(self) -> Dict[str, Any]:
        return {
            "spool": self.path,
            "pending": self.pending,
            "leased": self.leased,
            "dead_letters": self.dead_letters,
            "oldest_age_seconds": None if self.oldest_age is None else round(self.oldest_age, 3),
            "file_bytes": self.file_bytes,
        }


def require_spool(path: Path, hint: Optional[str] = "check --spool") -> None:
    """Refuse a spool file that does not exist (reading must never create one).

    ``hint`` ends the message of a missing or empty file; ``None`` leaves it out (for a file
    the user did not name, such as one found by ``status --all``)."""
    more = f"; {hint}" if hint else ""
    if not path.exists():
        raise UsageError(f"no spool at {path} (nothing was ever spooled there{more})")
    if not path.is_file():
        raise UsageError(f"{path} is not a spool file")
    wal = path.with_name(path.name + "-wal")
    if path.stat().st_size == 0 and not (wal.exists() and wal.stat().st_size > 0):
        raise UsageError(f"{path} is an empty file, not a spool" + (f" ({hint})" if hint else ""))


def open_spool(path: Path, hint: Optional[str] = "check --spool") -> spool.Spool:
    """Open an existing spool as it is: a corrupt one raises, it is not moved aside here
    (a command that reads must not swap it for an empty spool and report all clear)."""
    require_spool(path, hint)
    try:
        return spool.Spool(path, recover=False)
    except spool.SpoolError as exc:
        raise translate_spool_error(exc) from exc


def spool_status(path: Path, hint: Optional[str] = "check --spool") -> SpoolStatus:
    """A snapshot of an existing spool (raises :class:`UsageError` when there is none;
    ``hint`` as for :func:`require_spool`)."""
    store = open_spool(path, hint)
    try:
        stats = store.stats()
    except spool.SpoolError as exc:
        raise translate_spool_error(exc) from exc
    finally:
        store.close()
    return SpoolStatus(
        path=str(store.path),
        pending=stats.pending,
        leased=stats.leased,
        dead_letters=stats.dead,
        oldest_age=stats.oldest_age,
        file_bytes=stats.file_bytes,
    )


def session_user(api_key: str, user_id: Optional[str]) -> Optional[Callable[[], UserContext]]:
    """``get_user`` for a pk_ key: ``user_id`` when given, else the anonymous identity."""
    if not api_key.startswith("pk_"):
        return None
    context = UserContext(user_id=user_id) if user_id else UserContext(anonymous_id="anonymous")
    return lambda: context


def describe_failure(exc: BaseException, api_url: str, api_key: str) -> str:
    """One friendly line saying why events could not be delivered."""
    if isinstance(exc, AuthError):
        return (
            f"the server refused the API key {redact(api_key)} (HTTP {exc.status}: "
            f"{exc.detail or exc}); check --api-key / SEGOPS_API_KEY"
        )
    if isinstance(exc, FlushTimeout):
        return f"timed out with {exc.pending} event(s) still pending"
    if isinstance(exc, DeliveryError):
        shown = display_url(api_url, api_key)  # a key may sit in the URL, as in repr(client)
        if exc.status is None:
            return f"server unreachable at {shown} ({exc})"
        if exc.status == 404:
            return f"HTTP 404 from {shown}: is --api-url / SEGOPS_API_URL right?"
        return f"the server at {shown} did not accept the events ({exc})"
    return str(exc)


class LastError:
    """An ``on_error`` handler that keeps the latest background failure, to explain a
    timeout with its cause ("server unreachable") rather than just "timed out".

    A refused event (dead-lettered, or skipped by the server; the client's counters have
    them) is an outcome to report, not why other events are still waiting: the latest
    dead-lettering is kept apart in ``rejected``, for its reason."""

    def __init__(self) -> None:
        self.exc: Optional[BaseException] = None
        self.rejected: Optional[EventRejected] = None

    def __call__(self, exc: BaseException) -> None:
        if isinstance(exc, EventRejected):
            self.rejected = exc
        elif not isinstance(exc, EventsSkipped):
            self.exc = exc

    def describe(
        self,
        exc: BaseException,
        api_url: str,
        api_key: str,
        *,
        leased: int = 0,
        own_request: bool = False,
        reachability: Optional[Callable[[], Optional[str]]] = None,
    ) -> str:
        """Why events are left. For a timeout with no failure seen, what the sender was up
        against: the server unreachable (``reachability``, default :func:`probe`), this
        process's own request unanswered, or ``leased`` events held by another process."""
        if not isinstance(exc, FlushTimeout):
            return describe_failure(exc, api_url, api_key)
        if isinstance(self.exc, DeliveryError):
            cause = describe_failure(self.exc, api_url, api_key)
        else:
            cause = (reachability or (lambda: probe(api_url)))() or _unanswered(leased, own_request)
        return f"{cause}; gave up with {exc.pending} event(s) pending"


def _unanswered(leased: int, own_request: bool) -> str:
    if own_request:  # its batch is leased too: not another process's doing
        return "the server had not answered this command's own request yet"
    if leased:
        return (
            f"{leased} event(s) are leased by another process (a live sender, "
            "or a dead one whose lease has not expired yet)"
        )
    return "the server did not answer in time"


def own_request_running() -> bool:
    """True while a request this process sent is still waiting for its answer: the client
    runs a send bounded by a deadline on a "segops-send" thread, and leaves it running past
    the deadline (a drain's client is the only sender of its process)."""
    return any(t.name == "segops-send" and t.is_alive() for t in threading.enumerate())


#: After a drain's deadline, at most this long is spent finding out why it timed out
#: (``docs/cli.md`` promises half a second; the rest is left for the closing summary).
DIAGNOSIS_TIME = 0.4
#: The probe starts this long before the deadline, so it gets its full 0.5 s request timeout
#: although the drain waits for it at most DIAGNOSIS_TIME past the deadline.
PROBE_LEAD = 0.4


class EarlyProbe:
    """:func:`probe`, started PROBE_LEAD before ``deadline`` on a daemon thread; its answer
    is awaited until DIAGNOSIS_TIME past it. The client's own wait for an unanswered
    request runs past the deadline too (up to 0.25 s): the two overlap instead of adding up."""

    def __init__(self, api_url: str, deadline: float) -> None:
        self._api_url = api_url
        self._deadline = deadline
        self._cancelled = threading.Event()
        self._done = threading.Event()
        self._answer: Optional[str] = None
        threading.Thread(target=self._run, name="segops-probe", daemon=True).start()

    def _run(self) -> None:
        if self._cancelled.wait(_wait_until(self._deadline - PROBE_LEAD)):
            return
        self._answer = probe(self._api_url)
        self._done.set()

    def __call__(self) -> Optional[str]:
        """The probe's answer, or ``None`` when it had none in time."""
        self._done.wait(_wait_until(self._deadline + DIAGNOSIS_TIME))
        return self._answer

    def cancel(self) -> None:
        self._cancelled.set()


def _wait_until(moment: float) -> float:
    """Seconds from now until the monotonic ``moment``, as an Event.wait() accepts them."""
    return min(threading.TIMEOUT_MAX, max(0.0, moment - time.monotonic()))


def describe_refusals(
    dead_lettered: int, skipped: int, spool_path: str, last: Optional[EventRejected] = None
) -> Optional[str]:
    """One line about the events the server refused (dead-lettered, with the ``last``
    reason when known) or skipped; ``None`` when there were none."""
    parts = []
    if dead_lettered:
        why = f" (HTTP {last.status}: {last.detail})" if last is not None else ""
        parts.append(
            f"the server refused {dead_lettered} event(s){why}; moved to the dead letters, "
            f"see: segops dead-letters list --spool {spool_path}"
        )
    if skipped:
        parts.append(f"the server skipped {skipped} event(s) as invalid: they were not stored")
    return "; ".join(parts) or None


def probe(api_url: str, timeout: float = 0.5) -> Optional[str]:
    """Why the server cannot be reached, or ``None`` when it answers at all."""
    url = normalize_url(api_url) + "/"
    try:
        # No TLS on http://, so no certificate store to load: that took 35-60 ms (more on a
        # busy machine) out of the little time the diagnosis has past the deadline.
        httpx.get(url, timeout=timeout, verify=not url.startswith("http://"))
    except httpx.TransportError as exc:
        return f"server unreachable at {display_url(api_url)} ({type(exc).__name__})"
    except httpx.HTTPError:
        return None
    return None


@dataclass(frozen=True)
class Progress:
    """A progress snapshot of a running drain."""

    sent: int
    remaining: int
    elapsed: float

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> Optional[float]:
        rate = self.rate
        return self.remaining / rate if rate > 0 else None


@dataclass(frozen=True)
class DrainResult:
    """How a drain ended. ``left`` counts the events that were there when it started;
    ``delivered`` those the server stored, ``skipped`` those it answered 2xx for but
    dropped as invalid (gone from the spool, like delivered ones)."""

    spool: str
    to_send: int
    delivered: int
    dead_lettered: int
    skipped: int
    dead_total: int
    left: int
    pending_now: int
    seconds: float
    error: Optional[str]

    @property
    def ok(self) -> bool:
        return self.left == 0

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds if self.seconds > 0 else 0.0

    def as_json(self) -> Dict[str, Any]:
        return {
            "spool": self.spool,
            "ok": self.ok,
            "to_send": self.to_send,
            "delivered": self.delivered,
            "dead_lettered": self.dead_lettered,
            "skipped": self.skipped,
            "dead_letters_total": self.dead_total,
            "left": self.left,
            "pending_now": self.pending_now,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.rate, 1),
            "error": self.error,
        }


ProgressHook = Callable[[Progress], None]


def drain_spool(
    path: Path,
    api_url: str,
    api_key: str,
    *,
    user_id: Optional[str] = None,
    timeout: Optional[float] = None,
    on_progress: Optional[ProgressHook] = None,
    interval: float = 0.25,
) -> DrainResult:
    """Deliver every event that is in the spool now, with a ``SegOpsClient`` on that spool.

    Other processes may keep using the spool: batches are leased, so none is sent twice,
    and events appended after the start are left to their writers (or the next replay).
    Stops at the first delivery failure that makes no progress, or after ``timeout``.
    """
    inspect = open_spool(path)
    try:
        return _drain(inspect, path, api_url, api_key, user_id, timeout, on_progress, interval)
    except spool.SpoolError as exc:
        raise translate_spool_error(exc) from exc
    finally:
        inspect.close()


def _drain(
    inspect: spool.Spool,
    path: Path,
    api_url: str,
    api_key: str,
    user_id: Optional[str],
    timeout: Optional[float],
    on_progress: Optional[ProgressHook],
    interval: float,
) -> DrainResult:
    dead_before = inspect.stats().dead
    target = inspect.last_id()
    to_send = inspect.pending_through(target)
    seen = LastError()  # failures are reported once, in the summary
    client = SegOpsClient(
        api_url,
        api_key,
        spool_path=path,
        background=False,  # only this drain sends, so its counters tell the whole story
        on_error=seen,
        get_user=session_user(api_key, user_id),
    )
    start = time.monotonic()
    deadline = None if timeout is None else start + timeout
    reachability = None if deadline is None else EarlyProbe(api_url, deadline)
    outcome: Dict[str, Optional[str]] = {"error": None}

    def work() -> None:
        mark = 0
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                client.flush(timeout=left)
                return
            except EventRejected:  # the rest is delivered; the summary counts dead letters
                return
            except FlushTimeout as exc:
                outcome["error"] = f"timed out after {timeout:g}s: " + seen.describe(
                    exc,
                    api_url,
                    api_key,
                    leased=inspect.stats().leased,
                    own_request=own_request_running(),
                    reachability=reachability,
                )
                return
            except AuthError as exc:
                outcome["error"] = describe_failure(exc, api_url, api_key)
                return
            except DeliveryError as exc:
                delivered = client.stats().delivered
                if delivered > mark and (deadline is None or time.monotonic() < deadline):
                    mark = delivered  # a blip after progress: try again
                    continue
                outcome["error"] = describe_failure(exc, api_url, api_key)
                return
            except (SegOpsError, spool.SpoolError) as exc:
                outcome["error"] = str(exc)
                return
            except Exception as exc:  # never let a bug hang the command
                outcome["error"] = f"unexpected error: {exc!r}"
                return

    worker = threading.Thread(target=work, name="segops-replay", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(interval)
            if on_progress is not None and worker.is_alive():
                remaining = inspect.pending_through(target)
                on_progress(Progress(client.stats().delivered, remaining, time.monotonic() - start))
    finally:
        if reachability is not None:
            reachability.cancel()
        with contextlib.suppress(SegOpsError):
            client.shutdown(timeout=0.0)  # no second attempt: what is left stays spooled
    final = client.stats()  # the snapshot taken by shutdown()
    elapsed = time.monotonic() - start
    stats = inspect.stats()
    return DrainResult(
        spool=str(inspect.path),
        to_send=to_send,
        delivered=final.delivered - final.skipped,
        dead_lettered=max(0, stats.dead - dead_before),
        skipped=final.skipped,
        dead_total=stats.dead,
        left=inspect.pending_through(target),
        pending_now=stats.pending + stats.leased,
        seconds=elapsed,
        error=outcome["error"],
    )


def human_age(seconds: Optional[float]) -> str:
    """``3m 12s``-style age; ``-`` when there is nothing."""
    if seconds is None:
        return "-"
    total = int(seconds)
    if total < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    return f"{hours // 24}d {hours % 24:02d}h"


def human_bytes(n: int) -> str:
    """``48.0 KiB``-style size."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
