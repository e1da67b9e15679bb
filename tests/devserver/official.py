"""A throwaway virtualenv holding the official ``segops==0.2.2`` client.

``official_python()`` returns the interpreter of ``<repo>/.venv-official``, creating the
venv and installing the pinned official package on first use (reused afterwards). It
raises :class:`OfficialClientUnavailable` when pip cannot reach the package index, so
callers can skip with a clear reason. Stdlib only: the benchmark script reuses it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

OFFICIAL_VERSION = "0.2.2"
REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_DIR = REPO_ROOT / ".venv-official"


#: pip output meaning "the package index cannot be reached" (the only reason to skip).
_OFFLINE_MARKERS = (
    "No matching distribution found",
    "Could not find a version that satisfies",
    "NewConnectionError",
    "Max retries exceeded",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "Connection refused",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ProxyError",
)


class OfficialClientUnavailable(RuntimeError):
    """The official client could not be installed (no package index, most likely)."""


def _venv_python(venv: Path) -> Path:
    if os.name == "nt":
        return venv / "Scripts" / "python.exe"
    return venv / "bin" / "python"


def _installed_version(python: Path) -> str:
    """The segops version pip reports in that venv ('' when absent)."""
    if not python.exists():
        return ""
    proc = subprocess.run(
        [str(python), "-I", "-m", "pip", "show", "segops"],
        capture_output=True,
        text=True,
        cwd=str(python.parent),
        check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
    return ""


def official_python(venv: Path = VENV_DIR) -> Path:
    """The python of a venv with ``segops==0.2.2`` installed (created when needed).

    Raises :class:`OfficialClientUnavailable` when pip cannot reach the package index,
    ``RuntimeError`` for any other installation failure.
    """
    python = _venv_python(venv)
    if _installed_version(python) == OFFICIAL_VERSION:
        return python
    with _exclusive(venv.with_name(venv.name + ".lock")):
        return _install(venv, python)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """One creator at a time: parallel test workers (pytest -n) would otherwise build the
    venv together, one of them running a pip the other has not finished installing."""
    try:
        import fcntl
    except ImportError:  # Windows: no parallel runs to guard against there
        yield
        return
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _install(venv: Path, python: Path) -> Path:
    if _installed_version(python) == OFFICIAL_VERSION:  # made while we waited for the lock
        return python
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    proc = subprocess.run(
        [
            str(python),
            "-I",
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            f"segops=={OFFICIAL_VERSION}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0 or _installed_version(python) != OFFICIAL_VERSION:
        output = proc.stderr + proc.stdout
        tail = " | ".join(output.strip().splitlines()[-3:])
        message = f"cannot pip install segops=={OFFICIAL_VERSION} into {venv}: {tail}"
        if any(marker in output for marker in _OFFLINE_MARKERS):
            raise OfficialClientUnavailable(message)
        raise RuntimeError(message)
    return python


if __name__ == "__main__":
    print(official_python())
