"""The Spool: a durable FIFO of opaque records in one SQLite file (WAL mode).

Concurrency model
-----------------
* In-process: one writer connection per Spool, guarded by ``self._lock`` (a plain
  ``threading.Lock``). Threads queue on that lock instead of SQLite's busy handler, which
  sleeps in millisecond steps.
* Reads (stats, pending_through, last_id, dead_letters, a claim's record bytes) run on a
  second connection under ``self._read_lock``: a WAL reader never blocks the writer, so
  appends do not wait for a count over a big backlog. Lock order: ``_lock``,
  ``_ckpt_lock``, ``_read_lock``; a RESTART pass never waits for our own reader (see
  ``_restart_locked``).
* Cross-process: SQLite's own locking; every multi-statement write is ``BEGIN IMMEDIATE``
  and ``busy_timeout`` covers contention. A single-statement ``append`` runs in autocommit,
  which takes the write lock when the statement starts -- the same as BEGIN IMMEDIATE.
* Checkpoints: a daemon thread with its *own* connection runs PASSIVE checkpoints every
  ``checkpoint_interval`` seconds, after acks, and every ``_CHECKPOINT_EVERY`` appends, so
  the appending connection (``wal_autocheckpoint=0``) never pays for one.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import math
import os
import shutil
import sqlite3
import sys
import threading
import time
import uuid
import weakref
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, TypeVar, Union, cast

from . import _fork, _storage
from ._errors import SpoolCorrupt, SpoolError, SpoolFull
from ._sync import ReentrantEvent, held_here
from ._types import Batch, DeadLetter, Record, Stats, Status

log = logging.getLogger("spool")

T = TypeVar("T")
StrPath = Union[str, "os.PathLike[str]"]

_INSERT = "INSERT INTO records(data) VALUES (?)"
# Wake a checkpointer each time record ids pass a multiple of this (ids climb by one per
# append in any process, so one wake per this many appends in all) and after this many
# acked records: ~1 WAL frame each, so ~4 MB of WAL between passes in a tight loop.
_CHECKPOINT_EVERY = 1000
# WAL content above which the background checkpointer briefly blocks in-process appends
# to let the WAL restart (see _background_tick). Higher = rarer pauses, bigger WAL.
_WAL_RESTART_BYTES = 16 * 1024 * 1024
# How long the RESTART pass may wait for SQLite's writer lock and for readers to move on;
# busy, it gives up and the next tick tries again.
_RESTART_WAIT_MS = 250
# How long a read waits for a wanted RESTART pass before it starts anyway (longer than a
# count over a big backlog takes, so two threads reading back to back leave it a gap).
_READ_GAP_WAIT = 2.0
# When the in-memory byte counter says "full", re-count from disk at most this often.
_RECOUNT_INTERVAL = 0.25
# Appends fail with SpoolFull while less than this is free for the spool (free disk space
# plus the file's own free pages), because delivery needs room too: claims and acks write
# WAL frames, and a checkpoint copies the WAL's new pages into the main file, which grows
# by as much. A disk filled to the last byte by appends would let nothing stored leave,
# even once the server is back. 32 MiB holds a WAL at _WAL_RESTART_BYTES twice over.
DEFAULT_MIN_FREE_BYTES = 32 * 1024 * 1024
# Record bytes appended in this process after which an append re-checks the free space
# ahead of the checkpointer's next tick (a statvfs and a pragma: cheap at this spacing).
_ROOM_CHECK_BYTES = 256 * 1024
_LEASED = int(Status.LEASED)
_PENDING = int(Status.PENDING)

_FIND_GROUP = (
    "SELECT key, first_id, last_id, tag FROM batches WHERE until <= ? ORDER BY first_id LIMIT 1"
)
_RANGE = "SELECT id, data FROM records WHERE id BETWEEN ? AND ? AND data IS NOT NULL ORDER BY id"
# (id, size, created): the claim transaction never touches the records' bytes.
_FRESH_SUMMARY = (
    "SELECT min(id), max(id), sum(length(data)), max(created) FROM"
    " (SELECT id, data, created FROM records WHERE id > ? AND data IS NOT NULL"
    " ORDER BY id LIMIT ?)"
)
_FRESH = (
    "SELECT id, length(data), created FROM records WHERE id > ? AND data IS NOT NULL"
    " ORDER BY id LIMIT ?"
)
_TOMBSTONE = "SELECT value FROM meta WHERE key = 'tombstone'"
# "This record lies in a batch currently leased by this Spool instance" (bind: id, id,
# LEASED, len(prefix), prefix). Owner tokens are "<instance>.<claim>", and an instance is
# "<host>:<pid>:<random>" (see _host_id).
_LEASED_BY_ME = (
    "EXISTS (SELECT 1 FROM batches WHERE first_id <= ? AND last_id >= ?"
    " AND status = ? AND substr(owner, 1, ?) = ?)"
)
# Live leases held by other processes of our pid namespace (bind: window, LEASED, now,
# len(host prefix), host prefix, len(own prefix), own prefix, limit): the only batches
# whose owner's liveness we can ask the kernel about. Only the oldest batches are looked
# at (via the first_id index), so a file with thousands of leases costs no full scan; a
# dead owner's batch further up is found once older ones are acked, or expires.
_HELD_NEARBY = (
    "SELECT key, first_id, last_id, tag, owner FROM"
    " (SELECT * FROM batches ORDER BY first_id LIMIT ?)"
    " WHERE status = ? AND until > ? AND substr(owner, 1, ?) = ? AND substr(owner, 1, ?) <> ?"
    " ORDER BY first_id LIMIT ?"
)
_DEAD_OWNER_WINDOW = 32
# At most this many foreign leases are looked at per claim, each owner pid at most once
# per _ALIVE_RECHECK seconds: the check runs inside the write transaction.
_DEAD_OWNER_SCAN = 8
_ALIVE_RECHECK = 0.5
# Owner pids are pid_t; anything else is not a pid we may hand to os.kill().
_PID_MAX = 2**31 - 1
_COUNT_BYTES = (
    "SELECT (SELECT coalesce(sum(length(data)), 0) FROM records)"
    " + (SELECT coalesce(sum(length(data)), 0) FROM dead_letters)"
)


def _token() -> str:
    return uuid.uuid4().hex


# ------------------------------------------------------------------ owner liveness
#
# A claimer that dies (SIGKILL, os._exit in a pool worker) holds its batch until the lease
# expires. Owner tokens therefore name the claiming process, "<host>:<pid>:...", where
# <host> pins down the pid namespace the pid belongs to. A claimer with the same <host>
# may ask the kernel whether that pid still exists and take the batch at once if not.
# Every doubt (other host, old token format, unknown platform, pid reused by a live
# process, any OS error) answers "alive": the batch then waits for its lease to expire.

_machine_cache: list[Optional[str]] = []  # [machine id] once computed (it survives fork)
_host_cache: dict[int, Optional[str]] = {}  # pid -> host id; recomputed in a forked child


def _host_id() -> Optional[str]:
    """This process's pid namespace as a short hex name, or None when unknown."""
    pid = os.getpid()
    if pid not in _host_cache:
        # A fork normally keeps the namespace, but a parent that unshare()d its pid
        # namespace forks children into a new one: one readlink per process is cheap.
        _host_cache.clear()
        if not _machine_cache:
            _machine_cache.append(_machine_id())
        machine, ns = _machine_cache[0], _pid_namespace()
        _host_cache[pid] = (
            None
            if machine is None or ns is None
            else hashlib.sha256(f"{machine}\0{ns}".encode()).hexdigest()[:20]
        )
    return _host_cache[pid]


