"""Damage in the middle of a spool file: flagged when met, checked and recovered at the next
open, and every record and dead letter still readable is salvaged into the fresh spool."""

from __future__ import annotations

import logging
import multiprocessing
import re
import stat
import time
from pathlib import Path
from typing import Any, Callable

import filelock
import pytest

from spool import Spool, SpoolCorrupt

N = 2000
PAGE = 4096  # SQLite's default page size, which spools use


def _data(rid: int) -> bytes:
    """Record ``rid``'s bytes: ~100 of them, so ~37 records per page, findable in the file."""
    return f"event-{rid:05d}-".encode() + b"x" * 80


def _fill(path: Path) -> None:
    """A spool holding records 1..N, closed: the last close checkpoints all into the file."""
    with Spool(path) as sp:
        assert sp.append_many([_data(i) for i in range(1, N + 1)]) == list(range(1, N + 1))


def _page_holding(path: Path, rid: int) -> int:
    """The 0-based page of the file holding record ``rid``."""
    return path.read_bytes().index(_data(rid)[:12]) // PAGE


def _damage(path: Path, first_page: int, pages: int = 2) -> set[int]:
    """Overwrite ``pages`` pages with garbage; returns the ids of the records they held."""
    data = bytearray(path.read_bytes())
    start, end = first_page * PAGE, (first_page + pages) * PAGE
    held = {int(m.group(1)) for m in re.finditer(rb"event-(\d{5})-", bytes(data[start:end]))}
    data[start:end] = b"\xff" * (end - start)
    path.write_bytes(bytes(data))
    return held


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".damaged")


def _drain(sp: Spool) -> list[int]:
    """Claim and ack everything, oldest first, checking each record's bytes; the ids."""
    ids: list[int] = []
    while (batch := sp.claim(500)) is not None:
        assert all(r.data == _data(r.id) for r in batch.records)
        assert sp.ack(batch) == len(batch)
        ids.extend(batch.ids)
    return ids


