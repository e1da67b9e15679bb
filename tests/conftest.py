"""Fixtures shared by every suite."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 48 MiB tmpfs of its own, to fill up (needs root: skipped elsewhere)."""
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs", str(mountpoint)]
    if subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("this machine does not let us mount a tmpfs")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_report_to_serializable(report: Any) -> Iterator[None]:
    """Reports made safe for pytest-xdist, which sends them as UTF-8: a lone surrogate in
    one (tests of server text that carries them: a failure, a skip or xfail reason, a log)
    crashed the whole run. Only the copy sent between processes changes."""
    outcome = yield
    outcome.force_result(_utf8_safe(outcome.get_result()))  # type: ignore[attr-defined]


def _utf8_safe(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_utf8_safe(k): _utf8_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_utf8_safe(v) for v in value)
    return value
