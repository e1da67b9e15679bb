"""A real Celery worker (prefork pool, billiard) tracking through one SegOpsClient.

Proves the "Celery (prefork)" section of docs/frameworks.md: the client is created when the
worker's MainProcess imports the app module, before billiard forks its children; children
that billiard recycles end with ``os._exit`` (no atexit, no flush: billiard's parent sends
them SIGTERM as soon as they report their exit, and the SystemExit lands in a ``finally``
that calls ``os._exit``), and a child killed with SIGKILL loses nothing ``track()``
acknowledged: the parent (or the other child) delivers what is left, and a batch a dead
child was sending is taken over at once, not after its 35 s lease. No ``segops replay`` and
no extra client are involved.

The broker is kombu's ``filesystem://`` transport under tmp_path; no result backend.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
import segops
from segops.devserver import DevServer

import spool

celery = pytest.importorskip("celery")

REPO_ROOT = Path(segops.__file__).resolve().parents[1]
APP_MODULE = "celery_it_app"
TASK_NAME = "it.track_one"
EVENT_TYPE = "celery_task"
#: The longest any single wait may take before the test fails (never hang).
WAIT = 15.0

APP_SOURCE = '''
"""Celery app for tests/frameworks/test_celery.py: one SegOpsClient, made at import."""

import os
import time

from celery import Celery

import segops

NOTES = os.environ["IT_NOTES"]
BROKER = os.environ["IT_BROKER"]


def note(line):
    """Append one line (O_APPEND: lines of concurrent processes never interleave)."""
    fd = os.open(NOTES, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\\n").encode())
    finally:
        os.close(fd)


# At import, in the worker's MainProcess: billiard forks the pool children later.
client = segops.SegOpsClient(
    os.environ["IT_URL"],
    "sk_dev_secret",
    spool_path=os.environ["IT_SPOOL"],
    flush_interval=float(os.environ["IT_FLUSH_INTERVAL"]),
)
CREATED_IN = os.getpid()
note(f"import {CREATED_IN}")

app = Celery("celery_it_app", broker="filesystem://localhost/")
app.conf.update(
    broker_transport_options={
        "data_folder_in": BROKER,
        "data_folder_out": BROKER,
        "control_folder": os.path.join(BROKER, "control"),
        "polling_interval": 0.05,
    },
    broker_connection_retry_on_startup=True,
    task_ignore_result=True,
    worker_max_tasks_per_child=int(os.environ["IT_MAX_TASKS"]),
    worker_prefetch_multiplier=1,
    worker_enable_remote_control=False,
    # A job whose child was SIGKILLed is given up after this long (default 10 s, which
    # would hold the warm shutdown that long).
    worker_lost_wait=1.0,
    # The logger's name in every line: the test looks for warnings of segops and spool.
    worker_log_format="[%(asctime)s: %(levelname)s/%(processName)s %(name)s] %(message)s",
    worker_task_log_format="[%(asctime)s: %(levelname)s/%(processName)s %(name)s] %(message)s",
)


@app.task(name="it.track_one")
def track_one(i, pause=0.0):
    note(f"start {i} {os.getpid()}")
    client.track(user_id=f"user-{i % 7}", event_type="celery_task", payload={"i": i})
    # Only now is the event acknowledged: track() returned, so it is on disk.
    note(f"done {i} {os.getpid()} {CREATED_IN}")
    if pause:
        time.sleep(pause)
'''


@dataclass
class Notes:
    """What the app module and its tasks wrote to the notes file."""

    imports: List[int]
    started: Dict[int, int]  # i -> pid
    done: Dict[int, Tuple[int, int]]  # i -> (pid, pid the client was created in)


@dataclass
class Worker:
    """A running ``celery worker`` and the files it writes."""

    proc: subprocess.Popen[bytes]
    log: Path
    notes: Path
    spool: Path
    broker: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read_notes(self) -> Notes:
        notes = Notes([], {}, {})
        text = self.notes.read_text() if self.notes.exists() else ""
        for line in text[: text.rfind("\n") + 1].splitlines():  # whole lines only
            fields = line.split()
            if fields[0] == "import":
                notes.imports.append(int(fields[1]))
            elif fields[0] == "start":
                notes.started[int(fields[1])] = int(fields[2])
            elif fields[0] == "done":
                notes.done[int(fields[1])] = (int(fields[2]), int(fields[3]))
        return notes

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def warm_stop(self, timeout: float = WAIT) -> int:
        """SIGTERM (Celery's warm shutdown) and wait for the worker to exit."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"worker still running {timeout}s after SIGTERM:\n{self.log_text()[-4000:]}"
            )


