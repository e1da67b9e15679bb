"""claim(min_age=...) and claim(fresh_only=True): what a producer that sends its own
records claims, and what it leaves to the retry loop."""

from __future__ import annotations

import time

from spool import Spool


def test_min_age_leaves_young_records_alone(sp: Spool) -> None:
    """A record younger than min_age is not claimable; with min_age=0 it is."""
    sp.append(b"young")
    assert sp.claim(10, min_age=60.0) is None
    batch = sp.claim(10, min_age=0.0)
    assert batch is not None and [r.data for r in batch.records] == [b"young"]


def test_min_age_takes_a_contiguous_prefix(sp: Spool) -> None:
    """Old records are claimed up to the first young one, never skipping over it."""
    sp.append(b"old-1")
    sp.append(b"old-2")
    time.sleep(0.3)
    sp.append(b"young")
    sp.append(b"young-too")
    batch = sp.claim(10, min_age=0.2)
    assert batch is not None and [r.data for r in batch.records] == [b"old-1", b"old-2"]
    sp.ack(batch)
    assert sp.claim(10, min_age=60.0) is None
    rest = sp.claim(10)
    assert rest is not None and [r.data for r in rest.records] == [b"young", b"young-too"]


def test_min_age_does_not_hold_back_a_released_batch(sp: Spool) -> None:
    """A released batch is handed out again at once, whatever min_age says."""
    sp.append(b"a")
    batch = sp.claim(10)
    assert batch is not None
    sp.release(batch)
    again = sp.claim(10, min_age=60.0)
    assert again is not None and again.key == batch.key


def test_fresh_only_skips_released_and_expired_batches(sp: Spool) -> None:
    """fresh_only takes the oldest never-claimed record; old batches wait for a plain claim."""
    sp.append(b"failed")
    released = sp.claim(10)
    assert released is not None
    sp.release(released)
    sp.append(b"lapsed")
    lapsed = sp.claim(10, lease=0.01, fresh_only=True)
    assert lapsed is not None and [r.data for r in lapsed.records] == [b"lapsed"]
    time.sleep(0.05)
    sp.append(b"new")
    fresh = sp.claim(1, fresh_only=True)
    assert fresh is not None and [r.data for r in fresh.records] == [b"new"]
    assert sp.claim(1, fresh_only=True) is None
    again = [sp.claim(10) for _ in range(2)]
    assert [b.key if b else None for b in again] == [released.key, lapsed.key]
