"""``SegOpsClient``: the documented API, with every event on disk before ``track()`` returns."""

from __future__ import annotations

import atexit
import contextlib
import datetime
import logging
import math
import os
import queue
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Dict, Iterable, List, Optional, Type, TypeVar, Union, cast

import httpx

import spool

from . import _uwsgi
from ._delivery import Counters, Delivery, RejectedLog
from ._encoding import encode_common, encode_event, event_from_args, identify_from_args
from ._errors import (
    ConfigurationError,
    DeliveryError,
    EventRejected,
    FlushTimeout,
    SegOpsError,
    SpoolCorrupt,
    translate_spool_error,
)
from ._flusher import Flusher
from ._http import HttpSender, header_safe
from ._paths import (
    default_spool_path,
    display_url,
    make_cache_dir_private,
    normalize_url,
    redact,
)
from ._retry import RetryPolicy
from ._session import Session
from ._transport import Transport, as_httpx_transport
from ._types import Context, Event, UserContext

logger = logging.getLogger("segops")

DEFAULT_BATCH_SIZE = 20
DEFAULT_FLUSH_INTERVAL = 5.0
DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_SPOOL_BYTES = 1024 * 1024 * 1024
DEFAULT_FLUSH_TIMEOUT = 30.0
DEFAULT_SHUTDOWN_TIMEOUT = 10.0
#: The whole budget of the exit-time flush for clients the program forgot to shut down.
ATEXIT_TIMEOUT = 2.0
#: ``batch=False`` sends inline once; the flusher retries what that attempt left behind.
_SINGLE_ATTEMPT = RetryPolicy(attempts=1, timeout=DEFAULT_TIMEOUT)
#: ``batch=False``: at most this many never-tried events are sent inline by one track().
_INLINE_SENDS = 20
#: A call bounded by a deadline may run this much past it before it is abandoned: the
#: normal paths (retry budget, request timeouts) end it on their own just before.
_OVERRUN_GRACE = 0.25
# How long the exit flush waits past its flushes' deadline for their last step: more than
# the grace, so that one overrunning by the grace still logs what it left behind.
_EXIT_OVERRUN = _OVERRUN_GRACE + 0.25
#: Sends with a deadline (flush, shutdown, batch=False) that may run at once, per client;
#: those abandoned at their deadline count until they end.
_MAX_SENDS = 8
#: A flush()/shutdown() in a signal handler that interrupted this thread inside the spool, a
#: session mint or reset, or a delivery, waits this long at most for batches other senders
#: hold: they may need what the interrupted call holds until it resumes (after the handler).
_INTERRUPTED_WAIT = 0.5
T = TypeVar("T")

ErrorHandler = Callable[[BaseException], None]


class ClientClosed(SegOpsError):
    """The client was shut down; create a new one (events already spooled are kept)."""


@dataclass(frozen=True)
class ClientStats:
    """A snapshot of the spool and of what this client has done since it was created."""

    pending: int
    in_flight: int
    dead_letters: int
    delivered: int
    retries: int
    skipped: int
    last_error: Optional[str]
    oldest_age: Optional[float]
    spool_path: str


def _log_error(exc: BaseException) -> None:
    logger.warning("segops: %s", exc)


class _Overran(Exception):
    """A call run by ``SegOpsClient._within`` was still going at its deadline."""


class _ErrorReporter:
    """Hands a background failure to ``on_error``; a failing handler is only logged."""

    __slots__ = ("_counters", "_inside", "_on_error")

    def __init__(self, counters: Counters, on_error: ErrorHandler) -> None:
        self._counters = counters
        self._on_error = on_error
        self._inside = threading.local()

    def reporting_here(self) -> bool:
        """True while this thread runs ``on_error``."""
        return getattr(self._inside, "active", False)

    def __call__(self, exc: SegOpsError) -> None:
        self._counters.last_error = str(exc)
        self._inside.active = True
        try:
            self._on_error(exc)
        except Exception:
            logger.exception("segops: the on_error handler raised")
        except BaseException:
            # SystemExit/KeyboardInterrupt belong to the main thread; on the flusher's
            # thread they would only end it, silently, and stop background delivery.
            if threading.current_thread() is threading.main_thread():
                raise
            logger.exception("segops: the on_error handler raised")
        finally:
            self._inside.active = False


