"""Plain value types handed across the public API (immutable, no I/O)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional


class Status(enum.IntEnum):
    """Row state as stored in the ``records.status`` column."""

    PENDING = 0
    LEASED = 1


@dataclass(frozen=True)
class Record:
    """One spooled record: its id (strictly increasing per file) and its bytes."""

    __slots__ = ("data", "id")
    id: int
    data: bytes


@dataclass(frozen=True)
class Batch:
    """A leased group of records; ``key`` survives release/expiry, ``owner`` is per claim.

    ``tag`` is the text given to the claim that made the batch: it comes back with every
    later claim of the same batch (e.g. the route its first send took).
    """

    __slots__ = ("key", "owner", "records", "tag")
    key: str
    records: tuple[Record, ...]
    owner: str
    tag: Optional[str]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def ids(self) -> tuple[int, ...]:
        """The record ids, oldest first."""
        return tuple(r.id for r in self.records)

    @property
    def nbytes(self) -> int:
        """Sum of the record sizes in bytes."""
        return sum(len(r.data) for r in self.records)


@dataclass(frozen=True)
class DeadLetter:
    """A record moved aside by :meth:`Spool.dead_letter`; ``id`` is its original id."""

    __slots__ = ("data", "failed_at", "id", "reason")
    id: int
    data: bytes
    reason: str
    failed_at: float


@dataclass(frozen=True)
class Stats:
    """A consistent snapshot of the spool's counters."""

    __slots__ = ("dead", "file_bytes", "leased", "oldest_age", "pending", "total_bytes")
    pending: int
    leased: int
    dead: int
    total_bytes: int
    oldest_age: Optional[float]
    file_bytes: int
