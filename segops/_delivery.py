"""Delivery: claim a batch from the spool, send it, and ack only after a 2xx.

Each outcome has one place here: a 2xx acks; 400/413/422 split the batch until the bad event
is alone and dead-letter it; transient failures are retried by the policy and then the batch
is released, whole and under the same idempotency key, for a later cycle.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Tuple

import spool

from ._encoding import batch_body
from ._errors import (
    AuthError,
    DeliveryError,
    EventRejected,
    EventsSkipped,
    SegOpsError,
    translate_spool_error,
)
from ._http import BATCH_PATH, SINGLE_PATH, HttpSender, Reply
from ._retry import RETRY_AFTER_CAP, Retryable, RetryPolicy, call_with_retries
from ._session import Session, Token

logger = logging.getLogger("segops")

#: The server's documented limit of events per batch request.
MAX_BATCH_EVENTS = 500
#: Keep request bodies well under common proxy limits; a 413 still splits.
MAX_BATCH_BYTES = 5 * 1024 * 1024
#: Tag of a spool batch claimed for the single-event endpoint (``batch=False``): its
#: retries go to the same endpoint under the same Idempotency-Key.
SINGLE_TAG = "single"
#: Requests one pk_ attempt can make (see ``Delivery._post_once``): its lease must cover them.
_MAX_PK_REQUESTS_PER_ATTEMPT = 4


class _Rejected(Exception):
    """The server refused the request's content (400/413/422): split, then dead-letter."""

    def __init__(self, reply: Reply, detail: str) -> None:
        super().__init__(detail)
        self.reply = reply
        self.detail = detail  # redacted, this client's credentials included


@dataclass
class Counters:
    """What this client has done, for ``stats()``."""

    delivered: int = 0
    retries: int = 0
    dead_lettered: int = 0
    skipped: int = 0
    last_error: Optional[str] = None
    # Reentrant: a signal handler may call stats()/shutdown() on a thread inside add().
    lock: Any = field(default_factory=threading.RLock, repr=False)

    def add(self, **amounts: int) -> None:
        with self.lock:
            for name, amount in amounts.items():
                setattr(self, name, getattr(self, name) + amount)


Report = Callable[[SegOpsError], None]


class RejectedLog:
    """Events a client's deliveries dead-lettered, kept until a ``flush()`` or ``shutdown()``
    that waited for them raises them (the official client's ``flush()`` raises on a
    non-2xx). Whichever thread delivered them: the flusher may have sent the batch before
    the ``flush()`` was called. Holds the latest ``KEEP`` only."""

    KEEP = 10_000

    def __init__(self, *, settled_through: int) -> None:
        self._lock = threading.RLock()  # reentrant: a signal handler may flush meanwhile
        self._items: List[Tuple[int, EventRejected]] = []
        # Ids up to here were waited for by an earlier take (or predate the client): dead
        # letters above it that another client or process moved are still to be raised.
        self._settled = settled_through

    def add(self, record_id: int, rejected: EventRejected) -> None:
        with self._lock:
            self._items.append((record_id, rejected))
            del self._items[: -self.KEEP]

    def discard(self, rejected: EventRejected) -> None:
        with self._lock:
            self._items = [item for item in self._items if item[1] is not rejected]

    def take_through(self, last_id: int, store: spool.Spool) -> List[EventRejected]:
        """Remove and return those of events with ids up to ``last_id``, oldest first.

        Also the dead letters in ``store`` with ids above the last take's (and up to
        ``last_id``) that another sender moved: a client or process sharing the spool may
        have sent this client's events (a Celery parent's flusher sends its children's),
        and the flush() that waited for them must raise all the same."""
        with self._lock:
            taken = sorted((item for item in self._items if item[0] <= last_id), key=_first)
            self._items = [item for item in self._items if item[0] > last_id]
            after, self._settled = self._settled, max(self._settled, last_id)
        if last_id > after:
            known = {record_id for record_id, _ in taken}
            for record_id, reason in store.dead_letter_reasons(after, last_id):
                if record_id not in known:
                    taken.append((record_id, _rejected_from(reason)))
            taken.sort(key=_first)
        return [rejected for _, rejected in taken]

    def after_fork(self) -> None:
        """In a forked child: the parent's rejections are the parent's to raise."""
        self._lock = threading.RLock()
        self._items = []


def _first(item: Tuple[int, EventRejected]) -> int:
    return item[0]


