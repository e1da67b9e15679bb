"""uWSGI: by default its workers are forked without Python's fork hooks.

By default uWSGI loads the app in its master and forks the workers itself, without running
``os.register_at_fork`` hooks (unless ``py-call-uwsgi-fork-hooks`` is set). A worker forked
while a thread of the master held the interpreter lock hangs at its start, and every worker
would write through the master's SQLite connections, under the master's pid. So in such a
master the client starts no thread (:func:`forks_without_hooks`), and ``uwsgi.post_fork_hook``,
which uWSGI calls in each new worker, runs the resets Python's fork hooks would have run.
(uWSGI 2.0.31 with Python 3 runs threads even without ``enable-threads``.)
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Callable, Mapping, Optional

_hooked = False

#: Option values uWSGI reads as "off" (flags given bare arrive as True, others as bytes).
_OFF = {"", "0", "false", "off", "no"}


def forks_without_hooks(after_fork_in_child: Callable[[], None]) -> bool:
    """True in a uWSGI master that will fork workers without Python's fork hooks; then
    ``after_fork_in_child`` is chained into ``uwsgi.post_fork_hook`` (once)."""
    global _hooked
    uwsgi = _uwsgi_module()
    if uwsgi is None:
        return False
    opt: Mapping[Any, Any] = getattr(uwsgi, "opt", {})
    lazy = _enabled(opt, "lazy-apps") or _enabled(opt, "lazy")
    if lazy or _enabled(opt, "py-call-uwsgi-fork-hooks") or _worker_id(uwsgi) != 0:
        return False
    if not _hooked:
        _hooked = True
        previous = getattr(uwsgi, "post_fork_hook", None)

        def post_fork_hook() -> None:
            after_fork_in_child()
            if callable(previous):
                previous()

        setattr(uwsgi, "post_fork_hook", post_fork_hook)  # noqa: B010  # a module attribute
    return True


def _uwsgi_module() -> Optional[ModuleType]:
    try:
        return importlib.import_module("uwsgi")  # only importable inside a uWSGI process
    except ImportError:
        return None


def _worker_id(uwsgi: ModuleType) -> int:
    try:
        return int(uwsgi.worker_id())
    except Exception:  # an old or unusual build: treat it as the master, the safe side
        return 0


def _enabled(opt: Mapping[Any, Any], name: str) -> bool:
    value = opt.get(name, opt.get(name.encode()))
    if value is None or value is False:
        return False
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value).strip().lower() not in _OFF
