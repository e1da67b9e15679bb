"""Fork safety: no SQLite connection ever crosses ``fork()``.

A connection must not be used in a child, and merely keeping one alive there is harmful
too: SQLite tracks the locks of every open file per process, and POSIX locks are not
inherited. A child's new connection would then believe the parent's lock on the database
were its own, hold no real one, and another process closing the spool last would
checkpoint and delete the WAL under the child's appends. So each Spool closes its
connections just before ``fork()`` (holding its locks, so no thread is inside SQLite) and
reopens them lazily afterwards, in the parent and in the child alike.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any, Protocol


class ForkAware(Protocol):
    def _before_fork(self) -> None: ...
    def _after_fork_parent(self) -> None: ...
    def _after_fork_child(self) -> None: ...
    def _close_connections(self) -> None: ...


_live: weakref.WeakSet[Any] = weakref.WeakSet()
_held: list[Any] = []
# One fork at a time: two threads forking at once would otherwise interleave their hooks
# over the shared list above and leave some spool's locks held forever.
_fork_lock = threading.Lock()


def after_fork_without_hooks() -> None:
    """Call first thing in a child forked without Python's fork hooks (uWSGI forks its
    workers so, unless started with ``py-call-uwsgi-fork-hooks``): each spool closes the
    connections it inherited, then resets as after an ordinary fork. Kept, they would
    leave this process believing it held the parent's file locks (POSIX locks are not
    inherited); closed, SQLite drops that belief and takes real locks from then on."""
    global _fork_lock
    for obj in list(_live):
        # Without its locks: a parent thread may hold them, and no other thread runs here.
        obj._close_connections()
        obj._after_fork_child()
    _held.clear()
    _fork_lock = threading.Lock()


def register(obj: ForkAware) -> None:
    """Track ``obj`` so its fork hooks run around every ``os.fork()``."""
    _live.add(obj)


def _before() -> None:
    _fork_lock.acquire()
    _held[:] = list(_live)
    for obj in _held:
        obj._before_fork()


def _after_parent() -> None:
    try:
        for obj in reversed(_held):
            obj._after_fork_parent()
        _held.clear()
    finally:
        _fork_lock.release()


def _after_child() -> None:
    global _fork_lock
    for obj in _held:
        obj._after_fork_child()
    _held.clear()
    _fork_lock = threading.Lock()  # the child's only thread is the one that forked


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before, after_in_parent=_after_parent, after_in_child=_after_child)
