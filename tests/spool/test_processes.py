"""Real processes: SIGKILLed appenders and claimers, many writers and claimers, fork()."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from spool import Spool, SpoolFull

ROOT = Path(__file__).resolve().parents[2]


_started: list[subprocess.Popen[str]] = []


def run_child(code: str, *args: str) -> subprocess.Popen[str]:
    """Start a fresh interpreter running ``code`` with the repo importable."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # so teardown can kill grandchildren too
    )
    _started.append(child)
    return child


@pytest.fixture(autouse=True)
def _reap_children() -> Iterator[None]:
    """Kill anything a failed test left running (and its forked children)."""
    yield
    while _started:
        child = _started.pop()
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.communicate()


def wait_forked(pid: int, timeout: float = 30.0) -> int:
    """Exit code of a forked child, killing it if it hangs (e.g. a deadlock)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"forked child {pid} hung")


APPENDER = """
    import sys
    from spool import Spool
    sp = Spool(sys.argv[1])
    print("ready", flush=True)
    i = 0
    while True:
        rid = sp.append(b'{"n": %d, "pad": "%s"}' % (i, b"x" * 100))
        print(rid, flush=True)
        i += 1
"""


def integrity(path: Path) -> str:
    """PRAGMA integrity_check result for the file at ``path``."""
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.timeout(120)
def test_sigkilled_appender_loses_nothing_it_reported(db_path: Path) -> None:
    """Over 20 SIGKILLs at random moments, every id printed after append() returned
    survives reopening and the file passes integrity_check."""
    rng = random.Random(1234)
    reported: set[int] = set()
    for _ in range(20):
        child = run_child(APPENDER, str(db_path))
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready", child.stderr
        time.sleep(rng.uniform(0.0, 0.15))
        os.kill(child.pid, signal.SIGKILL)
        out, _ = child.communicate()
        reported.update(int(line) for line in out.split() if line.isdigit())
    assert len(reported) > 100
    with Spool(db_path) as sp:
        present: set[int] = set()
        while (batch := sp.claim(500)) is not None:
            present.update(batch.ids)
        assert reported <= present
        assert sp.last_id() >= max(reported)
    assert integrity(db_path) == "ok"


CLAIMER = """
    import sys
    from spool import Spool
    sp = Spool(sys.argv[1])
    batch = sp.claim(100, lease=0.5)
    print(batch.key, *batch.ids, flush=True)
    import time
    time.sleep(60)   # "sending": killed before it can ack
