"""Deadlines hold whatever the server or the user's callbacks do, and the user's callbacks
(get_user, on_error) cannot wedge, recurse into or escape from the client."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import pytest
import segops
from _support import (
    PK,
    SK,
    ErrorLog,
    exit_after_tracking,
    payload_ids,
    run_script,
    wait_until,
    write_script,
)
from segops.devserver import DevServer

MakeClient = Callable[..., segops.SegOpsClient]


class Trickler:
    """A server that answers each request one byte per 50 ms, ~15 s in all (each read
    arrives within any timeout the client uses, the whole answer within none), or, once
    ``trickle`` is cleared, at once. ``answered`` counts the requests answered at once."""

    def __init__(self) -> None:
        self.trickle = threading.Event()
        self.trickle.set()
        self.answered = 0
        self._stop = threading.Event()
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self._listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        body = b'{"queued": 1, "skipped": 0}' + b" " * 200
        reply = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        with conn, contextlib.suppress(OSError):  # the client may hang up first
            pending = b""
            while True:  # keep-alive: one answer per request
                pending = self._read_request(conn, pending)
                if pending is None:
                    return
                if not self.trickle.is_set():
                    self.answered += 1
                    conn.sendall(reply)
                    continue
                for i in range(len(reply)):
                    if self._stop.wait(0.05):
                        return
                    conn.sendall(reply[i : i + 1])

    @staticmethod
    def _read_request(conn: socket.socket, pending: bytes) -> Optional[bytes]:
        """Read one request (headers, Content-Length body); return the bytes after it."""
        while b"\r\n\r\n" not in pending:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            pending += chunk
        head, _, rest = pending.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            rest += chunk
        return rest[length:]


@pytest.fixture
def slow_server() -> Iterator[Trickler]:
    """A Trickler on 127.0.0.1, trickling until told otherwise."""
    server = Trickler()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def trickler(slow_server: Trickler) -> str:
    """The URL of a server that trickles every answer."""
    return slow_server.url


@pytest.mark.parametrize("call", ["flush", "shutdown"])
def test_a_trickling_answer_cannot_stretch_flush_or_shutdown(
    make_client: MakeClient, trickler: str, call: str
) -> None:
    """A server dribbling its answer (every read within the timeout) gets the caller's
    timeout, not minutes: FlushTimeout shortly after it, the event kept."""
    client = make_client(trickler)
    client.track(user_id="u", event_type="e")
    started = time.monotonic()
    with pytest.raises(segops.FlushTimeout):
        getattr(client, call)(timeout=1.0)
    assert time.monotonic() - started < 2.0


TRICKLED_AND_FORGOTTEN = """\
    import sys
    import segops

    client = segops.SegOpsClient(sys.argv[1], "sk_dev_secret", spool_path=sys.argv[2])
    client.track(user_id="u", event_type="forgotten")
    print("tracked", flush=True)
"""


def test_a_trickling_answer_cannot_hold_the_exit(
    trickler: str, tmp_path: Path, spool_file: Path
) -> None:
    """A script that forgets shutdown() exits within the exit flush's 2 s even then."""
    script = write_script(tmp_path, "forgot.py", TRICKLED_AND_FORGOTTEN)
    elapsed, code, stderr = exit_after_tracking(script, trickler, str(spool_file))
    assert code == 0, stderr
    assert elapsed < 3.5, f"exit took {elapsed:.1f}s"


SHUT_DOWN_WHILE_SENDING = """\
    import sys, time
    import segops

    client = segops.SegOpsClient(
        sys.argv[1], "sk_dev_secret", spool_path=sys.argv[2], batch_size=1, timeout=5
    )
    client.track(user_id="u", event_type="e")
    time.sleep(0.6)  # the flusher is inside its request now
    try:
        client.shutdown(timeout=0.1)
    except segops.SegOpsError:
        pass
    print("tracked", flush=True)
"""


