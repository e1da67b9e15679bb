"""The WSGI recipe of docs/frameworks.md under a real gunicorn with --preload.

The client is created in the master (preload) and inherited by every worker gunicorn forks,
including the ones it forks later to replace recycled (--max-requests) or killed workers.
"""

from __future__ import annotations

import os
import signal
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import httpx
import pytest
from _apps import AppServer, app_env, doc_blocks, free_port, stored_counts
from segops.devserver import DevServer

pytest.importorskip("gunicorn")
pytest.importorskip("flask")

REQUESTS = 60
MAX_REQUESTS = 10  # each worker is recycled after 10 requests: >= 6 workers serve the run

FLASK_APP = """
import os

from flask import Flask

app = Flask(__name__)
MASTER = os.getpid()  # preload: this module is imported once, in the master


@app.post("/hit/<int:i>")
def hit(i):
    client.track(user_id=f"u{i}", event_type="hit", payload={"i": i, "pid": os.getpid()})
    return {"pid": os.getpid(), "master": MASTER}
"""


def write_app(tmp_path: Path) -> None:
    """app.py: the docs' WSGI snippets verbatim, then a Flask app that tracks per request."""
    create, close_at_exit = doc_blocks("Django / Flask / any WSGI app")
    source = "\n".join([create, close_at_exit, textwrap.dedent(FLASK_APP)])
    (tmp_path / "app.py").write_text(source, encoding="utf-8")


@pytest.fixture
def gunicorn(tmp_path: Path, server: DevServer, spool_dir: Path) -> Iterator[AppServer]:
    """gunicorn --preload, 2 sync workers recycled every MAX_REQUESTS requests."""
    write_app(tmp_path)
    port = free_port()
    argv = [
        "gunicorn", "--preload", "--workers", "2", "--max-requests", str(MAX_REQUESTS),
        "--graceful-timeout", "20", "--bind", f"127.0.0.1:{port}", "app:app",
    ]  # fmt: skip
    app = AppServer(argv, tmp_path, app_env(server.url, spool_dir), port)
    try:
        app.wait_ready()
        yield app
    finally:
        app.kill()


def hit(app: AppServer, i: int) -> Optional[Dict[str, int]]:
    """One request; the worker's answer, or None if the request failed (no ack)."""
    try:
        response = app.post(f"/hit/{i}")
    except httpx.TransportError:
        return None
    return response.json() if response.status_code == 200 else None


def hit_all(app: AppServer, ids: List[int]) -> Dict[int, Dict[str, int]]:
    """Send the requests from 4 threads; the acknowledged ones by id."""
    with ThreadPoolExecutor(4) as pool:
        answers = dict(zip(ids, pool.map(lambda i: hit(app, i), ids)))
    return {i: a for i, a in answers.items() if a is not None}


def test_preloaded_client_delivers_every_event_once(gunicorn: AppServer, server: DevServer) -> None:
    """Every request's event reaches the server exactly once, from workers forked off the
    master's client at different times, with no replay after the graceful stop."""
    acked = hit_all(gunicorn, list(range(REQUESTS)))
    assert len(acked) == REQUESTS
    pids = {a["pid"] for a in acked.values()}
    master = {a["master"] for a in acked.values()}
    assert master == {gunicorn.proc.pid}
    assert gunicorn.proc.pid not in pids
    assert len(pids) >= REQUESTS // MAX_REQUESTS  # recycled workers: later forks served too

    assert gunicorn.stop() < 25
    assert gunicorn.proc.returncode == 0, gunicorn.output()
    counts = stored_counts(server.events(), lambda e: e["payload"]["i"])
    assert counts == {i: 1 for i in range(REQUESTS)}
    assert "Traceback" not in gunicorn.output()


def live_workers(master: int) -> List[int]:
    """The master's child processes right now (Linux /proc)."""
    path = Path(f"/proc/{master}/task/{master}/children")
    return [int(pid) for pid in path.read_text().split()]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_sigkilled_worker_loses_nothing_it_acknowledged(
    gunicorn: AppServer, server: DevServer
) -> None:
    """A worker killed with SIGKILL with events it acknowledged still unsent: each of them
    is delivered by the surviving processes, exactly once."""
    first = hit_all(gunicorn, list(range(REQUESTS // 2)))
    alive = live_workers(gunicorn.proc.pid)
    mine = {pid: [i for i, a in first.items() if a["pid"] == pid] for pid in alive}
    victim = max(mine, key=lambda pid: len(mine[pid]))
    os.kill(victim, signal.SIGKILL)
    sent = {e["payload"]["i"] for e in server.events()}
    unsent = set(mine[victim]) - sent
    assert unsent, "the victim had nothing unsent: the kill proves nothing"

    rest = hit_all(gunicorn, list(range(REQUESTS // 2, REQUESTS)))
    acked = set(first) | set(rest)
    assert len(rest) == REQUESTS - REQUESTS // 2  # the kill happened between requests
    assert gunicorn.stop() < 25
    counts = stored_counts(server.events(), lambda e: e["payload"]["i"])
    assert {i: counts.get(i, 0) for i in acked} == {i: 1 for i in acked}
