"""File-level work: permissions, connections, schema migration, corrupt-file recovery.

Nothing here runs on the append hot path; the only ``filelock`` use lives here and is
reserved for coarse, rare work (creating/migrating the schema, moving a bad file aside).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import IO, Iterator, Optional

import filelock

if sys.platform != "win32":  # Windows has no flock: recovery relies on the coarse lock alone
    import fcntl

from ._errors import SpoolCorrupt, SpoolError, SpoolFull
from ._salvage import salvage

log = logging.getLogger("spool")

# SQLite primary result codes we translate (extended codes share the low byte).
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_NOTADB = 26

# After a checkpoint lets the WAL restart, the first commit truncates the file back to this
# size. Truncating costs the appender ~1 ms per MB freed, so the limit sits above the WAL's
# steady-state size (the checkpointer forces a restart once ~16 MB of frames pile up) and
# only bites after a spike, e.g. while a long reader held checkpoints back.
JOURNAL_SIZE_LIMIT = 32 * 1024 * 1024

SYNCHRONOUS = {"normal": "NORMAL", "full": "FULL"}

# One entry per schema version; user_version == len(MIGRATIONS) when current.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # Ids must never be reused. AUTOINCREMENT would do it but writes sqlite_sequence on
        # every insert (a second WAL page per append: ~2x the append cost and WAL volume).
        # Instead the row holding the highest id is never deleted: when it must go it is
        # turned into a tombstone (data and created NULL, its id kept in ``meta``), so
        # SQLite's max(rowid)+1 keeps climbing. Live rows are those with data NOT NULL.
        """CREATE TABLE records (
            id INTEGER PRIMARY KEY,
            data BLOB,
            created REAL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
        )""",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER)",
        # A batch owns the contiguous id range [first_id, last_id]: claims always take the
        # oldest un-batched rows, so un-batched rows all sit above every batch's range and
        # ranges never overlap. Claim/ack then touch one row here plus a range of records
        # instead of rewriting 500 rows. ``until``: lease expiry (leased) or the time a
        # released batch becomes claimable again (pending).
        """CREATE TABLE batches (
            key TEXT PRIMARY KEY,
            first_id INTEGER NOT NULL,
            last_id INTEGER NOT NULL,
            status INTEGER NOT NULL,
            owner TEXT,
            until REAL NOT NULL
        )""",
        "CREATE INDEX batches_first ON batches(first_id)",
        """CREATE TABLE dead_letters (
            id INTEGER PRIMARY KEY,
            data BLOB NOT NULL,
            reason TEXT NOT NULL,
            failed_at REAL NOT NULL
        )""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)
# Nullable columns added since, without a version bump: releases that predate one ignore
# it (they name their columns), so they can still open a spool a newer one has touched.
ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (("batches", "tag", "TEXT"),)


