"""Child side of ``scripts/bench.py``: drives one SegOps client in its own process.

Run by the benchmark, never by hand. The same file runs under two interpreters:

* ``.venv/bin/python``          -- ``--client ours``: this project's ``segops``;
* ``.venv-official/bin/python`` -- ``--client official``: the official ``segops==0.2.2``
  (started with ``-I`` so nothing from this repository is importable there).

Stdlib only (plus the ``segops`` under test). It talks JSON lines: every line it writes to
stdout is one JSON object; it reads one line from stdin ("go") whenever it waits for the
parent. The DevServer lives in the parent process, so the server never competes with the
client for this process's GIL -- the same for both clients.

Modes:
  floor       bare sqlite3 autocommit INSERT of the same record (ours only)
  latency     time every track() call (client's background flusher running)
  throughput  track N as fast as possible, then shutdown (the parent times delivery)
  outage      like throughput, but pause at N/3 and 2N/3 so the parent can stop/start
              the server; report how many background errors the client saw
  breakdown   (ours only) where a track() call's time goes: the floor, the encoder,
              Spool.append and track() with the flusher idle, timed per call in
              interleaved rounds
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

WARMUP = 200


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def wait_go() -> None:
    line = sys.stdin.readline()
    if not line:  # the parent went away
        sys.exit(3)


def event_args(i: int) -> Dict[str, Any]:
    """A typical product-analytics event (same shape for both clients)."""
    return {
        "user_id": f"u-{i % 997:05d}",
        "event_type": "page_viewed",
        "payload": {
            "path": "/pricing",
            "referrer": "https://www.example.com/blog/launch",
            "plan": "pro",
            "seq": i,
        },
    }


# ----------------------------------------------------------------------------- clients


def make_client(args: argparse.Namespace, errors: List[str]) -> Any:
    import segops

    def on_error(exc: BaseException) -> None:
        errors.append(type(exc).__name__)

    if args.client == "official":
        return segops.SegOpsClient(args.url, args.key, on_error=on_error)
    kwargs: Dict[str, Any] = {"on_error": on_error, "spool_path": args.spool}
    if args.mode == "outage":
        # Default settings except a shorter retry cycle, so a cycle that started during the
        # outage gives its batch back soon after the server returns (events stay spooled
        # either way; this only bounds the benchmark's run time).
        kwargs["retry_policy"] = segops.RetryPolicy(attempts=3, timeout=2.0)
    return segops.SegOpsClient(args.url, args.key, **kwargs)


def shutdown(client: Any, args: argparse.Namespace) -> Optional[str]:
    """Final flush; returns the error text if it raised (the official client may)."""
    try:
        if args.client == "official":
            client.shutdown()  # no timeout parameter in 0.2.2
        else:
            client.shutdown(timeout=args.shutdown_timeout)
    except Exception as exc:  # reported, not fatal: the parent counts what was stored
        return f"{type(exc).__name__}: {exc}"
    return None


def client_info() -> Dict[str, str]:
    """Which segops this process runs (the distribution's version: the official 0.2.2
    wheel still says ``__version__ = "0.1.0"``)."""
    import importlib.metadata

    import segops

    try:
        version = importlib.metadata.version("segops")
    except importlib.metadata.PackageNotFoundError:
        version = str(getattr(segops, "__version__", "?"))
    return {
        "version": version,
        "module": os.path.dirname(segops.__file__ or "?"),
        "python": sys.version.split()[0],
    }


# ----------------------------------------------------------------------------- modes


def to_ns(values: List[float]) -> List[int]:
    """The floor's latencies in ns. ``floor_insert_latencies`` is documented as returning
    floats; seconds are expected, but a median no bare INSERT could take in seconds means
    the values are µs (or ns), so the unit is inferred from the median."""
    median = sorted(values)[len(values) // 2] if values else 0.0
    scale = 1e9 if median < 0.01 else (1e3 if median < 5000 else 1.0)
    return [int(x * scale) for x in values]


def our_record(i: int) -> bytes:
    """The exact bytes our client writes to the spool for ``event_args(i)``."""
    try:
        from segops._encoding import encode_event, event_from_args

        ev = event_args(i)
        wire = event_from_args(
            None,
            user_id=ev["user_id"],
            event_type=ev["event_type"],
            occurred_at=None,
            payload=ev["payload"],
        )
        return encode_event(wire)
    except ImportError:  # the private encoder moved: same JSON, built by hand
        from datetime import datetime, timezone

        wire = dict(event_args(i), occurred_at=datetime.now(timezone.utc).isoformat())
        return json.dumps(wire, separators=(",", ":"), ensure_ascii=False).encode()


def load_floor() -> Callable[[int, bytes], List[float]]:
    """``bench_spool.floor_insert_latencies``: the spool benchmark's floor, shared."""
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    from bench_spool import floor_insert_latencies  # type: ignore[import-not-found]

    return floor_insert_latencies  # type: ignore[no-any-return]