def _machine_id() -> Optional[str]:
    """Boot instance and hostname: two containers or VMs never share both."""
    try:
        node = os.uname().nodename
        if sys.platform.startswith("linux"):
            with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
                boot = f.read().strip()
        elif sys.platform == "darwin":
            boot = _darwin_boot_time()
        else:
            return None  # BSD jails hide pids under a shared hostname: don't guess
    except (OSError, ValueError, AttributeError):
        return None
    return f"{sys.platform}\0{node}\0{boot}" if boot else None


def _darwin_boot_time() -> str:
    """kern.boottime's seconds ("" if unavailable)."""
    import ctypes  # only here: macOS has no boot_id file

    libc = ctypes.CDLL(None, use_errno=True)
    tv = (ctypes.c_int64 * 2)()  # struct timeval: tv_sec comes first
    size = ctypes.c_size_t(ctypes.sizeof(tv))
    if libc.sysctlbyname(b"kern.boottime", tv, ctypes.byref(size), None, ctypes.c_size_t(0)):
        return ""
    return str(tv[0]) if tv[0] > 0 else ""


def _pid_namespace() -> Optional[str]:
    """The pid namespace as the kernel names it ("pid:[4026531836]"); "" without them."""
    if not sys.platform.startswith("linux"):
        return ""  # one pid space per boot
    try:
        # /proc mounted from another pid namespace would show (and stat) other processes.
        if os.readlink("/proc/self") != str(os.getpid()):
            return None
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _owner_pid(owner: str, host: str) -> Optional[int]:
    """The pid in an owner token of host ``host``; None for any other shape."""
    parts = owner.split(":", 2)
    if len(parts) != 3 or parts[0] != host:
        return None
    digits = parts[1]
    if not (digits.isascii() and digits.isdigit() and len(digits) <= 10):
        return None
    pid = int(digits)
    return pid if 0 < pid <= _PID_MAX else None  # 0 and -1 address process groups