def error_code(exc: BaseException) -> Optional[int]:
    """The primary SQLite result code of ``exc`` (from the code or, pre-3.11, the message)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF
    msg = str(exc).lower()
    if "not a database" in msg:
        return _SQLITE_NOTADB
    if "malformed" in msg:
        return _SQLITE_CORRUPT
    if "database or disk is full" in msg:
        return _SQLITE_FULL
    return None


def is_corrupt(exc: BaseException) -> bool:
    """True when ``exc`` says the file is not a usable database."""
    return error_code(exc) in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def translate(exc: BaseException, path: Path, op: str) -> SpoolError:
    """Map a sqlite3/OS exception to the public hierarchy (callers ``raise ... from exc``)."""
    if isinstance(exc, SpoolError):
        return exc
    code = error_code(exc)
    if code == _SQLITE_FULL:
        return SpoolFull(f"{op}: disk full for spool {path}: {exc}")
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        flag_damage(path)
        return SpoolCorrupt(f"{op}: spool {path} is corrupt: {exc}")
    return SpoolError(f"{op} failed for spool {path}: {exc}")


def damage_marker(path: Path) -> Path:
    """``<db>.damaged``: left by a call that met corruption, for the next open to check."""
    return path.with_name(path.name + ".damaged")


def flag_damage(path: Path) -> None:
    """Leave the damage marker (0600; best effort, never raises).

    Damage in the middle of the file escapes the cheap probe at open: without the marker
    every restart would open it normally and every claim would fail again, forever.
    """
    try:
        os.close(os.open(damage_marker(path), os.O_WRONLY | os.O_CREAT, 0o600))
    except OSError as exc:
        log.debug("cannot leave a damage marker for spool %s: %s", path, exc)


def prepare_path(path: Path) -> None:
    """Create the directory (0700) and the db file (0600) before SQLite sees them.

    SQLite creates -wal/-shm with the main file's permission bits, so creating the main
    file ourselves with 0600 keeps the side files private regardless of the umask.
    """
    try:
        _make_private_dirs(path.parent)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
    except OSError as exc:
        # An existing file in a read-only place is not a creation failure: say "open".
        verb = "open spool file for writing" if path.is_file() else "create spool file"
        raise SpoolError(f"cannot {verb} {path}: {exc}") from exc


def _make_private_dirs(folder: Path) -> None:
    """Create ``folder`` and any missing parent, each 0700.

    ``os.makedirs(mode=...)`` applies the mode to the last folder only; parents it makes
    get the umask, world-writable under umask 000 (common in containers), and anyone could
    then swap our private folder for theirs.
    """
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for each in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another process
            os.mkdir(each, 0o700)


def secure_side_files(path: Path) -> None:
    """Belt and braces: force 0600 on the db and its side files (ignore ones we can't touch)."""
    for p in (path, side_file(path, "-wal"), side_file(path, "-shm")):
        with contextlib.suppress(OSError):
            if p.exists() and (p.stat().st_mode & 0o777) != 0o600:
                os.chmod(p, 0o600)


def side_file(path: Path, suffix: str) -> Path:
    """``<db>-wal`` / ``<db>-shm`` next to ``path``."""
    return path.with_name(path.name + suffix)


def connect(path: Path, *, busy_timeout: float, synchronous: str) -> sqlite3.Connection:
    """Open one connection with the spool's pragmas (raises sqlite3 errors untranslated)."""
    # isolation_level=None: we issue BEGIN IMMEDIATE ourselves; check_same_thread=False:
    # the Spool serialises use with its own lock.
    conn = sqlite3.connect(
        str(path), timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )
    try:
        _enable_wal(conn, path, busy_timeout)
        conn.execute(f"PRAGMA synchronous={synchronous}")
        # Checkpoints run on a separate background connection, never on an appender.
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        # Some builds (Debian's) zero every deleted page by default: an ack of large
        # records then writes as much WAL as it deletes, which a nearly full disk may not
        # have. FAST zeroes deleted content only on pages written anyway (the file is 0600).
        conn.execute("PRAGMA secure_delete=FAST")
    except BaseException:
        conn.close()
        raise
    return conn


def _enable_wal(conn: sqlite3.Connection, path: Path, busy_timeout: float) -> None:
    """Put the file in WAL mode, waiting out other processes that are opening it too.

    Switching the journal mode (and the WAL recovery a first reader runs) can answer
    SQLITE_BUSY at once, without SQLite's busy handler: two processes opening one spool
    at the same moment would see "database is locked". So retry here, with backoff.
    """
    deadline = time.monotonic() + busy_timeout
    delay = 0.001
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode").fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                raise SpoolError(f"cannot put spool {path} in WAL mode (got {mode!r})")
            return
        except sqlite3.OperationalError as exc:
            if error_code(exc) not in (_SQLITE_BUSY, _SQLITE_LOCKED) and "locked" not in str(exc):
                raise
            if time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


@contextlib.contextmanager
def coarse_lock(path: Path, timeout: float) -> Iterator[None]:
    """Cross-process lock for schema work and recovery (never used per record)."""
    name = str(path) + ".lock"
    _check_lock_file(name)
    lock = filelock.FileLock(name, timeout=timeout, mode=0o600)
    try:
        with lock:
            yield
    except filelock.Timeout as exc:
        raise SpoolError(f"timed out waiting for {path}.lock: {exc}") from exc


def _check_lock_file(name: str) -> None:
    """Fail at once, with a SpoolError naming it, when ``name`` cannot be opened or made as
    a lock file (filelock would retry that until its timeout). Opened as filelock opens it
    (no symlink followed, no wait on a leased file); one this call makes is left as
    filelock would make it: mode 0o600 whatever the umask, and, on a file system without
    flock(), not at all (filelock's soft fallback takes only a marker file it created)."""
    flags = os.O_RDWR | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        try:
            fd = os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o600)
            made = True
        except FileExistsError:
            fd = os.open(name, flags)
            made = False
    except OSError as exc:
        raise SpoolError(f"cannot make the lock file {name}: {exc.strerror}") from exc
    try:
        if made:
            with contextlib.suppress(OSError):
                os.fchmod(fd, 0o600)
            if _lacks_flock(fd):
                with contextlib.suppress(OSError):
                    if os.path.samestat(os.lstat(name), os.fstat(fd)):
                        os.unlink(name)
    finally:
        os.close(fd)


