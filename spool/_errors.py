"""Exception hierarchy: every failure leaving the public API is a SpoolError."""

from __future__ import annotations


class SpoolError(Exception):
    """Base class for every error raised by :mod:`spool`."""


class SpoolFull(SpoolError):
    """The spool reached ``max_bytes`` or the disk is full; nothing was written."""


class SpoolCorrupt(SpoolError):
    """The spool file is not a usable SQLite database and could not be recovered."""