"""


@pytest.mark.timeout(60)
def test_killed_claimer_rows_come_back_with_the_same_key(sp: Spool, db_path: Path) -> None:
    """A claimer killed between claim and ack: the same group returns, whole, at once (its
    holder is gone; test_dead_owner covers the rules)."""
    ids = sp.append_many([f"e{i}" for i in range(10)])
    child = run_child(CLAIMER, str(db_path))
    assert child.stdout is not None
    key, *claimed = child.stdout.readline().split()
    assert [int(i) for i in claimed] == ids
    os.kill(child.pid, signal.SIGKILL)
    child.communicate()
    again = sp.claim(100)
    assert again is not None and again.key == key and list(again.ids) == ids
    assert sp.ack(again) == 10


def _writer(path: str, wid: int, n: int) -> None:
    with Spool(path) as sp:
        for i in range(n):
            sp.append(f"{wid}:{i}")


def _claimer(path: str, stop: Any, out: Any) -> None:
    acked: list[str] = []
    with Spool(path, busy_timeout=60) as sp:
        while True:
            batch = sp.claim(37, lease=30)
            if batch is None:
                if stop.is_set() and sp.claim(1) is None:
                    break
                time.sleep(0.002)
                continue
            time.sleep(0.005)  # "sending": lets the other claimer take the next batch
            if sp.ack(batch) != len(batch):
                acked.append("LOST-LEASE")
            acked.extend(r.data.decode() for r in batch.records)
    out.put(acked)


@pytest.mark.timeout(120)
def test_four_writers_two_claimers_every_record_acked_exactly_once(db_path: Path) -> None:
    """4 forked writer processes and 2 claimer processes share one file without loss
    or double delivery."""
    Spool(db_path).close()
    ctx = multiprocessing.get_context("fork")
    stop, out = ctx.Event(), ctx.Queue()
    n = 400
    writers = [ctx.Process(target=_writer, args=(str(db_path), w, n)) for w in range(4)]
    claimers = [ctx.Process(target=_claimer, args=(str(db_path), stop, out)) for _ in range(2)]
    for p in writers + claimers:
        p.start()
    for p in writers:
        p.join(60)
        assert p.exitcode == 0
    stop.set()
    results = [out.get(timeout=60) for _ in claimers]
    for p in claimers:
        p.join(30)
        assert p.exitcode == 0
    acked = [x for r in results for x in r]
    expected = {f"{w}:{i}" for w in range(4) for i in range(n)}
    assert "LOST-LEASE" not in acked
    assert len(acked) == len(expected) and set(acked) == expected
    assert all(results), "both claimers should have done some work"


@pytest.mark.timeout(60)
def test_spool_keeps_working_in_parent_and_child_after_fork(sp: Spool) -> None:
    """Used before fork(), the same Spool object works in the child and the parent."""
    first = sp.append(b"parent-before")
    held = sp.claim(1)
    assert held is not None and held.ids == (first,)
    sp.checkpoint()  # the background thread and its connection exist before the fork
    pid = os.fork()
    if pid == 0:  # child: must not touch the parent's connections or thread
        code = 1
        try:
            rid = sp.append(b"child")
            batch = sp.claim(10)
            ok = batch is not None and batch.ids == (rid,) and sp.ack(batch) == 1
            # Reads use their own connection, which the parent had open (its claim).
            stats = sp.stats()
            ok = ok and (stats.pending, stats.leased) == (0, 1)
            ok = ok and sp.pending_through(rid) == 1 and sp.has_pending_through(first)
            sp.checkpoint()
            # the child runs its own checkpointer thread (the parent's didn't survive fork)
            ok = ok and any(
                t.name.startswith("spool-checkpoint") and t.is_alive()
                for t in threading.enumerate()
            )
            code = 0 if ok else 2
        finally:
            os._exit(code)
    assert wait_forked(pid) == 0
    later = sp.append(b"parent-after")
    assert sp.ack(held) == 1
    batch = sp.claim(10)
    assert batch is not None and batch.ids == (later,)
    assert sp.ack(batch) == 1
    assert sp.stats().pending == 0 and not sp.has_pending_through(sp.last_id())


FORK_EXIT = """
    import os, sys, sqlite3
    from spool import Spool
    sp = Spool(sys.argv[1])
    sp.append(b"before")
    sp.checkpoint()
    pid = os.fork()
    if pid == 0:
        sp.append(b"child")
        sys.exit(0)          # normal interpreter shutdown in the child
    os.waitpid(pid, 0)
    sp.append(b"after")      # the parent's connection must still be healthy
    batch = sp.claim(10)
    print(len(batch), sqlite3.connect(sys.argv[1]).execute("PRAGMA integrity_check").fetchone()[0])
