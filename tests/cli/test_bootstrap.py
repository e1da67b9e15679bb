"""scripts/_bootstrap.sh: one bootstrap at a time per checkout."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A checkout whose .venv is this test run's own, installed for this pyproject.toml."""
    venv = Path(sys.prefix)
    stamp = venv / ".segops-installed-dev"
    if not stamp.is_file():
        pytest.skip("needs the .venv that scripts/test made")
    # Installed for another pyproject.toml, the bootstrap under test would pip-install into
    # this very venv (it is linked, not copied): only a ready one is lent.
    if (
        stamp.read_text().strip()
        != hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    ):
        pytest.skip("the .venv was installed for another pyproject.toml: run scripts/test")
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "_bootstrap.sh", tmp_path / "scripts")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / ".venv").symlink_to(venv)
    return tmp_path


@pytest.fixture
def held_lock(checkout: Path) -> Iterator[int]:
    """The bootstrap lock of ``checkout``, held by this test until it closes the fd."""
    fd = os.open(checkout / ".segops-bootstrap.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield fd
    finally:
        os.close(fd)


def _bootstrap(checkout: Path) -> subprocess.Popen[str]:
    script = 'source scripts/_bootstrap.sh; echo "ready"; ls -l /proc/$$/fd 2>/dev/null'
    env = dict(os.environ, BOOTSTRAP_EXTRAS="", PYTHON=sys.executable)
    return subprocess.Popen(
        ["bash", "-c", script],
        cwd=checkout,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_second_bootstrap_waits_for_the_first(checkout: Path, held_lock: int) -> None:
    """While another bootstrap holds the lock, this one says so and waits, then goes on."""
    proc = _bootstrap(checkout)
    time.sleep(1.0)
    assert proc.poll() is None, proc.communicate()
    fcntl.flock(held_lock, fcntl.LOCK_UN)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "another bootstrap of this checkout is running" in err
    assert out.splitlines()[0] == "ready"
    assert ".segops-bootstrap.lock" not in out  # released before the demo or tests run


def test_an_uncontended_bootstrap_does_not_wait(checkout: Path) -> None:
    """With nobody else bootstrapping, it runs through without a word about waiting."""
    proc = _bootstrap(checkout)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "waiting" not in err
    assert out.splitlines()[0] == "ready"


def test_a_missing_python_is_named(checkout: Path) -> None:
    """PYTHON naming no program fails with a message that names it, not a shell error."""
    env = dict(os.environ, BOOTSTRAP_EXTRAS="", PYTHON="no-such-python3")
    proc = subprocess.run(
        ["bash", "-c", "source scripts/_bootstrap.sh"],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "no no-such-python3 found" in proc.stderr


def test_a_checkout_where_the_lock_cannot_be_made_still_bootstraps(checkout: Path) -> None:
    """A read-only checkout (or another user's) with its .venv ready bootstrapped before the
    lock existed: not being able to make the lock file must not stop it. (A directory in
    the lock file's place fails the open as a read-only mount does, even for root.)"""
    (checkout / ".segops-bootstrap.lock").mkdir()
    proc = _bootstrap(checkout)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.splitlines()[0] == "ready"