class SegOpsClient:
    """Sends user events to SegOps, durably. Safe for concurrent use from many threads.

    An ``sk_`` key authenticates directly; a ``pk_`` key runs the session handshake with the
    identity ``get_user()`` returns.
    """

    def __init__(
        self,
        api_url: str,
        api_key: str,
        *,
        get_user: Optional[Callable[[], UserContext]] = None,
        batch: bool = True,
        batch_size: int = DEFAULT_BATCH_SIZE,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        on_error: Optional[ErrorHandler] = None,
        spool_path: Union[str, os.PathLike[str], None] = None,
        durability: str = "normal",
        max_spool_bytes: Optional[int] = DEFAULT_MAX_SPOOL_BYTES,
        timeout: float = DEFAULT_TIMEOUT,
        transport: Union[httpx.BaseTransport, Transport, None] = None,
        gzip: bool = False,
        retry_policy: Optional[RetryPolicy] = None,
        background: bool = True,
    ) -> None:
        _check_settings(api_url, api_key, get_user, batch_size, flush_interval, timeout)
        http_transport = as_httpx_transport(transport)
        self._api_url = normalize_url(api_url)
        self._api_key = api_key
        self._batch = bool(batch)
        self._batch_size = batch_size
        self._timeout = timeout
        path = Path(spool_path).expanduser() if spool_path is not None else None
        if path is None:
            make_cache_dir_private()
        self._spool_path = path or default_spool_path(self._api_url, api_key)
        self._spool = _open_spool(self._spool_path, durability, max_spool_bytes)
        self._http = HttpSender(
            api_url=self._api_url, timeout=timeout, transport=http_transport, gzip=gzip
        )
        self._session = (
            Session(api_key=api_key, get_user=get_user, http=self._http)
            if api_key.startswith("pk_") and get_user is not None
            else None
        )
        self._counters = Counters()
        # Not a bound method: the flusher thread holds the reporter, and must not keep a
        # client the program dropped alive (see __del__).
        self._report = _ErrorReporter(self._counters, on_error or _log_error)
        self._rejected = RejectedLog(settled_through=self._spool.last_id())
        self._delivery = Delivery(
            store=self._spool,
            http=self._http,
            api_key=api_key,
            session=self._session,
            policy=retry_policy or RetryPolicy(),
            report=self._report,
            counters=self._counters,
            request_timeout=timeout,
            rejected=self._rejected,
        )
        self._flush_interval = flush_interval
        self._state_lock = threading.RLock()
        self._closed = False
        self._unflushed = 0
        self._background = background
        self._final_stats: Optional[ClientStats] = None
        # Sends run by _within still going, and whether the spool and HTTP pool were
        # closed after shutdown().
        self._sends: Dict[threading.Thread, None] = {}  # oldest first
        self._final_flush_over = False  # set by shutdown() once its own sends are done
        self._released = False
        self._flusher = self._new_flusher()
        if self._spool.recovered_from is not None:
            self._report(
                SpoolCorrupt(
                    f"the spool file was not a usable database; it was moved aside to "
                    f"{self._spool.recovered_from} and a fresh spool was opened with the"
                    f" events that could still be read from it"
                )
            )
        # Set in a forked child until it starts its own flusher. A flag, not a pid check:
        # os.getpid() is a system call, and a system call on every track() makes the
        # following SQLite commit measurably slower (the kernel entry evicts CPU state).
        self._forked = False
        self._lock_type_at_fork = threading.Lock
        # Whether a forked child may leave what is pending to its parent's flusher.
        self._parent_ran_flusher = background
        if _uwsgi.forks_without_hooks(_after_uwsgi_fork):
            # No thread in this master: a worker forked while one held the interpreter
            # lock would hang. Each worker starts its own, as a forked child, and opens
            # its own connections (none is open at the fork).
            self._forked = True
            self._parent_ran_flusher = False
            self._spool.close_connections()
        else:
            if background:
                self._flusher.start()
            _ensure_reaper()
        _LIVE_CLIENTS.add(self)

    # -- the documented API -----------------------------------------------------------

    def track(
        self,
        event: Optional[Union[Event, Dict[str, Any]]] = None,
        *,
        user_id: Union[str, int, None] = None,
        event_type: Optional[str] = None,
        occurred_at: Union[str, datetime.datetime, datetime.date, None] = None,
        payload: Optional[Dict[str, Any]] = None,
    ) -> None:
        """Validate the event and commit it to the spool; returns once it is on disk.

        Raises ``TypeError``/``ValueError`` naming the bad field, or :class:`SpoolError`
        when the event could not be stored. Never waits for the network (``batch=True``).
        """
        if (
            event is None
            and occurred_at is None
            and type(user_id) is str
            and user_id
            and not user_id.isspace()
            and type(event_type) is str
            and event_type
            and not event_type.isspace()
            and (payload is None or type(payload) is dict)
        ):
            # The common call, already valid: skip the general argument handling.
            self._commit(encode_common(user_id, event_type, {} if payload is None else payload))
            return
        wire = event_from_args(
            event,
            user_id=user_id,
            event_type=event_type,
            occurred_at=occurred_at,
            payload=payload,
        )
        self._commit(encode_event(wire))

    def track_many(self, events: Iterable[Union[Event, Dict[str, Any]]]) -> int:
        """Validate every event, then commit them all in one transaction (all or none).

        Returns how many were spooled. A bad event raises before anything is stored, with
        its position in the message.
        """
        records = []
        for index, event in enumerate(events):
            try:
                wire = event_from_args(
                    event, user_id=None, event_type=None, occurred_at=None, payload=None
                )
                records.append(encode_event(wire))
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"event #{index}: {exc}") from None
        self._commit_many(records)
        return len(records)

    def identify(
        self,
        context: Optional[Union[Context, Dict[str, Any]]] = None,
        *,
        user_id: Union[str, int, None] = None,
        traits: Optional[Dict[str, Any]] = None,
    ) -> None:
        """Record user traits as a ``context_identified`` event (durably, like ``track``)."""
        wire = identify_from_args(context, user_id=user_id, traits=traits)
        self._commit(encode_event(wire, payload_name="traits"))

    def flush(self, timeout: Optional[float] = DEFAULT_FLUSH_TIMEOUT) -> None:
        """Block until every event tracked before this call is delivered (or dead-lettered).

        Raises :class:`DeliveryError` when the server keeps refusing after the retry policy,
        and :class:`FlushTimeout` when ``timeout`` seconds pass first. Undelivered events stay
        in the spool either way.
        """
        self._ensure_open()
        self._ensure_flusher()
        deadline = _deadline(timeout)
        try:
            target = self._spool.last_id()
            self._drain_through(target, deadline)
        except spool.SpoolError as exc:
            raise self._spool_failure(exc) from exc

    def shutdown(self, timeout: Optional[float] = DEFAULT_SHUTDOWN_TIMEOUT) -> None:
        """Stop the flusher and make a final flush within ``timeout``; raises like ``flush``.

        Whatever is not delivered stays on disk for the next client on this spool or
        ``segops replay``. Calling it again does nothing.
        """
        deadline = _deadline(timeout)  # a bad timeout raises before anything changes
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
        _LIVE_CLIENTS.discard(self)
        # A short grace even for timeout=0: an idle flusher exits at once (one still inside
        # a request closes the spool and the HTTP pool when it ends, see below).
        grace = 1.0 if deadline is None else min(1.0, max(0.1, deadline - time.monotonic()))
        interrupted = self._interrupted_here()
        if interrupted:
            grace = 0.05  # a flusher in the spool waits for this thread: see _drain_through
        self._flusher.stop(timeout=grace)
        try:
            self._drain_through(self._spool.last_id(), deadline)
        except spool.SpoolError as exc:
            raise translate_spool_error(exc) from exc
        finally:
            with contextlib.suppress(SegOpsError):
                self._final_stats = self._snapshot()
            # Closed now, or by the last send or the flusher still inside a request.
            with self._state_lock:
                self._final_flush_over = True
            flusher = self._flusher
            if interrupted and flusher.running():
                # Maybe waiting for the spool operation this signal handler interrupted, to
                # record a batch the server stored: the exit flush waits for it.
                _RETIRING.add(flusher)

            def flusher_ended() -> None:
                _RETIRING.discard(flusher)
                self._release_if_idle()

            flusher.on_exit(flusher_ended)
            self._release_if_idle()

    def close(self, timeout: Optional[float] = DEFAULT_SHUTDOWN_TIMEOUT) -> None:
        """Alias of :meth:`shutdown`."""
        self.shutdown(timeout)

    def reset_session(self) -> None:
        """Drop the session token so the next request mints with the current ``get_user()``.

        Events tracked before the call are still sent under the old token while it is valid
        (when one was minted). No-op for ``sk_`` clients.
        """
        if self._session is None:
            return
        try:
            boundary: Optional[int] = self._spool.last_id()
        except spool.SpoolError:  # closed (after shutdown()) or broken: nothing to keep apart
            boundary = None
        self._session.reset(boundary)

    def stats(self) -> ClientStats:
        """Pending, in-flight and dead-lettered events on the spool; this client's counters.

        After ``shutdown()`` it returns the snapshot taken at the end of the final flush.
        """
        try:
            return self._final_stats or self._snapshot()
        except ClientClosed:
            if self._final_stats is None:
                raise
            return self._final_stats  # shutdown() finished meanwhile

    def _snapshot(self) -> ClientStats:
        try:
            spooled = self._spool.stats()
        except spool.SpoolError as exc:
            raise self._spool_failure(exc) from exc
        counters = self._counters
        return ClientStats(
            pending=spooled.pending,
            in_flight=spooled.leased,
            dead_letters=spooled.dead,
            delivered=counters.delivered,
            retries=counters.retries,
            skipped=counters.skipped,
            last_error=counters.last_error,
            oldest_age=spooled.oldest_age,
            spool_path=str(self._spool_path),
        )

    @property
    def spool_path(self) -> Path:
        """The spool file this client writes to."""
        return self._spool_path

    def __enter__(self) -> SegOpsClient:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if exc_type is None:
            self.shutdown()
            return
        # Leaving on the application's own exception: that one must reach the caller, not
        # a delivery failure of the final flush (whose events stay spooled anyway).
        try:
            self.shutdown()
        except SegOpsError as failure:
            logger.warning("segops: final flush failed while leaving on an exception: %s", failure)

    def __del__(self) -> None:
        # Dropped without shutdown(): the flusher delivers what is pending once (best
        # effort, bounded by the exit flush), then closes the spool and the HTTP pool.
        # Without this, a client made per request would leak a thread and connections.
        if getattr(self, "_closed", True) or sys.is_finalizing():
            return
        self._closed = True
        with contextlib.suppress(Exception):
            # Queued, never done here: a finalizer may run inside the garbage collector on
            # any thread, even one holding the very locks closing the spool takes.
            _RELEASES.put(_retire_job(self._flusher, self._spool, self._http))

    # A client is one shared resource (spool, flusher, HTTP pool): a copy would share them,
    # and its __del__ would retire them under the original. Copies are the client itself.
    def __copy__(self) -> SegOpsClient:
        return self

    def __deepcopy__(self, memo: Dict[int, Any]) -> SegOpsClient:
        return self

    def __reduce__(self) -> Any:
        raise TypeError(
            "a SegOpsClient cannot be pickled: create one in each process (a client made"
            " before fork() already works in the child)"
        )

    def __repr__(self) -> str:
        return (
            f"SegOpsClient(api_url={display_url(self._api_url, self._api_key)!r}, "
            f"api_key={redact(self._api_key)!r}, "
            f"spool={str(self._spool_path)!r})"
        )

    # -- internals ----------------------------------------------------------------------

    def _commit(self, record: bytes) -> None:
        if self._closed:
            self._ensure_open()  # raises
        if self._forked:
            self._ensure_flusher()
        try:
            self._spool.append(record)
        except spool.SpoolError as exc:
            raise self._spool_failure(exc) from exc
        if not self._batch:
            # A track() inside on_error (batch=False reports on the caller's thread) only
            # spools: sending would fail again, report again and recurse.
            if not self._report.reporting_here():
                self._send_now()
            return
        self._unflushed += 1  # only schedules a wake-up: an occasional lost update is harmless
        if self._unflushed >= self._batch_size:
            self._unflushed = 0
            self._flusher.wake()

    def _commit_many(self, records: List[bytes]) -> None:
        self._ensure_open()
        self._ensure_flusher()
        if not records:
            return
        try:
            self._spool.append_many(records)
        except spool.SpoolError as exc:
            raise self._spool_failure(exc) from exc
        if self._batch:
            self._flusher.wake()
        elif not self._report.reporting_here():  # as in _commit
            self._send_now(len(records))

    def _send_now(self, count: int = 1) -> None:
        """``batch=False``: one inline attempt for the ``count`` events just tracked (within
        one ``timeout`` in all); what fails stays spooled for the flusher."""
        deadline = time.monotonic() + self._timeout

        def send_fresh(detached: bool) -> None:
            # fresh_only: the event just tracked, after any older one no call has tried yet
            # (e.g. tracked while the server's Retry-After held sends back), oldest first;
            # an earlier failure is the flusher's to retry. Bounded: a backlog larger than
            # this goes out over the next calls, or with the flusher.
            for _ in range(count + _INLINE_SENDS - 1):
                sent = self._delivery.deliver_next(
                    deadline=deadline,
                    max_records=1,
                    single=True,
                    policy=_SINGLE_ATTEMPT,
                    fresh_only=True,
                    detached=detached,
                )
                if sent == 0 or time.monotonic() >= deadline:
                    return

        try:
            self._within(deadline, send_fresh)
        except _Overran:
            self._report(
                DeliveryError(f"no answer within {self._timeout:g}s; the event stays spooled")
            )
        except SegOpsError as exc:
            self._report(exc)

    def _within(self, deadline: Optional[float], fn: Callable[[bool], T]) -> T:
        """``fn(detached)``, or :class:`_Overran` shortly after ``deadline``.

        With a deadline, ``fn`` runs on a daemon thread: a server that trickles its answer
        a byte at a time (every read within the request timeout) or a ``get_user()`` that
        never returns must not hold the caller, or the exit flush, past it. An abandoned
        send ends in the background and acks or releases its batch (shutdown() leaves the
        spool open for it); other batches go out meanwhile. At most _MAX_SENDS run at once:
        past that, a caller waits for the oldest. Inline when this thread is inside the
        spool already (a signal handler: a worker would wait for it) or is a send itself
        (on_error calling flush()).

        ``detached`` tells ``fn`` where it runs. True on a worker: the caller's wait is
        bounded here, so each request gets the client's full ``timeout`` and is not cut off
        at the deadline (a request cut off after the server stored its batch releases the
        batch, to be sent again); the deadline only decides whether another one starts.
        False inline: nothing else bounds this thread, so requests end at the deadline.
        """
        if deadline is None or self._inside_a_critical_section() or self._is_send_thread():
            return fn(False)
        outcome: List[Any] = []

        def run() -> None:
            try:
                outcome.append((True, fn(True)))
            except BaseException as exc:
                outcome.append((False, exc))
            finally:
                self._send_ended(threading.current_thread())

        worker = threading.Thread(target=run, name="segops-send", daemon=True)
        try:
            self._reserve_send(worker, deadline)
            worker.start()
        except SegOpsError:  # ClientClosed; a DeliveryError is a RuntimeError too
            self._send_ended(worker)
            raise
        except RuntimeError:  # no thread to be had (3.12.0/1 at exit): send inline, clamped
            self._send_ended(worker)
            return fn(False)
        except BaseException:  # e.g. Ctrl-C right here: the slot must not stay taken
            self._send_ended(worker)
            raise
        worker.join(_seconds_until(deadline, _OVERRUN_GRACE))
        if not outcome:
            raise _Overran
        ok, value = outcome[0]
        if ok:
            return cast(T, value)
        raise value

    def _inside_a_critical_section(self) -> bool:
        """True on a thread a signal handler interrupted inside the spool, a session mint or
        a reset_session(): a worker would wait for the locks this thread holds."""
        session = self._session
        held_here = session is not None and session.held_by_this_thread()
        return held_here or self._spool.in_use_by_this_thread()

    def _interrupted_here(self) -> bool:
        """True in a signal handler that interrupted this thread in a critical section or
        in a delivery: what is left may wait for this very thread, so don't wait long."""
        return self._inside_a_critical_section() or self._delivery.holds_a_batch_here()

    def _is_send_thread(self) -> bool:
        return threading.current_thread() in self._sends

    def _reserve_send(self, worker: threading.Thread, deadline: float) -> None:
        """Take a send slot for ``worker``, waiting for the oldest send while all are taken.

        Raises ClientClosed once shutdown() is over: the spool and HTTP pool may be gone.
        """
        while True:
            with self._state_lock:
                if self._final_flush_over:
                    raise ClientClosed("this SegOpsClient was shut down")
                if len(self._sends) < _MAX_SENDS:
                    self._sends[worker] = None
                    return
                # The oldest that has started: a slot is taken just before its thread starts.
                oldest = next((t for t in self._sends if t.ident is not None), None)
            if oldest is None:
                time.sleep(0.005)
            else:
                oldest.join(_seconds_until(deadline))
            if time.monotonic() >= deadline:
                raise _Overran

    def _send_ended(self, worker: threading.Thread) -> None:
        with self._state_lock:
            self._sends.pop(worker, None)
        self._release_if_idle()

    def _release_if_idle(self) -> None:
        """After shutdown(): close the spool and HTTP pool once no send and no flusher
        uses them any more (whichever of them ends last does it; only once)."""
        with self._state_lock:
            busy = self._sends or self._flusher.running()
            if not self._final_flush_over or self._released or busy:
                return
            self._released = True
        self._spool.close()  # first: a straggling claim then fails cleanly, sends nothing
        self._http.close()

    def _drain_through(self, target: int, deadline: Optional[float]) -> None:
        """Deliver every event up to ``target``; then raise what the server refused of them
        (dead-lettered, by this call or the flusher), as the official ``flush()`` raises on
        a non-2xx: after the rest is delivered, not instead."""
        self._deliver_through(target, deadline)
        refused = self._rejected.take_through(target, self._spool)
        if refused:
            raise _summary(refused)

    def _deliver_through(self, target: int, deadline: Optional[float]) -> None:
        # Asks "is anything up to target still live", not "how many": a count scans the
        # whole backlog before every batch. FlushTimeout counts once, for its ``pending``.
        stalled_since: Optional[float] = None
        while self._spool.has_pending_through(target):
            if deadline is not None and time.monotonic() >= deadline:
                raise self._flush_timeout(target)
            try:
                sent = self._within(
                    deadline,
                    lambda detached: self._delivery.deliver_next(
                        deadline=deadline, detached=detached
                    ),
                )
            except _Overran:
                raise self._flush_timeout(target) from None
            except DeliveryError as exc:
                # A retry cycle our deadline cut short is a timeout, not a refusal (which
                # keeps its own type: AuthError, EventsSkipped, ...).
                # The retry cycle stops with up to 50 ms of its budget left (see _retry).
                timed_out = deadline is not None and deadline - time.monotonic() <= 0.1
                if type(exc) is DeliveryError and timed_out:
                    raise self._flush_timeout(target, cause=exc) from exc
                raise
            if sent:
                stalled_since = None
                continue
            # The rest is leased by another sender; it acks or its lease expires.
            now = time.monotonic()
            stalled_since = stalled_since or now
            if now - stalled_since >= _INTERRUPTED_WAIT and self._interrupted_here():
                raise self._flush_timeout(target, interrupted=True)
            time.sleep(0.02)

    def _flush_timeout(
        self, target: int, cause: Optional[DeliveryError] = None, *, interrupted: bool = False
    ) -> FlushTimeout:
        pending = self._spool.pending_through(target)
        message = f"{pending} event(s) still pending; they stay in the spool"
        if interrupted:
            message += (
                " (some are being sent and cannot be recorded before the call this signal"
                " handler interrupted goes on)"
            )
        return FlushTimeout(message if cause is None else f"{message} ({cause})", pending=pending)

    def _spool_failure(self, exc: spool.SpoolError) -> SegOpsError:
        """Ours for a spool error; ClientClosed when a shutdown() on another thread (or in
        a signal handler) closed the spool under the call."""
        if self._closed:
            return ClientClosed("this SegOpsClient was shut down during the call")
        return translate_spool_error(exc)

    def _ensure_open(self) -> None:
        if self._closed:
            raise ClientClosed("this SegOpsClient was shut down; create a new one")

    def _new_flusher(self) -> Flusher:
        # batch=False: each track() sends its own event inline; the flusher only picks up
        # what those attempts left behind, so it must not race them for fresh records.
        min_age = 0.0 if self._batch else self._timeout + 1.0
        return Flusher(
            delivery=self._delivery,
            interval=self._flush_interval,
            report=self._report,
            min_age=min_age,
        )

    def _ensure_flusher(self) -> None:
        """After a fork, the child starts its own flusher on first use."""
        if not self._forked:
            return
        if self._spool.pid != os.getpid():
            # Forked with no hook at all: a uWSGI app that imported uwsgidecorators after
            # this client was made replaced the post-fork hook _uwsgi chained. Once per
            # process: _forked is only set until the flusher starts.
            _after_fork_without_hooks()
        with self._state_lock:
            if self._forked:  # the fork hook gave the child a fresh, unstarted flusher
                # Cleared first: under gevent, start() below lets other greenlets run, and
                # they all pass this (then unpatched) reentrant lock: one start is enough.
                self._forked = False
                if threading.Lock is not self._lock_type_at_fork:
                    self._renew_network_locks()
                if self._background:
                    # No start-up pass when the parent ran a flusher: it already drains
                    # what was left. A child's pass would claim the events of every
                    # process at once, and pool children (Celery's recycling, gunicorn's
                    # max-requests) are often ended mid-send, which makes the next sender
                    # send that batch again: a copy at servers that ignore the
                    # Idempotency-Key. (A flusher-less uWSGI master: its workers pass.)
                    self._flusher.start(idle_first=self._parent_ran_flusher)
        _ensure_reaper()

    def _renew_network_locks(self) -> None:
        """gevent monkey-patched ``threading`` since the fork hook made these locks (as
        gunicorn's gevent worker does after ``--preload`` forked it). A greenlet holds them
        across a request, and another greenlet waiting on an unpatched lock would block the
        whole process, the holder included, until its timeout."""
        self._http.after_fork()
        if self._session is not None:
            self._session.after_fork()

    def _after_fork_in_child(self) -> None:
        """Fresh locks and HTTP pool; the parent's threads do not exist here."""
        self._state_lock = threading.RLock()
        self._lock_type_at_fork = threading.Lock
        self._forked = True
        # Unstarted (_ensure_flusher starts one on first use): the parent's may hold a lock
        # of its events that a parent thread had at the fork, and shutdown() sets them.
        self._flusher = self._new_flusher()
        self._sends = {}
        self._counters.lock = threading.RLock()
        self._rejected.after_fork()
        self._http.after_fork()
        if self._session is not None:
            self._session.after_fork()
        self._unflushed = 0

    def _exit_flush(self, deadline: float) -> None:
        try:
            self.shutdown(timeout=max(0.1, deadline - time.monotonic()))
        except EventRejected as exc:  # delivered or dead-lettered: nothing is left
            logger.warning("segops: at exit, %s", exc)
        except SegOpsError as exc:
            logger.warning("segops: events left in the spool at exit (%s)", exc)
        except Exception:  # a bug must not cost the other clients their exit flush
            logger.exception("segops: exit flush failed; events stay in the spool")


