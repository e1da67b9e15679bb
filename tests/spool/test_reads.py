"""Read-only calls (stats, pending_through, last_id) run beside appends, not in front of them."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

import spool
from spool import Spool, SpoolError

RECORD = b'{"user_id":"u","event_type":"e","payload":{"pad":"' + b"x" * 100 + b'"}}'
BACKLOG = 200_000


def _append_waits(sp: Spool, read: Callable[[], object]) -> tuple[list[float], list[float]]:
    """Append about once a millisecond while another thread calls ``read`` back to back:
    (each append's duration, each read's duration)."""
    reads: list[float] = []
    waits: list[float] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            read()
            reads.append(time.perf_counter() - t)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        end = time.monotonic() + 2.0
        while time.monotonic() < end or len(reads) < 5:
            t = time.perf_counter()
            sp.append(b"live")
            waits.append(time.perf_counter() - t)
            time.sleep(0.001)
    finally:
        stop.set()
        thread.join()
    return waits, reads


@pytest.mark.parametrize("call", ["stats", "pending_through"])
def test_a_count_over_a_big_backlog_does_not_hold_back_appends(sp: Spool, call: str) -> None:
    """Appends beside a thread counting 200k records wait a fraction of one count, not all."""
    for _ in range(BACKLOG // 10_000):
        sp.append_many([RECORD] * 10_000)
    last = sp.last_id()
    read = sp.stats if call == "stats" else lambda: sp.pending_through(last)
    waits, reads = _append_waits(sp, read)
    count = statistics.median(reads)
    waits.sort()
    # Behind the count, appends wait for most of one (every one of them while counts run
    # back to back); beside it, for no part of it. The top 2% are left to the machine:
    # a busy disk or scheduler stalls any append now and then.
    assert waits[int(len(waits) * 0.98)] < count / 4, (count, waits[-10:])
    assert waits[len(waits) // 2] < count / 20, (count, waits[len(waits) // 2])
    assert sp.pending_through(sp.last_id()) == BACKLOG + len(waits)


def test_reads_after_close_raise(sp: Spool) -> None:
    """stats, pending_through and last_id on a closed spool raise SpoolError."""
    sp.append(b"x")
    assert sp.has_pending_through(sp.last_id())
    sp.close()
    for read in (
        sp.stats,
        sp.last_id,
        lambda: sp.pending_through(1),
        lambda: sp.has_pending_through(1),
    ):
        with pytest.raises(SpoolError, match="closed"):
            read()


def test_has_pending_through_matches_pending_through(sp: Spool) -> None:
    """has_pending_through(x) is pending_through(x) > 0: tombstone, dead and leased rows too."""
    assert not sp.has_pending_through(0)
    ids = sp.append_many([b"a", b"b", b"c"])
    batch = sp.claim(2)
    assert batch is not None
    sp.dead_letter(batch.records[:1], "bad")
    for x in (0, *ids, ids[-1] + 1):
        assert sp.has_pending_through(x) == (sp.pending_through(x) > 0)
    assert not sp.has_pending_through(ids[0]) and sp.has_pending_through(ids[1])
    sp.ack(batch)
    tail = sp.claim(5)
    assert tail is not None
    sp.ack(tail)  # the top row becomes the tombstone: not live
    assert not sp.has_pending_through(ids[-1]) and sp.pending_through(ids[-1]) == 0


def test_the_wal_stays_bounded_with_several_threads_reading(sp: Spool, db_path: Path) -> None:
    """Appends in a tight loop beside two threads counting back to back: the WAL restart
    pass still gets its turn (it waits for the reads in progress), so the WAL stays near
    its restart size instead of growing for as long as the reads go on."""
    for _ in range(BACKLOG // 20_000):
        sp.append_many([RECORD] * 10_000)
    wal = db_path.with_name(db_path.name + "-wal")
    stop = threading.Event()

    def count() -> None:
        while not stop.is_set():
            sp.stats()

    readers = [threading.Thread(target=count) for _ in range(2)]
    for reader in readers:
        reader.start()
    largest, end = 0, time.monotonic() + 4.0
    try:
        while time.monotonic() < end:
            for _ in range(200):
                sp.append(RECORD)
            largest = max(largest, wal.stat().st_size)
    finally:
        stop.set()
        for reader in readers:
            reader.join()
    assert largest < 64 * 1024 * 1024, largest  # restarts at 16 MiB of frames


SIGNAL_DURING_READS = """
import os, signal, sys, tempfile, threading, time
import spool