def context_switches() -> List[int]:
    """This thread's (involuntary, voluntary) context switches so far (Linux; else 0s).

    Involuntary ones are the scheduler preempting us for another runnable process or
    thread: on a busy machine they, not the client, make most of the tail latency."""
    try:
        import resource

        usage = resource.getrusage(getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF))
        return [usage.ru_nivcsw, usage.ru_nvcsw]
    except (ImportError, OSError, ValueError):
        return [0, 0]


#: calls per block: floor and track() blocks alternate, so both see the same machine state
LATENCY_BLOCK = 500


def timed_tracks(track: Callable[..., Any], events: List[Dict[str, Any]]) -> List[float]:
    """Seconds per ``track(user_id=..., event_type=..., payload=...)``, the documented call
    (not ``track(**event)``, whose dict unpacking would be timed too), in the same loop
    shape as ``FloorWriter.measure``."""
    calls = [(ev["user_id"], ev["event_type"], ev["payload"]) for ev in events]
    out: List[float] = []
    clock = time.perf_counter
    for user_id, event_type, payload in calls:
        t0 = clock()
        track(user_id=user_id, event_type=event_type, payload=payload)
        out.append(clock() - t0)
    return out


def run_latency(args: argparse.Namespace) -> None:
    """track() latencies while the flusher delivers; for ours, bare-INSERT floor blocks
    alternate with the track() blocks in this same process (same heap, same flusher
    thread, same moment), so the ratio compares like with like."""
    errors: List[str] = []
    client = make_client(args, errors)
    floor = None
    record = b""
    if args.client == "ours":
        load_floor()  # puts scripts/ on sys.path
        from bench_spool import FloorWriter

        floor = FloorWriter(Path(args.spool + "-floor.db"))
        record = our_record(0)
    emit(ready=True, record_bytes=len(record), **client_info())
    wait_go()
    events = [event_args(i) for i in range(WARMUP + args.events)]
    for ev in events[:WARMUP]:
        client.track(**ev)
    if floor is not None:
        floor.measure(WARMUP, record)
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
    lat: List[float] = []
    floor_lat: List[float] = []
    switches = context_switches()
    for start in range(WARMUP, len(events), LATENCY_BLOCK):
        block = events[start : start + LATENCY_BLOCK]
        if floor is not None:
            floor_lat += floor.measure(len(block), record)
        if profiler is not None:
            profiler.enable()
        lat += timed_tracks(client.track, block)
        if profiler is not None:
            profiler.disable()
    switches = [b - a for a, b in zip(switches, context_switches())]
    failure = shutdown(client, args)
    if floor is not None:
        floor.close()
    if profiler is not None:
        import io
        import pstats

        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
        sys.stderr.write(out.getvalue())
    emit(
        done=True,
        lat_ns=to_ns(lat),
        floor_ns=to_ns(floor_lat),
        errors=len(errors),
        shutdown_error=failure,
        preempted=switches[0],
        waited=switches[1],
    )


def run_throughput(args: argparse.Namespace) -> None:
    errors: List[str] = []
    client = make_client(args, errors)
    events = [event_args(i) for i in range(args.events)]
    emit(ready=True, **client_info())
    wait_go()
    t0 = time.perf_counter()
    for ev in events:
        client.track(**ev)
    t1 = time.perf_counter()
    failure = shutdown(client, args)
    t2 = time.perf_counter()
    emit(
        done=True,
        tracked=len(events),
        track_s=t1 - t0,
        shutdown_s=t2 - t1,
        errors=len(errors),
        shutdown_error=failure,
    )


