"""Single-process semantics of the Spool API."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

import spool
from spool import Batch, Record, Spool, SpoolError, Status


def test_public_api_is_pinned() -> None:
    """__all__ lists exactly the supported names."""
    assert sorted(spool.__all__) == sorted(
        [
            "Batch",
            "DeadLetter",
            "Record",
            "Spool",
            "SpoolCorrupt",
            "SpoolError",
            "SpoolFull",
            "Stats",
            "Status",
            "after_fork_without_hooks",
        ]
    )
    assert int(Status.PENDING) == 0 and int(Status.LEASED) == 1


def test_append_returns_increasing_ids_and_claim_is_fifo(sp: Spool) -> None:
    """ids increase; claim hands out the oldest records first, str stored as UTF-8."""
    ids = [sp.append(f"é{i}") for i in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5
    batch = sp.claim(3)
    assert batch is not None
    assert batch.ids == tuple(ids[:3])
    assert batch.records[0] == Record(ids[0], "é0".encode())
    assert len(batch) == 3 and batch.nbytes == sum(len(r.data) for r in batch.records)
    rest = sp.claim(10)
    assert rest is not None and rest.ids == tuple(ids[3:])
    assert sp.claim(10) is None


def test_append_many_is_one_ordered_transaction(sp: Spool) -> None:
    """append_many returns consecutive ids in input order."""
    ids = sp.append_many([b"a", "b", b"c"])
    assert ids == list(range(ids[0], ids[0] + 3))
    batch = sp.claim(10)
    assert batch is not None and [r.data for r in batch.records] == [b"a", b"b", b"c"]
    assert sp.append_many([]) == []


@pytest.mark.parametrize("bad", [123, None, ["x"]])
def test_append_rejects_non_bytes(sp: Spool, bad: object) -> None:
    """Only bytes and str are records."""
    with pytest.raises(TypeError):
        sp.append(bad)  # type: ignore[arg-type]


def test_ack_deletes_exactly_the_batch(sp: Spool) -> None:
    """ack removes that batch's rows only and returns the count."""
    sp.append_many([b"1", b"2", b"3", b"4"])
    first = sp.claim(2)
    second = sp.claim(2)
    assert first is not None and second is not None
    assert sp.ack(first) == 2
    assert sp.ack(first) == 0
    st = sp.stats()
    assert (st.pending, st.leased) == (0, 2)
    assert sp.ack(second) == 2
    assert sp.stats().leased == 0 and sp.claim(5) is None


@pytest.mark.parametrize("max_records", [1, 2, 100])
def test_released_batch_comes_back_whole_before_newer(sp: Spool, max_records: int) -> None:
    """A released batch is re-claimed first, whole, same key, new owner."""
    sp.append_many([b"a", b"b", b"c"])
    batch = sp.claim(3)
    assert batch is not None
    sp.append(b"newer")
    sp.release(batch)
    again = sp.claim(max_records)
    assert again is not None
    assert again.key == batch.key and again.ids == batch.ids
    assert again.owner != batch.owner
    newer = sp.claim(10)
    assert newer is not None and [r.data for r in newer.records] == [b"newer"]


def test_release_with_delay_skips_the_batch_meanwhile(sp: Spool) -> None:
    """During the delay newer records are handed out; afterwards the old group returns."""
    sp.append(b"old")
    batch = sp.claim(1)
    assert batch is not None
    sp.append(b"new")
    sp.release(batch, delay=0.3)
    got = sp.claim(10)
    assert got is not None and [r.data for r in got.records] == [b"new"]
    assert sp.claim(10) is None
    time.sleep(0.35)
    back = sp.claim(10)
    assert back is not None and back.key == batch.key and back.ids == batch.ids


