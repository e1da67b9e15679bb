"""Fallback bare-SQLite floor for ``scripts/bench.py`` (used only when
``scripts/bench_spool.py`` does not provide ``floor_insert_latencies``).

One autocommit ``INSERT INTO records(data) VALUES (?)`` per record on a connection opened
with the spool's own settings (WAL, ``synchronous=NORMAL``, ``wal_autocheckpoint=0``,
``journal_size_limit``) and schema. Like the spool, checkpoints happen off the timed
path: a PASSIVE checkpoint from a second connection every 1000 inserts, not timed.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import List

_INSERT = "INSERT INTO records(data) VALUES (?)"
_CHECKPOINT_EVERY = 1000


def _open(path: Path) -> sqlite3.Connection:
    try:  # the spool's own connection settings and schema, so the floor tracks them
        from spool import _storage

        conn = _storage.connect(path, busy_timeout=30.0, synchronous="NORMAL")
        _storage.ensure_schema(conn, path, 30.0)
        return conn
    except ImportError:
        conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute(f"PRAGMA journal_size_limit={16 * 1024 * 1024}")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS records (id INTEGER PRIMARY KEY, data BLOB,"
            " created REAL DEFAULT ((julianday('now') - 2440587.5) * 86400.0))"
        )
        return conn


def floor_insert_latencies(n: int, record: bytes) -> List[float]:
    """Seconds per bare autocommit INSERT of ``record``, ``n`` times, in a temp file."""
    tmp = tempfile.mkdtemp(prefix="segops-floor-")
    try:
        path = Path(tmp) / "floor.db"
        conn = _open(path)
        ckpt = sqlite3.connect(str(path), isolation_level=None)
        cur = conn.cursor()
        clock = time.perf_counter
        out = [0.0] * n
        try:
            for i in range(n):
                t0 = clock()
                cur.execute(_INSERT, (record,))
                out[i] = clock() - t0
                if i % _CHECKPOINT_EVERY == _CHECKPOINT_EVERY - 1:
                    ckpt.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            ckpt.close()
            conn.close()
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    lat = sorted(floor_insert_latencies(20000, b"x" * 200))
    print(f"p50 {lat[len(lat) // 2] * 1e6:.1f} us  p99 {lat[int(len(lat) * 0.99)] * 1e6:.1f} us")
