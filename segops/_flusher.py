"""The background flusher: a daemon thread that drains the spool through ``Delivery``."""

from __future__ import annotations

import logging
import threading
from typing import Callable, Optional

from spool._sync import ReentrantEvent  # one distribution: the signal-safe Event lives there

from ._delivery import Delivery
from ._errors import AuthError, DeliveryError, SegOpsError
from ._retry import RETRY_AFTER_CAP, backoff_delay

logger = logging.getLogger("segops")

#: Backoff between failed cycles: transient outages retry within a minute, auth/config
#: problems (401/403/404 with an sk_ key) wait up to five minutes; events stay spooled.
#: A server's ``Retry-After`` lengthens the wait to the hint (up to ``RETRY_AFTER_CAP``).
TRANSIENT_BACKOFF = (1.0, 60.0)
AUTH_BACKOFF = (5.0, 300.0)
#: After a wake-up by ``batch_size`` new events, wait this long before claiming.
COALESCE_DELAY = 0.2


class Flusher:
    """Wakes every ``interval`` seconds, or when woken, and delivers until the spool is empty."""

    def __init__(
        self,
        *,
        delivery: Delivery,
        interval: float,
        report: Callable[[SegOpsError], None],
        min_age: float = 0.0,
    ) -> None:
        self._delivery = delivery
        self._min_age = min_age
        self._interval = interval
        self._report = report
        # Reentrant: a signal handler's shutdown() may stop the flusher while the main
        # thread is inside wake().
        self._wake = ReentrantEvent()
        self._stop = ReentrantEvent()
        self._thread: Optional[threading.Thread] = None
        # Set by retire(): deliver what is pending once, then release and end.
        self._retiring = False
        self._backing_off = False  # waiting out a failure: retire() ends that wait at once
        self._release: Optional[Callable[[], None]] = None  # see on_exit()
        self._exited = False
        self._idle_first = False

    def start(self, *, idle_first: bool = False) -> None:
        """Start the thread; with ``idle_first`` its first cycle waits for a wake-up or the
        interval instead of running at once."""
        self._idle_first = idle_first
        # daemon: a flusher stuck on the network must never keep the interpreter alive;
        # the atexit hook makes the bounded final flush instead.
        self._thread = threading.Thread(target=self._run, name="segops-flusher", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float) -> bool:
        """Ask the thread to stop (interrupting any backoff) and wait; True if it ended."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(max(0.0, timeout))
        return not thread.is_alive()

    def retire(self, release: Callable[[], None]) -> None:
        """The client is gone: deliver what is pending once, then call ``release`` and end.

        A flusher backing off after a failure ends at once: it just had its pass.
        """
        self._retiring = True
        if self._backing_off:
            self._stop.set()
        self._wake.set()
        self.on_exit(release)

    def on_exit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the thread has ended: from it, or now if it has already
        (or never started). It may run twice in a race: it must be idempotent."""
        self._release = callback
        thread = self._thread
        # Written in the other order by _run: one of the two sees the other's write.
        if thread is None or self._exited or not thread.is_alive():
            callback()

    def running(self) -> bool:
        """True while the thread is alive and has not begun its exit."""
        thread = self._thread
        return thread is not None and not self._exited and thread.is_alive()

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the thread to end (after stop or retire)."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, timeout))

    def _back_off(self, seconds: float) -> None:
        # The flag first, then the check: retire() reads them in the other order, so one
        # of the two always sees the other's write and the wait cannot outlive a retire.
        self._backing_off = True
        try:
            if not self._retiring:
                self._stop.wait(seconds)
        finally:
            self._backing_off = False

    def _run(self) -> None:
        try:
            self._deliver_until_stopped()
        finally:
            self._exited = True
            release = self._release
            if release is not None:
                release()

    def _deliver_until_stopped(self) -> None:
        failures = 0
        if self._idle_first:
            self._idle()
        while not self._stop.is_set():
            delivered = 0
            try:
                while not self._stop.is_set() and self._deliver_one():
                    delivered += 1
                failures = 0
            except SegOpsError as exc:
                if self._stop.is_set():
                    # shutdown() cut the cycle short (a backoff or Retry-After wait): not a
                    # failure to report; its own final flush raises what is still wrong.
                    return
                # Failures in a row: a cycle that delivered before it failed (a backlog
                # the server took until an outage) starts the backoff over.
                failures = 1 if delivered else failures + 1
                self._report(exc)
                if self._retiring:
                    return  # best effort only: the rest stays spooled for the next client
                self._back_off(_backoff(exc, failures))
                continue
            except Exception as exc:  # a bug must not kill the flusher silently
                failures += 1
                logger.exception("segops flusher: unexpected error")
                self._report(SegOpsError(f"unexpected error in the flusher: {exc!r}"))
                if self._retiring:
                    return
                self._back_off(_backoff(exc, failures))
                continue
            if self._retiring:
                return
            self._idle()

    def _deliver_one(self) -> int:
        return self._delivery.deliver_next(cancel=self._stop, min_age=self._min_age)

    def _idle(self) -> None:
        """Until woken (by ``batch_size`` new events, a flush, a stop) or ``interval`` ends."""
        if self._wake.wait(self._interval) and not self._retiring:
            # Woken by a burst of track() calls: linger a moment so the burst leaves in
            # a few large requests. Every request costs the tracking threads GIL time.
            self._stop.wait(COALESCE_DELAY)
        self._wake.clear()


def _backoff(exc: BaseException, failures: int) -> float:
    """A failed cycle waits longer each time; auth and wrong-URL problems wait longest.

    Never shorter than the server's ``Retry-After``: the released batch must not go back
    before the server said it would take it.
    """
    base, cap = TRANSIENT_BACKOFF
    if isinstance(exc, AuthError) or (isinstance(exc, DeliveryError) and exc.status == 404):
        base, cap = AUTH_BACKOFF
    delay = max(base / 2, backoff_delay(failures - 1, base=base, cap=cap))
    hint = exc.retry_after if isinstance(exc, DeliveryError) else None
    return delay if hint is None else max(delay, min(hint, RETRY_AFTER_CAP))
