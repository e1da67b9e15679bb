"""The `segops` command line (placeholder until the CLI lands)."""

from __future__ import annotations

import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI and return its exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["demo"]:
        sys.stdout.write("segops demo: not built yet (see the CLI issue)\n")
        return 0
    sys.stderr.write("segops: no commands yet\n")
    return 2
