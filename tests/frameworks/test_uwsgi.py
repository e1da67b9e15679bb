"""A Flask app under a real uWSGI master with two workers, with the options the docs name.

uWSGI loads the app in its master and forks the workers itself, without Python's fork
hooks unless ``py-call-uwsgi-fork-hooks``; each worker must still open its own SQLite
connections and run its own flusher.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Callable, Iterator, Tuple

import httpx
import pytest
import segops
from _apps import AppServer, app_env, free_port, stored_counts, wait_for
from segops.devserver import DevServer

pytest.importorskip("flask")
UWSGI = shutil.which("uwsgi", path=str(Path(sys.executable).parent))
pytestmark = pytest.mark.skipif(UWSGI is None, reason="uwsgi is not installed in this venv")

APP = """
import os

import segops
from flask import Flask

# The master loads this module; uWSGI forks the workers afterwards. The master's flusher
# runs rarely (30 s), so what arrives sooner was sent by the worker's own flusher.
client = segops.SegOpsClient(
    os.environ["SEGOPS_API_URL"], os.environ["SEGOPS_SECRET_KEY"],
    flush_interval=30.0, batch_size=10,
)
if os.environ.get("IMPORT_UWSGIDECORATORS"):  # it replaces uwsgi.post_fork_hook on import
    import uwsgidecorators  # noqa: F401
app = Flask(__name__)


@app.post("/hit/<int:i>")
def hit(i):
    client.track(user_id=f"u{i}", event_type="hit", payload={"i": i})
    return {"pid": os.getpid()}


@app.get("/pids")
def pids():  # the process this worker is, and the one its spool believes it is in
    return {"pid": os.getpid(), "spool_owner_pid": client._spool.pid}
"""


@pytest.fixture
def start_uwsgi(
    tmp_path: Path, server: DevServer, spool_dir: Path
) -> Iterator[Callable[..., AppServer]]:
    """Start ``uwsgi --master`` (preforked workers, no fork-hook option) on app.py."""
    (tmp_path / "app.py").write_text(textwrap.dedent(APP), encoding="utf-8")
    started = contextlib.ExitStack()

    def start(*options: str, ready: bool = True, **env: str) -> AppServer:
        port = free_port()
        argv = [
            "--master", "--processes", "2", "--http-socket", f"127.0.0.1:{port}",
            "--wsgi-file", "app.py", "--callable", "app", "--die-on-term", *options,
        ]  # fmt: skip
        app_vars = {**app_env(server.url, spool_dir), **env}
        app = started.enter_context(AppServer(argv, tmp_path, app_vars, port, program=UWSGI))
        if ready:
            app.wait_ready()
        return app

    with started:
        yield start


@pytest.mark.parametrize(
    "options",
    [
        ("--enable-threads",),
        ("--enable-threads", "+uwsgidecorators"),
        ("--enable-threads", "--py-call-uwsgi-fork-hooks"),
        ("--enable-threads", "--lazy-apps"),
    ],
    ids=["no-fork-hooks", "no-fork-hooks-uwsgidecorators", "fork-hooks", "lazy-apps"],
)
def test_documented_options_deliver_every_event_once(
    start_uwsgi: Callable[..., AppServer], server: DevServer, options: Tuple[str, ...]
) -> None:
    """With threads enabled, fork hooks or not, each worker's spool knows its own pid,
    its flusher sends within a second or so of batch_size events, the stop loses nothing,
    and the client has nothing to warn about."""
    env = {"IMPORT_UWSGIDECORATORS": "1"} if "+uwsgidecorators" in options else {}
    app = start_uwsgi(*(o for o in options if not o.startswith("+")), **env)
    ids = list(range(40))
    for i in ids:
        assert app.post(f"/hit/{i}").status_code == 200
    for _ in range(6):  # after a track(): with uwsgidecorators that is when the reset runs
        answer = httpx.get(app.base + "/pids", timeout=10).json()
        assert answer["spool_owner_pid"] == answer["pid"] != app.proc.pid
    wait_for(lambda: len(server.events()) >= 30, timeout=3.0, what="the workers' flushers sent")
    app.stop()
    assert stored_counts(server.events(), lambda e: e["payload"]["i"]) == {i: 1 for i in ids}
    assert "segops" not in app.output()


def test_without_enable_threads_still_delivers(
    start_uwsgi: Callable[..., AppServer], server: DevServer
) -> None:
    """uWSGI's defaults (no enable-threads: uWSGI 2.0.31 with Python 3 runs threads anyway):
    requests are answered and the workers deliver while they run."""
    app = start_uwsgi()
    for i in range(40):
        assert app.post(f"/hit/{i}").status_code == 200
    wait_for(lambda: len(server.events()) >= 30, timeout=5.0, what="the workers delivered")
    app.stop()
    assert stored_counts(server.events(), lambda e: e["payload"]["i"]) == {i: 1 for i in range(40)}
    assert "segops" not in app.output()


def test_backlog_of_a_previous_run_is_sent_at_start(
    start_uwsgi: Callable[..., AppServer],
    server: DevServer,
    spool_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Events a previous run left in the spool go out soon after uWSGI starts, with no new
    track(): the master runs no flusher, so the workers' first pass is not deferred."""
    monkeypatch.setenv("SEGOPS_SPOOL_DIR", str(spool_dir))
    left = segops.SegOpsClient(server.url, "sk_dev_secret", background=False)
    for i in range(50):
        left.track(user_id="u", event_type="left", payload={"i": i})
    left._spool.close()  # as a crash would leave it: spooled, never sent
    start_uwsgi("--enable-threads")
    wait_for(lambda: len(server.events()) == 50, timeout=8.0, what="the backlog sent")
    assert stored_counts(server.events(), lambda e: e["payload"]["i"]) == {i: 1 for i in range(50)}
