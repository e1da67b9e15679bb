#!/usr/bin/env python3
"""Benchmark ``spool``: append() latency against a bare-SQLite floor, and claim+ack rate.

    .venv/bin/python scripts/bench_spool.py [--samples 30000] [--rounds 5]

The floor is one autocommit ``INSERT INTO records(data) VALUES (?)`` on a plain
``sqlite3`` connection with the spool's schema and pragmas (WAL, synchronous=NORMAL,
wal_autocheckpoint=0, journal_size_limit), through a reused cursor -- the least work
Python can do to durably insert a row. Like the spool, its WAL is checkpointed off the
timed path (a PASSIVE checkpoint from a second connection every 1000 inserts, untimed).
Floor and spool run interleaved in rounds, each on its own file, so drift in the
machine's I/O hits both alike.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spool import Spool, _storage

RECORD = (
    b'{"type":"track","event":"Order Completed","userId":"user-0042",'
    b'"properties":{"order_id":"o-99812","total":129.5,"currency":"EUR"},'
    b'"timestamp":"2026-11-26T05:00:00.000Z","messageId":"3f1c2d9e-aaaa-bbbb-cccc-0123456789ab"}'
)
_INSERT = "INSERT INTO records(data) VALUES (?)"
_FLOOR_CHECKPOINT_EVERY = 1000


class FloorWriter:
    """A bare sqlite3 connection with the spool's schema and pragmas."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None)
        for pragma in (
            "journal_mode=WAL",
            "synchronous=NORMAL",
            "wal_autocheckpoint=0",
            f"journal_size_limit={_storage.JOURNAL_SIZE_LIMIT}",
        ):
            self.conn.execute(f"PRAGMA {pragma}")
        for steps in _storage.MIGRATIONS:
            for sql in steps:
                self.conn.execute(sql)
        self.ckpt = sqlite3.connect(str(path), isolation_level=None)
        self.cur = self.conn.cursor()
        self.done = 0

    def measure(self, n: int, record: bytes) -> List[float]:
        """Seconds per autocommit INSERT, ``n`` times."""
        out: List[float] = []
        clock, cur = time.perf_counter, self.cur
        for _ in range(n):
            t0 = clock()
            cur.execute(_INSERT, (record,))
            out.append(clock() - t0)
            self.done += 1
            if self.done % _FLOOR_CHECKPOINT_EVERY == 0:  # untimed, like the spool's thread
                self.ckpt.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        return out

    def close(self) -> None:
        self.ckpt.close()
        self.conn.close()


class SpoolWriter:
    """Spool.append() timed the same way."""

    def __init__(self, path: Path) -> None:
        self.spool = Spool(path)

    def measure(self, n: int, record: bytes) -> List[float]:
        out: List[float] = []
        clock, append = time.perf_counter, self.spool.append
        for _ in range(n):
            t0 = clock()
            append(record)
            out.append(clock() - t0)
        return out

    def close(self) -> None:
        self.spool.close()


def floor_insert_latencies(n: int, record: bytes) -> List[float]:
    """Seconds per bare autocommit INSERT of ``record`` (``n`` samples, temp file)."""
    tmp = Path(tempfile.mkdtemp(prefix="spool-floor-"))
    writer = FloorWriter(tmp / "floor.db")
    try:
        return writer.measure(n, record)
    finally:
        writer.close()
        shutil.rmtree(tmp, ignore_errors=True)


def interleaved(samples: int, rounds: int, record: bytes) -> tuple[List[float], List[float]]:
    """(floor, spool) latencies, alternating chunks so both see the same machine state."""
    tmp = Path(tempfile.mkdtemp(prefix="spool-bench-"))
    floor, spool = FloorWriter(tmp / "floor.db"), SpoolWriter(tmp / "spool.db")
    lat_floor: List[float] = []
    lat_spool: List[float] = []
    try:
        floor.measure(1000, record)  # warm both: page cache, statement cache, thread start
        spool.measure(1000, record)
        for _ in range(rounds):
            lat_floor += floor.measure(samples // rounds, record)
            lat_spool += spool.measure(samples // rounds, record)
    finally:
        floor.close()
        spool.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return lat_floor, lat_spool


def claim_ack_rate(total: int, batch: int, record: bytes) -> float:
    """Records/s moved through claim(batch) + ack() on a prefilled spool."""
    tmp = Path(tempfile.mkdtemp(prefix="spool-claim-"))
    try:
        with Spool(tmp / "spool.db") as sp:
            for start in range(0, total, 10_000):
                sp.append_many([record] * min(10_000, total - start))
            sp.checkpoint()
            moved, t0 = 0, time.perf_counter()
            while (b := sp.claim(batch)) is not None:
                moved += sp.ack(b)
            elapsed = time.perf_counter() - t0
        assert moved == total, (moved, total)
        return moved / elapsed
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def pct(sorted_values: List[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def report(samples: int, rounds: int, claim_total: int) -> str:
    lat_floor, lat_spool = interleaved(samples, rounds, RECORD)
    f, s = sorted(lat_floor), sorted(lat_spool)
    us: Callable[[float], str] = lambda x: f"{x * 1e6:.1f}"  # noqa: E731
    lines = [
        f"records: {len(RECORD)}-byte JSON; samples: {len(s)} per side, {rounds} interleaved"
        f" rounds; SQLite {sqlite3.sqlite_version}; Python {sys.version.split()[0]}",
        "",
        "| append, µs/record | p50 | p99 | p99.9 | max | mean |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, v in (("bare sqlite3 INSERT (floor)", f), ("Spool.append()", s)):
        lines.append(
            f"| {name} | {us(pct(v, 0.5))} | {us(pct(v, 0.99))} | {us(pct(v, 0.999))}"
            f" | {us(v[-1])} | {us(statistics.fmean(v))} |"
        )
    lines.append(
        f"| ratio spool/floor | {pct(s, 0.5) / pct(f, 0.5):.2f}x | "
        f"{pct(s, 0.99) / pct(f, 0.99):.2f}x | {pct(s, 0.999) / pct(f, 0.999):.2f}x |"
        f" | {statistics.fmean(s) / statistics.fmean(f):.2f}x |"
    )
    rate = claim_ack_rate(claim_total, 500, RECORD)
    p50_ok = pct(s, 0.5) <= 1.3 * pct(f, 0.5)
    p99_ok = pct(s, 0.99) <= 0.5e-3
    lines += [
        "",
        f"claim(500)+ack: {rate:,.0f} records/s over {claim_total:,} records"
        f" (target >= 100,000/s: {'met' if rate >= 100_000 else 'MISSED'})",
        f"append p50 <= 1.3x floor: {'met' if p50_ok else 'MISSED'};"
        f" append p99 <= 0.5 ms: {'met' if p99_ok else 'MISSED'}",
    ]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--claim-records", type=int, default=100_000)
    args = parser.parse_args(argv)
    print(report(args.samples, args.rounds, args.claim_records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