def test_expired_lease_is_reclaimed_whole_and_stale_ack_deletes_nothing(sp: Spool) -> None:
    """After expiry the rows come back with the same key; the old owner's ack is a no-op."""
    sp.append_many([b"x", b"y"])
    lost = sp.claim(10, lease=0.1)
    assert lost is not None
    assert sp.claim(10) is None  # still leased
    time.sleep(0.15)
    winner = sp.claim(10)
    assert winner is not None and winner.key == lost.key and winner.ids == lost.ids
    assert sp.ack(lost) == 0
    assert sp.renew(lost) is False
    sp.release(lost)  # no effect on the winner's lease
    assert sp.claim(10) is None
    assert sp.ack(winner) == 2


def test_renew_extends_the_lease(sp: Spool) -> None:
    """renew keeps a batch from expiring."""
    sp.append(b"r")
    batch = sp.claim(1, lease=0.2)
    assert batch is not None
    time.sleep(0.1)
    assert sp.renew(batch, lease=1.0) is True
    time.sleep(0.15)
    assert sp.claim(1) is None
    assert sp.ack(batch) == 1


@pytest.mark.parametrize(("limit", "expected"), [(25, 2), (10, 1), (1, 1), (1000, 4)])
def test_claim_max_bytes_caps_but_returns_at_least_one(
    sp: Spool, limit: int, expected: int
) -> None:
    """max_bytes bounds the batch size in bytes, never below one record."""
    sp.append_many([b"x" * 12] * 4)
    batch = sp.claim(10, max_bytes=limit)
    assert batch is not None and len(batch) == expected
    rest = sp.claim(10)
    assert (0 if rest is None else len(rest)) == 4 - expected


def test_split_gives_two_leased_halves_with_fresh_keys(sp: Spool) -> None:
    """split halves keep ownership; the old key is dead; halves ack independently."""
    ids = sp.append_many([b"1", b"2", b"3", b"4", b"5"])
    batch = sp.claim(5)
    assert batch is not None
    a, b = sp.split(batch)
    assert a.ids == tuple(ids[:2]) and b.ids == tuple(ids[2:])
    assert len({a.key, b.key, batch.key}) == 3 and a.owner == b.owner == batch.owner
    assert sp.claim(5) is None
    assert sp.ack(batch) == 0
    assert sp.ack(b) == 3
    sp.release(a)
    again = sp.claim(5)
    assert again is not None and again.key == a.key and again.ids == a.ids


def test_split_rejects_single_record_batch(sp: Spool) -> None:
    """A one-record batch cannot be split."""
    sp.append(b"x")
    batch = sp.claim(1)
    assert batch is not None
    with pytest.raises(ValueError):
        sp.split(batch)


def test_dead_letter_requeue_and_purge(sp: Spool) -> None:
    """Dead letters leave the queue with a reason; requeue appends them at the tail."""
    ids = sp.append_many([b"good", b"bad", b"worse"])
    batch = sp.claim(3)
    assert batch is not None
    before = time.time()
    assert sp.dead_letter(batch.records[1:], "HTTP 400") == 2
    dead = sp.dead_letters()
    assert [(d.id, d.data, d.reason) for d in dead] == [
        (ids[1], b"bad", "HTTP 400"),
        (ids[2], b"worse", "HTTP 400"),
    ]
    assert dead[0].failed_at >= before - 1
    assert sp.ack(batch) == 1
    assert sp.pending_through(ids[-1]) == 0
    assert sp.stats().dead == 2
    assert sp.dead_letters(limit=1)[0].id == ids[1]
    assert sp.requeue_dead([ids[1]]) == 1
    back = sp.claim(10)
    assert back is not None and [r.data for r in back.records] == [b"bad"]
    assert back.ids[0] > ids[-1]
    assert sp.purge_dead() == 1 and sp.dead_letters() == []


def test_dead_letter_needs_my_lease(sp: Spool, make_spool: Callable[..., Spool]) -> None:
    """Only rows leased by this Spool can be dead-lettered (not pending, not others')."""
    sp.append_many([b"a", b"b"])
    pending_rec = Record(sp.last_id(), b"b")
    assert sp.dead_letter([pending_rec], "nope") == 0
    other = make_spool()
    batch = other.claim(1)
    assert batch is not None
    assert sp.dead_letter(batch.records, "not mine") == 0
    assert other.dead_letter(batch.records, "mine") == 1


