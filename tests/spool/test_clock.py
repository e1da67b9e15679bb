"""A wall clock stepped back must not stall the spool for the length of the step: record
stamps and release times are wall-clock instants."""

from __future__ import annotations

import time
from typing import Callable

import pytest

from spool import Spool

HOUR = 3600.0


@pytest.fixture
def step_clock_back(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Step this process's wall clock (time.time) back by ``seconds`` from now on; SQLite's
    own clock, which stamps appended records, stays where it was."""
    real = time.time

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


def test_a_batch_given_back_before_a_step_back_is_claimable_at_once(
    sp: Spool, step_clock_back: Callable[[float], None]
) -> None:
    """A batch released without a delay (a failed attempt, for retry) is claimable at
    once after the clock was stepped back an hour, not an hour later."""
    sp.append(b"a")
    batch = sp.claim(10)
    assert batch is not None
    sp.release(batch)
    step_clock_back(HOUR)
    again = sp.claim(10)
    assert again is not None and again.key == batch.key


def test_rows_stamped_before_a_step_back_count_as_old_enough(
    sp: Spool, step_clock_back: Callable[[float], None]
) -> None:
    """Rows stamped an hour ahead of the clock (before it was stepped back) are claimed with
    a min_age too: their age is unknown, and old enough."""
    sp.append(b"a")
    step_clock_back(HOUR)
    batch = sp.claim(10, min_age=1.0)
    assert batch is not None and [r.data for r in batch.records] == [b"a"]
