"""Client benchmark: our durable ``SegOpsClient`` next to the official ``segops==0.2.2``.

Run from the repository root::

    .venv/bin/python scripts/bench.py            # ~1-2 minutes on 2 cores
    .venv/bin/python scripts/bench.py --quick    # smaller N, shorter outage
    .venv/bin/python scripts/bench.py --events 50000 --outage-seconds 3

Everything is measured in the same run and reported as ratios against baselines from that
run (no timed assertions):

1. ``track()`` latency (µs p50/p99/p99.9) of each client while its background flusher
   delivers to a local DevServer, next to the bare-SQLite floor measured in the same child
   process (blocks alternating with the track() blocks): one autocommit INSERT of
   the same record with the spool's schema and settings.
2. End-to-end delivered events/s: N events tracked as fast as possible, then shutdown; time
   from the first ``track()`` until the server has stored all N.
3. Outage: N events tracked while the server is down between N/3 and 2N/3 (at least
   ``--outage-seconds``), then shutdown; events lost = tracked - stored by the server.

For scale, the same latency rounds also time the in-memory peer SDKs (Segment's
``track()``, PostHog's ``capture()``; pinned, from the throwaway venv ``.venv-peers``;
``--no-peers`` skips them): information, not a target.

Each client runs in a child process (``scripts/_bench_child.py``) -- the official one in its
own throwaway venv ``.venv-official`` because the package names clash -- and every run gets
a fresh DevServer in this process, so the server never shares a GIL with a client. Network
traffic stays on 127.0.0.1; spool files live in a temporary directory removed at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import queue
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
CHILD = REPO / "scripts" / "_bench_child.py"
PEER_CHILD = REPO / "scripts" / "_bench_peer.py"
OFFICIAL_VERSION = "0.2.2"
OFFICIAL_VENV = REPO / ".venv-official"
SECRET_KEY = "sk_dev_secret"
WARMUP = 200  # untimed track() calls before each timed loop (_bench_child.WARMUP)
LATENCY_BLOCK = 500  # floor and track() blocks alternate (_bench_child.LATENCY_BLOCK)

# Targets (issue #3, "Benchmark").
TARGET_P50_VS_FLOOR = 1.5
TARGET_P99_US = 500.0
TARGET_E2E_VS_OFFICIAL = 1.3

sys.path.insert(0, str(REPO))
from segops.devserver import DevServer  # noqa: E402

sys.path.insert(0, str(REPO / "scripts"))
from _bench_peers import PEER_NAMES, Sink, peers_python  # noqa: E402

# ----------------------------------------------------------------------------- official venv


def official_python() -> Path:
    """The venv interpreter with ``segops==0.2.2`` (``tests/devserver/official.py``'s logic)."""
    helper = REPO / "tests" / "devserver" / "official.py"
    if helper.exists():
        spec = importlib.util.spec_from_file_location("_segops_official_venv", helper)
        if spec is not None and spec.loader is not None:
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return Path(module.official_python())
    return _official_python_fallback()


def _official_python_fallback() -> Path:
    bindir = "Scripts" if os.name == "nt" else "bin"
    python = OFFICIAL_VENV / bindir / ("python.exe" if os.name == "nt" else "python")
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(OFFICIAL_VENV)], check=True)
    probe = [str(python), "-I", "-c", "import importlib.metadata as m; print(m.version('segops'))"]
    have = subprocess.run(probe, capture_output=True, text=True, check=False).stdout.strip()
    if have != OFFICIAL_VERSION:
        pip = [str(python), "-I", "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, f"segops=={OFFICIAL_VERSION}"], check=True)
    return python


# ----------------------------------------------------------------------------- child processes


class ChildError(RuntimeError):
    pass


class Child:
    """One ``_bench_child.py`` (or ``_bench_peer.py``) process speaking JSON lines."""

    def __init__(
        self, python: Path, argv: Sequence[str], *, isolated: bool, cwd: str, script: Path = CHILD
    ) -> None:
        cmd = [str(python)]
        env = dict(os.environ)
        if isolated:  # the official venv must not see this repository's segops
            cmd.append("-I")
            env.pop("PYTHONPATH", None)
        cmd += [str(script), *argv]
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in finish)
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            cwd=cwd,
            env=env,
        )
        self._lines: queue.Queue[Optional[str]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def next(self, timeout: float = 120.0) -> Dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise ChildError(f"child silent for {timeout:.0f} s{self._tail()}") from None
        if line is None:
            self.proc.wait(timeout=10)
            raise ChildError(f"child exited with {self.proc.returncode}{self._tail()}")
        return dict(json.loads(line))

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def finish(self) -> str:
        """Wait for exit; returns the child's stderr (profiles, warnings)."""
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
        self._stderr.seek(0)
        text = self._stderr.read()
        self._stderr.close()
        return text

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def _tail(self) -> str:
        self._stderr.seek(0)
        tail = self._stderr.read().strip().splitlines()[-8:]
        return (":\n    " + "\n    ".join(tail)) if tail else ""


@dataclass
class Runner:
    ours_python: Path
    official_python: Optional[Path]
    tmp: str
    peers_python: Optional[Path] = None
    profile: bool = False
    profiles: List[str] = field(default_factory=list)
    record_bytes: int = 0
    _spools: int = 0

    def child(self, client: str, mode: str, url: str, events: int) -> Child:
        argv = ["--mode", mode, "--client", client, "--events", str(events)]
        if url:
            argv += ["--url", url, "--key", SECRET_KEY]
        if client == "ours":
            self._spools += 1
            argv += ["--spool", os.path.join(self.tmp, f"spool-{self._spools}.db")]
            if self.profile and mode == "latency":
                argv.append("--profile")
            return Child(self.ours_python, argv, isolated=False, cwd=str(REPO))
        assert self.official_python is not None
        return Child(self.official_python, argv, isolated=True, cwd=self.tmp)

    def peer(self, name: str, url: str, events: int) -> Child:
        assert self.peers_python is not None
        argv = ["--peer", name, "--url", url, "--events", str(events)]
        return Child(self.peers_python, argv, isolated=True, cwd=self.tmp, script=PEER_CHILD)

    def ready(self, child: Child, client: str) -> Dict[str, Any]:
        msg = child.next()
        if not msg.get("ready"):
            raise ChildError(f"unexpected first message {msg!r}")
        if client == "official" and msg.get("version") != OFFICIAL_VERSION:
            raise ChildError(f"official venv runs segops {msg.get('version')!r}")
        module = msg.get("module")
        if client == "ours" and module is not None and not str(module).startswith(str(REPO)):
            raise ChildError(f"'ours' imported segops from {module!r}")
        return msg

    def done(self, child: Child) -> Dict[str, Any]:
        """The child's final report (it then exits: call :meth:`reap` outside any timing)."""
        msg = child.next()
        if not msg.get("done"):
            child.kill()
            raise ChildError(f"unexpected message {msg!r}")
        return msg

    def reap(self, child: Child) -> None:
        stderr = child.finish()
        if self.profile and "cumtime" in stderr:
            self.profiles.append(stderr)


# ----------------------------------------------------------------------------- measurements


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_values:
        return float("nan")
    rank = min(len(sorted_values) - 1, max(0, round(q / 100.0 * len(sorted_values)) - 1))
    return sorted_values[rank]


@dataclass
class Latency:
    p50: float
    p99: float
    p999: float
    mean: float
    max: float
    n: int
    preempted: int = 0  # involuntary context switches of the timing thread (Linux)

    @classmethod
    def from_ns(cls, values: Sequence[int], preempted: int = 0) -> Latency:
        us = sorted(v / 1000.0 for v in values)
        return cls(
            p50=percentile(us, 50),
            p99=percentile(us, 99),
            p999=percentile(us, 99.9),
            mean=sum(us) / len(us),
            max=us[-1],
            n=len(us),
            preempted=preempted,
        )


def track_ns(run: Runner, client: str, events: int) -> Tuple[List[int], List[int], int]:
    """(track() latencies, same-process floor latencies -- ours only --, preemptions)."""
    with DevServer() as server:
        child = run.child(client, "latency", server.url, events)
        info = run.ready(child, client)
        child.go()
        msg = run.done(child)
        stored = _wait_stored(server, events + WARMUP, timeout=10.0)
        run.reap(child)
    if stored != events + WARMUP:
        print(
            f"  warning: {client} delivered {stored}/{events + WARMUP} in the latency run",
            flush=True,
        )
    if client == "ours":
        run.record_bytes = int(info.get("record_bytes", 0))
    return list(msg["lat_ns"]), list(msg.get("floor_ns", [])), int(msg.get("preempted", 0))


def peer_ns(run: Runner, name: str, events: int) -> Tuple[List[int], str]:
    """(latencies, "<name> <version>") of one peer SDK's track call; checks that it
    really uploaded (to the sink) while it was timed or at its shutdown."""
    with Sink() as sink:
        child = run.peer(name, sink.url, events)
        info = run.ready(child, name)
        child.go()
        msg = run.done(child)
        run.reap(child)
        if sink.requests == 0:
            raise ChildError(f"{name} never uploaded to the sink")
    return list(msg["lat_ns"]), f"{name} {info.get('version', '?')}"


def measure_latencies(
    run: Runner, events: int, rounds: int, official: bool
) -> Tuple[Latency, Latency, Optional[Latency], Dict[str, Latency]]:
    """Ours (with its same-process floor), official and the peer SDKs in ``rounds``
    interleaved rounds, so a change in background load over the run hits all alike;
    percentiles over all calls."""
    per_round = max(1, events // rounds)
    floor: List[int] = []
    ours: List[int] = []
    off: List[int] = []
    peers: Dict[str, List[int]] = {}
    preempted = [0, 0]
    for _ in range(rounds):
        lat, floor_lat, count = track_ns(run, "ours", per_round)
        ours += lat
        floor += floor_lat
        preempted[0] += count
        if official:
            lat, _, count = track_ns(run, "official", per_round)
            off += lat
            preempted[1] += count
        for name in PEER_NAMES if run.peers_python else ():
            lat, label = peer_ns(run, name, per_round)
            peers.setdefault(label, []).extend(lat)
    results = (
        Latency.from_ns(floor, 0),
        Latency.from_ns(ours, preempted[0]),
        Latency.from_ns(off, preempted[1]) if official else None,
        {label: Latency.from_ns(lat) for label, lat in peers.items()},
    )
    print(
        f"  floor (bench_spool.FloorWriter in our child, {run.record_bytes}-byte record, "
        f"blocks of {LATENCY_BLOCK} alternating with track()): p50 {results[0].p50:.1f} µs",
        flush=True,
    )
    named = [("ours", results[1]), ("official", results[2]), *results[3].items()]
    for name, result in named:
        if result is not None:
            print(f"  {name} track(): p50 {result.p50:.1f} µs  p99 {result.p99:.1f} µs", flush=True)
    return results


@dataclass
class Throughput:
    tracked: int
    stored: int
    seconds: float
    track_s: float
    shutdown_s: float
    requests: int

    @property
    def per_second(self) -> float:
        return self.stored / self.seconds if self.seconds > 0 else 0.0


def _wait_stored(server: DevServer, want: int, timeout: float) -> int:
    deadline = time.perf_counter() + timeout
    count = server.stats()["events"]
    while count < want and time.perf_counter() < deadline:
        time.sleep(0.002)
        count = server.stats()["events"]
    return count


def measure_throughput(run: Runner, client: str, events: int) -> Throughput:
    with DevServer() as server:
        child = run.child(client, "throughput", server.url, events)
        run.ready(child, client)
        t0 = time.perf_counter()
        child.go()
        msg = run.done(child)
        stored = _wait_stored(server, events, timeout=30.0)
        elapsed = time.perf_counter() - t0
        requests = server.stats().get("requests", 0)
        run.reap(child)
    result = Throughput(
        tracked=msg["tracked"],
        stored=stored,
        seconds=elapsed,
        track_s=msg["track_s"],
        shutdown_s=msg["shutdown_s"],
        requests=requests,
    )
    print(
        f"  {client} end-to-end: {result.stored}/{result.tracked} in {elapsed:.2f} s "
        f"= {result.per_second:,.0f} events/s ({requests} requests)",
        flush=True,
    )
    return result


def measure_throughputs(
    run: Runner, events: int, rounds: int, official: bool
) -> Tuple[Throughput, Optional[Throughput]]:
    """Ours and official alternating for ``rounds`` rounds; each side's median round."""
    ours: List[Throughput] = []
    off: List[Throughput] = []
    for _ in range(rounds):
        ours.append(measure_throughput(run, "ours", events))
        if official:
            off.append(measure_throughput(run, "official", events))

    def median(results: List[Throughput]) -> Throughput:
        ranked = sorted(results, key=lambda t: t.per_second)
        return ranked[(len(ranked) - 1) // 2]

    return median(ours), (median(off) if off else None)


def measure_breakdown(run: Runner, events: int) -> List[Tuple[str, Latency]]:
    with DevServer() as server:
        child = run.child("ours", "breakdown", server.url, events)
        run.ready(child, "ours")
        child.go()
        msg = run.done(child)
        run.reap(child)
    return [(name, Latency.from_ns(ns)) for name, ns in msg["parts"].items()]


@dataclass
class Outage:
    tracked: int
    stored: int
    duplicates: int
    down_s: float
    errors: int
    error_kinds: Dict[str, int]
    track_failures: int
    shutdown_s: float
    shutdown_error: Optional[str]

    @property
    def lost(self) -> int:
        return max(0, self.tracked - self.stored)


def measure_outage(run: Runner, client: str, events: int, outage_s: float) -> Outage:
    with DevServer() as server:
        child = run.child(client, "outage", server.url, events)
        run.ready(child, client)
        child.go()
        first = child.next()  # paused at N/3: take the server down
        if "progress" not in first:
            raise ChildError(f"expected progress, got {first!r}")
        server.stop()
        down_at = time.perf_counter()
        child.go()
        second = child.next()  # paused at 2N/3: bring it back after the minimum outage
        if "progress" not in second:
            raise ChildError(f"expected progress, got {second!r}")
        time.sleep(max(0.0, down_at + outage_s - time.perf_counter()))
        server.start()
        down_s = time.perf_counter() - down_at
        child.go()
        msg = run.done(child)
        stored = server.stats()["events"]
        time.sleep(0.2)  # both clients' shutdown is synchronous; this only double-checks
        stored = max(stored, server.stats()["events"])
        rows = server.events()
        run.reap(child)
    keys = {(e["raw"]["user_id"], e["raw"]["payload"].get("seq")) for e in rows}
    result = Outage(
        tracked=msg["tracked"],
        stored=len(keys),
        duplicates=stored - len(keys),
        down_s=down_s,
        errors=msg["errors"],
        error_kinds=msg.get("error_kinds", {}),
        track_failures=msg["track_failures"],
        shutdown_s=msg["shutdown_s"],
        shutdown_error=msg.get("shutdown_error"),
    )
    print(
        f"  {client} outage: server down {down_s:.2f} s, stored {result.stored}/"
        f"{result.tracked}, lost {result.lost}, duplicates {result.duplicates}, "
        f"background errors {result.errors}",
        flush=True,
    )
    return result


# ----------------------------------------------------------------------------- report


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{platform.system()} {platform.release()}, {os.cpu_count()} cores ({cpu}), "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"
    )


def load() -> Tuple[str, bool]:
    """Background load now, and whether it is high enough to inflate tail latencies."""
    parts = []
    busy = False
    try:
        one, five = (float(x) for x in Path("/proc/loadavg").read_text().split()[:2])
        parts.append(f"load average {one:.2f} (1 min) {five:.2f} (5 min)")
        busy = one > 0.75 * (os.cpu_count() or 1)
    except (OSError, ValueError):
        pass
    try:
        some = Path("/proc/pressure/cpu").read_text().splitlines()[0].split()
        avg10 = float(some[1].split("=")[1])
        parts.append(f"CPU pressure {avg10:.0f}% (10 s)")
        busy = busy or avg10 > 20
    except (OSError, ValueError, IndexError):
        pass
    return ", ".join(parts) or "unknown", busy


def mark(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def render(
    floor: Latency,
    ours_lat: Latency,
    off_lat: Optional[Latency],
    ours_tp: Throughput,
    off_tp: Optional[Throughput],
    ours_out: Outage,
    off_out: Optional[Outage],
) -> str:
    def us(x: float) -> str:
        return f"{x:,.1f} µs"

    na = "n/a"
    rows: List[List[str]] = [
        ["metric", "ours", "official 0.2.2", "baseline", "ratio", "target", "result"],
    ]
    p50_ratio = ours_lat.p50 / floor.p50
    rows.append(
        [
            "track() p50",
            us(ours_lat.p50),
            us(off_lat.p50) if off_lat else na,
            f"floor {us(floor.p50)}",
            f"{p50_ratio:.2f}x floor",
            f"≤ {TARGET_P50_VS_FLOOR}x floor",
            mark(p50_ratio <= TARGET_P50_VS_FLOOR),
        ]
    )
    rows.append(
        [
            "track() p99",
            us(ours_lat.p99),
            us(off_lat.p99) if off_lat else na,
            f"floor {us(floor.p99)}",
            f"{ours_lat.p99 / floor.p99:.2f}x floor",
            f"≤ {TARGET_P99_US:.0f} µs",
            mark(ours_lat.p99 <= TARGET_P99_US),
        ]
    )
    rows.append(
        [
            "track() p99.9",
            us(ours_lat.p999),
            us(off_lat.p999) if off_lat else na,
            f"floor {us(floor.p999)}",
            f"{ours_lat.p999 / floor.p999:.2f}x floor",
            "(info)",
            "",
        ]
    )
    if off_tp is not None and off_tp.per_second > 0:
        ratio = ours_tp.per_second / off_tp.per_second
        rows.append(
            [
                "delivered events/s",
                f"{ours_tp.per_second:,.0f}",
                f"{off_tp.per_second:,.0f}",
                "official",
                f"{ratio:.2f}x official",
                f"≥ {TARGET_E2E_VS_OFFICIAL}x official",
                mark(ratio >= TARGET_E2E_VS_OFFICIAL and ours_tp.stored == ours_tp.tracked),
            ]
        )
    else:
        rows.append(
            [
                "delivered events/s",
                f"{ours_tp.per_second:,.0f}",
                na,
                "",
                "",
                f"≥ {TARGET_E2E_VS_OFFICIAL}x official",
                "n/a",
            ]
        )
    ours_ok = ours_out.lost == 0 and ours_out.duplicates == 0 and ours_out.track_failures == 0
    rows.append(
        [
            f"lost in outage ({ours_out.down_s:.1f} s)",
            f"{ours_out.lost:,} / {ours_out.tracked:,}",
            f"{off_out.lost:,} / {off_out.tracked:,}" if off_out else na,
            "tracked",
            "",
            "ours = 0",
            mark(ours_ok),
        ]
    )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def details(
    floor: Latency,
    ours_tp: Throughput,
    off_tp: Optional[Throughput],
    ours_out: Outage,
    off_out: Optional[Outage],
    ours_lat: Latency,
    off_lat: Optional[Latency],
) -> str:
    out = []
    out.append(
        f"bare INSERT floor: mean {floor.mean:.1f} µs, max {floor.max:,.0f} µs over "
        f"{floor.n:,} calls, in our latency child between blocks of track() calls"
    )
    for name, lat in (("ours", ours_lat), ("official", off_lat)):
        if lat:
            out.append(
                f"track() {name}: mean {lat.mean:.1f} µs, max {lat.max:,.0f} µs over "
                f"{lat.n:,} calls; the timing thread was preempted {lat.preempted:,} times"
            )
    for name, tp in (("ours", ours_tp), ("official", off_tp)):
        if tp:
            out.append(
                f"end-to-end {name}: {tp.stored:,}/{tp.tracked:,} stored in {tp.seconds:.2f} s "
                f"(tracking {tp.track_s:.2f} s + shutdown {tp.shutdown_s:.2f} s), "
                f"{tp.requests} HTTP requests"
            )
    for name, o in (("ours", ours_out), ("official", off_out)):
        if o:
            kinds = ", ".join(f"{k}: {v}" for k, v in sorted(o.error_kinds.items())) or "none"
            extra = f"; shutdown raised {o.shutdown_error}" if o.shutdown_error else ""
            out.append(
                f"outage {name}: stored {o.stored:,}/{o.tracked:,}, lost {o.lost:,}, "
                f"duplicates {o.duplicates}, on_error calls {o.errors} ({kinds}), "
                f"shutdown {o.shutdown_s:.2f} s{extra}"
            )
    return "\n".join(out)


def peers_section(ours: Latency, peers: Dict[str, Latency]) -> str:
    """The in-memory peers next to our durable track(): the claim the targets aim at."""
    lines = [
        "",
        "in-memory peer SDKs (same events and loop, default settings, uploading to a local"
        " sink that answers 200; nothing they hold survives a crash):",
    ]
    width = max(len(label) for label in peers)
    for label, lat in peers.items():
        lines.append(
            f"  {label.ljust(width)}  p50 {lat.p50:6.1f} µs  p99 {lat.p99:7.1f} µs   "
            f"our durable track() p50 = {ours.p50 / lat.p50:.2f}x theirs"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark our SegOpsClient against the bare-SQLite floor and the "
        "official segops==0.2.2 client (ratios measured in the same run)."
    )
    parser.add_argument(
        "--events", type=int, default=None, help="events per run (default 20000, 5000 with --quick)"
    )
    parser.add_argument(
        "--outage-seconds",
        type=float,
        default=None,
        help="minimum server downtime in the outage run (default 2.0, 1.0 quick)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="interleaved floor/ours/official latency rounds (default 3, 1 quick)",
    )
    parser.add_argument("--quick", action="store_true", help="smaller, faster run")
    parser.add_argument(
        "--no-official", action="store_true", help="skip the official client (no venv needed)"
    )
    parser.add_argument(
        "--no-peers",
        action="store_true",
        help="skip the Segment and PostHog SDKs' track() timings (no .venv-peers needed)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="cProfile our client's timed track() loop (printed at the end)",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also time the parts of our track() (floor, encoder, "
        "Spool.append, track with the flusher idle)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the raw results as JSON")
    args = parser.parse_args(argv)
    if args.events is None:
        args.events = 5000 if args.quick else 20000
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.outage_seconds is None:
        args.outage_seconds = 1.0 if args.quick else 2.0
    if args.events < 30 or args.rounds < 1:
        parser.error("--events must be at least 30 and --rounds at least 1")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    print(f"segops client benchmark -- {dt.datetime.now():%Y-%m-%d %H:%M}", flush=True)
    print(f"machine: {machine()}", flush=True)
    print(f"background load at start: {load()[0]}", flush=True)
    off_python: Optional[Path] = None
    if not args.no_official:
        try:
            off_python = official_python()
        except Exception as exc:  # no package index: still run our half
            print(f"official client unavailable ({exc}); running ours only", flush=True)
    peer_python: Optional[Path] = None
    if not args.no_peers:
        try:
            peer_python = peers_python()
        except Exception as exc:  # no package index: the peers are information only
            print(f"peer SDKs unavailable ({exc}); skipping them", flush=True)
    n = args.events
    with tempfile.TemporaryDirectory(prefix="segops-bench-") as tmp:
        run = Runner(
            Path(sys.executable), off_python, tmp, peers_python=peer_python, profile=args.profile
        )
        print(
            f"[1/3] track() latency: {n:,} calls each in {args.rounds} interleaved rounds "
            f"(after {WARMUP} warm-up calls per round)",
            flush=True,
        )
        floor, ours_lat, off_lat, peer_lat = measure_latencies(
            run, n, args.rounds, off_python is not None
        )
        print(
            f"[2/3] end-to-end: {n:,} events tracked, shutdown, stored by the server "
            f"({args.rounds} alternating rounds, median)",
            flush=True,
        )
        ours_tp, off_tp = measure_throughputs(run, n, args.rounds, off_python is not None)
        print(
            f"[3/3] outage: server down from N/3 to 2N/3 (≥ {args.outage_seconds:.1f} s)",
            flush=True,
        )
        ours_out = measure_outage(run, "ours", n, args.outage_seconds)
        off_out = measure_outage(run, "official", n, args.outage_seconds) if off_python else None
        breakdown = measure_breakdown(run, max(1000, n // 6)) if args.breakdown else []
    print()
    print(render(floor, ours_lat, off_lat, ours_tp, off_tp, ours_out, off_out))
    print()
    print(details(floor, ours_tp, off_tp, ours_out, off_out, ours_lat, off_lat))
    if peer_lat:
        print(peers_section(ours_lat, peer_lat))
    if breakdown:
        print("\nwhere our track() time goes (per call, same process, 3 interleaved rounds):")
        width = max(len(name) for name, _ in breakdown)
        for name, lat in breakdown:
            print(
                f"  {name.ljust(width)}  p50 {lat.p50:6.1f} µs  p99 {lat.p99:8.1f} µs  "
                f"mean {lat.mean:6.1f} µs"
            )
    print(f"\nevents per run: {n:,}; total wall time {time.perf_counter() - started:.0f} s")
    text, busy = load()
    print(f"background load at end: {text}")
    if busy:
        print(
            "warning: other processes were competing for the CPUs; tail latencies (p99,"
            " p99.9) include time this benchmark spent preempted. Re-run on a quiet machine."
        )
    for text in run.profiles:
        print("\n--- cProfile of our track() loop (tottime) ---")
        print(text.strip())
    if args.json:
        raw = {
            "machine": machine(),
            "events": n,
            "floor": floor.__dict__,
            "ours_latency": ours_lat.__dict__,
            "official_latency": off_lat.__dict__ if off_lat else None,
            "peer_latency": {label: lat.__dict__ for label, lat in peer_lat.items()},
            "ours_throughput": dict(ours_tp.__dict__, per_second=ours_tp.per_second),
            "official_throughput": (
                dict(off_tp.__dict__, per_second=off_tp.per_second) if off_tp else None
            ),
            "ours_outage": dict(ours_out.__dict__, lost=ours_out.lost),
            "official_outage": dict(off_out.__dict__, lost=off_out.lost) if off_out else None,
        }
        Path(args.json).write_text(json.dumps(raw, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