def run_outage(args: argparse.Namespace) -> None:
    errors: List[str] = []
    client = make_client(args, errors)
    n = args.events
    events = [event_args(i) for i in range(n)]
    pauses = {n // 3, (2 * n) // 3}
    emit(ready=True, **client_info())
    wait_go()
    tracked = 0
    track_failures = 0
    t0 = time.perf_counter()
    for i, ev in enumerate(events):
        if i in pauses:
            emit(progress=i, errors=len(errors))
            wait_go()
        try:
            client.track(**ev)
            tracked += 1
        except Exception:  # a durable track() must not fail; count it if it does
            track_failures += 1
    t1 = time.perf_counter()
    failure = shutdown(client, args)
    t2 = time.perf_counter()
    kinds: Dict[str, int] = {}
    for name in errors:
        kinds[name] = kinds.get(name, 0) + 1
    emit(
        done=True,
        tracked=tracked,
        track_failures=track_failures,
        track_s=t1 - t0,
        shutdown_s=t2 - t1,
        errors=len(errors),
        error_kinds=kinds,
        shutdown_error=failure,
    )


def floor_after_python_work(path: str, events: List[Dict[str, Any]]) -> List[float]:
    """The floor's INSERT, timed alone, but with a json.dumps of the event just before it.

    Shows what any Python work between two commits does to the commit itself (caches and
    branch predictors no longer hold only SQLite's code), which a tight INSERT loop never
    pays and every real ``track()`` caller does.
    """
    from bench_spool import FloorWriter  # type: ignore[import-not-found]

    writer = FloorWriter(Path(path))
    record = our_record(0)
    out: List[float] = []
    clock = time.perf_counter
    try:
        for n, ev in enumerate(events):
            json.dumps(ev)
            t0 = clock()
            writer.cur.execute("INSERT INTO records(data) VALUES (?)", (record,))
            out.append(clock() - t0)
            if n % 1000 == 999:  # untimed, like the floor's own checkpoints
                writer.ckpt.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    finally:
        writer.close()
    return out


def run_breakdown(args: argparse.Namespace) -> None:
    import segops
    from segops._encoding import encode_event, event_from_args, now_iso

    import spool

    floor = load_floor()
    clock = time.perf_counter_ns
    events = [event_args(i) for i in range(args.events)]
    record = our_record(0)
    parts: Dict[str, List[int]] = {}
    emit(ready=True, **client_info())
    wait_go()
    base = os.path.dirname(args.spool)
    for r in range(3):
        parts.setdefault("floor: bare sqlite3 INSERT", []).extend(to_ns(floor(len(events), record)))
        lat = [0] * len(events)
        for n, ev in enumerate(events):
            t0 = clock()
            encode_event(event_from_args(None, occurred_at=None, **ev))
            lat[n] = clock() - t0
        parts.setdefault("segops/_encoding.py: event_from_args + encode_event", []).extend(lat)
        lat = [0] * len(events)
        for n in range(len(events)):
            t0 = clock()
            now_iso()
            lat[n] = clock() - t0
        parts.setdefault("  of which _encoding.py:now_iso", []).extend(lat)
        parts.setdefault("floor INSERT alone, after an untimed json.dumps", []).extend(
            to_ns(floor_after_python_work(os.path.join(base, f"warm-{r}.db"), events))
        )
        store = spool.Spool(os.path.join(base, f"breakdown-{r}.db"), max_bytes=1024**3)
        lat = [0] * len(events)
        for n in range(len(events)):
            t0 = clock()
            store.append(record)
            lat[n] = clock() - t0
        store.close()
        parts.setdefault("spool/_spool.py: Spool.append (client's settings)", []).extend(lat)
        client = segops.SegOpsClient(
            args.url,
            args.key,
            spool_path=os.path.join(base, f"breakdown-client-{r}.db"),
            batch_size=10**9,
            flush_interval=10**6,
        )
        lat = to_ns(timed_tracks(client.track, events))
        client.shutdown(timeout=args.shutdown_timeout)
        parts.setdefault("segops/_client.py: track(), flusher idle", []).extend(lat)
        for name, values in paired_round(args, os.path.join(base, f"paired-{r}"), events):
            parts.setdefault(name, []).extend(values)
        for name, values in cold_round(os.path.join(base, f"cold-{r}.db"), events):
            parts.setdefault(name, []).extend(values)
    emit(done=True, parts=parts)


def paired_round(
    args: argparse.Namespace, prefix: str, events: List[Dict[str, Any]]
) -> List[Tuple[str, List[int]]]:
    """Call by call: a floor INSERT, a track(), json.dumps + a second floor INSERT, and the
    leanest possible durable track(): our encoder + a bare INSERT, no client code at all.

    Sequential blocks of the same operation drift by tens of percent on a VM; pairing
    every track() with a floor INSERT timed just before it gives a steadier ratio.
    """
    import segops
    from segops._encoding import encode_common

    from bench_spool import FloorWriter

    floor, after_json = FloorWriter(Path(prefix + "-f1.db")), FloorWriter(Path(prefix + "-f2.db"))
    lean = FloorWriter(Path(prefix + "-f3.db"))
    client = segops.SegOpsClient(
        args.url, args.key, spool_path=prefix + "-c.db", batch_size=10**9, flush_interval=10**6
    )
    record = our_record(0)
    clock = time.perf_counter_ns
    lat_floor, lat_track, lat_after, lat_lean = [], [], [], []
    try:
        for n, ev in enumerate(events):
            user_id, event_type, payload = ev["user_id"], ev["event_type"], ev["payload"]
            t0 = clock()
            floor.cur.execute("INSERT INTO records(data) VALUES (?)", (record,))
            t1 = clock()
            client.track(user_id=user_id, event_type=event_type, payload=payload)
            t2 = clock()
            json.dumps(ev)
            t3 = clock()
            after_json.cur.execute("INSERT INTO records(data) VALUES (?)", (record,))
            t4 = clock()
            encoded = encode_common(user_id, event_type, payload)
            lean.cur.execute("INSERT INTO records(data) VALUES (?)", (encoded,))
            t5 = clock()
            lat_floor.append(t1 - t0)
            lat_track.append(t2 - t1)
            lat_after.append(t4 - t3)
            lat_lean.append(t5 - t4)
            if n % 1000 == 999:  # untimed, like the floor's own checkpoints
                for writer in (floor, after_json, lean):
                    writer.ckpt.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    finally:
        client.shutdown(timeout=args.shutdown_timeout)
        for writer in (floor, after_json, lean):
            writer.close()
    return [
        ("paired: floor INSERT", lat_floor),
        ("paired: track(), flusher idle", lat_track),
        ("paired: floor INSERT after json.dumps", lat_after),
        ("paired: encode_common + floor INSERT, no client", lat_lean),
    ]


def cold_round(path: str, events: List[Dict[str, Any]]) -> List[Tuple[str, List[int]]]:
    """Our encoder's parts as a real track() meets them: each timed just after an untimed
    floor INSERT, whose SQLite code and system calls have evicted the encoder's code and
    data from the CPU caches (a timeit loop keeps them hot and reads 2-3x less)."""
    from segops._encoding import _to_json, encode_common, now_iso

    from bench_spool import FloorWriter

    writer = FloorWriter(Path(path))
    record = our_record(0)
    clock = time.perf_counter_ns
    steps: List[Tuple[str, Callable[[Dict[str, Any]], Any]]] = [
        ("nothing (the timer itself)", lambda ev: None),
        (
            "segops/_encoding.py: encode_common",
            lambda ev: encode_common(ev["user_id"], ev["event_type"], ev["payload"]),
        ),
        ("  of which now_iso", lambda ev: now_iso()),
        ("  of which the payload's C JSON encoding", lambda ev: _to_json(ev["payload"])),
    ]
    out: Dict[str, List[int]] = {name: [] for name, _ in steps}
    try:
        for n, ev in enumerate(events):
            for name, step in steps:
                writer.cur.execute("INSERT INTO records(data) VALUES (?)", (record,))
                t0 = clock()
                step(ev)
                out[name].append(clock() - t0)
            if n % 250 == 249:  # untimed, like the floor's own checkpoints
                writer.ckpt.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    finally:
        writer.close()
    return [(f"cold, after an INSERT: {name}", values) for name, values in out.items()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=("latency", "throughput", "outage", "breakdown"))
    parser.add_argument("--client", choices=("ours", "official"), default="ours")
    parser.add_argument("--url", default="")
    parser.add_argument("--key", default="sk_dev_secret")
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--spool", default=None)
    parser.add_argument("--shutdown-timeout", type=float, default=60.0)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    runners = {
        "latency": run_latency,
        "throughput": run_throughput,
        "outage": run_outage,
        "breakdown": run_breakdown,
    }
    runners[args.mode](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
