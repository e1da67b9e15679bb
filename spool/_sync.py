"""Synchronization that tolerates re-entry from a signal handler, and late green-patching."""

from __future__ import annotations

import threading
from typing import Any


class _LiveCondition(threading.Condition):
    """A ``Condition`` that calls its *current* lock's methods every time.

    ``threading.Condition`` copies its lock's bound methods when it is made. eventlet's
    ``monkey_patch()`` swaps every existing RLock for a green one by rewriting the
    attributes that refer to it (``_lock`` here), not those copies: the condition would
    then take one lock and check it owned the other ("cannot wait on un-acquired lock"),
    killing the thread that waits on it.
    """

    _lock: Any  # set by Condition.__init__; rewritten in place by eventlet's patching

    def __init__(self) -> None:
        super().__init__(threading.RLock())
        for name in ("acquire", "release", "_release_save", "_acquire_restore", "_is_owned"):
            self.__dict__.pop(name, None)  # the copies: the methods below look the lock up

    def acquire(self, *args: Any, **kwargs: Any) -> bool:
        return bool(self._lock.acquire(*args, **kwargs))

    def release(self) -> None:
        self._lock.release()

    def _release_save(self) -> Any:
        return self._lock._release_save()

    def _acquire_restore(self, state: Any) -> None:
        self._lock._acquire_restore(state)

    def _is_owned(self) -> bool:
        return bool(self._lock._is_owned())


class ReentrantEvent(threading.Event):
    """A ``threading.Event`` whose internal lock the holding thread may take again.

    Python runs a signal handler on the main thread between two bytecodes, possibly while
    that thread is inside ``set()`` of this very event (holding its lock). A handler that
    then calls ``set()`` itself, e.g. ``shutdown()`` waking a thread, deadlocks on a plain
    Event; on this one it goes through. It also survives eventlet's late patching (see
    ``_LiveCondition``).
    """

    def __init__(self) -> None:
        super().__init__()
        self._cond = _LiveCondition()


def held_here(lock: object) -> bool:
    """True when the calling thread holds ``lock`` (an RLock; False for other locks): a
    signal handler running on a thread that was inside the lock's critical section."""
    is_owned = getattr(lock, "_is_owned", None)  # RLock's, as threading.Condition uses it
    return bool(is_owned()) if is_owned is not None else False
