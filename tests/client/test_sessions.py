"""pk_ keys: the session handshake (mint, single-flight, refresh, 401 re-mint, reset)."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest
import segops
from _support import FAST, PK, ErrorLog, ingestion
from segops.devserver import DevServer

SESSION = "/api/auth/session/"


@pytest.fixture
def make_server() -> Iterator[Callable[..., DevServer]]:
    """Start DevServers with custom settings; all closed at teardown."""
    servers: List[DevServer] = []

    def make(**kwargs: Any) -> DevServer:
        srv = DevServer(**kwargs)
        srv.start()
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.close()


@pytest.fixture
def pk_client(spool_file: Path) -> Iterator[Callable[..., segops.SegOpsClient]]:
    """Build pk_ clients (flusher idle by default); all shut down at teardown."""
    clients: List[segops.SegOpsClient] = []

    def make(srv: DevServer, get_user: Any, **kwargs: Any) -> segops.SegOpsClient:
        kwargs.setdefault("spool_path", spool_file)
        kwargs.setdefault("flush_interval", 60.0)
        kwargs.setdefault("batch_size", 1_000_000)
        kwargs.setdefault("timeout", 3.0)
        kwargs.setdefault("retry_policy", FAST)
        client = segops.SegOpsClient(srv.url, PK, get_user=get_user, **kwargs)
        clients.append(client)
        time.sleep(0.05)  # the flusher's start-up cycle passes on an empty spool
        return client

    yield make
    for client in clients:
        with contextlib.suppress(segops.SegOpsError):
            client.shutdown(timeout=1.0)


def user(uid: str) -> Callable[[], segops.UserContext]:
    return lambda: segops.UserContext(user_id=uid)


def sessions(srv: DevServer) -> List[Any]:
    return [r for r in srv.requests if r.path == SESSION]


def test_mint_on_first_use_then_bearer(
    make_server: Callable[..., DevServer], pk_client: Callable[..., segops.SegOpsClient]
) -> None:
    """No request before delivery; then one mint with ApiKey pk_, and events go as Bearer."""
    srv = make_server()
    client = pk_client(srv, user("alice"))
    client.track(user_id="alice", event_type="opened")
    assert srv.requests == []
    client.flush(timeout=10)
    (mint,) = sessions(srv)
    assert mint.headers["authorization"] == f"ApiKey {PK}"
    assert mint.headers["content-type"] == "application/json"
    assert mint.json == {"user_id": "alice"}
    (batch,) = ingestion(srv)
    assert batch.headers["authorization"].startswith("Bearer ")
    assert PK not in batch.headers["authorization"]
    assert srv.requests.index(mint) < srv.requests.index(batch)
    (event,) = srv.events()
    assert (event["user_id"], event["auth"]) == ("alice", "bearer")


def test_server_replaces_user_id_with_uid(
    make_server: Callable[..., DevServer], pk_client: Callable[..., segops.SegOpsClient]
) -> None:
    """Events are attributed to get_user()'s identity, whatever user_id track() got."""
    srv = make_server()
    client = pk_client(srv, user("alice"))
    client.track(user_id="typed-by-app", event_type="e")
    client.flush(timeout=10)
    (event,) = srv.events()
    assert event["user_id"] == "alice"
    assert event["sent_user_id"] == "typed-by-app"


def test_anonymous_identity(
    make_server: Callable[..., DevServer], pk_client: Callable[..., segops.SegOpsClient]
) -> None:
    """A UserContext with only anonymous_id mints with exactly that field."""
    srv = make_server()
    client = pk_client(srv, lambda: segops.UserContext(anonymous_id="anon-7"))
    client.track(user_id="x", event_type="e")
    client.flush(timeout=10)
    assert sessions(srv)[0].json == {"anonymous_id": "anon-7"}
    assert srv.events()[0]["user_id"] == "anon:anon-7"


