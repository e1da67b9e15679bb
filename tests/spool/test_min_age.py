"""claim(min_age=...): young records are left for the producer that sends them itself."""

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
