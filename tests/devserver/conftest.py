"""Fixtures for the dev-server suite: a running server and a small HTTP helper."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dshelp import HMAC_HEX, Api
from segops.devserver import DevServer


@pytest.fixture
def srv() -> Iterator[DevServer]:
    """A started DevServer with default keys and an HMAC secret."""
    server = DevServer(hmac_secret=HMAC_HEX).start()
    try:
        yield server
    finally:
        server.stop()
        server.close()


@pytest.fixture
def api(srv: DevServer) -> Iterator[Api]:
    """An HTTP helper bound to ``srv``."""
    helper = Api(srv)
    yield helper
    helper.close()
