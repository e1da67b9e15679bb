"""Synchronization that tolerates re-entry from a signal handler."""

from __future__ import annotations

import threading


class ReentrantEvent(threading.Event):
    """A ``threading.Event`` whose internal lock the holding thread may take again.

    Python runs a signal handler on the main thread between two bytecodes, possibly while
    that thread is inside ``set()`` of this very event (holding its lock). A handler that
    then calls ``set()`` itself, e.g. ``shutdown()`` waking a thread, deadlocks on a plain
    Event; on this one it goes through.
    """

    def __init__(self) -> None:
        super().__init__()
        self._cond = threading.Condition(threading.RLock())
