"""Salvage: copy what a damaged spool file still holds into the fresh spool replacing it.

Used only by recovery (``_storage._recover``), under the coarse file lock, so nothing is
appended to the fresh file before the salvaged rows, which keep their ids, are in.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any, Generator, Iterator, Optional

_MAX_ID = 2**63 - 1


def salvage(moved: Path, dest: sqlite3.Connection) -> str:
    """Insert every record and dead letter still readable in ``moved`` into ``dest`` (an
    empty spool, inside the caller's write transaction); returns a summary for the log.

    Records come back pending (un-batched), in their original order and with their ids;
    dead letters keep id, reason and time. Raises sqlite3.Error if ``moved`` cannot be
    read at all.
    """
    # Read-only: the moved file is evidence. One transaction: one consistent snapshot,
    # even if a process that still has the old file open keeps writing to it.
    uri = f"{moved.resolve().as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, isolation_level=None)) as src:
        src.execute("BEGIN")
        src.execute("SELECT count(*) FROM sqlite_master").fetchone()
        records = _Reader(src, "records", "id, data, created")
        dead = _Reader(src, "dead_letters", "id, data, reason, failed_at")
        n_records, top = _copy_records(records.rows(), dest)
        n_dead, top_dead = _copy_dead_letters(dead.rows(), dest)
    _keep_high_water(dest, max(top, top_dead))
    return (
        f"salvaged {n_records} records and {n_dead} dead letters from {moved}; unreadable:"
        f" {_describe('records', records.lost)}, {_describe('dead letters', dead.lost)}"
    )


class _Reader:
    """The rows of one table of a damaged file, in id order, around the pages that fail.

    A plain scan stops for good at the first damaged page. So after a failure the scan
    resumes at the lowest id whose seek works again, found by doubling, then bisecting
    (a few dozen seeks): only rows on (or under) damaged pages are missed.
    """

    def __init__(self, conn: sqlite3.Connection, table: str, columns: str) -> None:
        self._conn = conn
        self._scan = f"SELECT {columns} FROM {table} WHERE id >= ? ORDER BY id"
        self._first = f"{self._scan} LIMIT 1"
        self._seek = f"SELECT id FROM {table} WHERE id >= ? ORDER BY id LIMIT 1"
        # Id ranges that could not be read, (first, last); last None: everything above.
        self.lost: list[tuple[int, Optional[int]]] = []

    def rows(self) -> Iterator[Any]:
        start: Optional[int] = 0
        while start is not None:
            start = yield from self._rows_from(start)

    def _rows_from(self, start: int) -> Generator[Any, None, Optional[int]]:
        """Yield rows from id ``start`` on; at a failure, return the id to go on from
        (None: the end was reached, or nothing above is readable)."""
        next_id, cursor = start, None
        while True:
            try:
                if cursor is None:
                    cursor = self._conn.execute(self._scan, (start,))
                row = cursor.fetchone()
            except sqlite3.DatabaseError:
                break
            if row is None:
                return None
            next_id = int(row[0]) + 1
            yield row
        # sqlite3 cursors step one row ahead, and a failing step drops the row already
        # read: the row at next_id may be fine. LIMIT 1 reads it without stepping on.
        try:
            row = self._conn.execute(self._first, (next_id,)).fetchone()
        except sqlite3.DatabaseError:
            return self._past_damage(next_id)
        if row is None:
            return None
        yield row
        return int(row[0]) + 1

    def _past_damage(self, failed_at: int) -> Optional[int]:
        """Note the unreadable ids from ``failed_at`` on; return the first readable one."""
        resume = self._next_readable(failed_at)
        self.lost.append((failed_at, None if resume is None else resume - 1))
        return resume

    def _next_readable(self, failed_at: int) -> Optional[int]:
        """The lowest id above ``failed_at`` whose seek works (None: no id above does).

        Seeks below the end of a damaged page land on it and fail; seeks past it land on
        the next page. Strictly above ``failed_at``, so a row whose own bytes are damaged
        (an overflow page) is skipped rather than retried forever.
        """
        bad, good = failed_at, failed_at + 1
        while not self._seeks(good):
            if good >= _MAX_ID:
                return None
            bad, good = good, min(_MAX_ID, good + 2 * (good - bad))
        while good - bad > 1:
            mid = (bad + good) // 2
            if self._seeks(mid):
                good = mid
            else:
                bad = mid
        return good

    def _seeks(self, first: int) -> bool:
        try:
            self._conn.execute(self._seek, (first,)).fetchone()
        except sqlite3.DatabaseError:
            return False
        return True


def _describe(what: str, lost: list[tuple[int, Optional[int]]]) -> str:
    """'no records', or 'records with ids 7-9, 40 and above', with at most how many (ids
    are dense but some may never have held a row: an upper bound)."""
    if not lost:
        return f"no {what}"
    spans, most = [], 0
    for first, last in lost:
        spans.append(f"{first} and above" if last is None else f"{first}-{last}")
        most += 0 if last is None else last - first + 1
    bound = "" if any(last is None for _, last in lost) else f" (at most {most})"
    return f"{what} with ids {', '.join(spans)}{bound}"


def _copy_records(rows: Iterator[Any], dest: sqlite3.Connection) -> tuple[int, int]:
    """Insert the live records among ``rows``; returns (count, highest id seen)."""
    copied = top = 0
    for rid, data, created in rows:
        top = max(top, int(rid))
        if not isinstance(data, bytes):
            continue  # the tombstone (NULL data, see the schema) or a garbled row
        dest.execute(
            "INSERT INTO records(id, data, created) VALUES (?, ?, ?)",
            (rid, data, _timestamp(created)),
        )
        copied += 1
    return copied, top


def _copy_dead_letters(rows: Iterator[Any], dest: sqlite3.Connection) -> tuple[int, int]:
    """Insert the dead letters among ``rows``; returns (count, highest id seen)."""
    copied = top = 0
    for did, data, reason, failed_at in rows:
        top = max(top, int(did))
        if not isinstance(data, bytes):
            continue  # a garbled row
        dest.execute(
            "INSERT INTO dead_letters(id, data, reason, failed_at) VALUES (?, ?, ?, ?)",
            (did, data, str(reason), _timestamp(failed_at)),
        )
        copied += 1
    return copied, top


def _timestamp(value: object) -> float:
    """A stored time, or now for a garbled one (a damaged overflow page can garble the
    columns after a large record's data without any error). Claims compare ``created``
    with the clock: one in the future or not a number would hold back every later record.
    """
    now = time.time()
    if isinstance(value, (int, float)) and 0 < value <= now:
        return float(value)
    return now


def _keep_high_water(dest: sqlite3.Connection, top: int) -> None:
    """Keep new ids above every id the damaged file handed out (ids are never reused, and
    a dead letter's id must not meet a later record's): a tombstone at the highest one,
    unless a salvaged record holds it (see the schema in _storage)."""
    if top and dest.execute("SELECT 1 FROM records WHERE id = ?", (top,)).fetchone() is None:
        dest.execute("INSERT INTO records(id, data, created) VALUES (?, NULL, NULL)", (top,))
        dest.execute("INSERT INTO meta(key, value) VALUES ('tombstone', ?)", (top,))