def test_requeue_all_and_purge_selected(sp: Spool) -> None:
    """requeue_dead() / purge_dead() with no ids act on everything."""
    sp.append_many([b"1", b"2", b"3"])
    batch = sp.claim(3)
    assert batch is not None
    sp.dead_letter(batch.records, "x")
    assert sp.purge_dead([batch.ids[0]]) == 1
    assert sp.requeue_dead() == 2
    again = sp.claim(10)
    assert again is not None and [r.data for r in again.records] == [b"2", b"3"]


def test_ids_never_reused_after_the_table_empties(make_spool: Callable[..., Spool]) -> None:
    """Draining the spool, dead-lettering the top row, or reopening never reuses an id."""
    sp = make_spool()
    ids = sp.append_many([b"a", b"b"])
    batch = sp.claim(10)
    assert batch is not None and sp.ack(batch) == 2
    assert sp.stats().pending == 0 and sp.last_id() == ids[-1]
    nxt = sp.append(b"c")
    assert nxt == ids[-1] + 1
    batch = sp.claim(10)
    assert batch is not None and sp.dead_letter(batch.records, "r") == 1
    sp.purge_dead()
    sp.close()
    again = make_spool()
    assert again.last_id() == nxt
    assert again.append(b"d") == nxt + 1
    assert again.pending_through(nxt + 1) == 1
    assert again.stats().pending == 1


def test_pending_through_counts_live_rows(sp: Spool) -> None:
    """pending_through counts pending and leased rows up to an id, not dead ones."""
    assert sp.last_id() == 0 and sp.pending_through(0) == 0
    ids = sp.append_many([b"1", b"2", b"3"])
    assert sp.pending_through(ids[1]) == 2
    batch = sp.claim(1)
    assert batch is not None
    assert sp.pending_through(ids[1]) == 2
    sp.ack(batch)
    assert sp.pending_through(ids[1]) == 1
    assert sp.pending_through(ids[-1]) == 2


def test_stats_snapshot(sp: Spool) -> None:
    """stats reports pending/leased/dead counts, bytes, age and file size."""
    empty = sp.stats()
    assert (empty.pending, empty.leased, empty.dead, empty.total_bytes) == (0, 0, 0, 0)
    assert empty.oldest_age is None
    sp.append_many([b"12345", b"67890", b"abc"])
    batch = sp.claim(1)
    assert batch is not None
    sp.dead_letter(batch.records, "x")
    sp.claim(1)
    st = sp.stats()
    assert (st.pending, st.leased, st.dead, st.total_bytes) == (1, 1, 1, 13)
    assert st.oldest_age is not None and 0 <= st.oldest_age < 60
    assert st.file_bytes > 0


def test_durability_values(make_spool: Callable[..., Spool], db_path: Path) -> None:
    """'normal' and 'full' are accepted; anything else is a ValueError."""
    make_spool(durability="full").append(b"x")
    with pytest.raises(ValueError):
        Spool(db_path, durability="paranoid")


def test_close_is_idempotent_and_later_use_is_a_spool_error(db_path: Path) -> None:
    """close() twice is fine; using a closed spool raises SpoolError, not sqlite3 errors."""
    with Spool(db_path) as sp:
        sp.append(b"x")
    sp.close()
    with pytest.raises(SpoolError, match="closed"):
        sp.append(b"y")
    with pytest.raises(SpoolError, match="closed"):
        sp.claim(1)
    with pytest.raises(SpoolError, match="closed"):
        sp.checkpoint()


def test_file_and_directory_permissions(sp: Spool, db_path: Path) -> None:
    """The directory is 0700 and the db, -wal and -shm files 0600."""
    sp.append(b"x")
    assert stat.S_IMODE(os.stat(db_path.parent).st_mode) == 0o700
    for name in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
        assert name.exists(), name
        assert stat.S_IMODE(os.stat(name).st_mode) == 0o600, name
    assert sp.path == db_path


