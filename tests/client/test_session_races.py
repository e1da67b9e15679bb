"""pk_ sessions under races: waiting behind a hung mint, and reset_session() during a mint."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest
import segops
from _support import FAST, PK, exit_after_tracking, write_script
from segops.devserver import DevServer

SESSION = "/api/auth/session/"
MakeClient = Callable[..., segops.SegOpsClient]


class Identity:
    """A get_user() whose user can change (login) and that signals each mint it feeds."""

    def __init__(self, uid: str) -> None:
        self.uid = uid
        self.minting = threading.Event()

    def __call__(self) -> segops.UserContext:
        self.minting.set()
        return segops.UserContext(user_id=self.uid)


@pytest.fixture
def slow_server() -> Iterator[DevServer]:
    """A DevServer on 127.0.0.1 that takes 4 s to answer anything (tests may lower it)."""
    srv = DevServer(latency_ms=4000)
    srv.start()
    try:
        yield srv
    finally:
        srv.latency_ms = 0
        srv.close()


@pytest.fixture
def pk_client(slow_server: DevServer, spool_file: Path) -> Iterator[MakeClient]:
    """Build pk_ clients on ``slow_server`` (flusher idle by default); shut down at teardown."""
    clients: List[segops.SegOpsClient] = []

    def make(get_user: Any, **kwargs: Any) -> segops.SegOpsClient:
        kwargs.setdefault("spool_path", spool_file)
        kwargs.setdefault("flush_interval", 60.0)
        kwargs.setdefault("batch_size", 1_000_000)
        kwargs.setdefault("timeout", 6.0)  # longer than the server's latency: mints hang
        kwargs.setdefault("retry_policy", FAST)
        kwargs.setdefault("on_error", lambda exc: None)
        client = segops.SegOpsClient(slow_server.url, PK, get_user=get_user, **kwargs)
        clients.append(client)
        time.sleep(0.05)  # the flusher's start-up cycle passes on an empty spool
        return client

    yield make
    for client in clients:
        with contextlib.suppress(segops.SegOpsError):
            client.shutdown(timeout=0.5)


def in_thread(fn: Callable[[], object]) -> Callable[[], None]:
    """Run ``fn`` on a thread; the returned join() re-raises whatever it raised."""
    failures: List[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # re-raised by join()
            failures.append(exc)

    thread = threading.Thread(target=run)
    thread.start()

    def join() -> None:
        thread.join(10)
        assert not thread.is_alive(), "the thread did not finish"
        if failures:
            raise failures[0]

    return join


def owners(srv: DevServer) -> Dict[str, str]:
    """Stored events as event_type -> the user the server attributed them to."""
    return {e["event_type"]: e["user_id"] for e in srv.events()}


@pytest.mark.timeout(30)
def test_flush_timeout_bounds_the_wait_for_a_hung_mint(pk_client: MakeClient) -> None:
    """flush(timeout=1) behind the flusher's hung mint gives up in ~1 s, events kept."""
    identity = Identity("alice")
    client = pk_client(identity, flush_interval=0.1)
    client.track(user_id="a", event_type="taken_by_flusher")
    assert identity.minting.wait(3), "the flusher did not start minting"
    client.track(user_id="a", event_type="for_flush")
    started = time.monotonic()
    with pytest.raises((segops.FlushTimeout, segops.DeliveryError)):
        client.flush(timeout=1.0)
    elapsed = time.monotonic() - started
    assert elapsed < 1.6, f"flush(timeout=1) took {elapsed:.2f}s"
    assert client.stats().pending + client.stats().in_flight == 2


FORGETFUL_PK_CHILD = """
import sys
import threading
import segops

minting = threading.Event()

def get_user():
    minting.set()
    return segops.UserContext(user_id="u")

client = segops.SegOpsClient(
    sys.argv[1], "pk_dev_public", get_user=get_user, spool_path=sys.argv[2],
    flush_interval=0.1, timeout=6.0,
)
client.track(user_id="u", event_type="taken_by_flusher")
assert minting.wait(3), "the flusher did not start minting"
client.track(user_id="u", event_type="left_for_exit")  # the exit flush waits on the mint
print("tracked", flush=True)
"""


@pytest.mark.timeout(30)
def test_pk_script_that_forgets_shutdown_exits_while_a_mint_hangs(
    slow_server: DevServer, spool_file: Path, tmp_path: Path
) -> None:
    """A pk_ child without shutdown() exits within ~3 s while its flusher's mint hangs."""
    script = write_script(tmp_path, "forgetful_pk.py", FORGETFUL_PK_CHILD)
    elapsed, code, stderr = exit_after_tracking(script, slow_server.url, str(spool_file))
    assert elapsed < 3.0, f"the process took {elapsed:.1f}s to exit"
    assert code == 0
    assert PK not in stderr


@pytest.mark.timeout(30)
def test_reset_during_mint_sends_later_events_as_new_user(
    slow_server: DevServer, pk_client: MakeClient
) -> None:
    """reset_session() while alice's mint is in flight: later events go as bob, earlier as alice."""
    slow_server.latency_ms = 400  # every request; lowering it mid-test would race
    identity = Identity("alice")
    client = pk_client(identity)
    client.track(user_id="x", event_type="before_reset")
    join = in_thread(lambda: client.flush(timeout=10))
    assert identity.minting.wait(3), "the flush did not start minting"
    identity.uid = "bob"
    client.reset_session()  # alice's mint is still waiting on the server
    client.track(user_id="x", event_type="after_reset")
    join()
    client.flush(timeout=5)
    assert owners(slow_server) == {"before_reset": "alice", "after_reset": "bob"}
    minted = [r.json for r in slow_server.requests if r.path == SESSION]
    assert minted == [{"user_id": "alice"}, {"user_id": "bob"}]


@pytest.mark.timeout(30)
def test_waiters_behind_a_stale_mint_share_one_new_mint(
    slow_server: DevServer, pk_client: MakeClient
) -> None:
    """Senders queued behind a mint that a reset made stale mint once, as the new user."""
    slow_server.latency_ms = 400  # every request; lowering it mid-test would race
    identity = Identity("alice")
    client = pk_client(identity, batch=False)
    first = in_thread(lambda: client.track(user_id="x", event_type="before_reset"))
    assert identity.minting.wait(3), "the inline send did not start minting"
    identity.uid = "bob"
    client.reset_session()
    joins = [
        in_thread(lambda n=n: client.track(user_id="x", event_type=f"after_reset_{n}"))
        for n in range(4)
    ]
    for join in [first, *joins]:
        join()
    assert slow_server.stats()["tokens_minted"] == 2
    expected = {"before_reset": "alice", **{f"after_reset_{n}": "bob" for n in range(4)}}
    assert owners(slow_server) == expected