def _lacks_flock(fd: int) -> bool:
    if sys.platform == "win32":
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the close
    except OSError as exc:
        return exc.errno == errno.ENOSYS
    return False


def ensure_schema(conn: sqlite3.Connection, path: Path, timeout: float) -> None:
    """Create or migrate the schema forward; the common case is two cheap pragma reads."""
    if _user_version(conn) != SCHEMA_VERSION or _missing_columns(conn):
        with _schema_change(conn, path, timeout):
            _migrate(conn, path)  # again, under the lock: another process may have done it
    probe(conn)


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the schema up to date (caller holds the coarse lock and a write transaction)."""
    version = _user_version(conn)
    if version > SCHEMA_VERSION:
        raise SpoolError(
            f"spool {path} has schema v{version}, newer than supported v{SCHEMA_VERSION}"
        )
    for steps in MIGRATIONS[version:]:
        for sql in steps:
            conn.execute(sql)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    for table, column, declaration in _missing_columns(conn):
        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")


def _missing_columns(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    present: dict[str, set[str]] = {}
    for table, _, _ in ADDED_COLUMNS:
        if table not in present:
            present[table] = {str(row[1]) for row in conn.execute(f"PRAGMA table_info({table})")}
    return [added for added in ADDED_COLUMNS if added[1] not in present[added[0]]]


@contextlib.contextmanager
def _schema_change(conn: sqlite3.Connection, path: Path, timeout: float) -> Iterator[None]:
    """One write transaction under the coarse file lock: committed, or rolled back."""
    with coarse_lock(path, timeout), _transaction(conn):
        yield


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception (one raised by a signal
    handler just after BEGIN too: BEGIN is inside the ``try``)."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _rollback(conn: sqlite3.Connection) -> None:
    """ROLLBACK if a transaction is open. A connection closed meanwhile has none left (SQLite
    ended it on close): the error asking it would say so must not replace the exception
    being handled. (Spool._write and _read do the same inline: see there why.)"""
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.ProgrammingError:
        pass


def _user_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0]) if row else 0


def probe(conn: sqlite3.Connection) -> None:
    """Touch schema and table pages so a damaged file fails here, at open, not mid-run."""
    conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    conn.execute("SELECT max(id) FROM records").fetchone()
    conn.execute("SELECT count(*) FROM batches").fetchone()
    conn.execute("SELECT count(*) FROM dead_letters").fetchone()


def join_users(path: Path, timeout: float, *, create: bool = True) -> Optional[IO[bytes]]:
    """Hold a shared ``flock`` on ``<db>.users`` for as long as the returned file stays open
    (a Spool's lifetime; a forked child shares it). Recovery moves a damaged spool aside
    only when it can take that lock exclusively, so never from under a process that has
    the spool open: that process would go on appending to the moved file, unnoticed.
    Waits (up to ``timeout``) while another process holds it exclusively, i.e. recovers.
    None where there is no ``flock`` (Windows) or the file cannot be made. ``create=False``
    (readers that change nothing) only joins a lock file that exists already.
    """
    if sys.platform == "win32":
        return None
    flags = os.O_RDONLY
    if create:
        prepare_path(path)
        if header_problem(path) is None:
            refuse_foreign_database(path)  # before leaving a file of ours beside it
        flags |= os.O_CREAT
    try:
        users = os.fdopen(os.open(users_file(path), flags, 0o600), "rb")
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.debug("spool %s: no users lock (%s); recovery will not check for users", path, exc)
        return None
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(users.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            return users
        except BlockingIOError:
            if time.monotonic() >= deadline:
                users.close()
                raise SpoolError(
                    f"timed out waiting for another process to finish recovering {path}"
                ) from None
            time.sleep(0.02)


# How long recovery waits for other processes to close the spool before leaving it as is.
_SOLE_USER_WAIT = 1.0


def users_file(path: Path) -> Path:
    """``<db>.users``: every open Spool holds a shared lock on it (see join_users)."""
    return path.with_name(path.name + ".users")


@contextlib.contextmanager
def _sole_user(users: Optional[IO[bytes]]) -> Iterator[bool]:
    """Whether no other open Spool, in any process, has the file; inside, nobody can open
    it until the block ends (the lock is held exclusively). The caller does not hold the
    lock shared on entry (see open_spool) and holds it shared after the block."""
    if users is None:
        yield True
        return
    try:
        fcntl.flock(users.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fcntl.flock(users.fileno(), fcntl.LOCK_SH)
        yield False
        return
    try:
        yield True
    finally:
        fcntl.flock(users.fileno(), fcntl.LOCK_SH)


def open_spool(
    path: Path,
    *,
    busy_timeout: float,
    synchronous: str,
    recover: bool = True,
    users: Optional[IO[bytes]] = None,
) -> tuple[sqlite3.Connection, Optional[Path]]:
    """Open (creating/migrating/recovering as needed); returns the connection and the
    path the corrupt file was moved to, if recovery happened. ``recover=False`` raises
    :class:`SpoolCorrupt` for a corrupt file and leaves it exactly as it is. ``users`` is
    the caller's lock from :func:`join_users`: a damaged file that other processes have
    open is opened as it is (its damage marker kept) and recovered by a later open."""
    prepare_path(path)
    problem = header_problem(path)
    if problem is None:
        refuse_foreign_database(path)
        try:
            return _open_verified(path, busy_timeout, synchronous, clear_flag=recover), None
        except sqlite3.DatabaseError as exc:
            if not is_corrupt(exc):
                raise translate(exc, path, "open") from exc
            problem = str(exc)
    if not recover:
        raise SpoolCorrupt(f"spool {path} is corrupt ({problem}); it was left as it is")
    if header_problem(path) is None:
        flag_damage(path)  # so a concurrent opener can tell it is not recovered yet
    if users is not None:
        # Not a user yet (nothing open): other openers that found the damage too must not
        # count this one as a process using the file, nor it them. _recover takes it back.
        fcntl.flock(users.fileno(), fcntl.LOCK_UN)
    moved = _recover(path, busy_timeout, synchronous, problem, users)
    try:
        return _open_checked(path, busy_timeout, synchronous), moved
    except sqlite3.Error as exc:
        if moved is None and is_corrupt(exc):
            raise SpoolCorrupt(
                f"spool {path} is corrupt ({problem}) and other processes have it open, so it"
                " was left as it is; it is recovered by the first open made while no other"
                " process has it"
            ) from exc
        raise translate(exc, path, "open" if moved is None else "open after recovery") from exc


def header_problem(path: Path) -> Optional[str]:
    """Why the first 100 bytes can't be an SQLite header, or None if they can.

    Checked in Python *before* SQLite opens the file: on a garbage file SQLite may
    replay, checkpoint or delete the -wal while failing, destroying evidence we keep.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(100)
    except OSError as exc:
        return f"unreadable: {exc}"
    if not head:
        return None  # empty: SQLite initialises it
    if len(head) < 100 or not head.startswith(b"SQLite format 3\x00"):
        return "not an SQLite database (bad magic)"
    page_size = int.from_bytes(head[16:18], "big")
    if page_size != 1 and (page_size < 512 or page_size & (page_size - 1)):
        return f"not an SQLite database (page size {page_size})"
    if head[18] not in (1, 2) or head[19] not in (1, 2) or head[21:24] != b"\x40\x20\x20":
        return "not an SQLite database (bad header fields)"
    return None


def refuse_foreign_database(path: Path) -> None:
    """Raise SpoolError if ``path`` is some other application's SQLite database.

    Opening it as a spool would switch it to WAL, add our tables and chmod it. So its
    table names are read first, through a read-only connection that changes nothing: any
    table that is not one of ours means the file is someone else's. While a -wal exists
    (a live or crashed WAL database) the read goes through it, so a spool whose schema is
    still only in its WAL is seen as one; without a -wal the main file is complete and is
    read as immutable, which creates no side files either.
    """
    try:
        if os.path.getsize(path) == 0:
            return  # a new spool
    except OSError as exc:
        raise SpoolError(f"cannot read spool file {path}: {exc}") from exc
    mode = "mode=ro" if side_file(path, "-wal").exists() else "mode=ro&immutable=1"
    uri = f"{path.resolve().as_uri()}?{mode}"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=1.0)) as conn:
            names = {str(row[0]) for row in conn.execute(_TABLE_NAMES)}
    except sqlite3.Error:
        return  # unreadable or busy: the checked open decides (corrupt, locked, ...)
    foreign = sorted(names - _OUR_TABLES)
    if foreign:
        raise SpoolError(
            f"{path} is an SQLite database that is not a spool (it has tables such as "
            f"{', '.join(foreign[:3])}); refusing to open it as one"
        )


