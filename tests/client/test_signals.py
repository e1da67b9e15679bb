"""A signal handler that calls into the client while the main thread is inside track()
(where a tracking loop spends nearly all its time) must not deadlock the process."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Tuple

import pytest
import segops
from _support import start_script, write_script
from segops.devserver import DevServer

import spool


def terminate_when_ready(script: Path, *args: str, after: float, timeout: float) -> str:
    """Start a child that prints "ready", SIGTERM it ``after`` seconds later, and return
    its stdout once it exited 0 (killed after ``timeout``: the handler hung)."""
    proc = start_script(script, *args)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(after)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    return out


def run_child(script: Path, *args: str, timeout: float) -> Tuple[str, str]:
    """Run a child script to its end (killed after ``timeout``): its stdout and stderr."""
    proc = start_script(script, *args)
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


HANDLER_CHILD = """\
    import os, signal, sys
    import segops

    url, path, call = sys.argv[1], sys.argv[2], sys.argv[3]
    client = segops.SegOpsClient(url, "sk_dev_secret", spool_path=path)
    tracked = 0

    def on_term(signum, frame):
        try:
            if call == "shutdown":
                client.shutdown(timeout=2)
            elif call == "flush":
                client.flush(timeout=2)
            else:
                client.stats()
        except segops.SegOpsError as exc:
            print("handler:", type(exc).__name__, flush=True)
        print("tracked", tracked, flush=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    print("ready", flush=True)
    while True:
        client.track(user_id="u", event_type="e", payload={"i": tracked})
        tracked += 1
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("call", ["shutdown", "flush", "stats"])
def test_signal_handler_calling_the_client_mid_track_returns(
    server: DevServer, tmp_path: Path, spool_file: Path, call: str
) -> None:
    """SIGTERM during a tracking loop: a handler calling shutdown/flush/stats finishes in
    about its timeout, and every event track() acknowledged is delivered or still spooled."""
    script = write_script(tmp_path, "handler.py", HANDLER_CHILD)
    out = terminate_when_ready(script, server.url, str(spool_file), call, after=0.5, timeout=15)
    tracked = int(out.split("tracked")[-1].split()[0])
    with spool.Spool(spool_file) as s:
        left = s.pending_through(s.last_id())
    assert tracked > 0 and len(server.events()) + left >= tracked


EXITING_CHILD = """\
    import signal, sys
    import segops

    client = segops.SegOpsClient(sys.argv[1], "sk_dev_secret", spool_path=sys.argv[2])
    tracked = 0

    def on_term(signum, frame):
        try:
            client.shutdown(timeout=None)
        except segops.FlushTimeout as exc:
            print("handler:", exc, flush=True)
        print("tracked", tracked, flush=True)
        sys.exit(0)  # unwinds the interrupted track(); the exit flush runs after it

    signal.signal(signal.SIGTERM, on_term)
    print("ready", flush=True)
    while True:
        client.track(user_id="u", event_type="e", payload={"i": tracked})
        tracked += 1
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("run", range(3))
def test_handler_shutdown_without_timeout_while_a_batch_is_in_flight(
    server: DevServer, tmp_path: Path, spool_file: Path, run: int
) -> None:
    """shutdown(timeout=None) in a handler that interrupted track() while the flusher has a
    batch in flight returns (the flusher cannot ack before track() goes on), and the exit
    flush lets that ack happen: nothing is sent twice by the next client."""
    server.latency_ms = 150  # the flusher is inside a request most of the time
    script = write_script(tmp_path, "exiting.py", EXITING_CHILD)
    out = terminate_when_ready(script, server.url, str(spool_file), after=0.6, timeout=20)
    tracked = int(out.split("tracked")[-1].split()[0])
    server.latency_ms = 0
    with segops.SegOpsClient(server.url, "sk_dev_secret", spool_path=spool_file) as client:
        client.flush(timeout=30)
    stored = [e["payload"]["i"] for e in server.events()]
    assert len(stored) == len(set(stored)) >= tracked
    assert server.stats()["duplicates_dropped"] == 0


RESETTING_CHILD = """\
    import os, signal, sys, time
    import segops

    current = {"uid": "u0"}
    client = segops.SegOpsClient(
        sys.argv[1], "pk_dev_public", spool_path=sys.argv[2], background=False, timeout=5,
        get_user=lambda: segops.UserContext(user_id=current["uid"]),
    )
    client.track(user_id="x", event_type="pending")

    def callers(frame):
        while frame is not None:
            yield frame.f_code.co_name
            frame = frame.f_back

    def on_term(signum, frame):
        names = list(callers(frame))[:4]
        if names[0] == "reset" or "reset" not in names:
            return  # not in a helper reset() calls under its lock: wait for the next tick
        signal.setitimer(signal.ITIMER_REAL, 0)
        started = time.monotonic()
        try:
            client.shutdown(timeout=float(sys.argv[3]))
            print("shutdown ok", round(time.monotonic() - started, 1), flush=True)
        except segops.SegOpsError as exc:
            print("shutdown failed:", type(exc).__name__, exc, flush=True)
        os._exit(0)

    signal.signal(signal.SIGALRM, on_term)
    signal.setitimer(signal.ITIMER_REAL, 0.01, 0.0002)
    while True:  # the application logs users in and out
        current["uid"] = "u" + str(time.monotonic())
        client.reset_session()
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("timeout", ["3", "inf"])
def test_handler_shutdown_inside_reset_session(
    server: DevServer, tmp_path: Path, spool_file: Path, timeout: str
) -> None:
    """A handler's shutdown() while the interrupted thread is inside reset_session() sends
    what is pending at once, instead of waiting for that thread's session lock."""
    script = write_script(tmp_path, "resetting.py", RESETTING_CHILD)
    out, err = run_child(script, server.url, str(spool_file), timeout, timeout=30)
    assert "shutdown ok" in out, out + err
    assert [e["event_type"] for e in server.events()] == ["pending"]


INTERRUPTED_SEND_CHILD = """\
    import signal, sys, time
    import segops

    client = segops.SegOpsClient(sys.argv[1], "sk_dev_secret", spool_path=sys.argv[2],
                                 background=False)
    client.track(user_id="x", event_type="e")

    def on_alarm(signum, frame):
        started = time.monotonic()
        try:
            client.shutdown(timeout=None)
        except segops.FlushTimeout:
            pass
        print("handler done", round(time.monotonic() - started, 1), flush=True)
        sys.exit(0)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    client.flush(timeout=None)  # inside its request when the alarm comes (the server is slow)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_handler_shutdown_interrupting_a_send_of_this_thread(
    server: DevServer, tmp_path: Path, spool_file: Path
) -> None:
    """shutdown(timeout=None) in a handler that interrupted this thread's own send does not
    wait for that batch's lease (35 s): it returns within a second or so."""
    server.latency_ms = 1500
    script = write_script(tmp_path, "interrupted_send.py", INTERRUPTED_SEND_CHILD)
    out, err = run_child(script, server.url, str(spool_file), timeout=25)
    assert "handler done" in out, out + err
    assert float(out.split("handler done")[1].split()[0]) < 3.0


RESET_WHILE_FLUSHER_MINTS_CHILD = """\
    import os, signal, sys, threading, time
    import segops

    current = {"uid": "u0"}
    client = segops.SegOpsClient(
        sys.argv[1], "pk_dev_public", spool_path=sys.argv[2], timeout=3, batch_size=1,
        flush_interval=0.05, get_user=lambda: segops.UserContext(user_id=current["uid"]),
    )
    session = client._session

    def tracker():
        while True:
            client.track(user_id="x", event_type="e")
            time.sleep(0.002)

    threading.Thread(target=tracker, daemon=True).start()

    def on_alarm(signum, frame):
        # Only inside reset_session()'s locked part while the flusher mints.
        if not session._lock._is_owned() or session._mint_lock.acquire(blocking=False):
            if session._mint_lock._is_owned():
                session._mint_lock.release()
            return
        signal.setitimer(signal.ITIMER_REAL, 0)
        started = time.monotonic()
        try:
            client.shutdown(timeout=None)
        except segops.FlushTimeout:
            pass
        print("handler done", round(time.monotonic() - started, 1), flush=True)
        os._exit(0)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.01, 0.0002)
    n = 0
    while True:
        n += 1
        current["uid"] = "u" + str(n)
        client.reset_session()
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_handler_shutdown_inside_reset_while_the_flusher_mints(
    server: DevServer, tmp_path: Path, spool_file: Path
) -> None:
    """shutdown(timeout=None) in a handler that interrupted reset_session() while the
    flusher mints (and waits for the lock the interrupted reset holds) returns: it mints
    alongside instead of waiting for that mint."""
    server.latency_ms = 20
    script = write_script(tmp_path, "reset_vs_mint.py", RESET_WHILE_FLUSHER_MINTS_CHILD)
    out, err = run_child(script, server.url, str(spool_file), timeout=60)
    assert "handler done" in out, out + err
    assert float(out.split("handler done")[1].split()[0]) < 3.0