def test_signed_user_id(
    make_server: Callable[..., DevServer], pk_client: Callable[..., segops.SegOpsClient]
) -> None:
    """A key that requires signatures accepts sign_user_id() fields passed via get_user."""
    secret = "ab" * 32
    srv = make_server(hmac_secret=secret, require_signed=True)
    client = pk_client(srv, lambda: segops.UserContext(**segops.sign_user_id(secret, "carol")))
    client.track(user_id="carol", event_type="e")
    client.flush(timeout=10)
    body = sessions(srv)[0].json
    assert set(body) == {"user_id", "user_id_sig", "user_id_ts"}
    assert isinstance(body["user_id_ts"], int)
    assert srv.events()[0]["user_id"] == "carol"


@pytest.mark.timeout(60)
def test_single_flight_mint_with_concurrent_threads(
    make_server: Callable[..., DevServer], pk_client: Callable[..., segops.SegOpsClient]
) -> None:
    """8 threads sending at once (batch=False, slow server) share one mint."""
    srv = make_server(latency_ms=300)
    client = pk_client(srv, user("alice"), batch=False)
    barrier = threading.Barrier(8)
    failures: List[BaseException] = []

    def worker(n: int) -> None:
        try:
            barrier.wait()
            client.track(user_id="alice", event_type="concurrent", payload={"i": n})
        except BaseException as exc:  # surfaced below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not failures
    client.flush(timeout=30)
    assert srv.stats()["tokens_minted"] == 1
    assert len(sessions(srv)) == 1
    assert sorted(e["payload"]["i"] for e in srv.events()) == list(range(8))


@pytest.mark.timeout(30)
def test_token_reused_then_refreshed_60s_before_expiry(
    make_server: Callable[..., DevServer], pk_client: Callable[..., segops.SegOpsClient]
) -> None:
    """token_ttl=63: reused within ~3 s (63 - 60 s skew), minted again after that."""
    srv = make_server(token_ttl=63, expires_at_style="fractional")
    client = pk_client(srv, user("alice"))
    client.track(user_id="a", event_type="e", payload={"i": 0})
    client.flush(timeout=10)
    minted_at = time.monotonic()
    client.track(user_id="a", event_type="e", payload={"i": 1})
    client.flush(timeout=10)
    assert time.monotonic() - minted_at < 2.5, "too slow to check the reuse window"
    assert srv.stats()["tokens_minted"] == 1
    time.sleep(max(0.0, 3.3 - (time.monotonic() - minted_at)))
    client.track(user_id="a", event_type="e", payload={"i": 2})
    client.flush(timeout=10)
    assert srv.stats()["tokens_minted"] == 2
    assert [r.status for r in ingestion(srv)] == [200, 200, 200]  # refreshed before a 401
    assert sorted(e["payload"]["i"] for e in srv.events()) == [0, 1, 2]


def test_token_shorter_than_skew_is_never_reused(
    make_server: Callable[..., DevServer], pk_client: Callable[..., segops.SegOpsClient]
) -> None:
    """A token living less than 60 s is already due for refresh: every send mints."""
    srv = make_server(token_ttl=30)
    client = pk_client(srv, user("alice"))
    for i in range(3):
        client.track(user_id="a", event_type="e", payload={"i": i})
        client.flush(timeout=10)
    assert srv.stats()["tokens_minted"] == 3
    assert len(srv.events()) == 3


@pytest.mark.parametrize("style", ["seconds", "fractional", "offset"])
def test_expires_at_formats(
    make_server: Callable[..., DevServer],
    pk_client: Callable[..., segops.SegOpsClient],
    style: str,
) -> None:
    """expires_at with Z, fractional seconds or +00:00 is parsed; the token is reused."""
    srv = make_server(expires_at_style=style)
    client = pk_client(srv, user("alice"))
    for i in range(2):
        client.track(user_id="a", event_type="e", payload={"i": i})
        client.flush(timeout=10)
    assert srv.stats()["tokens_minted"] == 1
    assert len(srv.events()) == 2


