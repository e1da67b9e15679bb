"""On-disk behaviour: corrupt files, unusable paths, WAL growth, size limits, errors."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import time
from pathlib import Path
from typing import Callable

import pytest

from spool import Spool, SpoolCorrupt, SpoolError, SpoolFull, _storage

GARBAGE = {
    "random": os.urandom(8192),
    "text": b"this is definitely not a sqlite database\n" * 200,
    "bad-header": b"SQLite format 3\x00" + b"\xff" * 4080,
}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_corrupt_file_is_moved_aside_and_a_fresh_spool_works(
    db_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage bytes: the file is kept as <name>.corrupt-<ts>, a warning is logged,
    recovered_from says where, and the new spool is fully usable."""
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(GARBAGE[kind])
    Path(f"{db_path}-wal").write_bytes(b"stale wal")
    with caplog.at_level(logging.WARNING, logger="spool"), Spool(db_path) as sp:
        moved = sp.recovered_from
        assert moved is not None and moved.name.startswith("events.db.corrupt-")
        assert moved.read_bytes() == GARBAGE[kind]
        assert Path(f"{moved}-wal").read_bytes() == b"stale wal"
        assert any(str(moved) in r.getMessage() for r in caplog.records)
        rid = sp.append(b"after recovery")
        batch = sp.claim(5)
        assert batch is not None and batch.ids == (rid,) and sp.ack(batch) == 1
    with Spool(db_path) as again:
        assert again.recovered_from is None


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_recover_false_raises_and_leaves_a_corrupt_file_alone(db_path: Path, kind: str) -> None:
    """recover=False: SpoolCorrupt, and the file and its -wal stay exactly as they were."""
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(GARBAGE[kind])
    Path(f"{db_path}-wal").write_bytes(b"stale wal")
    with pytest.raises(SpoolCorrupt):
        Spool(db_path, recover=False)
    assert db_path.read_bytes() == GARBAGE[kind]
    assert Path(f"{db_path}-wal").read_bytes() == b"stale wal"
    assert not list(db_path.parent.glob("*.corrupt-*"))


@pytest.mark.parametrize("user_version", [0, 1, 7])
@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_another_applications_database_is_refused_untouched(
    db_path: Path, journal: str, user_version: int
) -> None:
    """A SQLite file with other tables is a SpoolError; no byte, mode or side file changes."""
    db_path.parent.mkdir(parents=True)
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        db.execute(f"PRAGMA journal_mode={journal}")
        db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL)")
        db.execute("INSERT INTO orders (total) VALUES (9.5)")
        db.execute(f"PRAGMA user_version={user_version}")
        db.commit()
    os.chmod(db_path, 0o644)
    before = sorted(p.name for p in db_path.parent.iterdir()), db_path.read_bytes()
    for recover in (True, False):
        with pytest.raises(SpoolError, match="not a spool"):
            Spool(db_path, recover=recover)
    assert (sorted(p.name for p in db_path.parent.iterdir()), db_path.read_bytes()) == before
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o644


def test_a_foreign_database_still_in_its_wal_is_refused(db_path: Path) -> None:
    """Another app's WAL database, its tables not yet checkpointed: refused, never adopted."""
    db_path.parent.mkdir(parents=True)
    with contextlib.closing(sqlite3.connect(db_path, isolation_level=None)) as app:
        app.execute("PRAGMA journal_mode=wal")
        app.execute("PRAGMA wal_autocheckpoint=0")
        app.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL)")
        assert db_path.stat().st_size <= 4096  # the table lives only in the -wal so far
        with pytest.raises(SpoolError, match="not a spool"):
            Spool(db_path)
        names = {r[0] for r in app.execute("SELECT name FROM sqlite_master")}
    assert names == {"orders"}


def test_a_new_spool_whose_schema_is_only_in_its_wal_opens(db_path: Path) -> None:
    """A second opener of a fresh spool (main file one page, schema in the WAL) is let in."""
    with Spool(db_path, checkpoint_interval=3600) as first:
        first.append(b"a")
        with Spool(db_path) as second:
            assert second.stats().pending == 1


def test_healthy_file_is_not_moved(sp: Spool, db_path: Path) -> None:
    """A good spool reopens in place with recovered_from None and its data intact."""
    sp.append(b"keep me")
    sp.close()
    with Spool(db_path) as again:
        assert again.recovered_from is None
        batch = again.claim(1)
        assert batch is not None and batch.records[0].data == b"keep me"
    assert [p.name for p in db_path.parent.iterdir() if "corrupt" in p.name] == []