@pytest.mark.parametrize(
    "first_page",
    [
        pytest.param(lambda path: 12288 // PAGE, id="reviewer-offset-12288"),
        pytest.param(lambda path: _page_holding(path, 1000), id="record-pages"),
    ],
)
def test_midfile_damage_is_flagged_then_recovered_with_every_readable_record(
    db_path: Path, first_page: Callable[[Path], int], caplog: pytest.LogCaptureFixture
) -> None:
    """A claim that meets mid-file damage leaves the marker; the next open recovers and every
    record off the damaged pages is claimable again, in order, with its id."""
    _fill(db_path)
    lost = _damage(db_path, first_page(db_path))
    with Spool(db_path) as sp:
        assert sp.recovered_from is None  # the cheap probe at open cannot see it
        with pytest.raises(SpoolCorrupt):
            sp.claim(N)
    assert stat.S_IMODE(_marker(db_path).stat().st_mode) == 0o600

    with caplog.at_level(logging.WARNING, logger="spool"), Spool(db_path) as sp:
        moved = sp.recovered_from
        assert moved is not None and moved.name.startswith("events.db.corrupt-")
        assert moved.stat().st_size > 0 and not _marker(db_path).exists()
        ids = _drain(sp)
        assert ids == [i for i in range(1, N + 1) if i not in lost] and ids
        assert sp.stats().pending == 0
        assert sp.append(b"after") == N + 1  # ids keep climbing
    assert any(f"salvaged {len(ids)} records" in r.getMessage() for r in caplog.records)


def test_a_marker_on_a_healthy_file_is_removed_and_nothing_moves(db_path: Path) -> None:
    """A marker whose quick_check finds nothing wrong is removed; the spool opens in place."""
    _fill(db_path)
    _marker(db_path).touch()
    with Spool(db_path) as sp:
        assert sp.recovered_from is None
        assert not _marker(db_path).exists()
        assert _drain(sp) == list(range(1, N + 1))
    assert not list(db_path.parent.glob("*.corrupt-*"))


def test_recover_false_leaves_a_damaged_file_and_its_marker_alone(db_path: Path) -> None:
    """recover=False: a flagged, damaged file raises SpoolCorrupt; file and marker stay."""
    _fill(db_path)
    _damage(db_path, _page_holding(db_path, 1000))
    _marker(db_path).touch()
    before = sorted(p.name for p in db_path.parent.iterdir()), db_path.read_bytes()
    with pytest.raises(SpoolCorrupt):
        Spool(db_path, recover=False)
    assert (sorted(p.name for p in db_path.parent.iterdir()), db_path.read_bytes()) == before
    assert _marker(db_path).exists()


def test_dead_letters_are_salvaged_and_keep_their_ids(db_path: Path) -> None:
    """Readable dead letters come back whole; later appends and requeues get ids above all
    the old file handed out (the newest record was dead-lettered: a tombstone held its id)."""
    _fill(db_path)
    with Spool(db_path) as sp:
        batch = sp.claim(N)
        assert batch is not None
        assert sp.dead_letter([*batch.records[:3], batch.records[-1]], "refused") == 4
        sp.release(batch)
        before = sp.dead_letters()
    _damage(db_path, _page_holding(db_path, 1000))
    _marker(db_path).touch()
    with Spool(db_path) as sp:
        assert sp.recovered_from is not None
        assert sp.dead_letters() == before
        assert [d.id for d in before] == [1, 2, 3, N]
        assert sp.append(b"new") == N + 1
        assert sp.requeue_dead([N]) == 1
        assert sp.last_id() == N + 2


def test_a_damaged_spool_another_open_spool_uses_is_not_moved(db_path: Path) -> None:
    """An open that finds damage while another Spool has the file open leaves it in place:
    that Spool's later appends land in the live file, and a later lone open salvages them."""
    _fill(db_path)
    lost = _damage(db_path, _page_holding(db_path, 1000))
    first = Spool(db_path)  # a long-running process's spool: its appends still work
    with pytest.raises(SpoolCorrupt):
        first.claim(N)
    with Spool(db_path) as second:
        assert second.recovered_from is None
        assert not list(db_path.parent.glob("*.corrupt-*")) and _marker(db_path).exists()
    late = first.append(b"appended-after-the-other-open")
    first.close()
    with Spool(db_path) as alone:
        assert alone.recovered_from is not None
        stored = {}
        while (batch := alone.claim(500)) is not None:
            stored.update((r.id, r.data) for r in batch.records)
            alone.ack(batch)
    assert stored.pop(late) == b"appended-after-the-other-open"
    assert sorted(stored) == [i for i in range(1, N + 1) if i not in lost]


def test_the_first_open_after_damage_recovers_even_when_it_counts_bytes(db_path: Path) -> None:
    """With max_bytes the constructor reads every record page; damage found there is
    recovered at once, not raised (the marker it leaves makes a second open check)."""
    _fill(db_path)
    lost = _damage(db_path, _page_holding(db_path, 1000))
    with Spool(db_path, max_bytes=10**9) as sp:
        assert sp.recovered_from is not None
        assert _drain(sp) == [i for i in range(1, N + 1) if i not in lost]


def _open_and_append(path: str, worker: int, results: multiprocessing.Queue[object]) -> None:
    with Spool(path) as sp:
        results.put([(sp.append(f"w{worker}-{i}".encode()), worker) for i in range(50)])
        time.sleep(1.5)  # a worker stays up: it must not keep the others from recovering


def test_processes_opening_a_flagged_damaged_spool_at_once_lose_nothing(db_path: Path) -> None:
    """Six processes open a flagged, damaged spool at the same moment and append: exactly
    one recovers (those queued for the recovery do not count as users of the file), and
    every append acknowledged by any of them is in the final spool."""
    _fill(db_path)
    lost = _damage(db_path, _page_holding(db_path, 1000), pages=3)
    _marker(db_path).touch()
    ctx = multiprocessing.get_context("fork")
    results: multiprocessing.Queue[object] = ctx.Queue()
    procs = [
        ctx.Process(target=_open_and_append, args=(str(db_path), w, results)) for w in range(6)
    ]
    for proc in procs:
        proc.start()
    acked = [results.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    moved = [p for p in db_path.parent.glob("*.corrupt-*") if not p.name.endswith(("-wal", "-shm"))]
    assert len(moved) == 1  # recovered by one of them, not left to the open below
    with Spool(db_path) as sp:
        assert sp.recovered_from is None
        stored = []
        while (batch := sp.claim(500)) is not None:
            stored.extend(r.data for r in batch.records)
            sp.ack(batch)
    appended = sorted(f"w{w}-{i}".encode() for w in range(6) for i in range(50))
    assert len(acked) == 6 and sum(len(a) for a in acked) == 300  # type: ignore[arg-type]
    assert sorted(d for d in stored if d.startswith(b"w")) == appended
    old = [d for d in stored if not d.startswith(b"w")]
    assert old == [_data(i) for i in range(1, N + 1) if i not in lost]


def _open_and_report(path: str, results: multiprocessing.Queue[object]) -> None:
    try:
        with Spool(path) as sp:
            results.put(("ok", str(sp.recovered_from)))
    except Exception as exc:  # reported to the test, which fails on it
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def test_processes_finding_a_bad_header_at_once_all_open(db_path: Path) -> None:
    """Two processes that find a garbage header and queue for the recovery lock: neither
    counts the other as a user of the file, so the first recovers and both open."""
    _fill(db_path)
    db_path.write_bytes(b"\xff" * db_path.stat().st_size)
    ctx = multiprocessing.get_context("fork")
    results: multiprocessing.Queue[object] = ctx.Queue()
    with filelock.FileLock(str(db_path) + ".lock"):  # both wait here with the damage found
        procs = [ctx.Process(target=_open_and_report, args=(str(db_path), results)) for _ in "ab"]
        for proc in procs:
            proc.start()
        time.sleep(1.0)
    outcomes = sorted(results.get(timeout=60) for _ in procs)  # type: ignore[type-var]
    for proc in procs:
        proc.join(timeout=30)
    assert [status for status, _ in outcomes] == ["ok", "ok"], outcomes  # type: ignore[misc]
    assert len(list(db_path.parent.glob("*.corrupt-*"))) == 1


def _hold_open(path: str, opened: Any, done: Any) -> None:
    with Spool(path):
        opened.set()
        done.wait(60)


def _open_quickly(path: str, results: multiprocessing.Queue[object]) -> None:
    try:
        with Spool(path, busy_timeout=1.5):
            results.put("ok")
    except Exception as exc:  # reported to the test, which fails on it
        results.put(f"{type(exc).__name__}: {exc}")


def test_openers_of_a_damaged_spool_another_process_holds_do_not_queue(db_path: Path) -> None:
    """While a long-lived process has a flagged, damaged spool open, four processes open it
    at once with busy_timeout=1.5: each waits for the holder on its own, not behind the
    others' waits under the recovery lock, and all open it as it is."""
    _fill(db_path)
    ctx = multiprocessing.get_context("fork")
    opened, done = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_open, args=(str(db_path), opened, done))
    holder.start()
    try:
        assert opened.wait(30)
        _damage(db_path, _page_holding(db_path, 1000))
        _marker(db_path).touch()
        results: multiprocessing.Queue[object] = ctx.Queue()
        procs = [ctx.Process(target=_open_quickly, args=(str(db_path), results)) for _ in "abcd"]
        for proc in procs:
            proc.start()
        outcomes = [results.get(timeout=60) for _ in procs]
        for proc in procs:
            proc.join(timeout=30)
    finally:
        done.set()
        holder.join(timeout=30)
    assert outcomes == ["ok"] * 4
    assert not list(db_path.parent.glob("*.corrupt-*"))
