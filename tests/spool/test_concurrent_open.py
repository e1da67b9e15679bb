"""Many processes opening one spool at the same instant all get a working spool."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from spool import Spool


def _open_and_append(path: str, barrier: multiprocessing.synchronize.Barrier, n: int) -> None:
    barrier.wait()  # everybody opens at once: first open, WAL switch and schema race
    with Spool(path) as sp:
        sp.append(f"record-{n}")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("round_", range(6))
def test_simultaneous_first_open(tmp_path: Path, round_: int) -> None:
    """8 processes open a brand-new spool together; none fails, every record is there."""
    path = tmp_path / f"race-{round_}.sqlite3"
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(8)
    procs = [ctx.Process(target=_open_and_append, args=(str(path), barrier, n)) for n in range(8)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    assert [proc.exitcode for proc in procs] == [0] * 8
    with Spool(path) as sp:
        batch = sp.claim(100)
        assert batch is not None
        assert sorted(r.data for r in batch.records) == sorted(
            f"record-{n}".encode() for n in range(8)
        )
