"""Durability: outages, kill -9, fork, several processes on one spool, and never hanging."""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Callable, List

import httpx
import pytest
import segops
from _support import (
    FAST,
    PK,
    SK,
    ErrorLog,
    exit_after_tracking,
    free_port,
    ingestion,
    lease_left,
    payload_ids,
    run_script,
    start_script,
    wait_until,
    write_script,
)
from segops.devserver import DevServer

import spool

MakeClient = Callable[..., segops.SegOpsClient]


def spooled(path: Path) -> int:
    """Records still in the spool file (pending or leased), read with a fresh Spool."""
    with spool.Spool(path) as s:
        return s.pending_through(s.last_id())


def assert_exactly_once(server: DevServer, expected: List[object]) -> None:
    """Every expected payload id is stored exactly once, and nothing else."""
    ids = payload_ids(server)
    dupes = [k for k, n in collections.Counter(ids).items() if n > 1]
    assert not dupes, f"delivered more than once: {dupes[:10]}"
    missing = set(expected) - set(ids)
    assert not missing, f"{len(missing)} event(s) lost, e.g. {sorted(missing, key=str)[:10]}"
    assert sorted(ids, key=str) == sorted(expected, key=str)


# -- outage ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_outage_of_seconds_loses_nothing(
    server: DevServer, make_client: MakeClient, errors: ErrorLog
) -> None:
    """Server down for ~3 s while tracking; after restart flush() delivers all exactly once."""
    client = make_client(flush_interval=0.1, batch_size=10, on_error=errors)
    server.stop()
    n, end = 0, time.monotonic() + 3.0
    while time.monotonic() < end:
        client.track(user_id="u", event_type="during_outage", payload={"i": n})
        n += 1
        time.sleep(0.005)
    assert n > 100
    stats = client.stats()
    assert stats.pending + stats.in_flight == n and stats.delivered == 0
    assert errors.of(segops.DeliveryError), "the flusher did not report the outage"
    server.start()
    client.flush(timeout=30)
    assert_exactly_once(server, list(range(n)))
    assert client.stats().pending == 0 and client.stats().delivered == n


@pytest.mark.timeout(90)
def test_flusher_recovers_by_itself_after_outage(
    server: DevServer, make_client: MakeClient
) -> None:
    """Without flush(), the background flusher delivers everything once the server is back."""
    client = make_client(flush_interval=0.2, batch_size=5, on_error=lambda exc: None)
    server.stop()
    for i in range(40):
        client.track(user_id="u", event_type="e", payload={"i": i})
    time.sleep(2.0)
    server.start()
    wait_until(lambda: len(server.events()) >= 40, timeout=70, interval=0.2)
    assert_exactly_once(server, list(range(40)))


@pytest.mark.timeout(120)
def test_a_spool_that_filled_its_disk_in_an_outage_drains_once_the_server_is_back(
    server: DevServer, make_client: MakeClient, small_disk: Path
) -> None:
    """track() raises SpoolFull before the disk is full, so delivery can still run after."""
    client = make_client(spool_path=small_disk / "s.sqlite3", on_error=lambda exc: None)
    server.stop()
    tracked = 0
    with pytest.raises(segops.SpoolFull, match="min_free_bytes"):
        while tracked < 100_000:
            client.track(user_id="u", event_type="e", payload={"i": tracked, "pad": "y" * 300})
            tracked += 1
    server.start()
    client.flush(timeout=60)
    assert_exactly_once(server, list(range(tracked)))
    wait_until(lambda: _tracks(client), timeout=10, interval=0.1)


def _tracks(client: segops.SegOpsClient) -> bool:
    try:
        client.track(user_id="u", event_type="after")
    except segops.SpoolFull:
        return False
    return True


# -- kill -9 -----------------------------------------------------------------------------