def test_401_remints_once_and_delivers(
    make_server: Callable[..., DevServer], pk_client: Callable[..., segops.SegOpsClient]
) -> None:
    """A revoked token gets a 401; the client mints again and the events are delivered."""
    srv = make_server()
    errors = ErrorLog()
    client = pk_client(srv, user("alice"), on_error=errors)
    client.track(user_id="a", event_type="e", payload={"i": 0})
    client.flush(timeout=10)
    srv.revoke_tokens()
    client.track(user_id="a", event_type="e", payload={"i": 1})
    client.flush(timeout=10)
    assert srv.stats()["tokens_minted"] == 2
    assert [r.status for r in ingestion(srv)] == [200, 401, 200]
    assert sorted(e["payload"]["i"] for e in srv.events()) == [0, 1]
    assert not errors.of(segops.AuthError)


def test_reset_session_mints_with_new_identity(
    make_server: Callable[..., DevServer], pk_client: Callable[..., segops.SegOpsClient]
) -> None:
    """After login as bob + reset_session(), the next mint reads get_user() again."""
    srv = make_server()
    current: Dict[str, str] = {"uid": "alice"}
    client = pk_client(srv, lambda: segops.UserContext(user_id=current["uid"]))
    client.track(user_id="x", event_type="before", payload={"i": 0})
    client.flush(timeout=10)
    current["uid"] = "bob"
    client.track(user_id="x", event_type="still_alice_token", payload={"i": 1})
    client.flush(timeout=10)
    assert [e["user_id"] for e in srv.events()] == ["alice", "alice"]  # cached until reset
    client.reset_session()
    client.track(user_id="x", event_type="after", payload={"i": 2})
    client.flush(timeout=10)
    assert [s.json for s in sessions(srv)] == [{"user_id": "alice"}, {"user_id": "bob"}]
    assert [(e["event_type"], e["user_id"]) for e in srv.events()][-1] == ("after", "bob")


def test_events_before_reset_go_under_old_token(
    make_server: Callable[..., DevServer], pk_client: Callable[..., segops.SegOpsClient]
) -> None:
    """Events spooled before reset_session() are sent under the still-valid old identity."""
    srv = make_server()
    current: Dict[str, str] = {"uid": "alice"}
    client = pk_client(srv, lambda: segops.UserContext(user_id=current["uid"]))
    client.track(user_id="x", event_type="warmup")
    client.flush(timeout=10)
    client.track(user_id="x", event_type="as_alice")
    current["uid"] = "bob"
    client.reset_session()
    client.track(user_id="x", event_type="as_bob")
    client.flush(timeout=10)
    owners = {e["event_type"]: e["user_id"] for e in srv.events()}
    assert owners == {"warmup": "alice", "as_alice": "alice", "as_bob": "bob"}


