"""Retry-After: a hint longer than the retry cycle ends the cycle, travels on the DeliveryError,
and no sender of the client posts again before it has passed."""

from __future__ import annotations

import time
from typing import Callable, List

import pytest
import segops
import segops._flusher
from _support import ErrorLog, ingestion, wait_until
from segops._flusher import Flusher, _backoff
from segops._retry import RETRY_AFTER_CAP
from segops.devserver import DevServer

MakeClient = Callable[..., segops.SegOpsClient]
Arrivals = Callable[[], List[float]]

#: A cycle much shorter than the hint: 0.5 s, 50-100 ms waits between attempts.
SHORT = segops.RetryPolicy(attempts=5, timeout=0.5, wait_initial=0.05, wait_max=0.1)
#: A cycle with room for the hint.
ROOMY = segops.RetryPolicy(attempts=5, timeout=3.0, wait_initial=0.05, wait_max=0.1)
HINT = 2.0
#: Clock and scheduling slack between the client's wait and the server's reading.
SLACK = 0.05


def throttle(server: DevServer, hint: float = HINT) -> None:
    """Script one 429 carrying ``Retry-After: hint``; later requests are answered normally."""
    server.script([(429, {"detail": "Request was throttled."}, {"Retry-After": f"{hint:g}"})])


@pytest.fixture
def arrivals(server: DevServer) -> Arrivals:
    """A function returning the monotonic times at which ``server`` read each ingestion
    request, oldest first (the server runs in this process: same clock)."""

    def recorded() -> List[float]:
        return [r.received for r in ingestion(server)]

    return recorded


def gap(times: List[float]) -> float:
    """Seconds between the first two recorded requests."""
    return times[1] - times[0]


def test_flusher_sends_nothing_before_a_hint_longer_than_the_cycle(
    server: DevServer, make_client: MakeClient, arrivals: Arrivals
) -> None:
    """A 2 s Retry-After against a 0.5 s cycle: the next request comes 2 s later, not sooner."""
    throttle(server)
    client = make_client(retry_policy=SHORT, flush_interval=0.1, batch_size=1)
    client.track(user_id="u", event_type="e")
    wait_until(lambda: len(ingestion(server)) >= 2, timeout=5)
    times = arrivals()
    assert gap(times) >= HINT - SLACK, f"resent after {gap(times):.2f}s"
    assert [r.status for r in ingestion(server)] == [429, 200]
    assert client.stats().pending == 0


def test_short_hint_is_still_slept_within_the_cycle(
    server: DevServer, make_client: MakeClient, arrivals: Arrivals, errors: ErrorLog
) -> None:
    """A 1 s Retry-After inside a 3 s cycle is waited out by that cycle, which then delivers."""
    throttle(server, hint=1.0)
    client = make_client(retry_policy=ROOMY, on_error=errors)
    client.track(user_id="u", event_type="e")
    client.flush(timeout=5)
    assert [r.status for r in ingestion(server)] == [429, 200]
    assert 1.0 - SLACK <= gap(arrivals()) < 1.5
    assert client.stats().retries == 1 and errors.items == []


def test_delivery_error_carries_the_hint(
    server: DevServer, make_client: MakeClient, errors: ErrorLog
) -> None:
    """on_error gets the 429 at once (no sleep-then-send) with retry_after set to the hint."""
    throttle(server)
    client = make_client(retry_policy=SHORT, flush_interval=0.1, batch_size=1, on_error=errors)
    client.track(user_id="u", event_type="e")
    (exc,) = wait_until(lambda: errors.of(segops.DeliveryError), timeout=5)
    assert isinstance(exc, segops.DeliveryError)
    assert exc.status == 429
    assert exc.retry_after is not None and HINT - 0.5 < exc.retry_after <= HINT
    assert len(ingestion(server)) == 1


@pytest.mark.parametrize("how", ["flush", "shutdown"])
def test_flush_and_shutdown_give_up_rather_than_send_before_the_hint(
    server: DevServer, make_client: MakeClient, errors: ErrorLog, how: str
) -> None:
    """flush()/shutdown() inside the hint raise DeliveryError without a request; events stay."""
    throttle(server)
    client = make_client(retry_policy=SHORT, flush_interval=0.1, batch_size=1, on_error=errors)
    client.track(user_id="u", event_type="e")
    wait_until(lambda: errors.of(segops.DeliveryError), timeout=5)
    with pytest.raises(segops.DeliveryError) as info:
        getattr(client, how)(timeout=1.0)
    assert info.value.retry_after is not None and info.value.retry_after > 1.0
    assert len(ingestion(server)) == 1
    assert client.stats().pending == 1