def test_every_folder_created_for_the_spool_is_private(tmp_path: Path) -> None:
    """Missing parent folders are made 0700 too, even under umask 000 (not only the last)."""
    nested = tmp_path / "a" / "b" / "c" / "s.sqlite3"
    old = os.umask(0)
    try:
        Spool(nested).close()
    finally:
        os.umask(old)
    for folder in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_checkpoint_runs_and_background_thread_stops_on_close(sp: Spool) -> None:
    """checkpoint() works and close() stops the daemon thread."""
    sp.append(b"x")
    sp.checkpoint()
    names = {t.name for t in threading.enumerate()}
    assert any(n.startswith("spool-checkpoint") for n in names)
    sp.close()
    time.sleep(0.05)
    assert not any(
        t.name.startswith("spool-checkpoint:events.db") and t.is_alive()
        for t in threading.enumerate()
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("chunk", [1, 2], ids=["append", "append_many"])
def test_appends_alone_keep_the_wal_bounded(db_path: Path, chunk: int) -> None:
    """A tight append loop wakes the checkpointer itself: the WAL stays far below its
    unchecked size although the checkpointer's timer never fires."""
    # Every commit rewrites the table's last page: unchecked, ~4 KiB of WAL per commit
    # (80-160 MB here), while the database itself stays under 10 MB.
    total, record = 40_000, b"r" * 200
    with Spool(db_path, checkpoint_interval=3600) as sp:
        for start in range(0, total, chunk):
            if chunk == 1:
                sp.append(record)
            else:
                sp.append_many([record] * chunk)
            if start % 5_000 == 0:
                time.sleep(0.05)  # give the checkpointer thread a moment, as real work would
        wal = Path(f"{db_path}-wal").stat().st_size
    assert wal < 48 * 1024 * 1024, wal


@pytest.mark.timeout(60)
def test_threads_append_while_a_flusher_acks(sp: Spool) -> None:
    """8 appender threads + 1 flusher: every record acked exactly once, none lost."""
    per_thread, acked = 500, list[str]()
    done = threading.Event()

    def appender(t: int) -> None:
        for i in range(per_thread):
            sp.append(f"{t}:{i}")

    def flusher() -> None:
        while True:
            batch = sp.claim(100)
            if batch is None:
                if done.is_set() and sp.claim(1) is None:
                    return
                time.sleep(0.001)
                continue
            assert sp.ack(batch) == len(batch)
            acked.extend(r.data.decode() for r in batch.records)

    threads = [threading.Thread(target=appender, args=(t,)) for t in range(8)]
    fl = threading.Thread(target=flusher)
    fl.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    fl.join(30)
    expected = {f"{t}:{i}" for t in range(8) for i in range(per_thread)}
    assert len(acked) == len(expected) and set(acked) == expected


def test_batch_is_a_plain_value() -> None:
    """Batch exposes ids, nbytes and len over its records."""
    b = Batch("k", (Record(1, b"ab"), Record(2, b"c")), "o", None)
    assert (len(b), b.ids, b.nbytes) == (2, (1, 2), 3)


def test_tag_comes_back_with_every_later_claim_of_the_batch(sp: Spool) -> None:
    """A claim's tag is stored with its batch: a released batch, and its split halves, keep it."""
    sp.append_many([b"a", b"b", b"c"])
    first = sp.claim(10, tag="route-a")
    assert first is not None and first.tag == "route-a"
    sp.release(first)
    again = sp.claim(10, tag="ignored")  # a reclaim keeps the batch's own tag
    assert again is not None and (again.key, again.tag) == (first.key, "route-a")
    halves = sp.split(again)
    assert [h.tag for h in halves] == ["route-a", "route-a"]
    sp.release(halves[1])
    back = sp.claim(10)
    assert back is not None and back.tag == "route-a" and back.ids == halves[1].ids
    sp.append(b"d")
    untagged = sp.claim(10, fresh_only=True)
    assert untagged is not None and untagged.tag is None


def test_a_spool_without_tags_gets_the_column_and_stays_v1(db_path: Path) -> None:
    """A file made before batches had tags opens, its batch comes back untagged, and it
    stays schema v1, so releases that predate tags can still open it."""
    import sqlite3

    from spool import _storage

    db_path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        for sql in _storage.MIGRATIONS[0]:
            db.execute(sql)
        db.execute("INSERT INTO records(id, data) VALUES (1, x'61'), (2, x'62')")
        db.execute(
            "INSERT INTO batches(key, first_id, last_id, status, owner, until)"
            " VALUES ('old-key', 1, 2, 0, NULL, 0)"
        )
        db.execute("PRAGMA user_version=1")
        db.commit()
    with Spool(db_path) as sp:
        batch = sp.claim(10)
        assert batch is not None and (batch.key, batch.ids, batch.tag) == ("old-key", (1, 2), None)
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
        assert "tag" in {row[1] for row in db.execute("PRAGMA table_info(batches)")}


def test_tilde_means_the_home_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Spool("~/...") lands under $HOME, never in a folder named "~" in the working dir."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    with Spool("~/app/events.db") as sp:
        assert sp.path == tmp_path / "home" / "app" / "events.db"
    assert not (tmp_path / "~").exists()


def test_reentrant_event_can_be_set_by_the_thread_holding_its_lock() -> None:
    """A signal handler may set() the event its thread was inside: no self-deadlock."""
    from spool._sync import ReentrantEvent

    event = ReentrantEvent()

    def interrupted_inside_set() -> None:
        with event._cond:  # what set() holds when a signal lands in it
            event.set()

    worker = threading.Thread(target=interrupted_inside_set, daemon=True)
    worker.start()
    worker.join(2)
    assert not worker.is_alive(), "deadlocked on its own lock"
    assert event.wait(0)
    event.clear()
    assert not event.wait(0.01)


class _Interrupt(BaseException):
    """What a signal handler's exception (KeyboardInterrupt, SystemExit) looks like."""


Moment = Callable[[Any, str, Any], bool]


@contextlib.contextmanager
def _handler_at(moment: Moment, action: Callable[[], object]) -> Iterator[list[bool]]:
    """Run ``action`` once, on this thread, at the first profiled event where ``moment``
    holds: where Python would run a signal handler. Yields a list that is non-empty once
    it ran (an exception ``action`` raises goes to the interrupted code)."""
    fired: list[bool] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if not fired and moment(frame, event, arg):
            fired.append(True)
            action()

    sys.setprofile(profile)
    try:
        yield fired
    finally:
        sys.setprofile(None)


def _in_transaction(frame: Any, event: str, arg: Any) -> bool:
    """A call returned on a connection inside a transaction (just after BEGIN, first)."""
    conn = getattr(arg, "__self__", None)
    return event == "c_return" and isinstance(conn, sqlite3.Connection) and conn.in_transaction


def _reading(frame: Any, event: str, arg: Any) -> bool:
    """A cursor call returned inside a read transaction: its snapshot is taken (BEGIN alone
    takes none)."""
    cursor = getattr(arg, "__self__", None)
    inside = isinstance(cursor, sqlite3.Cursor) and cursor.connection.in_transaction
    return event == "c_return" and inside


def _claim_selecting(frame: Any, event: str, arg: Any) -> bool:
    """Right after a claim's SELECT started: outside any transaction, yet open."""
    conn = getattr(arg, "__self__", None)
    selecting = frame.f_code.co_name == "_read_range" and isinstance(conn, sqlite3.Connection)
    return event == "c_return" and selecting


def _cursor_made(frame: Any, event: str, arg: Any) -> bool:
    """The first append's _activate() has just made the writer's cursor."""
    made = event == "c_return" and getattr(arg, "__name__", "") == "cursor"
    return made and frame.f_code.co_name == "_activate"


def _at(event: str, function: str, caller: str) -> Moment:
    """The moment of ``event`` ("call", "return") for ``function`` called by ``caller``."""

    def moment(frame: Any, seen: str, arg: Any) -> bool:
        back = frame.f_back
        named = frame.f_code.co_name == function and back is not None
        return seen == event and named and back.f_code.co_name == caller

    return moment


#: The first append's _activate() has just started the checkpoint thread.
_thread_started = _at("return", "start", "_activate")


def _interrupt() -> None:
    raise _Interrupt()


@pytest.mark.parametrize(
    "operation",
    [
        pytest.param(lambda s: s.claim(10), id="claim"),
        pytest.param(lambda s: s.append_many([b"x", b"y"]), id="append_many"),
        pytest.param(lambda s: s.stats(), id="stats"),
    ],
)
def test_an_interrupt_right_after_begin_leaves_no_transaction_open(
    make_spool: Callable[..., Spool], operation: Callable[[Spool], object]
) -> None:
    """An exception raised just after BEGIN rolls back: later appends still commit."""
    sp = make_spool()
    sp.append(b"before")
    with pytest.raises(_Interrupt), _handler_at(_in_transaction, _interrupt) as fired:
        operation(sp)
    assert fired, "no transaction was opened"
    sp.append(b"after")
    assert sp.stats().pending == 2  # the read connection is not stuck in a transaction
    other = make_spool()  # another connection sees only committed rows
    assert [r.data for r in other.claim(10).records] == [b"before", b"after"]


def test_a_claim_from_a_signal_handler_inside_a_read_returns_every_leased_record(
    sp: Spool,
) -> None:
    """A claim made (by a signal handler) while this thread is inside a read transaction
    returns every record it leased: the read's snapshot predates the newest ones, and
    acking rows it did not return would lose them."""
    sp.append(b"old")
    claimed: list[Batch] = []

    def handler() -> None:
        sp.append(b"new-1")
        sp.append(b"new-2")
        claimed.append(sp.claim(10))  # type: ignore[arg-type]

    with _handler_at(_reading, handler):
        sp.stats()  # its read transaction is the one interrupted
    (batch,) = claimed
    assert [r.data for r in batch.records] == [b"old", b"new-1", b"new-2"]


def test_a_dead_letter_reason_with_a_lone_surrogate_is_stored(sp: Spool) -> None:
    """A reason that UTF-8 cannot carry is stored with "?" instead of failing the move."""
    sp.append(b"poison")
    batch = sp.claim(10)
    assert batch is not None
    assert sp.dead_letter(batch.records, "bad \ud800 value") == 1
    assert [d.reason for d in sp.dead_letters()] == ["bad ? value"]


def test_a_claim_from_a_signal_handler_inside_another_claims_read_returns_its_records(
    sp: Spool,
) -> None:
    """A claim made (by a signal handler) while another claim's SELECT is still open on
    this thread returns every record it leased, not only those that SELECT's snapshot saw."""
    sp.append(b"a")
    sp.append(b"b")
    inner: list[Batch] = []

    def handler() -> None:
        sp.append(b"c")
        inner.append(sp.claim(10))  # type: ignore[arg-type]

    with _handler_at(_claim_selecting, handler):
        outer = sp.claim(1)
    assert outer is not None and [r.data for r in outer.records] == [b"a"]
    (batch,) = inner
    assert [r.data for r in batch.records] == [b"b", b"c"]


def test_an_append_from_a_signal_handler_inside_a_write_is_refused(sp: Spool) -> None:
    """An append made (by a signal handler) while this thread is inside another operation's
    write transaction raises instead of joining that transaction: rolled back with it (the
    handler exits, say), the record would be gone though append() had returned its id."""
    sp.append(b"old")
    refused: list[BaseException] = []

    def handler() -> None:
        try:
            sp.append(b"from-handler")
        except SpoolError as exc:
            refused.append(exc)
        else:
            refused.append(AssertionError("append() returned inside a transaction"))
        raise _Interrupt()  # as a SIGTERM handler's sys.exit() would

    with pytest.raises(_Interrupt), _handler_at(_in_transaction, handler):
        sp.claim(10)
    (exc,) = refused
    assert isinstance(exc, SpoolError) and "inside another spool operation" in str(exc)
    assert [r.data for r in sp.claim(10).records] == [b"old"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "moment",
    [
        pytest.param(_thread_started, id="thread-started"),
        pytest.param(_cursor_made, id="cursor-made"),
    ],
)
def test_a_close_from_a_signal_handler_during_the_first_append_raises_spool_error(
    make_spool: Callable[..., Spool], moment: Moment
) -> None:
    """A spool closed (by a signal handler's shutdown) while the first append opens it makes
    that append and later ones raise SpoolError, never a raw sqlite3 or attribute error."""
    sp = make_spool()
    with pytest.raises(SpoolError, match="closed"), _handler_at(moment, sp.close) as fired:
        sp.append(b"x")
    assert fired
    with pytest.raises(SpoolError, match="closed"):
        sp.append(b"y")


def test_connections_reset_by_a_signal_handler_during_the_first_append(sp: Spool) -> None:
    """Connections reset (a handler's fork or close_connections()) while the first append
    opens them: that append raises SpoolError and keeps no cursor on a closed connection,
    and the next append works."""
    reset = _handler_at(_cursor_made, sp.close_connections)
    with pytest.raises(SpoolError, match="reset"), reset as fired:
        sp.append(b"x")
    assert fired
    assert sp.append(b"y") > 0
    assert [r.data for r in sp.claim(10).records] == [b"y"]  # type: ignore[union-attr]


def test_an_interrupt_at_any_moment_of_a_write_leaves_no_transaction_open(
    make_spool: Callable[..., Spool],
) -> None:
    """A signal handler's exception at any profiled moment of a claim (a write) leaves the
    writer outside any transaction even while that exception is still alive (in the
    caller's ``except KeyboardInterrupt:`` block): no writer lock kept, no refusal."""
    sp = make_spool()
    here = __file__
    count = [0]

    def counting(frame: Any, event: str, arg: Any) -> bool:
        if frame.f_code.co_filename == here:
            return False
        count[0] += 1
        return False

    with _handler_at(counting, _interrupt):
        sp.claim(10)
    stuck = []
    for n in range(1, count[0] + 1):
        sp.append(b"r%d" % n)
        seen = [0]

        def nth(frame: Any, event: str, arg: Any, n: int = n, seen: list[int] = seen) -> bool:
            if frame.f_code.co_filename == here:
                return False
            seen[0] += 1
            return seen[0] == n

        try:
            with _handler_at(nth, _interrupt):
                sp.claim(10)
        except _Interrupt:
            if sp._conn is not None and sp._conn.in_transaction:
                stuck.append(n)
    assert not stuck


@pytest.mark.parametrize(
    ("operation", "moment"),
    [
        pytest.param(lambda s: s.claim(10), _in_transaction, id="claim"),
        pytest.param(lambda s: s.stats(), _reading, id="stats"),
    ],
)
def test_a_handler_exit_after_closing_the_spool_inside_a_transaction_reaches_the_caller(
    sp: Spool, operation: Callable[[Spool], object], moment: Moment
) -> None:
    """A SIGTERM handler's shutdown() then sys.exit() inside a write or a read: the caller
    gets the SystemExit, not a SpoolError about the closed connection (the rollback's or
    the read's COMMIT's)."""
    sp.append(b"a")

    def handler() -> None:
        sp.close()
        raise SystemExit(3)

    with pytest.raises(SystemExit), _handler_at(moment, handler) as fired:
        operation(sp)
    assert fired


def test_a_close_as_the_first_append_starts_the_checkpointer_stops_it(
    make_spool: Callable[..., Spool],
) -> None:
    """A handler's close() at the entry of _activate's ``_stop.clear()`` (where Python runs
    pending signal handlers) must not leave a checkpoint thread running on a closed spool."""
    sp = make_spool(checkpoint_interval=0.05)

    clearing = _at("call", "clear", "_activate")
    with pytest.raises(SpoolError, match="closed"), _handler_at(clearing, sp.close) as fired:
        sp.append(b"x")
    assert fired
    thread = sp._thread
    if thread is not None:
        thread.join(timeout=2)
        assert not thread.is_alive()


_SPOOL_DIR = os.path.dirname(os.path.abspath(spool.__file__)) + os.sep


def _spool_function_entered(frame: Any, event: str, arg: Any) -> bool:
    """A function of the spool package was just entered: where Python runs pending signal
    handlers (RESUME), even inside an ``except:`` or ``finally:`` block's cleanup."""
    return event == "call" and frame.f_code.co_filename.startswith(_SPOOL_DIR)


@pytest.mark.parametrize("kind", ["failing-write", "read"])
def test_an_interrupt_at_any_function_entry_leaves_no_transaction_open(
    make_spool: Callable[..., Spool], kind: str
) -> None:
    """A handler's exception at every entry of a spool function during a write that fails
    inside its transaction (SpoolFull: little disk left) or during a read: neither the
    writer nor the reader stays in a transaction (SQLite's writer lock kept, every later
    write or read refused as nested)."""
    if kind == "read":
        sp = make_spool()
        sp.append(b"a")

        def operation() -> None:
            sp.stats()

    else:
        sp = make_spool(min_free_bytes=2**62)

        def operation() -> None:
            with contextlib.suppress(spool.SpoolFull):
                sp.append(b"x")

    operation()  # connections and the checkpointer made: the calls below are the steady ones
    count = [0]

    def counting(frame: Any, event: str, arg: Any) -> bool:
        count[0] += _spool_function_entered(frame, event, arg)
        return False

    with _handler_at(counting, _interrupt):
        operation()
    assert count[0] > 0
    stuck = []
    for n in range(1, count[0] + 1):
        seen = [0]

        def nth(frame: Any, event: str, arg: Any, n: int = n, seen: list[int] = seen) -> bool:
            seen[0] += _spool_function_entered(frame, event, arg)
            return _spool_function_entered(frame, event, arg) and seen[0] == n

        with contextlib.suppress(_Interrupt), _handler_at(nth, _interrupt):
            operation()
        for conn in (sp._conn, sp._read_conn):
            if conn is not None and conn.in_transaction:
                stuck.append(n)
                conn.execute("ROLLBACK")
    assert not stuck


def test_a_reset_as_a_write_activates_is_a_spool_error(sp: Spool) -> None:
    """A handler's close_connections() (or a fork, on the parent's side) right as _write's
    _activate_if_needed() returned: the nesting check then meets a closed connection; the
    caller gets a SpoolError, not a raw sqlite3.ProgrammingError."""
    sp.append(b"a")

    activated = _at("return", "_activate_if_needed", "_write")
    with pytest.raises(SpoolError), _handler_at(activated, sp.close_connections) as fired:
        sp.claim(10)
    assert fired
    assert [r.data for r in sp.claim(10).records] == [b"a"]  # type: ignore[union-attr]


def test_a_claim_whose_rows_cannot_be_read_gives_its_lease_back(sp: Spool) -> None:
    """A handler's reset as the claim opens its read connection: the claim raises, and the
    batch it leased is claimable again at once (not after its lease), whole, same key."""
    sp.append_many([b"a", b"b"])

    opening_the_reader = _at("return", "_side_connection", "_kept_connection")
    with (
        pytest.raises(SpoolError, match="try again"),
        _handler_at(opening_the_reader, sp.close_connections) as fired,
    ):
        sp.claim(10, lease=3600)
    assert fired
    again = sp.claim(10, lease=3600)
    assert again is not None and [r.data for r in again.records] == [b"a", b"b"]
