"""Helpers shared by the SegOpsClient tests (conftest.py puts this folder on sys.path)."""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
import segops
from segops.devserver import DevServer

import spool

SK = "sk_dev_secret"
PK = "pk_dev_public"
REPO_ROOT = Path(segops.__file__).resolve().parents[1]

#: Retries fast enough for a test suite: 3 attempts, 1.5 s per cycle, 50-200 ms waits.
FAST = segops.RetryPolicy(attempts=3, timeout=1.5, wait_initial=0.05, wait_max=0.2)


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ingestion(server: DevServer) -> List[Any]:
    """Recorded requests to the two ingestion endpoints, oldest first."""
    return [r for r in server.requests if r.path.startswith("/api/ingestion/")]


def payload_ids(server: DevServer, key: str = "i") -> List[Any]:
    """The ``payload[key]`` of every stored event, in storage order."""
    return [e["payload"].get(key) for e in server.events()]


class ErrorLog:
    """An ``on_error`` callback that records what it gets (thread-safe)."""

    def __init__(self) -> None:
        self.items: List[BaseException] = []
        self._lock = threading.Lock()

    def __call__(self, exc: BaseException) -> None:
        with self._lock:
            self.items.append(exc)

    def of(self, cls: type) -> List[BaseException]:
        with self._lock:
            return [e for e in self.items if isinstance(e, cls)]


def child_env(**extra: str) -> Dict[str, str]:
    """Environment for a child interpreter that imports this checkout's segops."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def write_script(tmp_path: Path, name: str, source: str) -> Path:
    """Write a dedented child script under tmp_path."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def start_script(script: Path, *args: str) -> subprocess.Popen[str]:
    """Start a child script with this interpreter and checkout, stdout/stderr piped."""
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
        cwd=str(REPO_ROOT),
    )


def exit_after_tracking(script: Path, *args: str) -> Tuple[float, int, str]:
    """Run a child script that prints "tracked" and then just ends; returns the seconds its
    exit took after that line, its exit code and its stderr (killed after 20 s)."""
    proc = start_script(script, *args)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "tracked"
        started = time.monotonic()
        proc.wait(timeout=20)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return elapsed, proc.returncode, proc.stderr.read() if proc.stderr else ""


def lease_left(path: Path) -> Optional[float]:
    """Seconds left on the lease of the batch being sent, read from the spool file itself."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        row = db.execute(
            "SELECT max(until) FROM batches WHERE status = ?", (int(spool.Status.LEASED),)
        ).fetchone()
    return None if row[0] is None else float(row[0]) - time.time()


def run_script(
    script: Path, *args: str, timeout: float = 30.0, env: Optional[Dict[str, str]] = None
) -> subprocess.CompletedProcess[str]:
    """Run a child script to completion with this interpreter."""
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or child_env(),
        cwd=str(REPO_ROOT),
    )
