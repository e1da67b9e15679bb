"""The FastAPI recipe of docs/frameworks.md, verbatim, under a real uvicorn."""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest
import segops
from _apps import AppServer, app_env, doc_blocks, free_port, stored_counts
from segops.devserver import DevServer

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

USERS = [f"u{i}" for i in range(40)]


@pytest.fixture
def uvicorn(tmp_path: Path, server: DevServer, spool_dir: Path) -> Iterator[AppServer]:
    """uvicorn serving the docs' FastAPI snippet (app.py) on 127.0.0.1."""
    (snippet,) = doc_blocks("FastAPI / Starlette (async)")
    (tmp_path / "app.py").write_text(snippet, encoding="utf-8")
    port = free_port()
    argv = ["uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(port)]
    with AppServer(argv, tmp_path, app_env(server.url, spool_dir), port) as app:
        app.wait_ready()
        yield app


def sign_up_all(app: AppServer) -> None:
    """POST /signup for every user, 4 at a time; each must be answered 200."""
    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda u: app.post("/signup", params={"user_id": u}), USERS))
    assert [r.status_code for r in codes] == [200] * len(USERS)


def test_lifespan_shutdown_delivers_every_signup(uvicorn: AppServer, server: DevServer) -> None:
    """Every signup tracked by the async handler is stored once after a SIGTERM stop."""
    sign_up_all(uvicorn)
    assert uvicorn.stop() < 10
    # uvicorn >= 0.29 re-raises the signal it caught once the app has shut down
    assert uvicorn.proc.returncode in (0, -signal.SIGTERM), uvicorn.output()
    assert "Waiting for application shutdown" in uvicorn.output()  # the lifespan ran
    assert stored_counts(server.events(), lambda e: e["user_id"]) == {u: 1 for u in USERS}


def test_stop_with_server_down_is_bounded_and_keeps_events(
    uvicorn: AppServer, server: DevServer, spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the ingestion server down, the stop takes about the recipe's 3 s bound, and the
    next client on the same spool delivers every signup."""
    sign_up_all(uvicorn)
    server.stop()
    assert uvicorn.stop() < 8  # shutdown(timeout=3) plus the process's own teardown
    assert "Traceback" not in uvicorn.output()
    server.start()  # same port: same URL and key, so the same default spool file
    before = len(server.events())
    assert before < len(USERS), "everything was sent before the outage: nothing to prove"
    monkeypatch.setenv("SEGOPS_SPOOL_DIR", str(spool_dir))
    with segops.SegOpsClient(server.url, "sk_dev_secret") as client:
        client.flush(timeout=10)
    assert stored_counts(server.events(), lambda e: e["user_id"]) == {u: 1 for u in USERS}