TRACKING_CHILD = """
import sys
import time
import segops

url, spool_path, flush_interval, batch_size, settle = sys.argv[1:6]
client = segops.SegOpsClient(
    url, "sk_dev_secret", spool_path=spool_path, flush_interval=float(flush_interval),
    batch_size=int(batch_size), timeout=1.0, on_error=lambda exc: None,
    retry_policy=segops.RetryPolicy(attempts=2, timeout=0.5, wait_initial=0.05, wait_max=0.1),
)
time.sleep(float(settle))  # let the flusher's start-up cycle pass on an empty spool
i = 0
while True:
    client.track(user_id="child", event_type="tick", payload={"i": i})
    print(i, flush=True)
    i += 1
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("situation", ["unreachable", "slow"])
def test_kill_9_then_new_client_delivers_every_acknowledged_event(
    server: DevServer, make_client: MakeClient, spool_file: Path, tmp_path: Path, situation: str
) -> None:
    """SIGKILL a child mid-tracking; a new client on its spool delivers all it acknowledged."""
    script = write_script(tmp_path, "tracker.py", TRACKING_CHILD)
    if situation == "unreachable":  # nobody listens; flusher idle, so nothing is leased
        args = [f"http://127.0.0.1:{free_port()}", str(spool_file), "3600", "1000000000", "0.3"]
    else:  # a slow server and a busy flusher: the kill lands during requests
        server.latency_ms = 150
        args = [server.url, str(spool_file), "0.02", "20", "0"]
    proc = start_script(script, *args)
    acked: List[int] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        while len(acked) < 400 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acked.append(int(line))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        rest = proc.stdout.read()  # what the child printed after our last readline()
        err = proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
    acked += [int(x) for x in rest.split()]
    assert proc.returncode == -signal.SIGKILL
    assert len(acked) >= 400, err
    server.latency_ms = 0
    client = make_client()
    # A batch leased by the killed child comes back when its lease expires.
    client.flush(timeout=60)
    ids = payload_ids(server)
    dupes = [k for k, n in collections.Counter(ids).items() if n > 1]
    assert not dupes, f"delivered more than once: {dupes[:10]}"
    missing = set(acked) - set(ids)
    assert not missing, f"acknowledged but lost: {sorted(missing)[:10]}"
    # at most the one event whose track() committed but whose print() was cut off
    assert len(ids) - len(acked) <= 1
    assert spooled(spool_file) == 0


# -- fork --------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_fork_after_create_four_children_os_exit(
    server: DevServer, make_client: MakeClient
) -> None:
    """4 forked children track and os._exit; the parent delivers everything, none twice."""
    client = make_client(flush_interval=0.05, batch_size=10)
    client.track(user_id="parent", event_type="before_fork", payload={"i": "p-0"})
    pids = []
    for c in range(4):
        pid = os.fork()
        if pid == 0:  # child: never return into pytest
            code = 1
            try:
                for i in range(50):
                    client.track(
                        user_id=f"child-{c}", event_type="forked", payload={"i": f"{c}-{i}"}
                    )
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    client.track(user_id="parent", event_type="after_fork", payload={"i": "p-1"})
    client.flush(timeout=60)
    expected = ["p-0", "p-1"] + [f"{c}-{i}" for c in range(4) for i in range(50)]
    assert_exactly_once(server, expected)
    # A child killed by os._exit between a 2xx and its ack leaves that batch to be resent
    # after its lease: allowed, but only whole and under the same key (the server drops it).
    first_body = {}
    # Only answered requests count: a child that os._exit()s while sending leaves the server
    # a truncated request (e.g. headers, no body), which it refuses and stores nothing of.
    for req in (r for r in ingestion(server) if 200 <= r.status < 300):
        key = req.headers["idempotency-key"]
        assert first_body.setdefault(key, req.body) == req.body, "a key was reused for a new body"
    assert server.stats()["duplicates_dropped"] <= 4


@pytest.mark.timeout(60)
def test_forked_child_flusher_makes_no_start_up_pass(
    server: DevServer, make_client: MakeClient
) -> None:
    """A forked child's first track() starts its flusher without the start-up pass: pool
    children (Celery, gunicorn) that pass would claim every process's events and often be
    ended mid-send, so the batch would go out twice. The parent's flusher delivers them."""
    client = make_client(flush_interval=3.0, batch_size=1_000)  # after its start-up pass
    client.track(user_id="parent", event_type="e", payload={"i": "p"})  # pending, no wake
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            client.track(user_id="child", event_type="e", payload={"i": "c"})
            time.sleep(1.0)  # a start-up pass would send "p" within milliseconds
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert ingestion(server) == []
    client.flush(timeout=10)
    assert_exactly_once(server, ["p", "c"])