def test_exit_does_not_wait_for_a_flusher_shutdown_left_behind(
    blackhole: str, tmp_path: Path, spool_file: Path
) -> None:
    """After shutdown(timeout=0.1) the process exits at once, even with the flusher still
    waiting on a server that never answers (the exit flush is for forgotten clients)."""
    script = write_script(tmp_path, "shut.py", SHUT_DOWN_WHILE_SENDING)
    elapsed, code, stderr = exit_after_tracking(script, blackhole, str(spool_file))
    assert code == 0, stderr
    assert elapsed < 1.2, f"exit took {elapsed:.1f}s"


def test_slow_get_user_cannot_stretch_flush(server: DevServer, make_client: MakeClient) -> None:
    """A get_user() that takes 10 s is cut off by flush(timeout=1), not waited for."""

    def get_user() -> segops.UserContext:
        time.sleep(10)
        return segops.UserContext(user_id="alice")

    client = make_client(key=PK, get_user=get_user)
    client.track(user_id="u", event_type="e")
    started = time.monotonic()
    with pytest.raises(segops.FlushTimeout):
        client.flush(timeout=1.0)
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("kind", ["raises", "wrong_type"])
def test_get_user_failures_reach_the_caller_as_delivery_errors(
    server: DevServer, make_client: MakeClient, kind: str
) -> None:
    """A get_user() that raises, or returns no UserContext, is a DeliveryError naming it."""

    def get_user() -> segops.UserContext:
        if kind == "raises":
            raise RuntimeError("no request context")
        return {"user_id": "alice"}  # type: ignore[return-value]

    client = make_client(key=PK, get_user=get_user)
    client.track(user_id="u", event_type="e")
    with pytest.raises(segops.DeliveryError, match=r"get_user\(\)"):
        client.flush(timeout=5)
    assert client.stats().pending == 1


TWO_CLIENTS_ONE_BROKEN = """\
    import sys
    import segops

    def get_user():
        raise RuntimeError("no request context")

    url, broken_path, healthy_path = sys.argv[1:4]
    # Both forgotten; the broken one's exit flush must not cost the healthy one its own.
    clients = [
        segops.SegOpsClient(url, "pk_dev_public", get_user=get_user, spool_path=broken_path),
        segops.SegOpsClient(url, "sk_dev_secret", spool_path=healthy_path),
    ]
    for client in clients:
        for i in range(5):
            client.track(user_id="u", event_type="e", payload={"i": i})
    print("tracked", flush=True)
"""


def test_a_failing_get_user_does_not_stop_other_clients_exit_flush(
    server: DevServer, tmp_path: Path
) -> None:
    """At exit, every forgotten client is flushed, whatever another one's get_user does."""
    script = write_script(tmp_path, "two.py", TWO_CLIENTS_ONE_BROKEN)
    broken, healthy = tmp_path / "broken.sqlite3", tmp_path / "healthy.sqlite3"
    _, code, stderr = exit_after_tracking(script, server.url, str(broken), str(healthy))
    assert code == 0, stderr
    assert "Exception ignored" not in stderr
    assert sorted(payload_ids(server)) == [0, 1, 2, 3, 4]


def test_context_manager_lets_the_applications_exception_through(tmp_path: Path) -> None:
    """Leaving a with-block on an exception raises that exception, not the final flush's."""
    dead = "http://127.0.0.1:9"
    with (
        pytest.raises(KeyError, match="the application's"),
        segops.SegOpsClient(
            dead, "sk_x", spool_path=tmp_path / "s.sqlite3", flush_interval=60
        ) as client,
    ):
        client.track(user_id="u", event_type="e")
        raise KeyError("the application's")


def test_flush_from_on_error_after_a_rejection_returns_promptly(
    server: DevServer, make_client: MakeClient
) -> None:
    """on_error runs after the batch's parts are acked: a flush() inside it does not wait
    for batches its own delivery still holds."""
    server.reject_when = lambda ev: "poison" if ev.get("payload", {}).get("i") == 0 else None
    took: List[float] = []

    def on_error(exc: BaseException) -> None:
        started = time.monotonic()
        with contextlib.suppress(segops.EventRejected):  # whichever flush waits first raises
            client.flush(timeout=5)
        took.append(time.monotonic() - started)

    client = make_client(on_error=on_error)
    for i in range(10):
        client.track(user_id="u", event_type="e", payload={"i": i})
    with contextlib.suppress(segops.EventRejected):
        client.flush(timeout=10)
    assert took and max(took) < 1.0
    assert sorted(payload_ids(server)) == list(range(1, 10))