def _rejected_from(reason: str) -> EventRejected:
    """The EventRejected for a dead letter's reason (``HTTP 400: detail``, as stored)."""
    status, _, detail = reason.partition(": ")
    code = status[5:] if status.startswith("HTTP ") else ""
    return EventRejected(
        f"the server rejected an event; moved to dead letters ({reason})",
        status=int(code) if code.isdigit() else None,
        detail=detail if code.isdigit() else reason,
    )


class Delivery:
    """Sends spooled batches; shared by the flusher thread, ``flush()`` and ``segops replay``."""

    def __init__(
        self,
        *,
        store: spool.Spool,
        http: HttpSender,
        api_key: str,
        session: Optional[Session],
        policy: RetryPolicy,
        report: Report,
        counters: Counters,
        request_timeout: float,
        rejected: Optional[RejectedLog] = None,
    ) -> None:
        self._spool = store
        self._rejected = rejected
        self._http = http
        self._api_key = api_key
        self._session = session
        self._policy = policy
        self._report = report
        self._counters = counters
        self._request_timeout = request_timeout
        # Long enough for one retry cycle plus its last attempt, whose requests each may take
        # request_timeout: one with an sk_ key; with pk_ up to four (see _post_once).
        # Renewed before each batch of a split. Short otherwise: a sender that dies holds
        # its batch this long.
        requests_per_attempt = 1 if session is None else _MAX_PK_REQUESTS_PER_ATTEMPT
        self._lease = policy.timeout + requests_per_attempt * request_timeout + 5.0
        # A Retry-After that outlived its cycle: no sender of this client (flusher, flush(),
        # shutdown(), batch=False) posts before this monotonic time. The status is the refusal's.
        self._hold_until = 0.0
        self._holding = threading.local()  # deliveries in progress on each thread
        self._hold_status: Optional[int] = None

    # -- public -------------------------------------------------------------------------

    def deliver_next(
        self,
        *,
        deadline: Optional[float] = None,
        cancel: Optional[threading.Event] = None,
        max_records: int = MAX_BATCH_EVENTS,
        single: bool = False,
        policy: Optional[RetryPolicy] = None,
        min_age: float = 0.0,
        fresh_only: bool = False,
        detached: bool = False,
    ) -> int:
        """Claim the oldest available batch and deliver it; returns how many records it held.

        ``deadline`` bounds the retry cycle; each request is cut off at it too, unless
        ``detached``: the caller waits on another thread, which it leaves at the deadline
        (``SegOpsClient._within``). Then a request gets the full request timeout, and the
        deadline only decides whether another one starts: a request cut off at the caller's
        deadline would release a batch the server may still store, to be sent again.

        Raises :class:`DeliveryError` (the batch is back in the spool) when it could not be sent.
        """
        self._wait_out_retry_after(policy or self._policy, deadline, cancel)
        try:
            batch = self._spool.claim(
                max_records,
                max_bytes=MAX_BATCH_BYTES,
                lease=self._lease,
                min_age=min_age,
                fresh_only=fresh_only,
                tag=SINGLE_TAG if single else None,
            )
        except spool.SpoolError as exc:
            raise translate_spool_error(exc) from exc
        if batch is None:
            return 0
        self._deliver(batch, deadline, cancel, policy or self._policy, detached)
        return len(batch.records)

    # -- the server's Retry-After ---------------------------------------------------------

    def _wait_out_retry_after(
        self, policy: RetryPolicy, deadline: Optional[float], cancel: Optional[threading.Event]
    ) -> None:
        """Wait until the last ``Retry-After`` has passed: a request before it only earns
        another refusal. A wait that ``policy`` and ``deadline`` cannot afford raises at once."""
        left = self._hold_until - time.monotonic()
        if left <= 0:
            return
        if left <= _affordable_wait(policy, deadline):
            if cancel is None:
                time.sleep(left)
                return
            if not cancel.wait(left):
                return
        raise DeliveryError(
            f"the server asked to wait {left:.1f}s more (Retry-After); events stay spooled",
            status=self._hold_status,
            retry_after=max(0.0, self._hold_until - time.monotonic()),
        )

    # -- one batch ----------------------------------------------------------------------

    def _deliver(
        self,
        batch: spool.Batch,
        deadline: Optional[float],
        cancel: Optional[threading.Event],
        policy: RetryPolicy,
        detached: bool,
    ) -> None:
        todo: List[spool.Batch] = [batch]
        # Reported once every part is acked or released: an on_error that calls flush()
        # must not wait for batches this very call still holds.
        reports: List[SegOpsError] = []
        self._holding.depth = getattr(self._holding, "depth", 0) + 1
        try:
            first = True
            while todo:
                current = todo[0]
                if not first and not self._spool.renew(current, lease=self._lease):
                    todo.pop(0)  # our lease lapsed and someone else owns these rows now
                    continue
                first = False
                if self._spans_identities(current):
                    todo[:1] = list(self._spool.split(current))
                    continue
                try:
                    reply = self._send(current, deadline, cancel, policy, detached)
                except _Rejected as exc:
                    todo[:1] = self._handle_rejected(current, exc, reports)
                    continue
                self._acknowledge(current, reply, reports)
                todo.pop(0)
        except spool.SpoolError as exc:
            self._release_all(todo)
            raise translate_spool_error(exc) from exc
        except BaseException:
            self._release_all(todo)
            raise
        finally:
            self._holding.depth -= 1
            for report in reports:
                self._report(report)

    def holds_a_batch_here(self) -> bool:
        """True while the calling thread is inside a delivery: a signal handler that
        interrupted one (that batch waits for the handler to return)."""
        return getattr(self._holding, "depth", 0) > 0

    def _spans_identities(self, batch: spool.Batch) -> bool:
        """True when a ``reset_session()`` came between the batch's first and last record."""
        first, last = batch.records[0].id, batch.records[-1].id
        return self._session is not None and self._session.spans_eras(first, last)

    def _handle_rejected(
        self, batch: spool.Batch, exc: _Rejected, reports: List[SegOpsError]
    ) -> List[spool.Batch]:
        if len(batch.records) > 1:
            return list(self._spool.split(batch))
        detail = exc.detail  # stored, then printed
        reason = f"HTTP {exc.reply.status}: {detail}"
        rejected = _rejected_from(reason)
        # Logged before the rows move: a flush() that sees nothing pending any more must
        # find it there (undone if they do not move after all).
        # An object of its own: on_error may raise the one it gets, whose traceback then
        # keeps this thread's frames (the whole claimed batch) alive while it is kept here.
        kept = _rejected_from(reason)
        if self._rejected is not None:
            self._rejected.add(batch.records[0].id, kept)
        moved = 0
        try:
            moved = self._spool.dead_letter(batch.records, reason)
        finally:
            if not moved and self._rejected is not None:
                self._rejected.discard(kept)  # our lease lapsed: not ours to report
        self._spool.ack(batch)  # drops the now-empty batch instead of leaving it to expire
        self._counters.add(dead_lettered=1)
        reports.append(rejected)
        return []

    def _acknowledge(self, batch: spool.Batch, reply: Reply, reports: List[SegOpsError]) -> None:
        data = reply.json()
        skipped = data.get("skipped") if isinstance(data, dict) else None
        if not isinstance(skipped, int) or skipped < 0:
            skipped = 0
        skipped = min(skipped, len(batch.records))  # a server that over-reports
        # Counted before the ack: flush() returns as soon as the ack is visible, and a
        # stats() right after it must include these events. Uncounted if the ack fails
        # (they stay spooled and go again).
        self._counters.add(delivered=len(batch.records), skipped=skipped)
        acked = 0
        try:
            acked = self._spool.ack(batch)
        finally:
            if not acked:  # failed, or the lease had lapsed: whoever holds it now counts it
                self._counters.add(delivered=-len(batch.records), skipped=-skipped)
        if skipped and acked:  # reported once, by whoever counts it
            reports.append(
                EventsSkipped(
                    f"the server skipped {skipped} of {len(batch.records)} events as invalid",
                    skipped=skipped,
                    status=reply.status,
                )
            )

    def _release_all(self, batches: List[spool.Batch]) -> None:
        for leftover in batches:
            try:
                self._spool.release(leftover)
            except spool.SpoolError:
                logger.warning("could not release a batch; it returns when its lease expires")

    # -- one request, with retries ---------------------------------------------------------

    def _send(
        self,
        batch: spool.Batch,
        deadline: Optional[float],
        cancel: Optional[threading.Event],
        policy: RetryPolicy,
        detached: bool,
    ) -> Reply:
        records = [r.data for r in batch.records]
        # A batch first sent on the single-event endpoint goes there again, with the same
        # key and body, whoever retries it: a server that stored the first attempt (whose
        # answer was lost) recognizes the repeat. On the batch endpoint it could not.
        if batch.tag == SINGLE_TAG and len(records) == 1:
            path, body = SINGLE_PATH, records[0]
        else:
            path, body = BATCH_PATH, batch_body(records)
        extra = {"Idempotency-Key": batch.key}

        failures: List[Retryable] = []
        first_id = batch.records[0].id

        def attempt() -> Reply:
            if not detached:
                return self._post_once(path, body, extra, first_id, _left(deadline))
            # Nobody waits past the deadline: no attempt starts after it (not even the
            # first, nor one for a part of a split batch), but one started runs to its end.
            if deadline is not None and time.monotonic() >= deadline:
                # A backoff that slept up to the deadline ends with the failure it waited out.
                raise failures[-1] if failures else Retryable("no time left to send")
            return self._post_once(path, body, extra, first_id, self._request_timeout)

        def count_retry(exc: Retryable, wait: float) -> None:
            failures[:] = [exc]
            self._counters.add(retries=1)
            logger.info("retrying in %.2fs: %s", wait, exc)

        try:
            return call_with_retries(
                attempt, policy, deadline=deadline, cancel=cancel, on_retry=count_retry
            )
        except Retryable as exc:
            hint = exc.hint_left()
            if hint is not None:
                until = time.monotonic() + min(hint, RETRY_AFTER_CAP)
                self._hold_until, self._hold_status = max(self._hold_until, until), exc.status
            raise DeliveryError(
                f"delivery failed after retries: {exc}", status=exc.status, retry_after=hint
            ) from exc

    def _post_once(
        self,
        path: str,
        body: bytes,
        extra: dict[str, str],
        first_id: int,
        timeout: Optional[float],
    ) -> Reply:
        """One attempt, each request within ``timeout`` (``None``: the HTTP client's own
        timeout, and no bound on waiting for a mint). With a ``pk_`` key up to four: a mint
        and the post, and both again after a 401 (as the API doc says: re-mint once). The
        token is chosen per attempt: a reset_session() between two attempts must not send
        the records under the next identity."""
        token = self._session_token(first_id, timeout)
        sent_at = time.monotonic()
        reply = self._http.post(path, body, {**extra, **self._auth(token)}, timeout=timeout)
        if reply.status == 401 and token is not None and self._session is not None:
            self._session.refused(token, sent_at=sent_at)  # and older cached ones: mint once
            token = self._session_token(first_id, timeout)
            reply = self._http.post(path, body, {**extra, **self._auth(token)}, timeout=timeout)
        return _classify(reply, self._api_key, None if token is None else token.value)

    def _session_token(self, first_id: int, timeout: Optional[float]) -> Optional[Token]:
        if self._session is None:
            return None
        return self._session.token_for(first_id, timeout=timeout)

    def _auth(self, token: Optional[Token]) -> dict[str, str]:
        return {"Authorization": f"ApiKey {self._api_key}"} if token is None else _bearer(token)