@pytest.mark.timeout(60)
def test_fork_child_delivers_with_its_own_flush(server: DevServer, make_client: MakeClient) -> None:
    """A forked child can flush() on its own connection; the parent keeps working."""
    client = make_client()
    client.track(user_id="parent", event_type="e", payload={"i": "p"})
    client.flush(timeout=10)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            client.track(user_id="child", event_type="e", payload={"i": "c"})
            client.flush(timeout=10)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert sorted(payload_ids(server)) == ["c", "p"]
    client.track(user_id="parent", event_type="e", payload={"i": "p2"})
    client.flush(timeout=10)
    assert_exactly_once(server, ["p", "c", "p2"])


@pytest.mark.timeout(90)
def test_fork_with_a_transport_passed_in_never_shares_a_socket(
    server: DevServer, make_client: MakeClient
) -> None:
    """A user's httpx.HTTPTransport, warm before fork(): parent and child both send through
    it at once, and the server never sees a garbled request (nothing dead-lettered)."""
    client = make_client(transport=httpx.HTTPTransport())
    client.track(user_id="u", event_type="e", payload={"i": "warm"})
    client.flush(timeout=10)  # a keep-alive socket now sits in the transport's pool

    def send(who: str) -> None:
        for i in range(150):
            client.track(user_id="u", event_type="e", payload={"i": f"{who}-{i}"})
            client.flush(timeout=10)

    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            send("child")
            code = 0
        finally:
            os._exit(code)
    send("parent")
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert client.stats().dead_letters == 0
    assert server.stats()["rejected"] == 0
    expected = ["warm"] + [f"{w}-{i}" for w in ("parent", "child") for i in range(150)]
    assert_exactly_once(server, expected)


# -- several processes on one spool --------------------------------------------------------

SHARING_CHILD = """
import sys
import segops

url, spool_path, tag = sys.argv[1:4]
client = segops.SegOpsClient(
    url, "sk_dev_secret", spool_path=spool_path, flush_interval=0.02, batch_size=15,
    timeout=2.0,
    retry_policy=segops.RetryPolicy(attempts=3, timeout=1.5, wait_initial=0.05, wait_max=0.2),
)
for i in range(300):
    client.track(user_id=tag, event_type="shared", payload={"i": f"{tag}-{i}"})
client.shutdown(timeout=30)
print("done")
"""


@pytest.mark.timeout(90)
def test_two_processes_share_one_spool(server: DevServer, spool_file: Path, tmp_path: Path) -> None:
    """Two processes with clients on one spool file: each event is delivered exactly once."""
    script = write_script(tmp_path, "sharer.py", SHARING_CHILD)
    procs = [start_script(script, server.url, str(spool_file), tag) for tag in ("a", "b")]
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert out.strip() == "done"
    expected = [f"{t}-{i}" for t in ("a", "b") for i in range(300)]
    assert_exactly_once(server, expected)
    assert server.stats()["duplicates_dropped"] == 0
    assert spooled(spool_file) == 0


# -- never hangs -----------------------------------------------------------------------------

