"""uWSGI: by default its workers are forked without Python's fork hooks and run no threads.

By default uWSGI loads the app in its master and forks the workers itself, without running
``os.register_at_fork`` hooks (unless ``py-call-uwsgi-fork-hooks`` is set). A worker forked
while one of the client's threads in the master held the interpreter lock then hangs at its
start, and the others would write through the master's SQLite connections; without
``enable-threads`` no background thread sends. The options that avoid all of this are
``enable-threads`` plus ``py-call-uwsgi-fork-hooks`` (or ``lazy-apps``, which loads the app
in each worker): the client warns, once per process, when they are missing.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any, Mapping

logger = logging.getLogger("segops")

_checked = False

#: Option values uWSGI reads as "off" (flags given bare arrive as True, others as bytes).
_OFF = {"", "0", "false", "off", "no"}


def check_options() -> None:
    """Inside uWSGI (once per process): warn about the options the client needs."""
    global _checked
    if _checked:
        return
    _checked = True
    try:
        uwsgi = importlib.import_module("uwsgi")  # only importable inside a uWSGI process
    except ImportError:
        return
    opt: Mapping[Any, Any] = getattr(uwsgi, "opt", {})
    if not (_enabled(opt, "enable-threads") or _enabled(opt, "threads")):
        logger.warning(
            "segops: uWSGI runs without enable-threads, so the client cannot send from its "
            "background thread; events stay spooled until a process with threads sends "
            "them (add enable-threads = true to the uWSGI options)"
        )
    lazy = _enabled(opt, "lazy-apps") or _enabled(opt, "lazy")
    if not lazy and not _enabled(opt, "py-call-uwsgi-fork-hooks"):
        logger.warning(
            "segops: uWSGI forks its workers without Python's fork hooks, and a worker forked "
            "while a segops thread holds the interpreter lock hangs at its start; add "
            "py-call-uwsgi-fork-hooks = true (or lazy-apps = true) to the uWSGI options"
        )


def _enabled(opt: Mapping[Any, Any], name: str) -> bool:
    value = opt.get(name, opt.get(name.encode()))
    if value is None or value is False:
        return False
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value).strip().lower() not in _OFF