_TABLE_NAMES = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
_OUR_TABLES = frozenset({"records", "meta", "batches", "dead_letters"})


def _open_checked(path: Path, busy_timeout: float, synchronous: str) -> sqlite3.Connection:
    conn = connect(path, busy_timeout=busy_timeout, synchronous=synchronous)
    try:
        ensure_schema(conn, path, busy_timeout)
    except BaseException:
        conn.close()
        raise
    secure_side_files(path)
    return conn


class _CheckFailed(sqlite3.DatabaseError):
    """``PRAGMA quick_check`` found damage: handled like SQLite's own SQLITE_CORRUPT."""

    sqlite_errorcode = _SQLITE_CORRUPT


def _open_verified(
    path: Path, busy_timeout: float, synchronous: str, *, clear_flag: bool
) -> sqlite3.Connection:
    """_open_checked, plus a full ``PRAGMA quick_check`` when a damage marker is present.

    The check reads every page, so it runs only when an earlier call met corruption; a
    clean result removes the marker (unless ``clear_flag`` is false: read-only callers
    leave everything as it is). Damage raises :class:`_CheckFailed`.
    """
    conn = _open_checked(path, busy_timeout, synchronous)
    marker = damage_marker(path)
    if not marker.exists():
        return conn
    try:
        found = [str(row[0]) for row in conn.execute("PRAGMA quick_check(3)")]
    except BaseException:
        conn.close()
        raise
    if found != ["ok"]:
        conn.close()
        raise _CheckFailed(f"quick_check: {'; '.join(found)}")
    if clear_flag:
        with contextlib.suppress(FileNotFoundError):
            marker.unlink()
    return conn


