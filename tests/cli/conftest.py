"""Fixtures for the CLI suite: a real dev server on 127.0.0.1, a clean environment, and
runners that start ``python -m segops`` as real subprocesses."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Dict

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from clihelp import REPO, SECRET, Runner, make_runner
from segops.devserver import DevServer


@pytest.fixture
def server() -> Iterator[DevServer]:
    """A started DevServer on 127.0.0.1 that accepts ``SECRET``."""
    srv = DevServer(host="127.0.0.1", port=0, secret_key=SECRET).start()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    """The SEGOPS_SPOOL_DIR of every run (never the user's real cache)."""
    return tmp_path / "spools"


@pytest.fixture
def base_env(spool_dir: Path) -> Dict[str, str]:
    """The environment without any SEGOPS_* settings except the spool dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGOPS_")}
    env["SEGOPS_SPOOL_DIR"] = str(spool_dir)
    env["PYTHONPATH"] = str(REPO)
    return env


@pytest.fixture
def env(base_env: Dict[str, str], server: DevServer) -> Dict[str, str]:
    """``base_env`` configured for ``server`` through SEGOPS_API_URL / SEGOPS_API_KEY."""
    return {**base_env, "SEGOPS_API_URL": server.url, "SEGOPS_API_KEY": SECRET}


@pytest.fixture
def cli(env: Dict[str, str]) -> Runner:
    """Run ``python -m segops ARGS`` in a subprocess with ``env``; returns a Result."""
    return make_runner(env)


@pytest.fixture
def bare_cli(base_env: Dict[str, str]) -> Runner:
    """Like ``cli`` but with no URL/key in the environment."""
    return make_runner(base_env)


def pytest_configure(config: pytest.Config) -> None:
    """Register the `demo` mark (the end-to-end demo run; part of the normal suite)."""
    config.addinivalue_line("markers", "demo: runs `segops demo` end to end (~10 s)")
