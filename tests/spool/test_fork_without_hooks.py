"""A fork that runs none of Python's fork hooks (libc's fork(), as uWSGI forks workers)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import sqlite3
import sys
from pathlib import Path
from typing import Callable

import pytest

import spool
from spool import Spool

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="libc fork()")


def stored(path: Path) -> list[bytes]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT data FROM records WHERE data IS NOT NULL ORDER BY id")
        return [bytes(r[0]) for r in rows]


@pytest.mark.parametrize("closed_before", [True, False], ids=["closed-before", "inherited"])
def test_raw_fork_child_appends_on_its_own_connection(
    make_spool: Callable[..., Spool], db_path: Path, closed_before: bool
) -> None:
    """After after_fork_without_hooks() the child writes as itself, through its own
    connection, whether the parent closed its connections first or the child inherited
    them; the parent's spool keeps working."""
    sp = make_spool()
    sp.append(b"parent-1")
    if closed_before:
        sp.close_connections()
    pid = ctypes.CDLL(None, use_errno=True).fork()  # no os.register_at_fork hook runs
    if pid == 0:
        code = 1
        try:
            spool.after_fork_without_hooks()
            sp.append(b"child")
            code = 0 if sp._pid == os.getpid() else 3  # owner tokens name this process
        finally:
            os._exit(code)
    assert pid > 0
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    sp.append(b"parent-2")
    assert stored(db_path) == [b"parent-1", b"child", b"parent-2"]
    assert sp.stats().pending == 3