"""


@pytest.mark.timeout(60)
def test_child_shutdown_does_not_close_parent_handles(db_path: Path) -> None:
    """A forked child exiting normally (finalisers run) leaves the parent's spool intact."""
    child = run_child(FORK_EXIT, str(db_path))
    out, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    assert out.split() == ["3", "ok"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("last_closer", ["parent", "another opener"])
def test_child_appends_survive_when_others_close_the_spool(db_path: Path, last_closer: str) -> None:
    """After fork, the parent (or a later reader) closing the spool last never takes the
    child's WAL away: every append the child saw return is in the file."""
    sp = Spool(db_path, checkpoint_interval=3600)
    sp.append(b"parent-before")
    sp.checkpoint()
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            sp.append(b"child-first")
            os.write(to_parent_w, b"1")
            os.read(to_child_r, 1)  # until the others have closed
            for i in range(50):
                sp.append(b"child-%d" % i)
            code = 0
        finally:
            os._exit(code)  # no close, no checkpoint: only what append() committed counts
    os.read(to_parent_r, 1)
    sp.close()
    if last_closer == "another opener":
        with Spool(db_path) as reader:
            reader.stats()
    os.write(to_child_w, b"1")
    assert wait_forked(pid) == 0
    with Spool(db_path) as after:
        assert after.stats().pending == 52
    assert integrity(db_path) == "ok"


@pytest.mark.timeout(60)
def test_forks_from_two_threads_at_once_release_every_lock(sp: Spool) -> None:
    """Two threads forking in a loop (two multiprocessing starts) leave the spool usable."""
    sp.append(b"x")
    stop = threading.Event()

    def forker() -> None:
        while not stop.is_set():
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)

    threads = [threading.Thread(target=forker, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(3.0)  # the race needs a few hundred forks to show
    stop.set()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads), "a fork hook deadlocked"
    done = threading.Event()
    threading.Thread(target=lambda: (sp.append(b"after"), done.set()), daemon=True).start()
    assert done.wait(10), "the spool's locks stayed held after concurrent forks"


@pytest.mark.timeout(60)
def test_a_forked_child_keeps_the_byte_budget(make_spool: Callable[..., Spool]) -> None:
    """A child inherits how full the spool is: max_bytes holds across fork()."""
    sp = make_spool(max_bytes=10_000)
    with pytest.raises(SpoolFull):
        while True:
            sp.append(b"x" * 1000)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            sp.append(b"y" * 1000)
            code = 2  # accepted: the child forgot the parent's count
        except SpoolFull:
            code = 0
        finally:
            os._exit(code)
    assert wait_forked(pid) == 0


FLAT_OUT_APPENDER = """
    import sys, time
    from spool import Spool
    sp = Spool(sys.argv[1])
    end = time.monotonic() + float(sys.argv[2])
    record = b"x" * 200
    while time.monotonic() < end:
        sp.append(record)
    sp.close()
"""


@pytest.mark.timeout(120)
def test_wal_stays_bounded_with_several_appending_processes(db_path: Path) -> None:
    """Three processes appending flat out: the checkpointers restart the WAL for all of
    them (a pass that held back only its own process's appends let it pass 250 MB)."""
    Spool(db_path).close()
    wal = Path(f"{db_path}-wal")
    children = [run_child(FLAT_OUT_APPENDER, str(db_path), "6") for _ in range(3)]
    peak = 0
    while any(c.poll() is None for c in children):
        with contextlib.suppress(OSError):
            peak = max(peak, wal.stat().st_size)
        time.sleep(0.05)
    for child in children:
        assert child.returncode == 0, child.stderr.read() if child.stderr else ""
    with Spool(db_path) as sp:
        appended = sp.stats().pending
    assert appended > 10_000, "too few appends to say anything about the WAL"
    # ~30 MB here when the machine is quiet; 71 MB was seen once with both cores busy.
    # What this guards against is the unbounded growth (past 250 MB in 6 s) of before.
    assert peak < 128 * 1024 * 1024, f"WAL peaked at {peak / 1e6:.0f} MB"


def _connect_returns_under(frame: Any, event: str, *callers: str) -> bool:
    """A profiled moment: sqlite3's connect() returning, with all of ``callers`` among the
    three functions above it (where a signal handler that forks would run)."""
    if event != "return" or frame.f_code.co_name != "connect":
        return False
    above = []
    back = frame.f_back
    while back is not None and len(above) < 3:
        above.append(back.f_code.co_name)
        back = back.f_back
    return all(name in above for name in callers)


def _parent_closes_first(
    sp: Spool, db_path: Path, child: int, from_child: int, to_child: int, why: str = ""
) -> None:
    """The parent's side of a fork-at-a-bad-moment test: once the child is ready, close
    this process's spool first, let the child append its 50, and find all 53 records there
    (a connection both processes kept would have lost the child's WAL at that close)."""
    os.read(from_child, 1)
    sp.close()
    os.write(to_child, b"1")
    assert wait_forked(child) == 0, why
    with Spool(db_path) as after:
        assert after.stats().pending == 53
    assert integrity(db_path) == "ok"


@pytest.mark.timeout(60)
def test_a_fork_while_the_writer_reconnects_hands_no_connection_to_the_child(
    db_path: Path,
) -> None:
    """A signal handler forking as _activate's connect() returns: neither side keeps the
    connection made before the fork (the child's appends would otherwise lose their WAL
    when the parent closes last, as in the test above)."""
    from spool import SpoolError

    sp = Spool(db_path, checkpoint_interval=3600)
    sp.append(b"parent-before")
    sp.checkpoint()
    sp.close_connections()
    pids: list[int] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if not pids and _connect_returns_under(frame, event, "_activate"):
            pids.append(os.fork())

    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    sys.setprofile(profile)
    try:
        sp.append(b"first")
    except SpoolError:  # "reset during this call; try again"
        sys.setprofile(None)
        sp.append(b"first")
    finally:
        sys.setprofile(None)
    if pids[0] == 0:
        code = 1
        try:
            os.write(to_parent_w, b"1")
            os.read(to_child_r, 1)
            for i in range(50):
                sp.append(b"child-%d" % i)
            code = 0
        finally:
            os._exit(code)
    _parent_closes_first(sp, db_path, pids[0], to_parent_r, to_child_w)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("operation", "keeper"),
    [("stats", "_reader"), ("checkpoint", "_checkpoint_once")],
)
def test_a_fork_while_a_side_connection_is_made_hands_it_to_neither_process(
    db_path: Path, operation: str, keeper: str
) -> None:
    """As the test above, for the connections kept beside the writer: a signal handler
    forking as the reader's (or the checkpointer's) connect() returns. Kept by both sides,
    that pre-fork connection made the child's SQLite believe it held the parent's locks,
    and the parent closing last deleted the WAL under the child's appends."""
    from spool import SpoolError

    sp = Spool(db_path, checkpoint_interval=3600)
    sp.append(b"parent-before")
    sp.checkpoint()
    sp.close_connections()
    sp.append(b"parent-after")  # the writer reopened; the side connections not yet
    pids: list[int] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if not pids and _connect_returns_under(frame, event, "_side_connection", keeper):
            pids.append(os.fork())

    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    sys.setprofile(profile)
    try:
        getattr(sp, operation)()
    except SpoolError:  # "reset during this call; try again"
        pass
    finally:
        sys.setprofile(None)
    assert pids
    if pids[0] == 0:
        code = 1
        try:
            sp.append(b"child-first")
            os.write(to_parent_w, b"1")
            os.read(to_child_r, 1)
            for i in range(50):
                sp.append(b"child-%d" % i)
            code = 0
        finally:
            os._exit(code)
    _parent_closes_first(sp, db_path, pids[0], to_parent_r, to_child_w)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("operation", "keeper"),
    [("stats", "_reader"), ("checkpoint", "_checkpoint_once")],
)
def test_a_fork_as_the_side_connection_is_handed_back_hands_it_to_neither_process(
    db_path: Path, operation: str, keeper: str
) -> None:
    """As the test above, one step later: the handler forks as _kept_connection() returns
    (its epoch check passed; on Python < 3.11 a real handler runs there).
    Stored by the caller only after that, the connection escaped the pre-fork close and
    both processes kept it: the child's 51 appends were lost."""
    from spool import SpoolError

    sp = Spool(db_path, checkpoint_interval=3600)
    sp.append(b"parent-before")
    sp.checkpoint()
    sp.close_connections()
    sp.append(b"parent-after")
    pids: list[int] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        back = frame.f_back
        returned = event == "return" and frame.f_code.co_name == "_kept_connection"
        if not pids and returned and back is not None and back.f_code.co_name == keeper:
            pids.append(os.fork())

    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    sys.setprofile(profile)
    try:
        getattr(sp, operation)()
    except SpoolError:  # the connection it was handed was closed by the fork
        pass
    finally:
        sys.setprofile(None)
    assert pids
    if pids[0] == 0:
        code = 1
        try:
            if sp._read_conn is None and sp._ckpt_conn is None:  # nothing inherited
                sp.append(b"child-first")
                getattr(sp, operation)()  # the side connection, made in the child
                os.write(to_parent_w, b"1")
                os.read(to_child_r, 1)
                for i in range(50):
                    sp.append(b"child-%d" % i)
                getattr(sp, operation)()
                code = 0
            else:
                os.write(to_parent_w, b"1")
        finally:
            os._exit(code)
    _parent_closes_first(
        sp, db_path, pids[0], to_parent_r, to_child_w, "the child kept the pre-fork side connection"
    )