def test_track_inside_on_error_with_batch_false_does_not_recurse(
    make_client: MakeClient, errors: ErrorLog
) -> None:
    """batch=False reports on the caller's thread; a handler that tracks only spools."""

    def on_error(exc: BaseException) -> None:
        errors(exc)
        client.track(user_id="sdk", event_type="sdk_error")

    client = make_client("http://127.0.0.1:9", batch=False, on_error=on_error)
    client.track(user_id="u", event_type="e")
    assert len(errors.items) == 1
    assert client.stats().pending == 2


def test_a_send_abandoned_by_shutdown_still_acks_its_batch(
    server: DevServer, spool_file: Path, make_client: MakeClient
) -> None:
    """shutdown() that gives up on a slow send leaves the spool open for it: the send acks
    when it ends, so the next client finds nothing leased and nothing to resend."""

    def slow_user() -> segops.UserContext:
        time.sleep(1.5)
        return segops.UserContext(user_id="alice")

    client = make_client(key=PK, get_user=slow_user)
    for i in range(5):
        client.track(user_id="u", event_type="e", payload={"i": i})
    with pytest.raises(segops.FlushTimeout):
        client.shutdown(timeout=0.3)
    wait_until(lambda: len(server.events()) == 5, timeout=10)
    successor = make_client()
    wait_until(lambda: successor.stats().in_flight == 0, timeout=5)
    assert successor.stats().pending == 0
    successor.flush(timeout=5)
    assert server.stats()["duplicates_dropped"] == 0


def test_flushes_that_time_out_leave_a_bounded_number_of_sends_behind(
    make_client: MakeClient, trickler: str
) -> None:
    """flush(timeout) calls against a trickling server, from 16 threads at once and then
    one after another: at most eight sends run per client; past that a caller waits for
    the oldest (no pile of threads)."""
    before = set(threading.enumerate())  # other tests' sends may still be ending
    client = make_client(trickler)

    def flush_one() -> None:
        client.track(user_id="u", event_type="e")
        with contextlib.suppress(segops.FlushTimeout):
            client.flush(timeout=0.1)

    callers = [threading.Thread(target=flush_one) for _ in range(16)]
    for caller in callers:
        caller.start()
    peak = 0
    while any(caller.is_alive() for caller in callers):
        sends = [t for t in set(threading.enumerate()) - before if t.name == "segops-send"]
        peak = max(peak, len(sends))
        time.sleep(0.005)
    for _ in range(10):
        flush_one()
    sends = [t for t in set(threading.enumerate()) - before if t.name == "segops-send"]
    assert 1 <= max(peak, len(sends)) <= 8


def test_a_send_left_behind_does_not_hold_back_the_next(
    make_client: MakeClient, slow_server: Trickler
) -> None:
    """batch=False: after one request trickles past its deadline, the next track() calls
    still send their own events at once (the stuck one keeps only its own batch)."""
    client = make_client(slow_server.url, batch=False, timeout=0.5, on_error=lambda e: None)
    client.track(user_id="u", event_type="stuck")
    slow_server.trickle.clear()
    for i in range(5):
        started = time.monotonic()
        client.track(user_id="u", event_type="e", payload={"i": i})
        assert time.monotonic() - started < 0.4, f"track #{i} waited for the stuck send"
    assert slow_server.answered == 5


def test_shutdown_delivers_the_rest_while_a_send_is_stuck(
    make_client: MakeClient, slow_server: Trickler
) -> None:
    """shutdown() sends every other event while an earlier send still trickles; only the
    stuck one stays (leased by that send, which acks it when it ends)."""
    client = make_client(slow_server.url)
    client.track(user_id="u", event_type="stuck")
    with pytest.raises(segops.FlushTimeout):
        client.flush(timeout=0.2)
    slow_server.trickle.clear()
    for i in range(10):
        client.track(user_id="u", event_type="e", payload={"i": i})
    with pytest.raises(segops.FlushTimeout, match="1 event"):
        client.shutdown(timeout=2)
    assert client.stats().delivered == 10


