"""Appends stop while the disk still has room for delivery (Spool ``min_free_bytes``)."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest

from spool import Spool, SpoolError, SpoolFull

RECORD = b"x" * 8192


def fill(sp: Spool) -> tuple[int, SpoolFull]:
    """Append until SpoolFull; returns how many were stored and the error."""
    for stored in range(100_000):
        try:
            sp.append(RECORD)
        except SpoolFull as exc:
            return stored, exc
    raise AssertionError("a 48 MiB disk took 800 MiB of records")


def drain(sp: Spool) -> int:
    """Claim and ack until nothing is left; returns how many were acked."""
    acked = 0
    while batch := sp.claim(500):
        acked += sp.ack(batch)
    return acked


def test_appends_stop_short_of_a_full_disk(
    make_spool: Callable[..., Spool], small_disk: Path
) -> None:
    """Appends raise SpoolFull naming min_free_bytes while the disk still has that room."""
    sp = make_spool(small_disk / "s.db")
    stored, exc = fill(sp)
    assert stored > 0
    assert "min_free_bytes" in str(exc)
    assert shutil.disk_usage(small_disk).free > 16 * 1024 * 1024


def test_a_spool_that_filled_its_disk_drains_and_appends_again(
    make_spool: Callable[..., Spool], small_disk: Path
) -> None:
    """Everything stored is claimed and acked; the freed pages then take new appends."""
    sp = make_spool(small_disk / "s.db")
    stored, _ = fill(sp)
    assert drain(sp) == stored
    sp.checkpoint()
    deadline = time.monotonic() + 5
    while True:  # the free space is re-checked a few times a second
        try:
            sp.append(RECORD)
            break
        except SpoolFull:
            assert time.monotonic() < deadline, "appends stayed refused after the drain"
            time.sleep(0.05)
    assert drain(sp) == 1


def test_without_a_reserve_appends_fill_the_disk(
    make_spool: Callable[..., Spool], small_disk: Path
) -> None:
    """min_free_bytes=0 turns the check off: appends go on until SQLite finds the disk full."""
    sp = make_spool(small_disk / "s.db", min_free_bytes=0)
    _, exc = fill(sp)
    assert "disk full" in str(exc)
    assert shutil.disk_usage(small_disk).free < 1024 * 1024


def test_a_nearly_full_disk_refuses_the_first_append(
    make_spool: Callable[..., Spool], small_disk: Path
) -> None:
    """A spool opened with less than min_free_bytes free refuses appends from the start."""
    sp = make_spool(small_disk / "s.db", min_free_bytes=64 * 1024 * 1024)
    with pytest.raises(SpoolFull, match="min_free_bytes"):
        sp.append(b"{}")
    assert sp.stats().pending == 0


def test_min_free_bytes_must_not_be_negative(db_path: Path) -> None:
    """A negative reserve is a ValueError at construction."""
    with pytest.raises(ValueError, match="min_free_bytes"):
        Spool(db_path, min_free_bytes=-1)


def test_a_spool_on_a_read_only_disk_says_it_cannot_be_opened_for_writing(
    small_disk: Path,
) -> None:
    """An existing spool on a read-only mount: a SpoolError that says "open", not "create"."""
    Spool(small_disk / "s.db").close()
    remount = ["mount", "-o", "remount,ro", str(small_disk)]
    subprocess.run(remount, check=True, capture_output=True)
    with pytest.raises(SpoolError, match=r"cannot open spool file for writing .*Read-only"):
        Spool(small_disk / "s.db")


def _append_until(path: str, seconds: float, results: multiprocessing.Queue[object]) -> None:
    refusals: dict[str, int] = {}
    stored = 0
    with Spool(path) as sp:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                sp.append(os.urandom(1024 * 1024))
                stored += 1
            except SpoolFull as exc:
                kind = "reserve" if "min_free_bytes" in str(exc) else "disk full"
                refusals[kind] = refusals.get(kind, 0) + 1
                time.sleep(0.01)
    results.put((stored, refusals))


def test_many_processes_appending_big_records_keep_the_reserve(small_disk: Path) -> None:
    """16 processes appending 1 MiB records: each re-checks the room under SQLite's writer
    lock, so none reaches "disk full", and what they stored drains, 8 MiB at a time."""
    path = small_disk / "s.db"
    Spool(path).close()
    ctx = multiprocessing.get_context("fork")
    results: multiprocessing.Queue[object] = ctx.Queue()
    procs = [ctx.Process(target=_append_until, args=(str(path), 3.0, results)) for _ in range(16)]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    stored = sum(n for n, _ in outcomes)  # type: ignore[misc]
    assert all("disk full" not in refusals for _, refusals in outcomes), outcomes  # type: ignore[operator]
    with Spool(path) as sp:
        acked = 0
        while (batch := sp.claim(100, max_bytes=8 * 1024 * 1024)) is not None:
            acked += sp.ack(batch)
        assert acked == stored > 0