def test_path_under_a_regular_file_is_a_clear_spool_error(tmp_path: Path) -> None:
    """A parent that is a file (unopenable even as root) gives SpoolError naming the path."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    target = blocker / "sub" / "events.db"
    with pytest.raises(SpoolError, match="not-a-dir") as info:
        Spool(target)
    assert not isinstance(info.value, sqlite3.Error)


def test_path_that_is_a_directory_is_a_clear_spool_error(tmp_path: Path) -> None:
    """Pointing the spool at a directory is a SpoolError, not a raw sqlite3 error."""
    with pytest.raises(SpoolError, match=str(tmp_path)):
        Spool(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permission bits")
def test_read_only_directory_is_a_clear_spool_error(tmp_path: Path) -> None:
    """A spool in a 0500 directory fails with SpoolError naming the path."""
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    try:
        with pytest.raises(SpoolError, match="ro"):
            Spool(ro / "events.db")
    finally:
        ro.chmod(0o700)


def test_newer_schema_is_refused(db_path: Path) -> None:
    """A file written by a future version is not silently downgraded."""
    Spool(db_path).close()
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version={_storage.SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SpoolError, match="newer"):
        Spool(db_path)


@pytest.mark.timeout(120)
def test_wal_stays_bounded_while_nothing_claims(sp: Spool, db_path: Path) -> None:
    """100,000 appends with no claimer leave the WAL under 64 MB throughout."""
    wal = Path(f"{db_path}-wal")
    record = b'{"event": "page", "properties": {"path": "/x"}, "pad": "' + b"p" * 140 + b'"}'
    largest = 0
    for i in range(100_000):
        sp.append(record)
        if i % 2000 == 0:
            largest = max(largest, wal.stat().st_size)
    largest = max(largest, wal.stat().st_size)
    assert largest < 64 * 1024 * 1024, largest
    assert sp.stats().pending == 100_000


def test_max_bytes_raises_spool_full_and_keeps_what_was_spooled(
    make_spool: Callable[..., Spool],
) -> None:
    """Past max_bytes append raises SpoolFull; everything accepted before survives and
    acking frees room again."""
    sp = make_spool(max_bytes=1000)
    accepted = []
    with pytest.raises(SpoolFull):
        for i in range(100):
            accepted.append(sp.append(b"%03d" % i + b"x" * 97))
    assert len(accepted) == 10
    with pytest.raises(SpoolFull):
        sp.append_many([b"y"] * 2)
    batch = sp.claim(100)
    assert batch is not None and list(batch.ids) == accepted
    assert sp.ack(batch) == 10
    sp.append(b"z" * 100)


def test_max_bytes_is_shared_across_spool_objects(make_spool: Callable[..., Spool]) -> None:
    """A second Spool on the same file sees the bytes written by the first."""
    make_spool().append_many([b"a" * 600])
    other = make_spool(max_bytes=1000)
    with pytest.raises(SpoolFull):
        other.append(b"b" * 500)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (sqlite3.OperationalError("database or disk is full"), SpoolFull),
        (sqlite3.DatabaseError("file is not a database"), SpoolCorrupt),
        (sqlite3.DatabaseError("database disk image is malformed"), SpoolCorrupt),
        (sqlite3.OperationalError("database is locked"), SpoolError),
    ],
)
def test_sqlite_errors_are_translated(exc: sqlite3.Error, expected: type[SpoolError]) -> None:
    """SQLITE_FULL/ENOSPC -> SpoolFull, corruption -> SpoolCorrupt, the rest SpoolError."""
    out = _storage.translate(exc, Path("/x/y.db"), "append")
    assert type(out) is expected and "/x/y.db" in str(out)


def test_disk_full_during_append_is_spool_full(sp: Spool) -> None:
    """A real SQLITE_FULL (max_page_count reached) surfaces as SpoolFull."""
    sp.append(b"first")
    conn = sp._conn
    assert conn is not None
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count={pages}")
    with pytest.raises(SpoolFull):
        for _ in range(1000):
            sp.append(b"x" * 4000)
    conn.execute("PRAGMA max_page_count=1073741823")
    batch = sp.claim(1)
    assert batch is not None and batch.records[0].data == b"first"


def test_a_lock_file_that_cannot_be_made_fails_at_once(tmp_path: Path) -> None:
    """``<db>.lock`` that cannot be opened (a directory here; a read-only or special folder
    elsewhere) is a SpoolError naming it at once, not a wait for the whole busy_timeout."""
    (tmp_path / "s.db.lock").mkdir()
    started = time.monotonic()
    with pytest.raises(SpoolError, match=r"s\.db\.lock"):
        Spool(tmp_path / "s.db", busy_timeout=30)
    assert time.monotonic() - started < 10


def test_the_coarse_lock_is_taken_where_flock_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system without flock() (ENOSYS): filelock falls back to a soft lock whose
    marker it must create itself; a lock file made beforehand read as a marker held by an
    unknown owner, and the lock timed out."""
    import errno
    import warnings

    # filelock 4's flock layer (3.x, all Python 3.9 gets, has no such fallback to test)
    native = pytest.importorskip("filelock._native._unix")

    from spool import _storage

    def no_flock(fd: int) -> None:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(native, "lock_fd_nonblocking", lambda fd: no_flock(fd))
    monkeypatch.setattr(_storage.fcntl, "flock", lambda fd, op: no_flock(fd))
    started = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # filelock warns that it falls back to a soft lock
        with _storage.coarse_lock(tmp_path / "s.db", 3):
            pass
    assert time.monotonic() - started < 2


def test_a_lock_file_the_spool_makes_is_private_whatever_the_umask(tmp_path: Path) -> None:
    """Made 0o600 like filelock's own (its mode= is applied after the umask)."""
    from spool import _storage

    old = os.umask(0o277)
    try:
        with _storage.coarse_lock(tmp_path / "s.db", 3):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "s.db.lock").st_mode) == 0o600


def test_a_symlinked_lock_file_is_not_followed(tmp_path: Path) -> None:
    """filelock opens the lock file with O_NOFOLLOW; the check before it must not create
    the target of a (dangling) symlink planted in its place."""
    from spool import _storage

    target = tmp_path / "elsewhere"
    (tmp_path / "s.db.lock").symlink_to(target)
    with (
        pytest.raises(SpoolError, match=r"s\.db\.lock"),
        _storage.coarse_lock(tmp_path / "s.db", 3),
    ):
        pass
    assert not target.exists()
