"""Our retry policy: tenacity underneath, bounded in attempts *and* time, full jitter.

Only :class:`Retryable` is retried: connection errors, timeouts, 408, 429 and 5xx. Everything
else is the caller's to handle. A ``Retry-After`` hint replaces the backoff for that wait; a hint
that does not fit in the rest of the cycle ends the cycle, and the caller waits it out.
"""

from __future__ import annotations

import math
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, TypeVar

import tenacity

T = TypeVar("T")

#: The longest ``Retry-After`` honoured between cycles. Rate limits reset within the minute or
#: the hour; a longer hint is more likely a bogus header or a skewed HTTP date, and it must not
#: park the spooled events (and the senders waiting on them) indefinitely.
RETRY_AFTER_CAP = 3600.0


class Retryable(Exception):
    """A transient failure worth another attempt; ``retry_after`` is the server's hint."""

    def __init__(
        self, message: str, *, status: Optional[int] = None, retry_after: Optional[float] = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self._at = time.monotonic()

    def hint_left(self) -> Optional[float]:
        """What remains of ``retry_after`` now: the hint counts from when the answer arrived."""
        if self.retry_after is None:
            return None
        return max(0.0, self.retry_after - (time.monotonic() - self._at))


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one delivery cycle tries before giving the batch back to the spool."""

    attempts: int = 5
    timeout: float = 20.0
    wait_initial: float = 0.2
    wait_max: float = 5.0
    #: The longest ``Retry-After`` slept inside a cycle; a longer one ends the cycle.
    retry_after_max: float = 60.0

    def __post_init__(self) -> None:
        # Finite: the cycle's time also sets the batch's lease, and an infinite (or NaN)
        # lease would never let another sender take over the batch of a crashed one.
        times = (self.timeout, self.wait_initial, self.wait_max)
        if not all(isinstance(t, (int, float)) and 0 < t < math.inf for t in times):
            raise ValueError(
                "RetryPolicy needs timeout, wait_initial and wait_max positive and finite"
            )
        if not (isinstance(self.attempts, (int, float)) and 1 <= self.attempts < math.inf):
            raise ValueError("RetryPolicy needs a finite number of attempts, >= 1")
        after_max = self.retry_after_max
        if not (isinstance(after_max, (int, float)) and 0 <= after_max < math.inf):
            raise ValueError("RetryPolicy needs retry_after_max >= 0 and finite")


class _Budget:
    """The time one cycle may still spend, given the policy and the caller's deadline."""

    def __init__(self, policy: RetryPolicy, deadline: Optional[float]) -> None:
        end = time.monotonic() + policy.timeout
        self.end = end if deadline is None else min(end, deadline)

    def left(self) -> float:
        return self.end - time.monotonic()


def call_with_retries(
    fn: Callable[[], T],
    policy: RetryPolicy,
    *,
    deadline: Optional[float] = None,
    cancel: Optional[threading.Event] = None,
    on_retry: Optional[Callable[[Retryable, float], None]] = None,
) -> T:
    """Run ``fn`` until it returns, raises a non-retryable error, or the budget runs out.

    When the budget runs out the last :class:`Retryable` is raised. So is one whose
    ``Retry-After`` does not fit in the rest of the budget (or exceeds ``retry_after_max``): at
    once, because sending before the hint only earns another refusal. ``cancel`` interrupts a
    backoff sleep at once (shutdown must not wait out a 60-second ``Retry-After``).
    """
    budget = _Budget(policy, deadline)
    jitter = tenacity.wait_random_exponential(multiplier=policy.wait_initial, max=policy.wait_max)

    def wait(state: tenacity.RetryCallState) -> float:
        hint = _hint(state)
        delay = hint if hint is not None else jitter(state)
        return max(0.0, min(delay, budget.left()))

    def stop(state: tenacity.RetryCallState) -> bool:
        cancelled = cancel is not None and cancel.is_set()
        hint = _hint(state)
        too_long = hint is not None and hint > min(budget.left(), policy.retry_after_max)
        return (
            cancelled
            or too_long
            or state.attempt_number >= policy.attempts
            or budget.left() <= 0.05
        )

    last_failure: List[BaseException] = []

    def sleep(seconds: float) -> None:
        if cancel is None:
            time.sleep(seconds)
        elif cancel.wait(seconds):
            # Cancelled mid-wait: end here with the failure we were waiting out. tenacity
            # would otherwise make the next attempt at once, before a Retry-After passed.
            raise last_failure[-1]

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if exc is not None:
            last_failure[:] = [exc]
        if on_retry is not None and isinstance(exc, Retryable):
            on_retry(exc, state.upcoming_sleep)

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(Retryable),
        stop=stop,
        wait=wait,
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(fn)


def _hint(state: tenacity.RetryCallState) -> Optional[float]:
    """The server's ``Retry-After`` on the failure that just happened, if it gave one."""
    exc = state.outcome.exception() if state.outcome else None
    return exc.retry_after if isinstance(exc, Retryable) else None


def backoff_delay(failures: int, *, base: float, cap: float) -> float:
    """Full-jitter exponential backoff between whole delivery cycles."""
    return random.uniform(0, min(cap, base * (2 ** min(failures, 16))))