def _left(deadline: Optional[float]) -> Optional[float]:
    """Seconds until ``deadline`` (negative once it passed; the HTTP layer takes 50 ms at
    least), or ``None`` for no deadline. Capped at ``threading.TIMEOUT_MAX``: the session
    mint waits on a lock with it."""
    return None if deadline is None else min(threading.TIMEOUT_MAX, deadline - time.monotonic())


def _affordable_wait(policy: RetryPolicy, deadline: Optional[float]) -> float:
    """The longest hint a cycle of ``policy`` would sleep for: none with a single attempt
    (``batch=False`` never sleeps in ``track()``), else what one cycle may spend on it."""
    if policy.attempts < 2:
        return 0.0
    limit = min(policy.timeout, policy.retry_after_max)
    return limit if deadline is None else min(limit, deadline - time.monotonic())


def _bearer(token: Token) -> dict[str, str]:
    return {"Authorization": f"Bearer {token.value}"}


def _classify(reply: Reply, *secrets: Optional[str]) -> Reply:
    """Return a 2xx reply; raise what every other status means for delivery."""
    status = reply.status
    if reply.ok:
        return reply
    if status in (400, 413, 422):
        raise _Rejected(reply, reply.detail(*secrets))
    if status in (408, 429) or status >= 500:
        raise Retryable(f"HTTP {status}", status=status, retry_after=reply.retry_after())
    detail = reply.detail(*secrets)
    if status in (401, 403):
        raise AuthError(f"HTTP {status}: {detail}", status=status, detail=detail)
    raise DeliveryError(f"HTTP {status}: {detail}", status=status, detail=detail)
