"""Fixtures for the SegOpsClient suite: a real DevServer on 127.0.0.1, spools under tmp_path,
fast retry policies and test-friendly client defaults."""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import segops
from _support import FAST, SK, ErrorLog
from segops.devserver import DevServer


@pytest.fixture
def server() -> Iterator[DevServer]:
    """A running DevServer on an ephemeral 127.0.0.1 port."""
    srv = DevServer()
    srv.start()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def spool_file(tmp_path: Path) -> Path:
    """The spool every test client uses unless told otherwise."""
    return tmp_path / "s.sqlite3"


@pytest.fixture
def errors() -> ErrorLog:
    """Collects what the client hands to on_error."""
    return ErrorLog()


@pytest.fixture
def make_client(
    server: DevServer, spool_file: Path
) -> Iterator[Callable[..., segops.SegOpsClient]]:
    """Build clients against ``server`` with test-friendly settings; all shut down at teardown.

    Defaults keep the background flusher idle (long interval, huge batch_size) so a test
    decides when delivery happens; override them to exercise the flusher. ``settle=False``
    skips the short pause that lets the flusher's start-up cycle pass.
    """
    clients: List[segops.SegOpsClient] = []

    def make(
        url: Optional[str] = None, key: str = SK, *, settle: bool = True, **kwargs: Any
    ) -> segops.SegOpsClient:
        kwargs.setdefault("spool_path", spool_file)
        kwargs.setdefault("flush_interval", 60.0)
        kwargs.setdefault("batch_size", 1_000_000)
        kwargs.setdefault("timeout", 2.0)
        kwargs.setdefault("retry_policy", FAST)
        client = segops.SegOpsClient(url or server.url, key, **kwargs)
        clients.append(client)
        if settle:  # let the flusher's first (empty) cycle pass before the test tracks
            time.sleep(0.05)
        return client

    yield make
    for client in clients:
        with contextlib.suppress(segops.SegOpsError):
            client.shutdown(timeout=1.0)


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A URL whose socket accepts TCP connections (into the backlog) but never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()