def _recover(
    path: Path,
    busy_timeout: float,
    synchronous: str,
    problem: str,
    users: Optional[IO[bytes]],
) -> Optional[Path]:
    """Move a corrupt file (and side files) aside under the coarse lock, never deleting it,
    and start the fresh spool with every record and dead letter still readable in it.
    None when there was nothing to do, or other processes have the file open.

    Short users (a CLI reading the spool) get up to _SOLE_USER_WAIT to leave, the coarse
    lock released between tries: held while waiting, it would make every other opener
    queue behind this one, a second each, and time out.
    """
    deadline = time.monotonic() + _SOLE_USER_WAIT
    while True:
        with coarse_lock(path, busy_timeout), _sole_user(users) as alone:
            if alone:
                return _recover_alone(path, busy_timeout, synchronous, problem)
            if _recovered_meanwhile(path):
                return None
            if time.monotonic() >= deadline:
                log.warning(
                    "spool %s is corrupt (%s), but other processes have it open: it is left"
                    " as it is until it is opened while no other process has it",
                    path,
                    problem,
                )
                return None
        if users is not None:  # (always: without the lock we were alone)
            # Waiting, not using it: other openers that found the damage must not count us.
            fcntl.flock(users.fileno(), fcntl.LOCK_UN)
        time.sleep(0.05)


