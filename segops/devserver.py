"""The SegOps local development server: a stdlib-only implementation of the ingestion API.

Use it in tests (``with DevServer() as srv: ...``), for ``segops demo``, or from the
command line (``segops dev-server`` / ``python -m segops.devserver``). See
``docs/dev-server.md``.
"""

from __future__ import annotations

import sys

from ._devserver import (
    DROP,
    MAX_BATCH_EVENTS,
    DevServer,
    RecordedRequest,
    add_arguments,
    main,
    run,
)

__all__ = [
    "DROP",
    "MAX_BATCH_EVENTS",
    "DevServer",
    "RecordedRequest",
    "add_arguments",
    "main",
    "run",
]

if __name__ == "__main__":
    sys.exit(main())