def test_flush_from_on_error_on_a_send_thread_works(
    server: DevServer, make_client: MakeClient
) -> None:
    """on_error runs on the send thread of a flush with a timeout; a flush() inside it
    runs there too instead of failing to wait for its own thread."""
    server.script([(200, {"queued": 0, "skipped": 1})])
    outcomes: List[str] = []

    def on_error(exc: BaseException) -> None:
        try:
            client.flush(timeout=5)
            outcomes.append("ok")
        except Exception as failure:
            outcomes.append(repr(failure))

    client = make_client(on_error=on_error)
    client.track(user_id="u", event_type="e")
    client.flush(timeout=5)
    client.track(user_id="u", event_type="e2")
    client.flush(timeout=5)
    assert outcomes == ["ok"]


def test_shutdown_during_a_flusher_request_closes_everything_when_it_ends(
    server: DevServer, make_client: MakeClient, spool_file: Path
) -> None:
    """The spool and HTTP pool are closed by the flusher that was inside a request when
    shutdown() gave up on it, once that request ends."""
    server.latency_ms = 800
    client = make_client(flush_interval=0.05, batch_size=1)
    client.track(user_id="u", event_type="e")
    wait_until(lambda: client.stats().in_flight == 1, timeout=5)  # the flusher's request
    with contextlib.suppress(segops.SegOpsError):
        client.shutdown(timeout=0.1)
    held = client._spool
    wal = Path(f"{spool_file}-wal")
    wait_until(lambda: repr(held).endswith("closed>") and not wal.exists(), timeout=10)


FORKED_SHUTDOWN = """\
    import os, sys, threading, time
    import segops

    client = segops.SegOpsClient(sys.argv[1], "sk_dev_secret", spool_path=sys.argv[2])
    client.track(user_id="u", event_type="e")
    held, release = threading.Event(), threading.Event()

    def hold_the_wake_lock():
        # As a parent thread inside wake() at the moment of the fork.
        with client._flusher._wake._cond:
            held.set()
            release.wait()

    threading.Thread(target=hold_the_wake_lock, daemon=True).start()
    held.wait()
    pid = os.fork()
    if pid == 0:
        try:
            client.shutdown(timeout=2)
        except segops.SegOpsError:
            pass
        os._exit(0)
    release.set()
    _, status = os.waitpid(pid, 0)
    print("child exit", os.waitstatus_to_exitcode(status))
    client.shutdown(timeout=5)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_child_can_shut_down_first_thing(
    server: DevServer, tmp_path: Path, spool_file: Path
) -> None:
    """A child whose first call is shutdown() does not touch the parent's flusher, whose
    event lock a parent thread may have held at the fork (it would wait forever)."""
    script = write_script(tmp_path, "forked.py", FORKED_SHUTDOWN)
    done = run_script(script, server.url, str(spool_file), timeout=30)
    assert done.returncode == 0, done.stderr
    assert "child exit 0" in done.stdout


def test_stats_racing_shutdown_returns_stats(server: DevServer, tmp_path: Path) -> None:
    """stats() on another thread while shutdown() closes the spool returns a snapshot (the
    final one once it exists), never a SpoolError."""
    failures: List[BaseException] = []
    for round_ in range(20):
        client = segops.SegOpsClient(
            server.url, SK, spool_path=tmp_path / f"s{round_}.sqlite3", flush_interval=60
        )
        client.track(user_id="u", event_type="e")
        done = threading.Event()

        def poll(client: segops.SegOpsClient = client, done: threading.Event = done) -> None:
            while not done.is_set():
                try:
                    client.stats()
                except BaseException as exc:
                    failures.append(exc)
                    return

        poller = threading.Thread(target=poll)
        poller.start()
        client.shutdown(timeout=5)
        done.set()
        poller.join()
    assert failures == []