def _recovered_meanwhile(path: Path) -> bool:
    """Another process recovered the file since we found it damaged (a sound header and
    no damage marker: the fresh file has neither problem)."""
    return header_problem(path) is None and not damage_marker(path).exists()


def _recover_alone(
    path: Path, busy_timeout: float, synchronous: str, problem: str
) -> Optional[Path]:
    """_recover's work, with the coarse lock held and no other process using the file."""
    # Another process may have recovered it while we waited for the lock.
    if header_problem(path) is None:
        try:
            _open_verified(path, busy_timeout, synchronous, clear_flag=True).close()
            return None
        except sqlite3.DatabaseError as exc:
            if not is_corrupt(exc):
                raise translate(exc, path, "open") from exc
    try:
        moved = _move_aside(path)
    except OSError as exc:
        raise SpoolCorrupt(
            f"spool {path} is corrupt ({problem}) and could not be moved aside: {exc}"
        ) from exc
    with contextlib.suppress(FileNotFoundError):
        damage_marker(path).unlink()  # it spoke of the file just moved
    prepare_path(path)
    log.warning(
        "spool %s was corrupt (%s); moved it to %s and started a fresh spool",
        path,
        problem,
        moved,
    )
    # Still under the lock: nobody appends to the fresh file before the salvaged
    # records (which keep their ids) are in.
    _start_fresh(path, moved, busy_timeout, synchronous)
    return moved


def _start_fresh(path: Path, moved: Path, busy_timeout: float, synchronous: str) -> None:
    """Create the fresh spool's schema, then copy into it what ``moved`` still holds."""
    try:
        conn = connect(path, busy_timeout=busy_timeout, synchronous=synchronous)
    except sqlite3.Error as exc:
        raise translate(exc, path, "open after recovery") from exc
    with contextlib.closing(conn):
        try:
            # Committed apart from the copy, so a failed copy still leaves a usable spool
            # (openers waiting for our lock must not have to create the schema under it).
            with _transaction(conn):
                _migrate(conn, path)
        except sqlite3.Error as exc:
            raise translate(exc, path, "open after recovery") from exc
        if header_problem(moved) is not None:
            return  # not even SQLite's: nothing to read (and SQLite must not touch its -wal)
        try:
            with _transaction(conn):
                summary = salvage(moved, conn)
        except sqlite3.Error as exc:
            log.warning("spool %s: nothing could be salvaged from %s: %s", path, moved, exc)
        else:
            log.warning("spool %s: %s", path, summary)


def _move_aside(path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    os.replace(path, target)
    for suffix in ("-wal", "-shm"):
        side = side_file(path, suffix)
        if side.exists():
            os.replace(side, side_file(target, suffix))
    return target