def wait_for(what: str, predicate: Callable[[], Any], worker: Worker, timeout: float = WAIT) -> Any:
    """Poll ``predicate`` until truthy; fail (with the worker's log) after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if worker.proc.poll() is not None:
            pytest.fail(
                f"worker exited ({worker.proc.returncode}) before {what}:\n"
                f"{worker.log_text()[-4000:]}"
            )
        if time.monotonic() >= deadline:
            pytest.fail(f"{what}: not within {timeout}s:\n{worker.log_text()[-4000:]}")
        time.sleep(0.01)


def all_done(worker: Worker, n: int) -> Optional[Notes]:
    """The notes once ``n`` tasks have noted their event tracked, else None."""
    notes = worker.read_notes()
    return notes if len(notes.done) >= n else None


def enqueue(broker: Path, count: int, pause: float = 0.0) -> None:
    """Publish ``count`` track_one tasks on the filesystem broker (from this process)."""
    producer = celery.Celery("it_producer", broker="filesystem://localhost/", set_as_current=False)
    producer.conf.broker_transport_options = {
        "data_folder_in": str(broker),
        "data_folder_out": str(broker),
        "control_folder": str(broker / "control"),
    }
    try:
        for i in range(count):
            producer.send_task(TASK_NAME, args=(i,), kwargs={"pause": pause})
    finally:
        producer.close()


def stored_ids(server: DevServer) -> List[int]:
    """``payload["i"]`` of every event the DevServer stored (duplicates kept)."""
    return [e["payload"]["i"] for e in server.events() if e["event_type"] == EVENT_TYPE]


def assert_each_once(ids: List[int]) -> None:
    """No payload id was stored twice."""
    twice = sorted(i for i, c in collections.Counter(ids).items() if c > 1)
    assert not twice, f"stored more than once: {twice}"


def spool_rows(path: Path) -> int:
    """Live records (pending or leased) still in the spool file."""
    with contextlib.closing(sqlite3.connect(path, timeout=5)) as db:
        return int(db.execute("SELECT count(*) FROM records WHERE data IS NOT NULL").fetchone()[0])


def leases(path: Path) -> List[Tuple[str, int, List[int]]]:
    """(key, owner pid, payload ids) of every batch leased in the spool right now."""
    with contextlib.closing(sqlite3.connect(path, timeout=5)) as db:
        db.execute("BEGIN")  # one snapshot: the batches and their rows together
        held = db.execute(
            "SELECT key, owner, first_id, last_id FROM batches WHERE status = ?",
            (int(spool.Status.LEASED),),
        ).fetchall()
        out = []
        for key, owner, first, last in held:
            rows = db.execute(
                "SELECT data FROM records WHERE id BETWEEN ? AND ? AND data IS NOT NULL",
                (first, last),
            ).fetchall()
            ids = [json.loads(bytes(row[0]))["payload"]["i"] for row in rows]
            # Owner tokens are "<host>:<pid>:<random>.<claim>".
            out.append((str(key), int(str(owner).split(":")[1]), ids))
        return out


def batch_exists(path: Path, key: str) -> bool:
    """Whether the spool still holds the batch ``key`` (leased or released: not acked)."""
    with contextlib.closing(sqlite3.connect(path, timeout=5)) as db:
        return db.execute("SELECT 1 FROM batches WHERE key = ?", (key,)).fetchone() is not None


def complaints(log: str) -> List[str]:
    """What segops and spool logged at WARNING or above in the worker's log, raw lines of
    theirs (logged after Celery's handlers were gone) and traceback frames in their code.
    Celery's own lines about a killed child are expected and not listed."""
    ours = (f"{REPO_ROOT}{os.sep}segops{os.sep}", f"{REPO_ROOT}{os.sep}spool{os.sep}")
    bad = []
    for line in log.splitlines():
        head = line.split("] ", 1)[0].split() if line.startswith("[") else []
        if len(head) >= 4:  # "[date time: LEVEL/process logger] message"
            level, logger = head[2].split("/", 1)[0], head[3]
            if logger.startswith(("segops", "spool")) and level not in ("DEBUG", "INFO"):
                bad.append(line)
        elif line.startswith(("segops:", "spool:")) or any(path in line for path in ours):
            bad.append(line)
    return bad


def is_gone(pid: int) -> bool:
    """True once ``pid`` runs no more code (exited; an unreaped zombie counts)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


@pytest.fixture
def start_worker(tmp_path: Path, server: DevServer) -> Iterator[Callable[..., Worker]]:
    """Start ``celery worker --pool=prefork --concurrency=2`` on an app module in tmp_path;
    its whole process group (MainProcess and pool children) is SIGKILLed at teardown."""
    (tmp_path / f"{APP_MODULE}.py").write_text(textwrap.dedent(APP_SOURCE).lstrip())
    broker = tmp_path / "broker"
    (broker / "control").mkdir(parents=True)
    procs: List[subprocess.Popen[bytes]] = []

    def start(max_tasks_per_child: int, flush_interval: float = 5.0) -> Worker:
        log, notes, spool_file = (tmp_path / name for name in ("worker.log", "notes.txt", "s.db"))
        env = dict(os.environ)
        env.update(
            PYTHONPATH=os.pathsep.join(
                p for p in (str(tmp_path), str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
            ),
            PYTHONUNBUFFERED="1",
            IT_URL=server.url,
            IT_SPOOL=str(spool_file),
            IT_NOTES=str(notes),
            IT_BROKER=str(broker),
            IT_MAX_TASKS=str(max_tasks_per_child),
            IT_FLUSH_INTERVAL=str(flush_interval),
        )
        command = [sys.executable, "-m", "celery", "-A", APP_MODULE, "worker"]
        command += ["--pool=prefork", "--concurrency=2", "--loglevel=INFO", "-n", "it@%h"]
        command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=str(tmp_path),
                env=env,
                start_new_session=True,  # a process group of its own, children included
            )
        procs.append(proc)
        return Worker(proc, log, notes, spool_file, broker)

    try:
        yield start
    finally:
        for proc in procs:
            # Only while the MainProcess is unreaped is its pid (the group's id) surely ours;
            # once it has exited, Celery's children are gone too (they die with it: pdeathsig).
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)


def test_recycled_children_lose_nothing(server: DevServer, start_worker: Callable[..., Worker]):
    """Children recycled every 3 tasks (billiard's os._exit) lose no event, send none twice."""
    n = 60
    # Requests in flight for a while: a recycled child is often cut mid-send (billiard ends
    # it within milliseconds of its last task), and its batch is taken over and resent.
    server.latency_ms = 50
    worker = start_worker(max_tasks_per_child=3)
    enqueue(worker.broker, n)
    notes = wait_for("every task ran", lambda: all_done(worker, n), worker)

    # The client was made once, in the MainProcess, and every task ran in a forked child on
    # that inherited client; billiard recycled the children.
    assert notes.imports == [worker.pid]
    child_pids = {pid for pid, _ in notes.done.values()}
    assert {created for _, created in notes.done.values()} == {worker.pid}
    assert worker.pid not in child_pids
    assert len(child_pids) >= n // 3

    # Stopped at once: what the children left in the spool is delivered by the parent, with
    # no flush() in the tasks, no segops replay and no extra client.
    assert worker.warm_stop() == 0
    ids = stored_ids(server)
    assert_each_once(ids)
    assert sorted(ids) == list(range(n))
    assert spool_rows(worker.spool) == 0
    assert complaints(worker.log_text()) == []
    # A child's flusher starts idle, so short-lived children rarely send and are not cut
    # off mid-request (a pass at start-up made 7-9 repeats of ~20 requests per run).
    assert server.stats()["duplicates_dropped"] == 0


def test_sigkilled_child_loses_nothing_acknowledged(
    server: DevServer, start_worker: Callable[..., Worker]
):
    """A child SIGKILLed mid-send loses no acknowledged event; its batch is taken over at once."""
    n = 60
    server.latency_ms = 300  # every request stays in flight long enough to be cut
    # No recycling: only the kill ends a child. Children send often (0.2 s), so one is
    # caught mid-send.
    worker = start_worker(max_tasks_per_child=1000, flush_interval=0.2)
    enqueue(worker.broker, n, pause=0.05)
    wait_for("a third of the tasks done", lambda: len(worker.read_notes().done) >= n // 3, worker)

    def held_by_child() -> Optional[Tuple[str, int, List[int]]]:
        held = leases(worker.spool)
        return next((b for b in held if b[1] != worker.pid and b[2] and not is_gone(b[1])), None)

    for _ in range(3):  # a child may ack in the instant between our look and the kill
        key, victim, orphaned_ids = wait_for("a child sending a batch", held_by_child, worker)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(f"pid {victim} to die", lambda: is_gone(victim), worker, timeout=5)  # noqa: B023
        # Only the owner of a lease acks its batch: still there, it was cut mid-send.
        if batch_exists(worker.spool, key):
            break
    else:
        pytest.fail("three children acked their batch before the SIGKILL landed")

    # The lease runs 35 s (retry budget 20 s + timeout 10 s + 5 s); the parent or the other
    # child sees that the owner's pid is gone, takes the batch over and acks it at once.
    wait_for(
        "the dead child's batch delivered", lambda: not batch_exists(worker.spool, key), worker
    )
    assert time.monotonic() - killed_at < 5.0
    sends = [r for r in server.requests if r.headers.get("idempotency-key") == key]
    assert sends and all(r.status == 200 for r in sends)  # a repeat is answered as replayed

    def settled() -> Optional[Notes]:
        """The notes once every task ran, but the one the kill cut short."""
        notes = worker.read_notes()
        unfinished = [i for i in notes.started if i not in notes.done]
        if any(notes.started[i] != victim for i in unfinished):
            return None
        if len(notes.started) == n:
            return notes
        # The kill may also have cost a task handed to the victim that it never started.
        lost = f"pid:{victim} exited with 'signal 9 (SIGKILL)'" in worker.log_text()
        return notes if lost and len(notes.started) == n - 1 else None

    notes = wait_for("every surviving task ran", settled, worker)
    acknowledged = set(notes.done)
    assert len(acknowledged) >= n - 2
    wanted = acknowledged | set(orphaned_ids)
    wait_for("every acknowledged event stored", lambda: wanted <= set(stored_ids(server)), worker)
    assert worker.warm_stop() == 0

    ids = stored_ids(server)
    assert_each_once(ids)
    assert wanted <= set(ids) <= set(range(n))
    assert spool_rows(worker.spool) == 0  # even an event tracked but not yet noted went out
    assert complaints(worker.log_text()) == []
