"""The WSGI recipe of docs/frameworks.md under a real gunicorn with --preload, in a Flask app
and in a one-file Django project.

The client is created in the master (preload) and inherited by every worker gunicorn forks,
including the ones it forks later to replace recycled (--max-requests) or killed workers.
Django imports the URLconf lazily, on a worker's first request; the views live in the same
module, so that import finds it loaded already.
"""

from __future__ import annotations

import os
import signal
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set

import httpx
import pytest
from _apps import AppServer, app_env, doc_blocks, free_port, stored_counts, wait_for
from segops.devserver import DevServer

pytest.importorskip("gunicorn")

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")

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


DJANGO_APP = """
import os

from django.conf import settings
from django.http import JsonResponse
from django.urls import path

MASTER = os.getpid()  # preload: this module is imported once, in the master

settings.configure(
    DEBUG=False,
    SECRET_KEY="not-a-secret",
    ALLOWED_HOSTS=["127.0.0.1"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[],  # no CSRF middleware: the test POSTs without a token
    INSTALLED_APPS=[],
    DATABASES={},
    USE_TZ=True,
)


def hit(request, i):
    client.track(user_id=f"u{i}", event_type="hit", payload={"i": i, "pid": os.getpid()})
    return JsonResponse({"pid": os.getpid(), "master": MASTER})


def index(request):
    return JsonResponse({"ready": True})


urlpatterns = [path("", index), path("hit/<int:i>", hit)]

from django.core.wsgi import get_wsgi_application

app = get_wsgi_application()
"""


APPS = {"flask": FLASK_APP, "django": DJANGO_APP}


def write_app(tmp_path: Path, framework: str) -> None:
    """app.py: the docs' WSGI snippets verbatim, then an app that tracks per request."""
    create, close_at_exit = doc_blocks("Django / Flask / any WSGI app")
    source = "\n".join([create, close_at_exit, textwrap.dedent(APPS[framework])])
    (tmp_path / "app.py").write_text(source, encoding="utf-8")


@pytest.fixture(
    params=[("flask", "sync"), ("flask", "gthread"), ("flask", "gevent"), ("django", "sync")],
    ids="-".join,
)
def gunicorn(
    request: pytest.FixtureRequest, tmp_path: Path, server: DevServer, spool_dir: Path
) -> Iterator[AppServer]:
    """gunicorn --preload, 2 workers of each class recycled every MAX_REQUESTS requests.

    The gevent worker monkey-patches after the fork, long after the master made the client
    (no early patching in a config file): the client must cope with that."""
    framework, worker_class = request.param
    pytest.importorskip(framework)
    if worker_class == "gevent":
        pytest.importorskip("gevent")
    write_app(tmp_path, framework)
    port = free_port()
    argv = [
        "gunicorn", "--preload", "--workers", "2", "--worker-class", worker_class,
        "--max-requests", str(MAX_REQUESTS),
        "--graceful-timeout", "20", "--bind", f"127.0.0.1:{port}", "app:app",
    ]  # fmt: skip
    with AppServer(argv, tmp_path, app_env(server.url, spool_dir), port) as app:
        app.wait_ready()
        yield app


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
    assert len(pids) > 2  # recycled workers: workers forked later served too

    assert stop_when_booted(gunicorn) < 15
    assert gunicorn.proc.returncode == 0, gunicorn.output()
    counts = stored_counts(server.events(), lambda e: e["payload"]["i"])
    assert counts == {i: 1 for i in range(REQUESTS)}
    assert "Traceback" not in gunicorn.output()


def live_workers(master: int) -> List[int]:
    """The master's child processes right now (Linux /proc)."""
    path = Path(f"/proc/{master}/task/{master}/children")
    return [int(pid) for pid in path.read_text().split()]


def stop_when_booted(app: AppServer) -> float:
    """SIGTERM once both workers are up; the seconds the stop took.

    A worker still booting when the SIGTERM arrives loses it (gunicorn's own race) and is
    killed only after --graceful-timeout: wait until the workers recycled by the last
    requests have been replaced."""

    def booted() -> bool:
        pids, log = live_workers(app.proc.pid), app.output()
        return len(pids) == 2 and all(
            f"pid: {pid}" in log
            and f"[{pid}] [INFO] Autorestarting" not in log
            and handles_worker_signals(pid)
            for pid in pids
        )

    wait_for(booted, timeout=30, what="both workers booted")
    return app.stop()


def handles_worker_signals(pid: int) -> bool:
    """True once gunicorn's worker ``pid`` has set its own signal handlers (SIGABRT caught,
    the master's SIGHUP no longer): "Booting worker" is logged before that, and a gevent
    worker then monkey-patches first, which took over 0.5 s on a loaded machine."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(
        (int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigCgt:")),
        0,
    )
    return bool(caught >> (signal.SIGABRT - 1) & 1) and not caught >> (signal.SIGHUP - 1) & 1


def kill_a_worker_holding_unsent_events(
    app: AppServer, server: DevServer, acked: Dict[int, Dict[str, int]]
) -> Set[int]:
    """Track in rounds of requests until a live worker has acknowledged events the server
    has not got yet, then SIGKILL it; the ids it held unsent."""
    for start in range(0, REQUESTS // 2, 6):
        acked.update(hit_all(app, list(range(start, start + 6))))
        sent = {e["payload"]["i"] for e in server.events()}
        held = {
            pid: {i for i, a in acked.items() if a["pid"] == pid and i not in sent}
            for pid in live_workers(app.proc.pid)
        }
        victim = max(held, key=lambda pid: len(held[pid]), default=None)
        if victim is not None and held[victim]:
            os.kill(victim, signal.SIGKILL)
            return held[victim]
    pytest.fail("no live worker ever held unsent events: the kill would prove nothing")


def test_sigkilled_worker_loses_nothing_it_acknowledged(
    gunicorn: AppServer, server: DevServer
) -> None:
    """A worker killed with SIGKILL with events it acknowledged still unsent: each of them
    is delivered by the surviving processes, exactly once."""
    acked: Dict[int, Dict[str, int]] = {}
    orphaned = kill_a_worker_holding_unsent_events(gunicorn, server, acked)
    before = len(acked)
    acked.update(hit_all(gunicorn, list(range(REQUESTS // 2, REQUESTS))))
    assert len(acked) - before == REQUESTS - REQUESTS // 2  # the kill was between requests
    assert stop_when_booted(gunicorn) < 15
    counts = stored_counts(server.events(), lambda e: e["payload"]["i"])
    assert orphaned <= set(counts)
    assert {i: counts.get(i, 0) for i in acked} == {i: 1 for i in acked}
