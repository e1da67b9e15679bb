"""Leases of exited processes: a claimer on the same host takes them at once, nothing else."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spool import Batch, Record, Spool

ROOT = Path(__file__).resolve().parents[2]
LINUX = sys.platform.startswith("linux")
LEASE = 60.0  # every lease here outlives the test: only a dead owner can free it

_started: list[subprocess.Popen[str]] = []

CLAIMER = """
    import sys
    from spool import Spool
    sp = Spool(sys.argv[1])
    batch = sp.claim(100, lease=60)
    print(batch.key, batch.owner, *batch.ids, flush=True)
    sys.stdin.readline()        # "sending" until told to ack (or killed)
    print(sp.ack(batch), flush=True)
"""


def run_claimer(path: Path) -> tuple[subprocess.Popen[str], str, str, list[int]]:
    """A fresh interpreter that claims a batch of ``path`` and holds it: (proc, key, owner, ids)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CLAIMER), str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    _started.append(proc)
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    assert line, proc.stderr.read() if proc.stderr else ""
    key, owner, *ids = line
    return proc, key, owner, [int(i) for i in ids]


@pytest.fixture(autouse=True)
def _reap_children() -> Iterator[None]:
    """Kill any claimer a failed test left running."""
    yield
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def wait_zombie(pid: int, timeout: float = 5.0) -> None:
    """Wait until every thread of ``pid`` has exited, without reaping it (a zombie)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        if fields[0] == b"Z" and fields[17] == b"1":  # state, num_threads
            return
        time.sleep(0.005)
    raise AssertionError(f"process {pid} did not exit")


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def set_owner(path: Path, key: str, owner: str) -> None:
    """Rewrite a batch's owner in the file, as another process (or version) would have."""
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE batches SET owner = ? WHERE key = ?", (owner, key))


def _fork_claim_and_exit(path: str, conn: Any) -> None:
    """multiprocessing child: claim with a long lease, report it, die without releasing."""
    sp = Spool(path)
    batch = sp.claim(100, lease=LEASE)
    assert batch is not None
    conn.send((batch.key, batch.owner, batch.ids))
    os._exit(0)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("reaped", [True, False], ids=["reaped", "zombie"])
def test_batch_of_os_exited_fork_child_is_reclaimed_at_once(
    sp: Spool, db_path: Path, reaped: bool
) -> None:
    """A multiprocessing fork child that os._exit()s holding a 60 s lease loses it at once."""
    if not reaped and not LINUX:
        pytest.skip("zombies are only told apart on Linux")
    ids = sp.append_many([f"e{i}" for i in range(10)])
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_fork_claim_and_exit, args=(str(db_path), send))
    child.start()
    key, owner, claimed = recv.recv()
    assert list(claimed) == ids
    assert child.pid is not None
    if reaped:
        child.join(10)
        assert child.exitcode == 0
    else:
        wait_zombie(child.pid)
    batch = sp.claim(100, lease=LEASE)
    child.join(10)
    assert batch is not None and batch.key == key and batch.owner != owner
    assert list(batch.ids) == ids
    assert [r.data for r in batch.records] == [b"e%d" % i for i in range(10)]
    assert sp.ack(batch) == 10 and sp.stats().pending == 0


@pytest.mark.timeout(30)
@pytest.mark.parametrize("reaped", [True, False], ids=["reaped", "zombie"])
def test_batch_of_sigkilled_subprocess_is_reclaimed_at_once(
    sp: Spool, db_path: Path, reaped: bool
) -> None:
    """A separate interpreter SIGKILLed holding a 60 s lease loses it at once, same key."""
    if not reaped and not LINUX:
        pytest.skip("zombies are only told apart on Linux")
    ids = sp.append_many([f"e{i}" for i in range(10)])
    proc, key, _, claimed = run_claimer(db_path)
    assert claimed == ids
    assert (sp.stats().pending, sp.stats().leased) == (0, 10)
    os.kill(proc.pid, signal.SIGKILL)
    if reaped:
        proc.wait(10)
    else:
        wait_zombie(proc.pid)
    assert (sp.stats().pending, sp.stats().leased) == (10, 0), "the dead holder's batch is pending"
    batch = sp.claim(100, lease=LEASE)
    assert batch is not None and batch.key == key and list(batch.ids) == ids
    assert sp.ack(batch) == 10


@pytest.mark.timeout(30)
@pytest.mark.parametrize("state", ["running", "stopped"])
def test_live_owner_keeps_its_lease(sp: Spool, db_path: Path, state: str) -> None:
    """A live claimer (even a SIGSTOPped one) keeps its batch: claims find nothing to take."""
    sp.append_many([f"e{i}" for i in range(10)])
    proc, *_ = run_claimer(db_path)
    if state == "stopped":
        os.kill(proc.pid, signal.SIGSTOP)
    deadline = time.monotonic() + 1.2  # past the claimer's memory of live pids: asked again
    while time.monotonic() < deadline:
        assert sp.claim(100, lease=LEASE) is None
        time.sleep(0.05)
    assert sp.stats().leased == 10
    if state == "stopped":
        os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate("ack\n", timeout=10)
    assert out.split() == ["10"], err  # its ack still deleted every row: the lease held
    assert sp.stats().pending == 0


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "shape",
    ["old format", "other host", "pid not a number", "pid too big"],
)
def test_owners_that_cannot_be_checked_wait_for_expiry(
    sp: Spool, db_path: Path, shape: str
) -> None:
    """Owners from an older version, another host or with a bogus pid keep their lease;
    the same owner with this host and a dead pid is taken (the control)."""
    sp.append_many([f"e{i}" for i in range(10)])
    held = sp.claim(100, lease=LEASE)
    assert held is not None
    host, _, rest = held.owner.split(":", 2)
    gone = dead_pid()
    owner = {
        "old format": rest,  # "<instance>.<claim>", as written before owners named a process
        "other host": f"{host[::-1]}:{gone}:{rest}",
        "pid not a number": f"{host}:{gone}x:{rest}",
        "pid too big": f"{host}:{2**31 + gone}:{rest}",  # no pid_t: os.kill would raise
    }[shape]
    set_owner(db_path, held.key, owner)
    assert sp.claim(100, lease=LEASE) is None
    set_owner(db_path, held.key, f"{host}:{gone}:{rest}")
    again = sp.claim(100, lease=LEASE)
    assert again is not None and again.key == held.key


@pytest.mark.timeout(30)
def test_old_owner_of_a_reclaimed_batch_can_no_longer_touch_it(sp: Spool, db_path: Path) -> None:
    """After the reclaim, the dead owner's ack/renew/release/split change nothing."""
    ids = sp.append_many([f"e{i}" for i in range(10)])
    proc, key, owner, _ = run_claimer(db_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    batch = sp.claim(100, lease=LEASE)
    assert batch is not None and batch.key == key
    records = tuple(Record(i, b"e%d" % n) for n, i in enumerate(ids))
    stale = Batch(key, records, owner, None)
    assert sp.ack(stale) == 0
    assert sp.renew(stale, lease=LEASE) is False
    sp.release(stale)
    first, second = sp.split(stale)
    assert sp.ack(first) == 0 and sp.ack(second) == 0
    assert sp.pending_through(ids[-1]) == 10  # nothing was deleted
    assert sp.claim(100, lease=LEASE) is None  # still leased to the new owner, not released
    assert sp.renew(batch, lease=LEASE) and sp.ack(batch) == 10