def flush_behind_a_503(srv: DevServer, client: segops.SegOpsClient) -> threading.Thread:
    """Start flush() on a thread; return once its first post got a 503 (Retry-After: 1)."""
    srv.script([(503, {"detail": "busy"}, {"Retry-After": "1"})])
    flushing = threading.Thread(target=client.flush, kwargs={"timeout": 10})
    flushing.start()
    deadline = time.monotonic() + 5
    while srv.stats()["scripted"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    return flushing


def test_reset_between_retry_attempts_keeps_the_old_identity(
    make_server: Callable[..., DevServer], pk_client: Callable[..., segops.SegOpsClient]
) -> None:
    """A reset_session() while alice's batch waits to be retried (503, Retry-After) does
    not send it under bob's token: the retry uses the token of its first attempt."""
    srv = make_server()
    current: Dict[str, str] = {"uid": "alice"}
    client = pk_client(srv, lambda: segops.UserContext(user_id=current["uid"]))
    client.track(user_id="x", event_type="warmup")
    client.flush(timeout=10)  # alice's token is cached
    client.track(user_id="x", event_type="as_alice")
    flushing = flush_behind_a_503(srv, client)
    current["uid"] = "bob"
    client.reset_session()
    flushing.join(10)
    owners = {e["event_type"]: e["user_id"] for e in srv.events()}
    assert owners == {"warmup": "alice", "as_alice": "alice"}
    assert [s.json for s in sessions(srv)] == [{"user_id": "alice"}]


def test_each_reset_keeps_its_own_identity(
    make_server: Callable[..., DevServer], pk_client: Callable[..., segops.SegOpsClient]
) -> None:
    """Two resets during an outage: alice's events go under alice's token and bob's under
    bob's, not both under the newest retired one."""
    srv = make_server()
    current: Dict[str, str] = {"uid": "alice"}
    client = pk_client(
        srv, lambda: segops.UserContext(user_id=current["uid"]), batch=False, on_error=ErrorLog()
    )
    srv.fail_rate = 1.0  # ingestion fails; the session call still works
    for uid in ("alice", "bob"):
        current["uid"] = uid
        client.track(user_id="x", event_type=f"as_{uid}")  # mints uid's token; send fails
        client.reset_session()
    current["uid"] = "carol"
    srv.fail_rate = 0.0
    client.track(user_id="x", event_type="as_carol")
    client.flush(timeout=10)
    owners = {e["event_type"]: e["user_id"] for e in srv.events()}
    assert owners == {"as_alice": "alice", "as_bob": "bob", "as_carol": "carol"}


def test_reset_during_the_first_mint_keeps_the_old_identity(
    make_server: Callable[..., DevServer], pk_client: Callable[..., segops.SegOpsClient]
) -> None:
    """A reset while alice's first token is being minted (a second send waiting for that
    mint): the token goes with alice's era, and both her events are sent as alice."""
    srv = make_server(latency_ms=400)
    current: Dict[str, str] = {"uid": "alice"}
    client = pk_client(srv, lambda: segops.UserContext(user_id=current["uid"]), batch=False)
    senders = [
        threading.Thread(target=client.track, kwargs={"user_id": "x", "event_type": name})
        for name in ("alice_1", "alice_2")
    ]
    for sender in senders:  # the first mints (400 ms); the second waits for that mint
        sender.start()
        time.sleep(0.1)
    current["uid"] = "bob"
    client.reset_session()
    for sender in senders:
        sender.join(10)
    client.track(user_id="x", event_type="bob_1")
    client.flush(timeout=10)
    owners = {e["event_type"]: e["user_id"] for e in srv.events()}
    assert owners == {"alice_1": "alice", "alice_2": "alice", "bob_1": "bob"}


def test_without_a_token_of_their_own_events_follow_the_current_identity(
    make_server: Callable[..., DevServer], pk_client: Callable[..., segops.SegOpsClient]
) -> None:
    """alice never had a token: her event goes under the current identity at each attempt
    (carol after a second reset between two attempts), not under bob's, who was current
    at the first attempt."""
    srv = make_server()
    current: Dict[str, str] = {"uid": "alice"}
    client = pk_client(srv, lambda: segops.UserContext(user_id=current["uid"]))
    client.track(user_id="x", event_type="alice_ev")
    current["uid"] = "bob"
    client.reset_session()
    flushing = flush_behind_a_503(srv, client)
    current["uid"] = "carol"
    client.reset_session()
    flushing.join(10)
    assert {e["event_type"]: e["user_id"] for e in srv.events()} == {"alice_ev": "carol"}


def test_revoked_tokens_of_an_old_era_and_the_current_identity_are_replaced(
    make_server: Callable[..., DevServer], pk_client: Callable[..., segops.SegOpsClient]
) -> None:
    """After the server revoked every token, a batch of an old era is refused under that
    era's token, then under the current cached one, and delivered under a new mint."""
    srv = make_server()
    current: Dict[str, str] = {"uid": "alice"}
    client = pk_client(srv, lambda: segops.UserContext(user_id=current["uid"]), batch=False)
    client.track(user_id="x", event_type="alice_1")  # mints alice's token
    srv.script([(503, {"detail": "busy"})])
    client.track(user_id="x", event_type="alice_2")  # its inline send fails: spooled
    current["uid"] = "bob"
    client.reset_session()
    client.track(user_id="x", event_type="bob_1")  # mints bob's token
    srv.revoke_tokens()
    client.flush(timeout=10)
    owners = {e["event_type"]: e["user_id"] for e in srv.events()}
    assert owners == {"alice_1": "alice", "alice_2": "bob", "bob_1": "bob"}


def test_401_right_after_a_mint_mints_once_more(
    make_server: Callable[..., DevServer], pk_client: Callable[..., segops.SegOpsClient]
) -> None:
    """A 401 on the post that follows a fresh mint re-mints once and retries (the API doc's
    "re-mint on a 401"), whatever the token's age."""
    srv = make_server()
    client = pk_client(srv, user("alice"))
    client.track(user_id="x", event_type="e")
    srv.script([(401, {"detail": "token revoked"})])
    client.flush(timeout=10)
    assert [e["user_id"] for e in srv.events()] == ["alice"]
    assert len(sessions(srv)) == 2


def test_reset_while_get_user_runs_does_not_lend_the_new_identity(
    make_server: Callable[..., DevServer], pk_client: Callable[..., segops.SegOpsClient]
) -> None:
    """A reset that lands while get_user() runs (it may answer for either identity): the
    answer is read again, so the new user's token never goes to the old user's events."""
    srv = make_server()
    current: Dict[str, str] = {"uid": "alice"}

    def slow_get_user() -> segops.UserContext:
        time.sleep(0.3)  # e.g. a session-store lookup, then the identity is read
        return segops.UserContext(user_id=current["uid"])

    client = pk_client(srv, slow_get_user, retry_policy=segops.RetryPolicy(attempts=1))
    client.track(user_id="x", event_type="alice_1")
    srv.fail_rate = 1.0  # ingestion fails, mints work: alice_1 stays spooled
    flushing = threading.Thread(target=_flush_quietly, args=(client,))
    flushing.start()
    time.sleep(0.1)  # the mint is inside get_user() now
    current["uid"] = "bob"
    client.reset_session()
    client.track(user_id="x", event_type="bob_1")
    flushing.join(10)
    current["uid"] = "carol"
    client.reset_session()
    srv.fail_rate = 0.0
    client.flush(timeout=10)
    owners = {e["event_type"]: e["user_id"] for e in srv.events()}
    assert owners == {"alice_1": "carol", "bob_1": "bob"}


def _flush_quietly(client: segops.SegOpsClient) -> None:
    with contextlib.suppress(segops.SegOpsError):
        client.flush(timeout=5)


def test_reset_session_after_shutdown_is_quiet(
    make_server: Callable[..., DevServer], pk_client: Callable[..., segops.SegOpsClient]
) -> None:
    """reset_session() after shutdown() (a logout hook during teardown) raises nothing."""
    client = pk_client(make_server(), user("alice"))
    client.track(user_id="x", event_type="e")
    client.shutdown(timeout=10)
    client.reset_session()


@pytest.mark.parametrize("stamp", ["not-a-number", 1e400, object()], ids=["text", "inf", "object"])
def test_get_user_bad_timestamp_is_delivery_error(
    make_server: Callable[..., DevServer],
    pk_client: Callable[..., segops.SegOpsClient],
    stamp: Any,
) -> None:
    """A user_id_ts from get_user() that is not Unix seconds fails the flush with one of
    our errors naming get_user(); the event stays spooled."""
    srv = make_server()
    client = pk_client(srv, lambda: segops.UserContext(user_id="u", user_id_ts=stamp))
    client.track(user_id="x", event_type="e")
    with pytest.raises(segops.DeliveryError, match="get_user"):
        client.flush(timeout=5)
    assert client.stats().pending == 1 and srv.events() == []


def test_pk_without_get_user_is_value_error(spool_file: Path) -> None:
    """A pk_ key without get_user is refused at construction, naming get_user."""
    with pytest.raises(ValueError, match="get_user"):
        segops.SegOpsClient("http://127.0.0.1:9", PK, spool_path=spool_file)
    assert not spool_file.exists() or spool_file.stat().st_size == 0


def test_refused_mint_keeps_events_and_raises_auth_error(
    make_server: Callable[..., DevServer], pk_client: Callable[..., segops.SegOpsClient]
) -> None:
    """An unsigned identity on a require_signed key: flush raises AuthError, events stay."""
    srv = make_server(hmac_secret="ab" * 16, require_signed=True)
    errors = ErrorLog()
    client = pk_client(srv, user("mallory"), on_error=errors)
    client.track(user_id="m", event_type="e")
    with pytest.raises(segops.AuthError) as info:
        client.flush(timeout=5)
    assert info.value.status == 403
    assert client.stats().pending == 1
    assert srv.events() == []
