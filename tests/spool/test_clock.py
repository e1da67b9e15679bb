"""A wall clock stepped back (or a process started after such a step) must not stall the
spool for the length of the step: leases, release times and record stamps are wall-clock."""

from __future__ import annotations

import time
from typing import Callable

import pytest
import spool._spool as spool_module

from spool import Spool

HOUR = 3600.0


@pytest.fixture
def step_clock_back(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Step this process's wall clock (time.time) back by ``seconds`` from now on; SQLite's
    own clock, which stamps appended records, stays where it was. The spool's clock anchor
    is restored afterwards, with the clock."""
    real = time.time
    monkeypatch.setattr(spool_module, "_clock_anchor", spool_module._clock_anchor)

    def step(seconds: float) -> None:
        monkeypatch.setattr(time, "time", lambda: real() - seconds)

    return step


def test_records_stamped_before_a_step_back_are_claimed(
    sp: Spool, step_clock_back: Callable[[float], None]
) -> None:
    """Records stamped an hour "ahead" of a clock stepped back are claimed at once."""
    sp.append(b"a")
    step_clock_back(HOUR)
    sp.append(b"b")
    batch = sp.claim(10)
    assert batch is not None and [r.data for r in batch.records] == [b"a", b"b"]


def test_a_batch_released_before_a_step_back_returns_after_its_delay(
    sp: Spool, step_clock_back: Callable[[float], None]
) -> None:
    """A batch released with a 0.2 s delay is claimable 0.2 s later, not an hour later."""
    sp.append(b"a")
    batch = sp.claim(10)
    assert batch is not None
    sp.release(batch, delay=0.2)
    step_clock_back(HOUR)
    time.sleep(0.3)
    again = sp.claim(10)
    assert again is not None and again.key == batch.key


def test_a_process_started_after_a_step_back_takes_rows_stamped_before_it(
    sp: Spool, step_clock_back: Callable[[float], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process whose clock reads an hour earlier than the rows' stamps (it started after
    the step) still claims them, also with a min_age: their age is unknown, old enough."""
    sp.append(b"a")
    step_clock_back(HOUR)
    monkeypatch.setattr(spool_module, "_clock_anchor", (time.time(), time.monotonic()))
    batch = sp.claim(10, min_age=1.0)
    assert batch is not None and [r.data for r in batch.records] == [b"a"]