def _pid_gone(pid: int) -> bool:
    """True only when process ``pid`` surely no longer runs (exited, maybe unreaped)."""
    try:
        os.kill(pid, 0)  # signal 0: nothing is sent, only existence is checked
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: it exists (another user's); else: unsure
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """An exited process not yet reaped by its parent (e.g. an unjoined child of ours)."""
    if not sys.platform.startswith("linux"):
        return False  # no cheap way to tell: wait for the lease instead
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        # "pid (comm) state ppid ... num_threads(20th)"; comm may hold spaces and ")".
        fields = stat[stat.rindex(b")") + 2 :].split()
        state, threads = fields[0], fields[17]
    except (OSError, ValueError, IndexError):
        return False
    # A thread-group leader that exited alone is 'Z' too while its threads run on.
    return state in (b"Z", b"X") and threads == b"1"


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _encode(record: Union[bytes, str]) -> bytes:
    if isinstance(record, str):
        return record.encode("utf-8")
    if isinstance(record, bytes):
        return record
    raise TypeError(f"spool records are bytes or str, not {type(record).__name__}")


class Spool:
    """A durable FIFO of opaque records; see the module docstring for the locking model.

    If the file at ``path`` is not a usable database it is moved aside to
    ``<name>.corrupt-<UTC timestamp>`` (never deleted), a fresh spool is created with every
    record and dead letter that can still be read from it, a warning is logged on the
    ``"spool"`` logger and :attr:`recovered_from` names the moved file. The constructor
    raises :class:`SpoolCorrupt` only when that recovery is impossible, or at once with
    ``recover=False`` (tools that only read must not move files). A call that meets damage
    later raises :class:`SpoolCorrupt` and leaves ``<name>.damaged``, so the next
    constructor checks the whole file and recovers it if needed. Another application's
    SQLite database is refused with :class:`SpoolError`, never modified.
    """

    recovered_from: Optional[Path]
    _conn: Optional[sqlite3.Connection]
    _cursor: Optional[sqlite3.Cursor]  # hot path: set only when conn + checkpointer are ready
    _ckpt_conn: Optional[sqlite3.Connection]
    _read_conn: Optional[sqlite3.Connection]  # reads claimed rows outside the writer lock
    _thread: Optional[threading.Thread]

    def __init__(
        self,
        path: StrPath,
        *,
        durability: str = "normal",
        max_bytes: Optional[int] = None,
        busy_timeout: float = 30.0,
        checkpoint_interval: float = 1.0,
        recover: bool = True,
        min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
    ) -> None:
        if durability not in _storage.SYNCHRONOUS:
            raise ValueError(f"durability must be 'normal' or 'full', not {durability!r}")
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError("max_bytes must be positive or None")
        if busy_timeout < 0 or checkpoint_interval <= 0:
            raise ValueError("busy_timeout must be >= 0 and checkpoint_interval > 0")
        if min_free_bytes < 0:
            raise ValueError("min_free_bytes must be >= 0")
        # "~/..." means the home directory, as in a shell: never a folder named "~".
        self._path = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
        self._sync = _storage.SYNCHRONOUS[durability]
        self._max_bytes = max_bytes
        # Unlimited is a limit never reached: every append counts bytes the same way.
        self._limit = sys.maxsize if max_bytes is None else max_bytes
        self._busy_timeout = float(busy_timeout)
        self._interval = float(checkpoint_interval)
        self._min_free = int(min_free_bytes)
        # Free space (kept across fork, like _bytes): while _room_low, appends raise
        # SpoolFull (see DEFAULT_MIN_FREE_BYTES). Appends re-check it once _bytes reaches
        # _room_check_at (never without a reserve), the checkpointer on every tick.
        self._room_low = False
        self._room = -1
        self._room_checked_at = 0.0
        self._room_check_at = sys.maxsize
        self._closed = False
        self._epoch = 0  # bumped by every _close_connections() (close, fork, reset)
        self._reset_process_state()
        # Held until close(): recovery never moves the file from under an open Spool.
        self._users = _storage.join_users(self._path, self._busy_timeout, create=recover)
        try:
            conn = self._open(recover)
        except BaseException:
            self._leave_users()
            raise
        self._conn = conn
        self._check_room(conn)
        if self._min_free:
            self._room_check_at = self._bytes + _ROOM_CHECK_BYTES
        _fork.register(self)

    def _open(self, recover: bool) -> sqlite3.Connection:
        """Open the file (recovering it if needed) and count its bytes when limited."""
        for attempt in (1, 2):
            conn, self.recovered_from = _storage.open_spool(
                self._path,
                busy_timeout=self._busy_timeout,
                synchronous=self._sync,
                recover=recover,
                users=self._users,
            )
            if self._max_bytes is None:
                return conn
            try:
                self._bytes = self._count_bytes(conn)
                return conn
            except sqlite3.Error as exc:
                conn.close()
                error = _storage.translate(exc, self._path, "open")  # flags damage
                # The count reads every record page, the open's cheap probe only a few:
                # opened again, the damage marker just left makes it check and recover.
                if attempt == 2 or not recover or not isinstance(error, SpoolCorrupt):
                    raise error from exc
        raise AssertionError("unreachable")

    def _leave_users(self) -> None:
        users, self._users = self._users, None
        if users is not None:
            users.close()

    def _reset_process_state(self) -> None:
        """Per-process state: fresh locks, no connections, no thread (init and after fork)."""
        # All reentrant: a signal handler that runs on a thread inside append() (where
        # nearly all of a tracking loop's time goes, the WAL restart pass included) may
        # call into this Spool, e.g. shutdown(). Plain Locks deadlock the process there;
        # see _write for the one unsafe case.
        self._lock = threading.RLock()
        self._ckpt_lock = threading.RLock()
        self._conn = None
        self._cursor = None
        self._ckpt_conn = None
        self._read_lock = threading.RLock()
        self._read_conn = None
        self._thread = None
        self._wake = ReentrantEvent()
        self._restart_wanted = False  # set by the checkpointer: the next append restarts the WAL
        self._stop = ReentrantEvent()
        # Owner tokens start with this, so dead_letter() can tell "leased by me", and name
        # this process, so that claimers can tell when it is gone (see _host_id).
        self._host = _host_id()
        self._pid = os.getpid()
        self._instance = f"{self._host or '-'}:{self._pid}:{_token()}"
        self._seen_alive: dict[int, float] = {}  # owner pid -> monotonic time it was alive
        self._bytes = 0
        self._recounted_at = 0.0
        self._since_kick = 0
        self._page_size = 4096

    # ------------------------------------------------------------------ properties

    @property
    def pid(self) -> int:
        """The process this Spool's connections and lease tokens belong to. It differs from
        ``os.getpid()`` only in a child forked without Python's fork hooks that has not yet
        called :func:`spool.after_fork_without_hooks`."""
        return self._pid

    @property
    def path(self) -> Path:
        """Absolute path of the database file."""
        return self._path

    # ------------------------------------------------------------------ appending

    def append(self, record: Union[bytes, str]) -> int:
        """Durably append one record; returns its id once the insert has committed."""
        data = record if type(record) is bytes else _encode(record)
        with self._lock:
            cur = self._cursor
            if cur is None:
                cur = self._activate()
            try:
                # In a transaction already: a signal handler appending while this thread was
                # inside another spool operation. Refused by _write (the INSERT would join
                # that transaction and be rolled back with it, though append() had returned).
                nested = cur.connection.in_transaction
            except sqlite3.Error as exc:  # closed under this call (by a signal handler)
                raise _storage.translate(exc, self._path, "append") from exc
            if self._room_low or self._bytes >= self._room_check_at or nested:
                rowid = self._append_checking_room(data)
            else:
                self._reserve(len(data))
                try:
                    cur.execute(_INSERT, (data,))
                except sqlite3.Error as exc:
                    self._bytes -= len(data)  # not stored after all
                    raise _storage.translate(exc, self._path, "append") from exc
                rowid = cur.lastrowid  # type: ignore[assignment]  # set by every INSERT
            if self._restart_wanted:
                self._restart_locked()
        # Ids climb by one per append, whichever process appends: waking on multiples
        # wakes some process's checkpointer once per _CHECKPOINT_EVERY appends in all.
        if rowid % _CHECKPOINT_EVERY == 0:
            self._wake.set()
        return rowid

    def _append_checking_room(self, data: bytes) -> int:
        """append() with the free space re-checked under SQLite's writer lock. Appenders of
        other processes queued on that lock all passed their own checks before it; only a
        check made while holding it sees what they wrote (N processes would otherwise
        overshoot the reserve by N records, each needing its size twice: WAL and file)."""

        def txn(conn: sqlite3.Connection) -> int:
            self._refuse_if_room_low()
            return self._insert_counted(conn, [data])[0]

        return self._write("append", txn)

    def _insert_counted(self, conn: sqlite3.Connection, datas: list[bytes]) -> list[int]:
        """INSERT inside the caller's transaction, counting the bytes (uncounted on failure:
        the transaction rolls back)."""
        total = sum(len(d) for d in datas)
        self._reserve(total)
        cur = conn.cursor()
        ids = []
        try:
            for data in datas:
                cur.execute(_INSERT, (data,))
                ids.append(cast(int, cur.lastrowid))
        except BaseException:
            self._bytes -= total
            raise
        return ids

    def append_many(self, records: Iterable[Union[bytes, str]]) -> list[int]:
        """Append several records in one transaction; all or none are stored."""
        datas = [_encode(r) for r in records]
        if not datas:
            return []

        def txn(conn: sqlite3.Connection) -> list[int]:
            if self._room_low or self._bytes >= self._room_check_at:
                self._refuse_if_room_low()  # under SQLite's writer lock: see above
            return self._insert_counted(conn, datas)

        ids = self._write("append_many", txn)
        if ids[-1] // _CHECKPOINT_EVERY != (ids[0] - 1) // _CHECKPOINT_EVERY:
            self._wake.set()  # the ids passed a multiple of _CHECKPOINT_EVERY, as in append()
        return ids

    def _reserve(self, nbytes: int) -> None:
        """Raise SpoolFull if ``nbytes`` more would exceed max_bytes (caller holds the lock)."""
        if self._bytes + nbytes <= self._limit:
            self._bytes += nbytes
            return
        # The counter may be stale (other processes ack too): recount, but rate-limited
        # so a genuinely full spool doesn't turn every append into a table scan.
        now = time.monotonic()
        if now - self._recounted_at >= _RECOUNT_INTERVAL:
            self._recounted_at = now
            try:
                self._bytes = self._count_bytes(cast(sqlite3.Connection, self._conn))
            except sqlite3.Error as exc:
                raise _storage.translate(exc, self._path, "append") from exc
        if self._bytes + nbytes > self._limit:
            raise SpoolFull(
                f"spool {self._path} is full: {self._bytes} + {nbytes} bytes"
                f" > max_bytes={self._max_bytes}"
            )
        self._bytes += nbytes

    def _refuse_if_room_low(self) -> None:
        """Re-check the free space once _bytes passed _room_check_at (several processes may
        be appending: waiting for the checkpointer's tick would let each overshoot), and
        while it is low at most every _RECOUNT_INTERVAL; raise while it is low."""
        due = self._bytes >= self._room_check_at
        if due or time.monotonic() - self._room_checked_at >= _RECOUNT_INTERVAL:
            self._room_check_at = self._bytes + _ROOM_CHECK_BYTES
            self._check_room(cast(sqlite3.Connection, self._conn))
        if self._room_low:
            raise SpoolFull(
                f"spool {self._path}: only {self._room} bytes free for it on its disk; appends"
                f" stop below min_free_bytes={self._min_free} so that what is stored can"
                " still be delivered"
            )

    def _check_room(self, conn: sqlite3.Connection) -> None:
        """Set _room_low from the disk's free space, plus the main file's free pages (reused
        by appends without growing the file), minus the WAL's size: a checkpoint may grow
        the main file by as much as the WAL holds before the WAL can start over (its own
        space is reused then). A failed check changes nothing."""
        self._room_checked_at = time.monotonic()
        if not self._min_free:
            return
        try:
            free_pages = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
            room = (
                shutil.disk_usage(self._path).free
                + free_pages * self._page_size
                - _file_size(_storage.side_file(self._path, "-wal"))
            )
        except (OSError, sqlite3.Error) as exc:
            log.debug("spool: free space check failed: %s", exc)
            return
        self._room = room
        self._room_low = room < self._min_free

    @staticmethod
    def _count_bytes(conn: sqlite3.Connection) -> int:
        row = conn.execute(_COUNT_BYTES).fetchone()
        return int(row[0]) if row else 0

    # ------------------------------------------------------------------ claiming

    def claim(
        self,
        max_records: int,
        *,
        max_bytes: Optional[int] = None,
        lease: float = 60.0,
        min_age: float = 0.0,
        fresh_only: bool = False,
        tag: Optional[str] = None,
    ) -> Optional[Batch]:
        """Lease the oldest available records, or None when nothing is claimable.

        A released or expired batch is handed out again first, whole and with its key;
        otherwise up to ``max_records`` pending records (and up to ``max_bytes``, but
        always at least one) become a new batch. ``min_age`` leaves records appended less
        than that many seconds ago alone (a contiguous oldest-first prefix is taken), so a
        producer that sends its own fresh records can claim them first. ``fresh_only``
        skips released and expired batches: only records never claimed are taken (a
        producer sending what it just appended leaves old failures to its retry loop).
        ``tag`` is stored with a new batch and handed back whenever it is claimed again.
        """
        if max_records < 1:
            raise ValueError("max_records must be >= 1")
        owner = f"{self._instance}.{_token()}"

        def txn(conn: sqlite3.Connection) -> Union[Batch, tuple[str, int, int], None]:
            now = time.time()
            if not fresh_only:
                batch = self._reclaim(conn, owner, now, now + lease)
                if batch is not None:
                    return batch
            # No age test at all without a min_age: a row stamped ahead of the clock (it
            # was stepped back since) must not hold back everything behind it.
            created_by = now - min_age if min_age > 0 else math.inf
            return self._claim_fresh(
                conn, max_records, max_bytes, owner, now + lease, created_by, tag
            )

        claimed = self._write("claim", txn)
        if claimed is None or isinstance(claimed, Batch):
            return claimed
        # The records' bytes are read after the writer lock is released: appends (and other
        # processes) wait only for the tiny transaction that leases the id range.
        key, first, last = claimed
        try:
            rows = self._read_range(first, last)
        except SpoolError:
            # Leased but unread (a signal handler reset the spool meanwhile): give the lease
            # back at once, or the rows would wait for it to expire. Best effort: after a
            # close() the release is refused, and the lease ends with it or this process.
            with contextlib.suppress(SpoolError):
                self.release(Batch(key, (), owner, tag))
            raise
        return Batch(key, _records(rows), owner, tag) if rows else None

    def _read_range(self, first: int, last: int) -> list[Any]:
        """The live rows of a range this Spool has leased (nobody else deletes them)."""
        # A signal handler claiming while this thread was inside a read (a transaction, or
        # one SELECT of another claim): that read's snapshot predates the rows just leased,
        # and the read connection would answer from it. A connection of its own sees them.
        nested = held_here(self._read_lock)
        with self._read_lock:
            try:
                reader = self._reader()
                if not (nested or reader.in_transaction):
                    return reader.execute(_RANGE, (first, last)).fetchall()
                with contextlib.closing(self._side_connection()) as fresh:
                    return fresh.execute(_RANGE, (first, last)).fetchall()
            except sqlite3.Error as exc:
                raise _storage.translate(exc, self._path, "claim") from exc

    def _reader(self) -> sqlite3.Connection:
        """The read connection, opened on first use (caller holds ``self._read_lock``)."""
        conn = self._read_conn
        if conn is None:
            conn = self._kept_connection("_read_conn")
        return conn

    def _kept_connection(self, attr: str) -> sqlite3.Connection:
        """A new connection the spool keeps in ``attr`` (the writer's, the reader's, the
        checkpointer's; the caller holds its lock). Dropped if a signal handler reset or
        closed the spool while it was made, or made one itself meanwhile: a reset's epoch
        tells (it leaves ``attr`` None), since a fork then would hand this connection,
        opened before it, to parent and child alike.

        Stored first, checked after, with no call in between: a handler may run as any call
        returns (on Python < 3.11 also a Python function's, e.g. this one's), so a check
        made before the caller stored it left a window where a fork closed the others but
        not this one."""
        epoch = self._epoch
        conn = self._side_connection()
        if getattr(self, attr) is None:
            setattr(self, attr, conn)  # from here on a reset (a fork) closes it with the others
        if getattr(self, attr) is not conn or self._closed or self._epoch != epoch:
            if getattr(self, attr) is conn:
                setattr(self, attr, None)
            conn.close()
            self._refuse_if_closed()
            raise self._reset_meanwhile()
        return conn

    def _side_connection(self) -> sqlite3.Connection:
        """A new connection with the spool's settings; refused once the spool is closed."""
        self._refuse_if_closed()
        return _storage.connect(self._path, busy_timeout=self._busy_timeout, synchronous=self._sync)

    def _reclaim(
        self, conn: sqlite3.Connection, owner: str, now: float, until: float
    ) -> Optional[Batch]:
        """Re-lease the oldest released/expired batch, or one whose owner process is gone,
        whole, with its key (or None)."""
        while True:
            row = conn.execute(_FIND_GROUP, (now,)).fetchone() or self._orphaned(conn, now)
            if row is None:
                return None
            key, first, last, tag = str(row[0]), int(row[1]), int(row[2]), row[3]
            rows = conn.execute(_RANGE, (first, last)).fetchall()
            if rows:
                conn.execute(
                    "UPDATE batches SET status = ?, owner = ?, until = ? WHERE key = ?",
                    (_LEASED, owner, until, key),
                )
                return Batch(key, _records(rows), owner, None if tag is None else str(tag))
            # Every row was dead-lettered and the batch never acked: drop the husk.
            conn.execute("DELETE FROM batches WHERE key = ?", (key,))

    def _orphaned(self, conn: sqlite3.Connection, now: float) -> Optional[Sequence[Any]]:
        """(key, first_id, last_id, tag) of a live lease whose owner process no longer exists.

        Only owners in our pid namespace (same host id) and other than this process qualify;
        an owner seen alive is not asked again for _ALIVE_RECHECK seconds.
        """
        if self._host is None:
            return None
        nearby, mine = f"{self._host}:", f"{self._host}:{self._pid}:"
        params = (_DEAD_OWNER_WINDOW, _LEASED, now, len(nearby), nearby, len(mine), mine)
        rows: list[Sequence[Any]] = conn.execute(
            _HELD_NEARBY, (*params, _DEAD_OWNER_SCAN)
        ).fetchall()
        for row in rows:
            pid = self._foreign_pid(str(row[4]))
            if pid is not None and self._gone(pid):
                log.debug("spool: batch %s of exited process %d reclaimed", row[0], pid)
                return row
        return None

    def in_use_by_this_thread(self) -> bool:
        """True while the calling thread is inside an operation of this Spool: a signal
        handler that interrupted one (and must not wait for another thread to get in)."""
        # Reads hold only _read_lock (a claim reads its rows under it too).
        return held_here(self._lock) or held_here(self._read_lock)

    def _holder_gone(self, owner: str) -> bool:
        """True when ``owner`` is a process of this machine that surely exited."""
        pid = self._foreign_pid(owner)
        return pid is not None and _pid_gone(pid)

    def _foreign_pid(self, owner: str) -> Optional[int]:
        """The pid of ``owner`` when it is another process of our pid namespace, else None
        (only then may we ask the kernel whether it still runs)."""
        pid = None if self._host is None else _owner_pid(owner, self._host)
        return None if pid in (None, self._pid, os.getpid()) else pid

    def _gone(self, pid: int) -> bool:
        """_pid_gone with a short memory of live pids (caller holds ``self._lock``)."""
        tick = time.monotonic()
        seen = self._seen_alive.get(pid)
        if seen is not None and tick - seen < _ALIVE_RECHECK:
            return False
        if _pid_gone(pid):
            self._seen_alive.pop(pid, None)
            return True
        if len(self._seen_alive) >= 4 * _DEAD_OWNER_SCAN:
            self._seen_alive.clear()  # pids come and go; never let this grow
        self._seen_alive[pid] = tick
        return False

    @staticmethod
    def _claim_fresh(
        conn: sqlite3.Connection,
        max_records: int,
        max_bytes: Optional[int],
        owner: str,
        until: float,
        created_by: float,
        tag: Optional[str],
    ) -> Optional[tuple[str, int, int]]:
        """Lease the oldest un-batched rows as a new batch: its (key, first id, last id)."""
        # Un-batched rows are exactly those above every batch's range (see the schema).
        floor = int(conn.execute("SELECT coalesce(max(last_id), 0) FROM batches").fetchone()[0])
        span = _fresh_span(conn, floor, max_records, max_bytes, created_by)
        if span is None:
            return None
        key = str(uuid.uuid4())
        conn.execute(
            "INSERT INTO batches(key, first_id, last_id, status, owner, until, tag)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (key, span[0], span[1], _LEASED, owner, until, tag),
        )
        return key, span[0], span[1]

    def renew(self, batch: Batch, *, lease: float = 60.0) -> bool:
        """Extend my lease on ``batch``; False if it was lost (re-claimed, acked, split)."""

        def txn(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "UPDATE batches SET until = ? WHERE key = ? AND owner = ? AND status = ?",
                (time.time() + lease, batch.key, batch.owner, _LEASED),
            ).rowcount

        return self._write("renew", txn) > 0

    def ack(self, batch: Batch) -> int:
        """Delete exactly this batch's rows (key and owner must match); returns count."""

        def txn(conn: sqlite3.Connection) -> int:
            span = _owned_span(conn, batch)
            if span is None:
                return 0  # stale: the lease was lost and someone else holds these rows
            conn.execute("DELETE FROM batches WHERE key = ?", (batch.key,))
            return _delete_live(conn, "id BETWEEN ? AND ? AND data IS NOT NULL", [span])

        deleted = self._write("ack", txn)
        with self._lock:
            if deleted == len(batch):
                self._bytes = max(0, self._bytes - batch.nbytes)
            # Acks write WAL frames too; count them like appends so a busy flusher also
            # wakes the checkpointer, without waking it on every single batch.
            self._since_kick += deleted
            if self._since_kick >= _CHECKPOINT_EVERY:
                self._since_kick = 0
                self._wake.set()
        return deleted

    def release(self, batch: Batch, *, delay: float = 0.0) -> None:
        """Give ``batch`` back (same key, same group); unclaimable for ``delay`` seconds."""

        def txn(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE batches SET status = ?, owner = NULL, until = ?"
                " WHERE key = ? AND owner = ?",
                # Without a delay, claimable at any clock: a wall clock stepped back must
                # not hold a batch given back for retry until it catches up.
                (_PENDING, time.time() + delay if delay > 0 else 0.0, batch.key, batch.owner),
            )

        self._write("release", txn)

    def split(self, batch: Batch) -> tuple[Batch, Batch]:
        """Split into two halves with fresh keys, still leased by me (same owner/lease).

        If the lease was already lost nothing changes in the file and the halves are inert:
        ack() on them returns 0 and renew() returns False.
        """
        if len(batch) < 2:
            raise ValueError("cannot split a batch of fewer than 2 records")
        half = len(batch) // 2
        first = Batch(str(uuid.uuid4()), batch.records[:half], batch.owner, batch.tag)
        second = Batch(str(uuid.uuid4()), batch.records[half:], batch.owner, batch.tag)

        def txn(conn: sqlite3.Connection) -> None:
            span = _owned_span(conn, batch)
            if span is None:
                return
            conn.execute(
                "INSERT INTO batches(key, first_id, last_id, status, owner, until, tag)"
                " SELECT ?, ?, ?, status, owner, until, tag FROM batches WHERE key = ?"
                " UNION ALL"
                " SELECT ?, ?, ?, status, owner, until, tag FROM batches WHERE key = ?",
                (
                    first.key,
                    span[0],
                    second.records[0].id - 1,
                    batch.key,
                    second.key,
                    second.records[0].id,
                    span[1],
                    batch.key,
                ),
            )
            conn.execute("DELETE FROM batches WHERE key = ?", (batch.key,))

        self._write("split", txn)
        return first, second

    # ------------------------------------------------------------------ dead letters

    def dead_letter(self, records: Sequence[Record], reason: str) -> int:
        """Move these rows (which must be leased by this Spool) aside; returns count moved."""
        ids = sorted({r.id for r in records})
        if not ids:
            return 0
        # Stored as UTF-8: a lone surrogate (a server's JSON may carry one) becomes "?"
        # rather than keep the rows from ever being set aside.
        reason = reason.encode("utf-8", "replace").decode("utf-8")
        prefix = self._instance + "."

        def txn(conn: sqlite3.Connection) -> int:
            now = time.time()
            mine = [(i, i, i, _LEASED, len(prefix), prefix) for i in ids]
            conn.executemany(
                "INSERT INTO dead_letters(id, data, reason, failed_at)"
                " SELECT id, data, ?, ? FROM records WHERE id = ? AND data IS NOT NULL"
                f" AND {_LEASED_BY_ME}",
                [(reason, now, *m) for m in mine],
            )
            return _delete_live(conn, f"id = ? AND data IS NOT NULL AND {_LEASED_BY_ME}", mine)

        return self._write("dead_letter", txn)

    def dead_letters(self, limit: Optional[int] = None) -> list[DeadLetter]:
        """Dead-lettered records, oldest id first."""

        def read(conn: sqlite3.Connection) -> list[DeadLetter]:
            rows = conn.execute(
                "SELECT id, data, reason, failed_at FROM dead_letters ORDER BY id LIMIT ?",
                (-1 if limit is None else limit,),
            ).fetchall()
            return [DeadLetter(int(i), bytes(d), str(r), float(t)) for i, d, r, t in rows]

        return self._read("dead_letters", read)

    def dead_letter_ids(self, ids: Optional[Iterable[int]] = None) -> list[int]:
        """Ids of dead letters, oldest first; only those among ``ids`` when given. Reads no
        record data (cheap on a dead-letter table of any size)."""
        wanted = None if ids is None else sorted(set(ids))

        def read(conn: sqlite3.Connection) -> list[int]:
            if wanted is None:
                return [int(r[0]) for r in conn.execute("SELECT id FROM dead_letters ORDER BY id")]
            found = []
            for i in wanted:
                row = conn.execute("SELECT id FROM dead_letters WHERE id = ?", (i,)).fetchone()
                if row is not None:
                    found.append(int(row[0]))
            return found

        return self._read("dead_letter_ids", read)

    def dead_letter_reasons(self, after: int, through: int) -> list[tuple[int, str]]:
        """(id, reason) of the dead letters with ``after < id <= through``, oldest first;
        no record data."""

        def read(conn: sqlite3.Connection) -> list[tuple[int, str]]:
            rows = conn.execute(
                "SELECT id, reason FROM dead_letters WHERE id > ? AND id <= ? ORDER BY id",
                (after, through),
            )
            return [(int(i), str(r)) for i, r in rows]

        return self._read("dead_letter_reasons", read)

    def requeue_dead(self, ids: Optional[Iterable[int]] = None) -> int:
        """Put dead letters back as pending records (new ids, at the tail); all when None."""
        wanted = None if ids is None else sorted(set(ids))

        def txn(conn: sqlite3.Connection) -> int:
            if wanted is None:
                conn.execute("INSERT INTO records(data) SELECT data FROM dead_letters ORDER BY id")
                return conn.execute("DELETE FROM dead_letters").rowcount
            conn.executemany(
                "INSERT INTO records(data) SELECT data FROM dead_letters WHERE id = ?",
                [(i,) for i in wanted],
            )
            return conn.executemany(
                "DELETE FROM dead_letters WHERE id = ?", [(i,) for i in wanted]
            ).rowcount

        return self._write("requeue_dead", txn)

    def purge_dead(self, ids: Optional[Iterable[int]] = None) -> int:
        """Delete dead letters for good; all when ``ids`` is None. Returns count deleted."""
        wanted = None if ids is None else sorted(set(ids))

        def txn(conn: sqlite3.Connection) -> int:
            if wanted is None:
                return conn.execute("DELETE FROM dead_letters").rowcount
            return conn.executemany(
                "DELETE FROM dead_letters WHERE id = ?", [(i,) for i in wanted]
            ).rowcount

        purged = self._write("purge_dead", txn)
        self._wake.set()
        return purged

    # ------------------------------------------------------------------ inspection

    def pending_through(self, last_id: int) -> int:
        """Live (pending or leased, not dead) records with ``id <= last_id``."""

        def read(conn: sqlite3.Connection) -> int:
            live = conn.execute("SELECT count(*) FROM records WHERE id <= ?", (last_id,))
            n = int(live.fetchone()[0])
            tomb = conn.execute(_TOMBSTONE).fetchone()
            return n - 1 if tomb is not None and tomb[0] <= last_id else n

        return self._read("pending_through", read)

    def has_pending_through(self, last_id: int) -> bool:
        """``pending_through(last_id) > 0`` without counting: cheap on any backlog."""

        def read(conn: sqlite3.Connection) -> bool:
            # Rows sit in id order and only the tombstone (the top row) has no data, so
            # this stops at the first or second row it looks at.
            row = conn.execute(
                "SELECT 1 FROM records WHERE id <= ? AND data IS NOT NULL LIMIT 1", (last_id,)
            ).fetchone()
            return row is not None

        return self._read("has_pending_through", read)

    def last_id(self) -> int:
        """Highest id ever assigned in this file (0 when none)."""

        def read(conn: sqlite3.Connection) -> int:
            # The top row is never deleted (it becomes a tombstone), so max(id) is the
            # highest id ever assigned.
            return int(conn.execute("SELECT coalesce(max(id), 0) FROM records").fetchone()[0])

        return self._read("last_id", read)

    def stats(self) -> Stats:
        """A consistent snapshot of counts, sizes and the age of the oldest live record."""

        def read(conn: sqlite3.Connection) -> Stats:
            now = time.time()
            live, live_bytes, oldest = conn.execute(
                "SELECT count(*), coalesce(sum(length(data)), 0), min(created) FROM records"
            ).fetchone()
            if conn.execute(_TOMBSTONE).fetchone() is not None:
                live -= 1
            held = conn.execute(
                "SELECT b.owner, (SELECT count(data) FROM records"
                " WHERE id BETWEEN b.first_id AND b.last_id)"
                " FROM batches AS b WHERE b.status = ? AND b.until > ?",
                (_LEASED, now),
            ).fetchall()
            # A batch whose holder exited is pending again: the next claim takes it at once.
            leased = sum(n for owner, n in held if not self._holder_gone(str(owner)))
            dead, dead_bytes = conn.execute(
                "SELECT count(*), coalesce(sum(length(data)), 0) FROM dead_letters"
            ).fetchone()
            return Stats(
                pending=int(live) - int(leased),
                leased=int(leased),
                dead=int(dead),
                total_bytes=int(live_bytes) + int(dead_bytes),
                oldest_age=None if oldest is None else max(0.0, now - float(oldest)),
                file_bytes=self._file_bytes(),
            )

        return self._read("stats", read)

    def _file_bytes(self) -> int:
        total = 0
        for p in (self._path, _storage.side_file(self._path, "-wal")):
            with contextlib.suppress(OSError):
                total += p.stat().st_size
        return total

    # ------------------------------------------------------------------ checkpoints

    def checkpoint(self) -> None:
        """Run a PASSIVE WAL checkpoint on the checkpoint connection (never the appender)."""
        with self._lock:
            self._activate_if_needed()
        try:
            self._checkpoint_once()
        except sqlite3.Error as exc:
            raise _storage.translate(exc, self._path, "checkpoint") from exc

    def _checkpoint_once(self, mode: str = "PASSIVE") -> int:
        """One PASSIVE checkpoint (or RESTART/TRUNCATE: see _background_tick); returns the
        WAL size in bytes it saw (frames x page)."""
        with self._ckpt_lock:
            conn = self._ckpt_conn
            if conn is None:
                conn = self._kept_connection("_ckpt_conn")
                self._page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
            if mode == "PASSIVE":
                row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            else:
                # RESTART and TRUNCATE hold SQLite's writer lock while they copy and wait
                # for readers: bound that wait, other processes' appends queue behind it.
                conn.execute(f"PRAGMA busy_timeout={_RESTART_WAIT_MS}")
                try:
                    row = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
                finally:
                    conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout * 1000)}")
        return max(0, int(row[1])) * self._page_size

    def _restart_locked(self) -> None:
        """The RESTART pass, caller holding ``self._lock``; a failure only delays it."""
        # Never while our read connection is inside a read (a count over a big backlog can
        # take 100+ ms): the pass would wait for it, our appenders held back meanwhile. The
        # flag stays set: the next append, or a read once that read is over, runs it.
        if not self._read_lock.acquire(blocking=False):
            return
        try:
            reader = self._read_conn
            if reader is not None and reader.in_transaction:
                return  # this very thread's read, interrupted by a signal handler
            self._restart_wanted = False
            self._checkpoint_once("RESTART")
        except (sqlite3.Error, SpoolError) as exc:
            log.debug("spool: WAL restart pass failed, retried on the next tick: %s", exc)
        finally:
            self._read_lock.release()

    def _background_tick(self) -> None:
        # The unlocked pass copies the bulk while appends continue. But SQLite only restarts
        # (reuses, truncates) the WAL when a writer starts with *every* frame copied back,
        # and with a steady trickle of appends some always land during the pass, so the WAL
        # would grow forever. Once it is big enough to matter, a RESTART pass takes SQLite's
        # writer lock, so every process's appends wait (theirs in SQLite's busy handler,
        # ours on our Python lock, held meanwhile) while the frames written since are copied
        # (~1 ms for a trickle of appends, 10-30 ms after a tight loop of them); the next
        # append restarts the WAL. A PASSIVE pass held only our own appenders back, and with
        # several appending processes the WAL grew past a gigabyte.
        if self._checkpoint_once() >= _WAL_RESTART_BYTES and not self._stop.is_set():
            # Appenders in a tight loop take our lock back to back, and Python's locks are
            # not fair: waiting for it here could starve (the WAL then grows unbounded on a
            # busy machine). So the next append runs the pass; without one, we do.
            self._restart_wanted = True
            if self._lock.acquire(timeout=0.05):
                try:
                    if self._restart_wanted and not self._closed:
                        self._restart_locked()
                finally:
                    self._lock.release()
        # Recount (a full scan, which picks up other processes' writes) only once the
        # local estimate gets near the limit; far below it, an exact figure buys nothing.
        if self._max_bytes is not None and self._bytes >= self._max_bytes // 2:
            with self._ckpt_lock:
                conn = self._ckpt_conn
                if conn is not None:
                    self._bytes = self._count_bytes(conn)
        if self._min_free:
            self._room_check_at = self._bytes + _ROOM_CHECK_BYTES
            self._update_room()

    def _update_room(self) -> None:
        """Re-check the free space; while it is low, give the WAL's space back to the disk
        once delivery has let every frame be copied back (appends are refused meanwhile,
        so a drained spool would otherwise keep its WAL's disk space and stay refused)."""
        with self._ckpt_lock:
            conn = self._ckpt_conn
            if conn is None:
                return
            self._check_room(conn)
            if self._room_low:
                try:
                    self._checkpoint_once("TRUNCATE")
                except sqlite3.Error as exc:  # busy: the next tick tries again
                    log.debug("spool: WAL truncate pass failed: %s", exc)
                self._check_room(conn)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Stop the checkpointer and close this process's connections (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._cursor = None
            thread = self._thread
            self._thread = None
        self._stop.set()
        self._wake.set()
        # Not from a signal handler that interrupted this Spool: the checkpointer may be
        # waiting for the very locks this thread holds.
        if (
            thread is not None
            and thread is not threading.current_thread()
            and not self.in_use_by_this_thread()
        ):
            thread.join(timeout=max(5.0, self._busy_timeout))
        self._acquire_all()  # the order _background_tick uses
        try:
            self._close_connections()
        finally:
            self._release_all()
        self._leave_users()

    def _close_connections(self) -> None:
        """Close every connection of this process (caller holds all three locks)."""
        conns = (self._ckpt_conn, self._read_conn, self._conn)
        self._epoch += 1  # an _activate() connecting meanwhile must not keep its connection
        self._cursor = self._ckpt_conn = self._read_conn = self._conn = None
        for c in conns:
            if c is not None:
                try:
                    c.close()
                except sqlite3.Error as exc:
                    log.debug("closing spool connection failed: %s", exc)

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Spool {str(self._path)!r} {state}>"

    # ------------------------------------------------------------------ internals

    def _activate(self) -> sqlite3.Cursor:
        """Make the writer usable in this process (caller holds ``self._lock``).

        A signal handler may close the spool, or reset its connections (a fork, or
        ``close_connections()``), while this runs: every step checks that the connection it
        made or found is still the spool's, so no cursor on a closed connection is kept and
        no connection is opened on a closed spool."""
        self._refuse_if_closed()
        conn = self._conn
        if conn is None:  # first use after fork(): never touch the parent's handle
            try:
                conn = self._kept_connection("_conn")
            except sqlite3.Error as exc:
                raise _storage.translate(exc, self._path, "reopen") from exc
        if self._thread is None:
            self._stop.clear()
            # A close() run as clear() was entered set the flag clear() just undid: a
            # thread started now would never stop.
            self._refuse_if_closed()
            self._thread = threading.Thread(
                target=_checkpoint_loop,
                args=(weakref.ref(self), self._wake, self._stop, self._interval),
                name=f"spool-checkpoint:{self._path.name}",
                daemon=True,
            )
            self._thread.start()
        try:
            cursor = conn.cursor()
        except sqlite3.Error as exc:  # closed by a handler while start() waited
            self._refuse_if_closed()
            raise self._reset_meanwhile() from exc
        if self._closed or self._conn is not conn:  # while start() waited, or just now
            self._refuse_if_closed()
            raise self._reset_meanwhile()
        self._cursor = cursor
        return cursor

    def _refuse_if_closed(self) -> None:
        if self._closed:
            raise SpoolError(f"spool {self._path} is closed")

    def _reset_meanwhile(self) -> SpoolError:
        return SpoolError(
            f"spool {self._path}: its connections were reset during this call (a fork or"
            " close_connections() in a signal handler); try again"
        )

    def _activate_if_needed(self) -> sqlite3.Connection:
        if self._cursor is None or self._conn is None:
            self._activate()
        return cast(sqlite3.Connection, self._conn)

    def _write(self, op: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` inside BEGIN IMMEDIATE ... COMMIT on the writer connection."""
        with self._lock:
            conn = self._activate_if_needed()
            try:
                # Inside the try: a handler's reset just now closed ``conn`` (raw error).
                _refuse_nesting(conn, self._path, op)
                # Not ``with _storage._transaction(conn)``: a signal handler's exception at
                # that context manager's seams (after BEGIN in __enter__, at the entry of
                # __exit__) escapes with the transaction and SQLite's writer lock still
                # open. Every call here is inside the ``try``, and the ROLLBACK is inline:
                # Python runs pending handlers at a function's entry, so a helper's entry
                # (_storage._rollback) would be such a seam too.
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    result = fn(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    try:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                    except sqlite3.ProgrammingError:  # closed by a handler: nothing is open
                        pass
                    raise
            except sqlite3.Error as exc:
                raise _storage.translate(exc, self._path, op) from exc
            return result

    def _read(self, op: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one read transaction (a consistent snapshot) on the read connection.

        Not under ``self._lock``: a WAL reader never blocks the writer, so appends do not
        wait for a count over a big backlog (stats, pending_through).
        """
        self._restart_if_wanted()
        with self._read_lock:
            self._refuse_if_closed()
            try:
                conn = self._reader()
                _refuse_nesting(conn, self._path, op)
                try:
                    conn.execute("BEGIN")  # inside the try: see _write
                    return fn(conn)
                finally:
                    # Inline, as in _write: a helper's entry is where a handler's exception
                    # would skip the COMMIT, leaving this read open (every later read
                    # refused as nested, checkpoints held back by its snapshot).
                    try:
                        if conn.in_transaction:
                            conn.execute("COMMIT")
                    except sqlite3.ProgrammingError:  # closed by a handler: nothing is open
                        pass
            except sqlite3.Error as exc:
                raise _storage.translate(exc, self._path, op) from exc

    def _restart_if_wanted(self) -> None:
        """Before a read: while a RESTART pass is wanted, give it a gap. The pass needs a
        moment with none of our reads running (see _restart_locked), and with several
        threads reading back to back there is none: so a new read waits (up to
        _READ_GAP_WAIT) for the flag to clear, holding no lock, while the read in progress
        ends and the next append, the checkpointer or this loop runs the pass. Every lock
        here is only tried, never waited for: no order to break, nothing for a signal
        handler to deadlock against."""
        if not self._restart_wanted or self.in_use_by_this_thread():
            return  # (the latter: a signal handler interrupted this thread inside the Spool)
        deadline = time.monotonic() + _READ_GAP_WAIT
        while self._restart_wanted and not self._closed and time.monotonic() < deadline:
            if self._lock.acquire(blocking=False):
                try:
                    if self._restart_wanted and not self._closed:
                        self._restart_locked()
                finally:
                    self._lock.release()
            if self._restart_wanted:
                time.sleep(0.005)

    # fork hooks (see _fork.py) -------------------------------------------------

    def _before_fork(self) -> None:
        # Holding the locks, no thread is inside SQLite; closing here means no connection
        # (and no per-process lock state of SQLite's) reaches the child. Both sides reopen
        # on first use.
        self._acquire_all()
        self._close_connections()

    def _after_fork_parent(self) -> None:
        self._release_all()

    def _acquire_all(self) -> None:
        """Take _lock, _ckpt_lock and _read_lock, in that order (close(), fork). _read_lock
        only with a bound, the others given back between tries: a signal handler on the
        thread inside a read (holding _read_lock) may need _lock before that read ends."""
        while True:
            self._lock.acquire()
            self._ckpt_lock.acquire()
            if self._read_lock.acquire(timeout=0.05):
                return
            self._ckpt_lock.release()
            self._lock.release()
            time.sleep(0.001)

    def _release_all(self) -> None:
        self._read_lock.release()
        self._ckpt_lock.release()
        self._lock.release()

    def close_connections(self) -> None:
        """Close this process's connections; they reopen on first use. For a process about
        to fork without Python's fork hooks (a uWSGI master), so no connection is copied."""
        self._before_fork()
        self._after_fork_parent()

    def _after_fork_child(self) -> None:
        stored = self._bytes  # the parent's estimate; a fresh 0 would let max_bytes double
        self._reset_process_state()
        self._bytes = stored


def _delete_live(conn: sqlite3.Connection, where: str, params: Sequence[tuple[object, ...]]) -> int:
    """DELETE live records matching ``where``, but keep the id high-water mark.

    If the row with the highest id is among them it becomes the tombstone instead (see
    the schema), and the previous tombstone, now redundant, is removed.
    """
    top = int(conn.execute("SELECT coalesce(max(id), 0) FROM records").fetchone()[0])
    deleted = conn.executemany(f"DELETE FROM records WHERE {where}", params).rowcount
    if (
        deleted
        and top
        and conn.execute("SELECT 1 FROM records WHERE id = ?", (top,)).fetchone() is None
    ):
        old = conn.execute(_TOMBSTONE).fetchone()
        if old is not None:
            conn.execute("DELETE FROM records WHERE id = ? AND data IS NULL", (old[0],))
        conn.execute("INSERT INTO records(id, data, created) VALUES (?, NULL, NULL)", (top,))
        conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('tombstone', ?)", (top,))
    return deleted


def _records(rows: Sequence[Sequence[Any]]) -> tuple[Record, ...]:
    """Records from ``(id, data, ...)`` rows."""
    return tuple(Record(row[0], row[1]) for row in rows)


def _owned_span(conn: sqlite3.Connection, batch: Batch) -> Optional[tuple[int, int]]:
    """The id range of ``batch`` if this exact claim (key and owner) still holds it."""
    row = conn.execute(
        "SELECT first_id, last_id FROM batches WHERE key = ? AND owner = ?",
        (batch.key, batch.owner),
    ).fetchone()
    return None if row is None else (int(row[0]), int(row[1]))


#: Rows stamped this far ahead of the clock were stamped before it was stepped back.
_CLOCK_SLACK = 5.0


def _fresh_span(
    conn: sqlite3.Connection,
    floor: int,
    max_records: int,
    max_bytes: Optional[int],
    created_by: float,
) -> Optional[tuple[int, int]]:
    """First and last id of the oldest un-batched rows that fit the limits (or None)."""
    # Usually the whole window fits: one aggregate row instead of one row per record.
    first, last, size, newest = conn.execute(_FRESH_SUMMARY, (floor, max_records)).fetchone()
    if first is None:
        return None
    if (max_bytes is None or size <= max_bytes) and newest <= created_by:
        return int(first), int(last)
    fresh = conn.execute(_FRESH, (floor, max_records)).fetchall()
    # A batch owns an id range, so stop at the first row that is too young rather
    # than skipping it (a skipped row inside the range would be acked unsent).
    # A row stamped well after now was stamped before the clock was stepped back (by this
    # or another process): its age is unknown, and old enough.
    stepped = time.time() + _CLOCK_SLACK
    rows = list(itertools.takewhile(lambda row: row[2] <= created_by or row[2] > stepped, fresh))
    if not rows:
        return None
    if max_bytes is not None:
        rows = _cap_bytes(rows, max_bytes)
    return int(rows[0][0]), int(rows[-1][0])


def _cap_bytes(rows: list[Any], max_bytes: int) -> list[Any]:
    """Longest prefix of ``(id, size, ...)`` rows within ``max_bytes``, but never empty."""
    total = 0
    for n, row in enumerate(rows):
        total += int(row[1])
        if total > max_bytes:
            return rows[: max(1, n)]
    return rows


def _checkpoint_loop(
    ref: weakref.ref[Spool], wake: threading.Event, stop: threading.Event, interval: float
) -> None:
    """Background checkpointer; holds only a weak reference so a dropped Spool can die."""
    while not stop.is_set():
        wake.wait(interval)
        wake.clear()
        spool = ref()
        if spool is None or stop.is_set():
            return
        try:
            spool._background_tick()
        except Exception as exc:  # keep the thread alive: the next tick may well succeed
            log.debug("spool checkpoint failed: %s", exc)
        del spool


def _refuse_nesting(conn: sqlite3.Connection, path: Path, op: str) -> None:
    """Raise if this thread is inside a transaction of this Spool already (a signal handler
    interrupted it): nesting would commit or roll back the outer one half-way."""
    if conn.in_transaction:
        raise SpoolError(
            f"spool {path}: {op} called while this thread is inside another spool operation"
            " (from a signal handler?); try again once that operation has returned"
        )
