"""``segops demo``: the client keeps every event through an outage and a SIGKILL.

It starts the dev server on a free loopback port, tracks events from several threads and
from a worker process into one spool, takes the server down (events pile up on disk),
SIGKILLs the worker, brings the server back, replays, and counts on the server side.
Exit 0 only when nothing was lost (and nothing was stored twice).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any, Dict, List, Set

from ._cli_drain import Progress, drain_spool, human_age, human_bytes, spool_status
from ._client import SegOpsClient
from ._errors import SegOpsError
from ._paths import redact

KEY = "sk_demo_0123456789abcdef"
WORKER_DELAY = 0.002  # seconds between the worker's track() calls
LIVE_SECONDS = 1.2  # server up, events flow
TRACK_SECONDS = 4.0  # how long the threads keep tracking in total
REPLAY_TIMEOUT = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``segops demo`` flags."""
    parser.add_argument(
        "--threads", type=int, default=4, metavar="N", help="tracking threads (default 4)"
    )
    parser.add_argument(
        "--events",
        type=int,
        default=1000,
        metavar="N",
        help="events per thread (default 1000)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (spool, server db)"
    )


class _Say:
    """Friendly progress lines, flushed at once (the demo is watched live)."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._start = time.monotonic()

    def __call__(self, text: str) -> None:
        stamp = f"[{time.monotonic() - self._start:5.1f}s]"
        self._stream.write(f"{stamp} {text}\n")
        self._stream.flush()

    def plain(self, text: str = "") -> None:
        self._stream.write(text + "\n")
        self._stream.flush()


class _Worker:
    """A child process tracking into the shared spool; it prints a count after each track()."""

    def __init__(self, url: str, spool_path: Path) -> None:
        env = dict(os.environ, SEGOPS_API_KEY=KEY)  # never on the command line
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "segops._demo", "worker", url, str(spool_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        self.acknowledged = 0
        self.ready = threading.Event()
        self._reader = threading.Thread(target=self._read, name="demo-worker-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if line == "ready":
                self.ready.set()
            elif line.isdigit():
                self.acknowledged = int(line)
        self.ready.set()

    def kill(self) -> int:
        """SIGKILL; returns how many track() calls had returned (read to the last line)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        return self.acknowledged


def _worker_main(url: str, spool_path: str) -> int:
    """The child: track forever, acknowledging each event only after track() returned.

    Its own flusher never sends (the spool is empty when it starts and the batch size is
    out of reach): the main process's client delivers for everyone on the spool.
    """
    client = SegOpsClient(
        url,
        os.environ["SEGOPS_API_KEY"],
        spool_path=spool_path,
        flush_interval=3600.0,
        batch_size=10**9,
        on_error=lambda exc: None,
    )
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    n = 0
    while True:
        client.track(
            user_id=f"worker-{os.getpid()}",
            event_type="demo_worker_event",
            payload={"demo_id": f"w-{n}"},
        )
        n += 1
        out.write(f"{n}\n")
        out.flush()
        time.sleep(WORKER_DELAY)


def _track_thread(
    client: SegOpsClient,
    index: int,
    count: int,
    start: float,
    done: List[str],
    failures: List[BaseException],
) -> None:
    step = TRACK_SECONDS / max(1, count)
    for n in range(count):
        wait = start + n * step - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        demo_id = f"t{index}-{n}"
        try:
            client.track(
                user_id=f"user-{n % 50}",
                event_type="demo_event",
                payload={"demo_id": demo_id, "thread": index},
            )
        except Exception as exc:  # reported by the main thread, never a thread traceback
            failures.append(exc)
            return
        done.append(demo_id)  # list.append is atomic; only acknowledged ids are counted


def _status_line(path: Path) -> str:
    s = spool_status(path)
    return (
        f"pending {s.pending:,}, leased {s.leased:,}, dead letters {s.dead_letters}, "
        f"oldest {human_age(s.oldest_age)}, file {human_bytes(s.file_bytes)}"
    )


