"""Fork safety: a child never uses or closes a connection/thread inherited from its parent.

SQLite connections must not cross ``fork()``: using one corrupts locking state, and even
closing one in the child can run a WAL checkpoint/cleanup behind the parent's back. So in
the child we drop every inherited handle *without closing it* (its refcount is pinned so
not even interpreter shutdown finalises it) and each Spool lazily opens fresh ones.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import weakref
from typing import Any, Protocol


class ForkAware(Protocol):
    def _before_fork(self) -> None: ...
    def _after_fork_parent(self) -> None: ...
    def _after_fork_child(self) -> None: ...


_live: weakref.WeakSet[Any] = weakref.WeakSet()
_held: list[Any] = []
# Inherited handles parked here for the life of the child; see leak().
_orphans: list[object] = []


def register(obj: ForkAware) -> None:
    """Track ``obj`` so its fork hooks run around every ``os.fork()``."""
    _live.add(obj)


def leak(*objs: object) -> None:
    """Keep ``objs`` alive forever: their finalisers (sqlite3_close) must never run here."""
    for obj in objs:
        if obj is None:
            continue
        _orphans.append(obj)
        # A module list is cleared at interpreter shutdown; an extra reference is not.
        # (Non-CPython: the list reference is the best we can do.)
        with contextlib.suppress(AttributeError, OSError):
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))


def _before() -> None:
    # Hold every spool's locks across fork() so no thread is mid-SQLite-call when the
    # address space is copied.
    _held[:] = list(_live)
    for obj in _held:
        obj._before_fork()


def _after_parent() -> None:
    for obj in reversed(_held):
        obj._after_fork_parent()
    _held.clear()


def _after_child() -> None:
    for obj in _held:
        obj._after_fork_child()
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before, after_in_parent=_after_parent, after_in_child=_after_child)
