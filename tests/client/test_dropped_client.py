"""A client the program drops without shutdown(): its events still go out, and its thread,
SQLite connections and HTTP pool are released instead of leaking."""

from __future__ import annotations

import gc
import os
import threading
import time
from pathlib import Path
from typing import Iterator, Set

import pytest
import segops
from _support import (
    FAST,
    SK,
    ErrorLog,
    free_port,
    payload_ids,
    run_script,
    wait_until,
    write_script,
)
from segops.devserver import DevServer

import spool


@pytest.fixture
def no_cycle_collector() -> Iterator[None]:
    """Reference counting alone must free a dropped client: no cycle may hold it."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def open_fds() -> Set[str]:
    return set(os.listdir("/proc/self/fd"))


def segops_threads() -> int:
    return sum(
        t.name.startswith(("segops-flusher", "spool-checkpoint")) for t in threading.enumerate()
    )


def drop_tracking_client(
    url: str, spool_file: Path, first: int, count: int, **kwargs: object
) -> None:
    """Track ``count`` events on a fresh client and return without shutting it down."""
    client = segops.SegOpsClient(
        url, SK, spool_path=spool_file, flush_interval=60.0, retry_policy=FAST, **kwargs
    )
    for i in range(first, first + count):
        client.track(user_id="u", event_type="dropped", payload={"i": i})


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts file descriptors in /proc")
def test_dropped_clients_deliver_and_release_threads_and_files(
    server: DevServer, tmp_path: Path, no_cycle_collector: None
) -> None:
    """Twenty clients dropped in a loop deliver every event and leave no thread or fd behind."""
    threads_before, fds_before = segops_threads(), open_fds()
    for n in range(20):
        drop_tracking_client(server.url, tmp_path / f"s{n % 2}.sqlite3", first=n * 5, count=5)
    wait_until(lambda: len(payload_ids(server)) == 100, timeout=10)
    wait_until(lambda: segops_threads() == threads_before, timeout=5)
    leaked = open_fds() - fds_before
    assert not leaked, [
        os.readlink(f"/proc/self/fd/{fd}") for fd in leaked if os.path.exists(f"/proc/self/fd/{fd}")
    ]
    assert sorted(payload_ids(server)) == list(range(100))


def test_dropped_client_with_server_down_keeps_events_for_the_next(
    server: DevServer, spool_file: Path, no_cycle_collector: None
) -> None:
    """When its last pass fails, a dropped client reports, ends, and leaves the events spooled."""
    errors = ErrorLog()
    threads_before = segops_threads()
    drop_tracking_client(f"http://127.0.0.1:{free_port()}", spool_file, 0, 7, on_error=errors)
    wait_until(lambda: segops_threads() == threads_before, timeout=10)
    assert errors.of(segops.DeliveryError), "the failed pass went unreported"
    with spool.Spool(spool_file) as s:
        assert s.pending_through(s.last_id()) == 7
    with segops.SegOpsClient(server.url, SK, spool_path=spool_file, retry_policy=FAST) as client:
        client.flush(timeout=10)
    assert sorted(payload_ids(server)) == list(range(7))


@pytest.mark.parametrize("background", [True, False])
def test_dropped_client_closes_its_spool(
    server: DevServer, spool_file: Path, no_cycle_collector: None, background: bool
) -> None:
    """The spool's connections are closed once the client is gone (with or without a flusher)."""
    client = segops.SegOpsClient(
        server.url, SK, spool_path=spool_file, retry_policy=FAST, background=background
    )
    client.track(user_id="u", event_type="e", payload={"i": 1})
    held = client._spool
    del client
    wal = Path(f"{spool_file}-wal")  # removed when the last connection closes
    wait_until(lambda: repr(held).endswith("closed>") and not wal.exists(), timeout=10)


ONE_LINER = """\
    import sys
    import segops

    url, path = sys.argv[1], sys.argv[2]
    for i in range(3):
        # A client made and dropped per call, as some web handlers do.
        segops.SegOpsClient(url, "{key}", spool_path=path, flush_interval=60).track(
            user_id="u", event_type="one_liner", payload={{"i": i}}
        )
    print("tracked", flush=True)
"""


# 1.2 s, not more: the last client's pass starts just before exit and must end within the
# exit flush's 2 s, thread start and connection included, also on a loaded 2-core CI machine
# (at 1.5 s it failed 1 run in 6 there at load average 4).
@pytest.mark.parametrize("latency_ms", [0, 1200], ids=["fast-server", "slow-server"])
def test_script_dropping_clients_delivers_before_exit(
    server: DevServer, tmp_path: Path, spool_file: Path, latency_ms: int
) -> None:
    """Events of clients dropped at once are sent by the exit flush, like a forgotten client's,
    within its 2 s also when the server takes over a second to answer."""
    server.latency_ms = latency_ms
    script = write_script(tmp_path, "one_liner.py", ONE_LINER.format(key=SK))
    done = run_script(script, server.url, str(spool_file))
    assert done.returncode == 0, done.stderr
    assert sorted(payload_ids(server)) == [0, 1, 2]


@pytest.mark.timeout(15)
def test_release_never_runs_inside_the_finalizer(spool_file: Path) -> None:
    """A dropped client collected by the cycle GC on a thread holding spool locks (here:
    the checkpoint lock) is released later, elsewhere: no self-deadlock."""
    client = segops.SegOpsClient("http://127.0.0.1:9", SK, spool_path=spool_file, background=False)
    client.track(user_id="u", event_type="e")
    client.cycle = client  # type: ignore[attr-defined]  # only the cycle GC frees it
    held = client._spool
    del client
    started = time.monotonic()
    with held._ckpt_lock:  # as the checkpoint thread holds it mid-pass
        gc.collect()
    # (A deadlock inside the finalizer ends only when pytest-timeout interrupts it.)
    assert time.monotonic() - started < 5
    wait_until(lambda: repr(held).endswith("closed>"), timeout=10)


def test_client_dropped_during_a_long_backoff_is_released_at_once(
    server: DevServer, spool_file: Path, no_cycle_collector: None
) -> None:
    """A dropped client whose flusher waits out an auth failure (5 s and more) ends now."""
    errors = ErrorLog()
    threads_before = segops_threads()
    client = segops.SegOpsClient(
        server.url, "sk_wrong_key", spool_path=spool_file, on_error=errors, retry_policy=FAST
    )
    client.track(user_id="u", event_type="e")
    client._flusher.wake()
    wait_until(lambda: errors.of(segops.AuthError), timeout=5)
    time.sleep(0.1)  # into the backoff
    del client
    wait_until(lambda: segops_threads() == threads_before, timeout=2)