def run(ns: argparse.Namespace) -> int:
    """Run the demo; 0 only when every acknowledged event reached the server exactly once."""
    if ns.threads < 1 or ns.events < 1:
        sys.stderr.write("segops demo: error: --threads and --events must be >= 1\n")
        return 2
    from ._devserver import DevServer

    say = _Say(sys.stdout)
    tmp = Path(tempfile.mkdtemp(prefix="segops-demo-"))
    server = DevServer(db_path=tmp / "server.sqlite3", secret_key=KEY)
    workers: List[_Worker] = []
    try:
        server.start()
        return _run(ns, say, server, tmp, workers)
    finally:
        for worker in workers:
            worker.kill()
        server.close()
        if ns.keep:
            say.plain(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _run(ns: argparse.Namespace, say: _Say, server: Any, tmp: Path, workers: List[_Worker]) -> int:
    url = server.url
    spool_path = tmp / "spool.sqlite3"
    say.plain("segops demo: durable delivery through an outage and a crash")
    say(f"dev server listening on {url} (key {redact(KEY)}); spool {spool_path}")

    worker = _Worker(url, spool_path)
    workers.append(worker)
    errors: List[BaseException] = []
    client = SegOpsClient(
        url,
        KEY,
        spool_path=spool_path,
        flush_interval=0.2,
        batch_size=100,
        on_error=errors.append,
    )
    if not worker.ready.wait(15) or worker.proc.poll() is not None:
        say("the worker process did not start")
        return 1
    start = time.monotonic()
    done: List[List[str]] = [[] for _ in range(ns.threads)]
    failures: List[BaseException] = []
    threads = [
        threading.Thread(
            target=_track_thread,
            args=(client, i, ns.events, start, done[i], failures),
            daemon=True,
        )
        for i in range(ns.threads)
    ]
    for t in threads:
        t.start()
    say(
        f"{ns.threads} threads and 1 worker process (pid {worker.proc.pid}) are tracking into "
        "one spool"
    )

    time.sleep(LIVE_SECONDS)
    say(f"server up: {server.stats()['events']:,} events stored so far")

    server.latency_ms = 250.0  # so the outage cuts requests the server is still handling
    time.sleep(0.15)
    server.stop()
    say("server DOWN (requests in flight are cut) - tracking goes on, events pile up on disk")
    for _ in range(2):
        time.sleep(0.6)
        say(f"  status: {_status_line(spool_path)}")

    acked = worker.kill()
    say(f"SIGKILL worker process {worker.proc.pid}: it had acknowledged {acked:,} events")
    say(f"  status: {_status_line(spool_path)}")

    for t in threads:
        t.join()
    track_seconds = time.monotonic() - start
    tracked_threads = sum(len(d) for d in done)
    say(f"threads finished: {tracked_threads:,} events tracked in {track_seconds:.1f}s")
    if failures:
        say(f"  {len(failures)} thread(s) stopped early: {failures[0]}")
    with contextlib.suppress(SegOpsError):
        client.shutdown(timeout=0.0)
    say(f"the app exits with events still on disk: {_status_line(spool_path)}")

    server.latency_ms = 0.0
    server.start()
    say(f"server back on {server.url}; replaying the spool (same as `segops replay`)")
    last = [0.0]

    def progress(p: Progress) -> None:
        if time.monotonic() - last[0] >= 0.5:
            last[0] = time.monotonic()
            say(f"  replay: sent {p.sent:,}, remaining {p.remaining:,}, {p.rate:,.0f} events/s")

    result = drain_spool(spool_path, url, KEY, timeout=REPLAY_TIMEOUT, on_progress=progress)
    say(
        f"replay done: delivered {result.delivered:,} in {result.seconds:.2f}s, "
        f"{result.left} left" + (f" ({result.error})" if result.error else "")
    )
    say(f"  status: {_status_line(spool_path)}")

    expected: Set[str] = {i for d in done for i in d} | {f"w-{n}" for n in range(acked)}
    stored: Dict[str, int] = {}
    for event in server.events():
        demo_id = event["payload"].get("demo_id")
        if isinstance(demo_id, str):
            stored[demo_id] = stored.get(demo_id, 0) + 1
    delivered = len(expected & stored.keys())
    lost = len(expected - stored.keys())
    twice = sum(c - 1 for c in stored.values() if c > 1)
    extra = len(stored.keys() - expected)
    dups = server.stats()["duplicates_dropped"]
    tracked = len(expected)

    rows = [
        (
            "tracked (acknowledged)",
            f"{tracked:,}",
            f"{tracked_threads:,} from threads + {acked:,} from the killed worker",
        ),
        ("delivered", f"{delivered:,}", "found on the server by their demo_id"),
        ("duplicates dropped", f"{dups:,}", "batches resent under the same Idempotency-Key"),
        ("stored twice", f"{twice:,}", "must be 0"),
        ("lost", f"{lost:,}", "must be 0"),
        (
            "replay",
            f"{result.rate:,.0f}/s",
            "sent from the spool (tracking is paced by the demo, not timed)",
        ),
    ]
    say.plain()
    width = max(len(r[0]) for r in rows)
    num = max(len(r[1]) for r in rows)
    for name, value, note in rows:
        say.plain(f"  {name.ljust(width)}  {value.rjust(num)}   {note}")
    if extra:
        say.plain(f"  (+{extra} event(s) the worker spooled but had not acknowledged yet)")
    say.plain()
    ok = lost == 0 and twice == 0 and not failures
    if ok:
        say.plain("OK: every acknowledged event arrived exactly once.")
    else:
        say.plain("FAILED: events were lost or stored twice.")
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "worker":
        try:
            sys.exit(_worker_main(sys.argv[2], sys.argv[3]))
        except KeyboardInterrupt:
            sys.exit(130)
    sys.stderr.write("usage: python -m segops._demo worker URL SPOOL (internal)\n")
    sys.exit(2)
