"""spool: a small durable FIFO queue on one SQLite file (WAL).

See ``docs/spool.md`` for the semantics. ``spool`` knows nothing about its users.
"""

from __future__ import annotations

from ._errors import SpoolCorrupt, SpoolError, SpoolFull
from ._fork import after_fork_without_hooks
from ._spool import Spool
from ._types import Batch, DeadLetter, Record, Stats, Status

__all__: list[str] = [
    "Batch",
    "DeadLetter",
    "Record",
    "Spool",
    "SpoolCorrupt",
    "SpoolError",
    "SpoolFull",
    "Stats",
    "Status",
    "after_fork_without_hooks",
]