def test_flush_with_time_to_spare_waits_out_the_hint(
    server: DevServer, make_client: MakeClient, arrivals: Arrivals
) -> None:
    """A flush cut short by the hint raises at once; the next one, with time, waits and delivers."""
    throttle(server)
    client = make_client(retry_policy=ROOMY)
    client.track(user_id="u", event_type="e")
    with pytest.raises(segops.DeliveryError):
        client.flush(timeout=1.0)  # the 2 s hint does not fit in 1 s: no second request
    assert len(ingestion(server)) == 1
    client.flush(timeout=5.0)
    assert [r.status for r in ingestion(server)] == [429, 200]
    assert gap(arrivals()) >= HINT - SLACK


def test_batch_false_track_neither_sleeps_nor_sends_inside_the_hint(
    server: DevServer, make_client: MakeClient, errors: ErrorLog
) -> None:
    """batch=False: after a 429 with a hint, the next track() returns at once without a request."""
    throttle(server)
    client = make_client(batch=False, retry_policy=SHORT, on_error=errors)
    client.track(user_id="u", event_type="e")
    started = time.monotonic()
    client.track(user_id="u", event_type="e")
    assert time.monotonic() - started < 0.3
    assert len(ingestion(server)) == 1
    assert client.stats().pending == 2


def test_batch_false_catches_up_after_the_hint(
    server: DevServer, make_client: MakeClient, errors: ErrorLog
) -> None:
    """batch=False: the first track() after the hint sends what the hold kept back, then
    its own event: none stays one call behind."""
    throttle(server, hint=1.0)
    client = make_client(batch=False, retry_policy=SHORT, on_error=errors)
    client.track(user_id="u", event_type="refused")
    client.track(user_id="u", event_type="held")
    time.sleep(1.1)
    client.track(user_id="u", event_type="after")
    assert [e["event_type"] for e in server.events()] == ["held", "after"]
    client.track(user_id="u", event_type="next")
    assert [e["event_type"] for e in server.events()][-1] == "next"


def test_flusher_backoff_honours_the_hint_up_to_the_cap() -> None:
    """The flusher waits at least the hint, and at most RETRY_AFTER_CAP for a huge one."""
    assert _backoff(segops.DeliveryError("x", status=429, retry_after=90.0), 1) >= 90.0
    assert _backoff(segops.DeliveryError("x", status=429, retry_after=1e9), 1) == RETRY_AFTER_CAP
    assert RETRY_AFTER_CAP == 3600.0


@pytest.mark.parametrize("hint", [1.0, 2.0], ids=["inside-the-cycle", "past-the-cycle"])
def test_shutdown_during_a_hint_reports_nothing_to_on_error(
    server: DevServer, make_client: MakeClient, errors: ErrorLog, hint: float
) -> None:
    """Stopping a flusher that waits out a Retry-After is not a failure for on_error."""
    policy = ROOMY if hint == 1.0 else SHORT
    throttle(server, hint=hint)
    client = make_client(retry_policy=policy, flush_interval=0.1, batch_size=1, on_error=errors)
    client.track(user_id="u", event_type="e")
    wait_until(lambda: len(ingestion(server)) == 1, timeout=5)
    time.sleep(0.7)  # past SHORT's cycle: the flusher now waits in its backoff or the hold
    reported = len(errors.items)
    with pytest.raises(segops.DeliveryError):  # shutdown itself must not send before the hint
        client.shutdown(timeout=0.2)
    assert errors.items[reported:] == []
    assert [r.status for r in ingestion(server)] == [429]


class ScriptedDelivery:
    """Stands in for Delivery: each deliver_next() takes the next step of a script (an
    exception to raise, or how many records it delivered); then the spool is empty."""

    def __init__(self, steps: List[object]) -> None:
        self.steps = list(steps)

    def deliver_next(self, **_: object) -> int:
        if not self.steps:
            return 0
        step = self.steps.pop(0)
        if isinstance(step, BaseException):
            raise step
        return int(step)  # type: ignore[call-overload]


def test_a_cycle_that_delivered_before_failing_starts_the_backoff_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Failures count in a row: with a backlog the server takes between outages, each
    outage backs off from the start (it grew to a minute over a few outages)."""
    outage = segops.DeliveryError("server unreachable")
    delivery = ScriptedDelivery([outage, outage, outage, 500, 500, outage, 500, outage])
    seen: List[int] = []

    def record(exc: BaseException, failures: int) -> float:
        seen.append(failures)
        return 0.0

    monkeypatch.setattr(segops._flusher, "_backoff", record)
    flusher = Flusher(delivery=delivery, interval=60.0, report=lambda exc: None)  # type: ignore[arg-type]
    flusher.start()
    wait_until(lambda: not delivery.steps, timeout=5)
    flusher.stop(timeout=5)
    assert seen == [1, 2, 3, 1, 1]