s = spool.Spool(os.path.join(sys.argv[1], "q.db"), checkpoint_interval=3600)
s.append_many([b"x" * 100] * 50_000)
stop = False
handled = [0]


def read_with_a_restart_due():  # the checkpointer sets the flag once the WAL is big
    while not stop:
        s._restart_wanted = True
        s.stats()


def on_alarm(signum, frame):  # a handler calling into the spool (track(), shutdown())
    s.append(b"from the handler")
    handled[0] += 1
    signal.setitimer(signal.ITIMER_REAL, 0.013)


signal.signal(signal.SIGALRM, on_alarm)
signal.setitimer(signal.ITIMER_REAL, 0.013)
threading.Thread(target=read_with_a_restart_due, daemon=True).start()
end = time.monotonic() + 3
while time.monotonic() < end:
    s.pending_through(s.last_id())  # this thread reads too: the handler interrupts reads
stop = True
signal.setitimer(signal.ITIMER_REAL, 0)
print("handled", handled[0])
"""


def _run_child(tmp_path: Path, source: str, timeout: float, on_hang: str) -> str:
    """Run ``source`` with this checkout's spool and ``tmp_path`` as its argument; its
    stdout. A child still running after ``timeout`` seconds fails the test (``on_hang``)."""
    script = tmp_path / "child.py"
    script.write_text(source)
    env = {**os.environ, "PYTHONPATH": str(Path(spool.__file__).resolve().parents[1])}
    try:
        done = subprocess.run(
            [sys.executable, str(script), str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(on_hang)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_signal_handler_appending_while_threads_read_does_not_deadlock(
    tmp_path: Path,
) -> None:
    """Threads reading while a WAL restart pass is wanted, and a signal handler
    interrupting a read to append: the pass gets its gap, and nothing deadlocks."""
    stdout = _run_child(
        tmp_path,
        SIGNAL_DURING_READS,
        timeout=30,
        on_hang="deadlocked: the handler waited for a lock the restart pass held",
    )
    assert int(stdout.split()[-1]) > 10, stdout


HANDLER_DURING_A_WANTED_PASS = """
import os, signal, sys, threading, time
import spool

sp = spool.Spool(os.path.join(sys.argv[1], "s.db"), checkpoint_interval=3600)
sp.append(b"x")
handled = []
signal.signal(signal.SIGALRM, lambda *_: handled.append(sp.append(b"from the handler")))


def checkpointer_tick():  # holds _ckpt_lock a while, as a tick does
    with sp._ckpt_lock:
        time.sleep(0.1)


threading.Thread(target=checkpointer_tick, daemon=True).start()
threading.Thread(target=sp.close_connections, daemon=True).start()
time.sleep(0.02)
sp._restart_wanted = True  # the checkpointer's flag: the WAL passed its restart size
signal.setitimer(signal.ITIMER_REAL, 0.15)
sp.stats()  # waits for the pass; the handler lands meanwhile
time.sleep(0.3)
print("handled", len(handled))
"""


HANDLER_DURING_A_READ = """
import os, signal, sys, threading, time
import spool

sp = spool.Spool(os.path.join(sys.argv[1], "s.db"), checkpoint_interval=3600)
sp.append(b"x")
handled = []
signal.signal(signal.SIGALRM, lambda *_: handled.append(sp.append(b"from the handler")))


def close_soon():
    time.sleep(0.05)
    sp.close_connections()  # holds _lock, then needs _read_lock, held by the read


threading.Thread(target=close_soon, daemon=True).start()
signal.setitimer(signal.ITIMER_REAL, 0.15)
sp._read("slow read", lambda conn: time.sleep(0.3))  # a long count, in effect
time.sleep(0.3)
print("handled", len(handled))
"""


@pytest.mark.parametrize(
    "source",
    [HANDLER_DURING_A_WANTED_PASS, HANDLER_DURING_A_READ],
    ids=["read-waiting-for-the-pass", "inside-a-read"],
)
def test_a_signal_handler_appending_during_a_read_never_deadlocks_a_closer(
    tmp_path: Path, source: str
) -> None:
    """A handler that appends, interrupting a read (or a read waiting for a wanted RESTART
    pass), while another thread closes the connections: nothing deadlocks (a read's wait
    holds no lock, and closing gives _lock back while the read holds _read_lock)."""
    stdout = _run_child(
        tmp_path,
        source,
        timeout=20,
        on_hang="deadlocked: the handler's append waited on a lock the read held",
    )
    assert stdout.split() == ["handled", "1"], stdout