FORGETFUL_CHILD = """
import sys
import segops

url, spool_path, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = segops.SegOpsClient(url, "sk_live_0123456789abcdef", spool_path=spool_path)
others = [  # more forgotten clients must not stretch the exit
    segops.SegOpsClient(url, "sk_live_0123456789abcdef", spool_path=f"{spool_path}.{n}")
    for n in range(1, count)
]
for other in others:
    other.track(user_id="u", event_type="e")
for i in range(100):
    client.track(user_id="u", event_type="e", payload={"i": i})
print("tracked", flush=True)
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("clients", [1, 20])
@pytest.mark.parametrize("where", ["dead_port", "blackhole"])
def test_script_that_forgets_shutdown_exits_quickly(
    where: str, clients: int, blackhole: str, spool_file: Path, tmp_path: Path
) -> None:
    """With the server down or mute, a script without shutdown() exits within ~3 s, with
    one forgotten client or twenty."""
    url = f"http://127.0.0.1:{free_port()}" if where == "dead_port" else blackhole
    script = write_script(tmp_path, "forgetful.py", FORGETFUL_CHILD)
    elapsed, code, stderr = exit_after_tracking(script, url, str(spool_file), str(clients))
    assert elapsed < 3.0, f"the process took {elapsed:.1f}s to exit"
    assert code == 0
    assert spooled(spool_file) == 100
    assert "sk_live_0123456789abcdef" not in stderr


@pytest.mark.parametrize("where", ["dead_port", "blackhole"])
@pytest.mark.parametrize("call", ["flush", "shutdown"])
def test_flush_and_shutdown_respect_their_timeout(
    where: str, call: str, blackhole: str, spool_file: Path
) -> None:
    """flush/shutdown(timeout=1) with the server down raise within budget; events stay."""
    url = f"http://127.0.0.1:{free_port()}" if where == "dead_port" else blackhole
    client = segops.SegOpsClient(
        url, SK, spool_path=spool_file, flush_interval=60, on_error=lambda exc: None
    )
    try:
        for i in range(10):
            client.track(user_id="u", event_type="e", payload={"i": i})
        started = time.monotonic()
        with pytest.raises((segops.FlushTimeout, segops.DeliveryError)) as info:
            getattr(client, call)(timeout=1.0)
        elapsed = time.monotonic() - started
        assert elapsed < 1.6, f"{call}(timeout=1) took {elapsed:.2f}s"
        # A mute server: the deadline, not the retry policy, ends it. (A refused port may
        # run out of attempts first: 5 quick refusals with short jittered waits.)
        if where == "blackhole":
            assert isinstance(info.value, segops.FlushTimeout), repr(info.value)
            assert info.value.pending == 10
    finally:
        with contextlib.suppress(segops.SegOpsError):
            client.shutdown(timeout=0.5)
    assert spooled(spool_file) == 10


@pytest.mark.parametrize("call", ["flush", "shutdown"])
def test_a_request_left_at_the_callers_deadline_still_acks_its_batch(
    server: DevServer, make_client: MakeClient, spool_file: Path, call: str
) -> None:
    """flush/shutdown(timeout) shorter than the server's answer raise FlushTimeout on time,
    but the request they leave behind is not cut off at their deadline: it gets its 2xx
    (within the client's timeout) and acks, so the next sender has nothing to send again."""
    server.latency_ms = 1500
    client = make_client(timeout=5.0)
    for i in range(10):
        client.track(user_id="u", event_type="e", payload={"i": i})
    started = time.monotonic()
    with pytest.raises(segops.FlushTimeout):
        getattr(client, call)(timeout=0.5)
    assert time.monotonic() - started < 1.2
    wait_until(lambda: len(server.events()) == 10, timeout=5)  # stored by the first request
    server.latency_ms = 0
    # The next sender, on the same spool: it waits for the abandoned request's ack (the
    # batch stays leased until then) and finds nothing left to send.
    make_client(settle=False).flush(timeout=5)
    assert spooled(spool_file) == 0
    assert_exactly_once(server, list(range(10)))
    assert len(ingestion(server)) == 1, "the batch was sent again"
    assert server.stats()["duplicates_dropped"] == 0


def test_next_client_sends_what_shutdown_left(
    server: DevServer, make_client: MakeClient, spool_file: Path
) -> None:
    """Events a timed-out shutdown left on disk are delivered by the next client."""
    first = segops.SegOpsClient(
        f"http://127.0.0.1:{free_port()}",
        SK,
        spool_path=spool_file,
        flush_interval=60,
        retry_policy=FAST,
        on_error=lambda exc: None,
    )
    for i in range(25):
        first.track(user_id="u", event_type="e", payload={"i": i})
    with pytest.raises(segops.DeliveryError):
        first.shutdown(timeout=1.0)
    second = make_client()
    second.flush(timeout=10)
    assert_exactly_once(server, list(range(25)))


def test_forgotten_client_flushes_at_exit(
    server: DevServer, spool_file: Path, tmp_path: Path
) -> None:
    """A reachable server gets the events of a script that never calls shutdown()."""
    script = write_script(
        tmp_path, "forgot.py", FORGETFUL_CHILD.replace("sk_live_0123456789abcdef", SK)
    )
    result = run_script(script, server.url, str(spool_file), "1")
    assert result.returncode == 0, result.stderr
    assert sorted(payload_ids(server)) == list(range(100))
    assert spooled(spool_file) == 0


ONE_SERVER_DOWN_AT_EXIT = """
import sys, time
import segops

down_url, up_url, down_first = sys.argv[1], sys.argv[2], sys.argv[3] == "down_first"
spools = {"down": sys.argv[4], "up": sys.argv[5]}
urls = {"down": down_url, "up": up_url}
order = ["down", "up"] if down_first else ["up", "down"]
clients = {
    name: segops.SegOpsClient(
        urls[name], "sk_dev_secret", spool_path=spools[name], flush_interval=60
    )
    for name in order
}
time.sleep(0.2)  # the flushers' start-up passes are over: only the exit flush sends these
for client in clients.values():
    for i in range(5):
        client.track(user_id="u", event_type="e", payload={"i": i})
print("tracked", flush=True)
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("down_first", [True, False], ids=["down_first", "down_second"])
@pytest.mark.parametrize("where", ["dead_port", "blackhole"])
def test_a_server_down_at_exit_does_not_starve_other_clients_exit_flush(
    server: DevServer, blackhole: str, tmp_path: Path, where: str, down_first: bool
) -> None:
    """Two forgotten clients, one whose server is down or mute: the other's events are all
    sent by the exit flush whichever was made first, and the exit still takes ~2 s."""
    down = f"http://127.0.0.1:{free_port()}" if where == "dead_port" else blackhole
    down_spool, up_spool = tmp_path / "down.sqlite3", tmp_path / "up.sqlite3"
    script = write_script(tmp_path, "two.py", ONE_SERVER_DOWN_AT_EXIT)
    order = "down_first" if down_first else "down_second"
    elapsed, code, stderr = exit_after_tracking(
        script, down, server.url, order, str(down_spool), str(up_spool)
    )
    assert code == 0, stderr
    assert elapsed < 3.0, f"the process took {elapsed:.1f}s to exit"
    assert sorted(payload_ids(server)) == [0, 1, 2, 3, 4]
    assert spooled(up_spool) == 0
    assert spooled(down_spool) == 5
    assert "events left in the spool at exit" in stderr  # the down client's, logged
    assert "Exception ignored" not in stderr


def test_track_never_waits_for_a_mute_server(blackhole: str, spool_file: Path) -> None:
    """batch_size=1 wakes the flusher on every call, yet track() stays fast (no inline send)."""
    client = segops.SegOpsClient(
        blackhole,
        SK,
        spool_path=spool_file,
        batch_size=1,
        flush_interval=0.05,
        timeout=5.0,
        on_error=lambda exc: None,
    )
    try:
        worst = 0.0
        for i in range(200):
            started = time.monotonic()
            client.track(user_id="u", event_type="e", payload={"i": i})
            worst = max(worst, time.monotonic() - started)
        assert worst < 0.25, f"a track() call took {worst:.3f}s"
    finally:
        with contextlib.suppress(segops.SegOpsError):
            client.shutdown(timeout=0.5)
    assert spooled(spool_file) == 200


@pytest.mark.parametrize(("key", "requests"), [(SK, 1), (PK, 4)], ids=["sk_", "pk_"])
def test_a_batch_in_flight_is_leased_for_its_slowest_cycle(
    server: DevServer, make_client: MakeClient, spool_file: Path, key: str, requests: int
) -> None:
    """Another process may take a batch over only after its sender's slowest possible cycle:
    the retry budget plus the last attempt's requests (up to 4 with pk_) at full timeout."""
    server.latency_ms = 1000
    user = {"get_user": lambda: segops.UserContext(user_id="u")} if key == PK else {}
    client = make_client(key=key, timeout=2.0, flush_interval=0.05, batch_size=1, **user)
    client.track(user_id="u", event_type="e")
    wait_until(lambda: lease_left(spool_file) is not None, timeout=5, interval=0.01)
    left = lease_left(spool_file)
    longest = FAST.timeout + requests * 2.0 + 5.0
    assert left is not None and longest - 1.0 < left <= longest


NO_THREADS_AT_EXIT = """
import atexit, sys, threading, time
import segops

client = segops.SegOpsClient(sys.argv[1], "sk_dev_secret", spool_path=sys.argv[2],
                             flush_interval=60)
time.sleep(0.2)  # the flusher's start-up pass is over: only the exit flush sends these
for i in range(5):
    client.track(user_id="u", event_type="e", payload={"i": i})


def no_new_threads(self):  # what Python 3.12.0 and 3.12.1 do once atexit hooks run
    raise RuntimeError("can't create new thread at interpreter shutdown")


# Registered after segops's hook, so it runs first (atexit is last in, first out).
atexit.register(lambda: setattr(threading.Thread, "start", no_new_threads))
print("tracked", flush=True)
"""


def test_the_exit_flush_sends_inline_where_no_thread_can_start_at_exit(
    server: DevServer, spool_file: Path, tmp_path: Path
) -> None:
    """Python 3.12.0/3.12.1 refuse new threads at exit: the exit flush then sends on the
    main thread, within its bound, instead of giving up on every event."""
    script = write_script(tmp_path, "no_threads.py", NO_THREADS_AT_EXIT)
    elapsed, code, stderr = exit_after_tracking(script, server.url, str(spool_file))
    assert code == 0, stderr
    assert elapsed < 3.0
    assert sorted(payload_ids(server)) == [0, 1, 2, 3, 4], stderr
    assert spooled(spool_file) == 0


SIGTERM_TWICE = """
import signal, sys
import segops

signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))
client = segops.SegOpsClient(sys.argv[1], "sk_dev_secret", spool_path=sys.argv[2])
client.track(user_id="u", event_type="e")
print("tracked", flush=True)
signal.pause()  # the first SIGTERM ends this; the second lands in the exit flush
"""


def test_a_second_sigterm_during_the_exit_flush_ends_it_quietly(
    blackhole: str, spool_file: Path, tmp_path: Path
) -> None:
    """A SIGTERM handler calling sys.exit(), signalled again while the exit flush waits on
    a mute server: the process ends at once, with a warning, not an atexit traceback."""
    script = write_script(tmp_path, "sigterm_twice.py", SIGTERM_TWICE)
    proc = start_script(script, blackhole, str(spool_file))
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "tracked"
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.7)  # inside the exit flush (2 s against a mute server)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert time.monotonic() - started < 1.0
    assert proc.returncode == 3
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert "exit flush interrupted" in stderr
    assert spooled(spool_file) == 1