def _summary(refused: List[EventRejected]) -> EventRejected:
    """One exception for the events the server refused: the first one's status and reason."""
    first = refused[0]
    if len(refused) == 1:
        return first
    return EventRejected(
        f"the server rejected {len(refused)} events; moved to dead letters (the first: "
        f"HTTP {first.status}: {first.detail})",
        status=first.status,
        detail=first.detail,
    )


def _seconds_until(deadline: float, extra: float = 0.0) -> float:
    """What is left until ``deadline`` (plus ``extra``), for a thread join: a timeout of
    centuries is allowed, but a join longer than ``threading.TIMEOUT_MAX`` raises."""
    return min(threading.TIMEOUT_MAX, max(0.0, deadline - time.monotonic()) + extra)


def _deadline(timeout: Optional[float]) -> Optional[float]:
    """The monotonic deadline of a ``timeout`` in seconds: None (and infinity) wait for
    good, a negative one is spent already; NaN is refused rather than never expiring."""
    if timeout is None or timeout == math.inf:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout != timeout:
        raise ConfigurationError(f"timeout must be a number of seconds or None, not {timeout!r}")
    return time.monotonic() + max(0.0, timeout)


def _check_settings(
    api_url: Any,
    api_key: Any,
    get_user: Any,
    batch_size: Any,
    flush_interval: Any,
    timeout: Any,
) -> None:
    if not isinstance(api_url, str) or not api_url.strip():
        raise ConfigurationError("api_url must be a non-empty URL such as https://api.segops.ai")
    # Never echo a password in the URL, or a key given as one (quoted, prefixed, ...).
    shown = display_url(api_url, api_key if isinstance(api_key, str) else None)
    if not normalize_url(api_url).startswith(("http://", "https://")):
        raise ConfigurationError(f"api_url must start with http:// or https://: {shown!r}")
    try:
        url = httpx.URL(api_url)
        valid = bool(url.host) and (url.port is None or 0 < url.port < 65536)
        has_userinfo = bool(url.userinfo)
        has_extras = "?" in api_url or "#" in api_url  # even an empty ?query or #fragment
    except (httpx.InvalidURL, ValueError, TypeError):
        valid = has_userinfo = has_extras = False
    if not valid or any(c.isspace() for c in api_url):
        raise ConfigurationError(f"api_url is not a usable URL: {shown!r}")
    if has_userinfo:
        # It would show in reprs and logs; the API key is the only credential the API takes.
        raise ConfigurationError(f"api_url must not hold a user name or password: {shown!r}")
    if has_extras:  # the API paths are appended to it: a query would end up mid-URL
        raise ConfigurationError(
            f"api_url must be a base URL, without ?query or #fragment: {shown!r}"
        )
    if not isinstance(api_key, str) or not api_key.strip():
        raise ConfigurationError("api_key must be a non-empty sk_… or pk_… key")
    if not header_safe(api_key):
        # It could never be sent in a header, and httpx's error would quote it in full.
        raise ConfigurationError(
            f"api_key {redact(api_key)} holds whitespace, control or non-ASCII characters"
            " (a newline read from a file?)"
        )
    if api_key.startswith("pk_") and get_user is None:
        raise ConfigurationError("a pk_ key needs get_user= (it returns the UserContext to mint)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigurationError("batch_size must be a positive integer")
    for name, value in (("flush_interval", flush_interval), ("timeout", timeout)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not 0 < value <= threading.TIMEOUT_MAX  # NaN fails this too; so does inf
        ):
            # Past TIMEOUT_MAX (some 292 years) a socket timeout or a flusher wait overflows.
            raise ConfigurationError(
                f"{name} must be a positive number of seconds, at most threading.TIMEOUT_MAX"
            )


def _open_spool(path: Path, durability: str, max_bytes: Optional[int]) -> spool.Spool:
    try:
        return spool.Spool(path, durability=durability, max_bytes=max_bytes)
    except spool.SpoolError as exc:
        raise translate_spool_error(exc) from exc
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from exc


_LIVE_CLIENTS: weakref.WeakSet[SegOpsClient] = weakref.WeakSet()
#: Flushers of dropped clients, making their last delivery pass; the exit flush waits.
_RETIRING: set[Flusher] = set()
#: Releases of dropped clients, queued by __del__ (SimpleQueue.put is safe in finalizers)
#: and run by the reaper thread, or by the exit flush.
_RELEASES: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
_reaper: Optional[threading.Thread] = None
_reaper_lock = threading.Lock()


def _retire_job(flusher: Flusher, spool_: spool.Spool, http: HttpSender) -> Callable[[], None]:
    """Hand a dropped client's flusher its last pass; spool and HTTP pool close after it.
    A flusher never started (background=False, a forked child's inherited one) releases
    at once."""

    def release() -> None:
        _RETIRING.discard(flusher)
        http.close()
        spool_.close()

    def retire() -> None:
        _RETIRING.add(flusher)
        flusher.retire(release)

    return retire


def _ensure_reaper() -> None:
    """Start this process's reaper once (the fork hook forgets the parent's)."""
    global _reaper
    if _reaper_made():
        return
    with _reaper_lock:
        if _reaper_made():  # another thread made it meanwhile
            return
        _renew_release_queue()
        reaper = _reaper = threading.Thread(target=_reap, name="segops-reaper", daemon=True)
    # Started outside the lock: under gevent, start() lets other greenlets run, and one
    # entering here would block the whole process on the lock (unpatched if made early).
    try:
        reaper.start()
    except RuntimeError:  # cannot start a thread now (e.g. at exit): try again next time
        _reaper = None
        raise


def _reaper_made() -> bool:
    return _reaper is not None


def _renew_release_queue() -> None:
    """Rebuild the queue if ``queue.SimpleQueue`` changed since it was made: gevent's
    monkey-patching after segops was imported turns the reaper into a greenlet, and a
    greenlet blocked in the original (C) queue's get() blocks every greenlet, forever."""
    global _RELEASES
    if type(_RELEASES) is queue.SimpleQueue:
        return
    old, _RELEASES = _RELEASES, queue.SimpleQueue()
    while True:
        try:
            _RELEASES.put(old.get_nowait())
        except queue.Empty:
            return


def _reap() -> None:
    while True:
        _run_release(_RELEASES.get())


def _run_release(job: Callable[[], None]) -> None:
    try:
        job()
    except Exception:
        logger.exception("segops: releasing a dropped client failed")


def _run_queued_releases() -> None:
    while True:
        try:
            job = _RELEASES.get_nowait()
        except queue.Empty:
            return
        _run_release(job)


def _after_fork_without_hooks() -> None:
    """In a child forked without Python's fork hooks (a uWSGI worker, see _uwsgi)."""
    with _hookless_fork_lock:
        if not any(c._spool.pid != os.getpid() for c in list(_LIVE_CLIENTS)):
            return  # another thread of this child did it
        spool.after_fork_without_hooks()
        _after_fork_in_child()


def _after_uwsgi_fork() -> None:
    """uWSGI's post-fork hook: reset, then start the flushers at once (the master ran
    none, so what a previous run left is sent without waiting for a first track())."""
    _after_fork_without_hooks()
    for client in list(_LIVE_CLIENTS):
        client._ensure_flusher()


#: No thread runs in a master that forks without hooks, so no thread holds it at the fork.
_hookless_fork_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _RELEASES, _reaper, _reaper_lock
    _RETIRING.clear()  # their threads, and the spool connections, stayed in the parent
    _RELEASES, _reaper = queue.SimpleQueue(), None  # the parent's queued releases are its own
    _reaper_lock = threading.Lock()  # a parent thread may have held it at the fork
    for client in list(_LIVE_CLIENTS):
        client._after_fork_in_child()


def _flush_at_exit() -> None:
    """Bounded best-effort flush for clients nobody shut down; never blocks exit for long.

    Every client flushes at once, on a thread of its own, within one shared deadline: a
    client whose server is down spends the budget on its own retries, not the others'.
    """
    # The flushes get what the wait for their last step (below) leaves of ATEXIT_TIMEOUT:
    # the process is gone by then, as documented.
    deadline = time.monotonic() + ATEXIT_TIMEOUT - _EXIT_OVERRUN
    _run_queued_releases()  # clients dropped just before exit: their last pass starts now
    flushes: List[threading.Thread] = []
    for client in list(_LIVE_CLIENTS):
        if client._forked:  # an inherited client this child never used stays silent
            continue
        flush = threading.Thread(
            target=client._exit_flush, args=(deadline,), name="segops-exit-flush", daemon=True
        )
        try:
            flush.start()
        except RuntimeError:  # no thread to be had at exit (3.12.0/1): flush it here
            client._exit_flush(deadline)
        else:
            flushes.append(flush)
    # Each ends shortly after the deadline on its own (a request still going is left to
    # its worker, which ends with the process): the grace only covers that last step.
    # One end for all: a grace per client would add up.
    end = deadline + _EXIT_OVERRUN
    try:
        for flush in flushes:
            flush.join(max(0.0, end - time.monotonic()))
    except (SystemExit, KeyboardInterrupt):  # a second signal: stop waiting, quietly
        logger.warning("segops: exit flush interrupted; undelivered events stay spooled")
        return
    if any(flush.is_alive() for flush in flushes):
        # Their daemon threads end with the process; what they did not send stays spooled.
        logger.warning("segops: exit flush budget spent; undelivered events stay spooled")
    for flusher in list(_RETIRING):  # a dropped client's last pass has no deadline of its own
        flusher.join(end - time.monotonic())


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_flush_at_exit)
