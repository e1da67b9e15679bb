"""Helpers for the framework suite: the docs' own snippets, and real servers run as children.

The apps under test are built from the ``python`` blocks of ``docs/frameworks.md``, unchanged,
so a recipe that stops working fails here.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import httpx
import pytest
import segops

REPO_ROOT = Path(segops.__file__).resolve().parents[1]
FRAMEWORKS_DOC = REPO_ROOT / "docs" / "frameworks.md"


def doc_blocks(heading: str) -> List[str]:
    """The ``python`` code blocks of one ``## heading`` section of docs/frameworks.md."""
    text = FRAMEWORKS_DOC.read_text(encoding="utf-8")
    sections = re.split(r"^## ", text, flags=re.MULTILINE)
    section = next(s for s in sections if s.startswith(heading))
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def app_env(url: str, spool_dir: Path, key: str = "sk_dev_secret") -> Dict[str, str]:
    """The environment the docs' snippets read, plus this checkout on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.update(
        SEGOPS_API_URL=url,
        SEGOPS_SECRET_KEY=key,
        SEGOPS_SPOOL_DIR=str(spool_dir),
        PYTHONUNBUFFERED="1",
    )
    return env


class AppServer:
    """A framework's server (gunicorn, uvicorn) running our app as a child process."""

    def __init__(
        self,
        argv: List[str],
        cwd: Path,
        env: Dict[str, str],
        port: int,
        program: Optional[str] = None,
    ) -> None:
        """Run ``python -m <argv>``, or ``program <argv>`` when given."""
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log = cwd / f"server-{port}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [program, *argv] if program else [sys.executable, "-m", *argv],
                cwd=str(cwd),
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a stray worker can be killed with the group
            )

    def __enter__(self) -> AppServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the port answers HTTP (any status)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited early ({self.proc.returncode}):\n{self.output()}")
            try:
                httpx.get(self.base + "/", timeout=1.0)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        pytest.fail(f"server not ready within {timeout}s:\n{self.output()}")

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(self.base + path, timeout=10.0, **kwargs)

    def stop(self, timeout: float = 30.0) -> float:
        """SIGTERM (a graceful stop in both servers); seconds until the process ended."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"server still running {timeout}s after SIGTERM:\n{self.output()}")
        return time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL the whole process group: the server and any worker it left behind."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` until truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"{what}: not within {timeout}s")
        time.sleep(0.05)


def stored_counts(
    events: List[Dict[str, Any]], field: Callable[[Dict[str, Any]], Any]
) -> Dict[Any, int]:
    """How many times each value of ``field`` was stored."""
    counts: Dict[Any, int] = {}
    for event in events:
        key = field(event)
        counts[key] = counts.get(key, 0) + 1
    return counts
