"""Fixtures for the framework suite: a real DevServer on a fixed 127.0.0.1 port."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _apps import free_port
from segops.devserver import DevServer


@pytest.fixture
def server() -> Iterator[DevServer]:
    """A DevServer on a port chosen up front, so a stop/start keeps the URL (and the spool)."""
    srv = DevServer(port=free_port())
    srv.start()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    """$SEGOPS_SPOOL_DIR for the app: the docs' snippets never pass spool_path."""
    return tmp_path / "spools"
