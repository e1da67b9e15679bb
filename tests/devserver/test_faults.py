"""Idempotency, fault injection, test hooks, lifecycle, the request log and /_dev."""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Optional

import httpx
import pytest
from dshelp import BATCH, SINGLE, SK, Api, event
from segops.devserver import DROP, DevServer, RecordedRequest


def test_idempotency_key_replays_first_answer(api: Api, srv: DevServer) -> None:
    """The same key on the identical request gets the first answer and stores nothing more."""
    key = {"Idempotency-Key": "3f1c2a9e-batch-1"}
    events = [event(), event(user_id="")]
    first = api.batch(events, headers=key)
    assert first.json() == {"queued": 1, "skipped": 1}
    again = api.batch(events, headers=key)
    assert (again.status_code, again.json()) == (first.status_code, first.json())
    assert again.headers["idempotent-replayed"] == "true"
    # The body is compared after gzip decoding, as JSON (spacing and key order aside).
    respaced = json.dumps({"events": [dict(reversed(ev.items())) for ev in events]}, indent=2)
    again = api.post(BATCH, raw=respaced.encode(), headers=key, gzipped=True)
    assert again.headers["idempotent-replayed"] == "true"
    assert srv.stats()["events"] == 1
    assert srv.stats()["duplicates_dropped"] == 2
    assert srv.events()[0]["idempotency_key"] == "3f1c2a9e-batch-1"
    other = api.batch([event()], headers={"Idempotency-Key": "another"})
    assert other.json() == {"queued": 1, "skipped": 0}
    assert srv.stats()["events"] == 2


REUSED = {"detail": "Idempotency-Key reused for a different request"}


def test_idempotency_key_reused_for_another_body_is_422(api: Api, srv: DevServer) -> None:
    """The same key with a different body is 422, stores nothing and counts as rejected."""
    key = {"Idempotency-Key": "k-body"}
    assert api.batch([event()], headers=key).json() == {"queued": 1, "skipped": 0}
    resp = api.batch([event(user_id="b"), event(user_id="c")], headers=key)
    assert (resp.status_code, resp.json()) == (422, REUSED)
    assert "idempotent-replayed" not in resp.headers
    resp = api.post(BATCH, raw=b"garbage", headers={**key, "Content-Type": "text/plain"})
    assert (resp.status_code, resp.json()) == (422, REUSED)
    assert [e["user_id"] for e in srv.events()] == ["u-1"]
    assert (srv.stats()["rejected"], srv.stats()["duplicates_dropped"]) == (2, 0)
    assert api.batch([event()], headers=key).headers["idempotent-replayed"] == "true"


def test_idempotency_key_is_bound_to_the_endpoint(api: Api, srv: DevServer) -> None:
    """A key first used on one endpoint is 422 on the other, whatever the body."""
    key = {"Idempotency-Key": "k-endpoint"}
    assert api.post(SINGLE, event(), headers=key).status_code == 202
    resp = api.batch([event()], headers=key)
    assert (resp.status_code, resp.json()) == (422, REUSED)
    other = {"Idempotency-Key": "k-endpoint-2"}
    assert api.batch([event()], headers=other).status_code == 200
    resp = api.post(SINGLE, {"events": [event()]}, headers=other)
    assert (resp.status_code, resp.json()) == (422, REUSED)
    assert srv.stats()["events"] == 2


def test_idempotency_key_is_bound_to_the_credential(api: Api, srv: DevServer) -> None:
    """Another credential reusing a key is 422; a new token of the same subject replays."""
    key = {"Idempotency-Key": "k-cred"}
    assert api.batch([event()], headers=key).status_code == 200
    alice = api.token({"user_id": "alice"})
    resp = api.batch([event()], headers=key, auth=f"Bearer {alice}")
    assert (resp.status_code, resp.json()) == (422, REUSED)
    bearer_key = {"Idempotency-Key": "k-bearer"}
    assert api.batch([event()], headers=bearer_key, auth=f"Bearer {alice}").status_code == 200
    alice_again = api.token({"user_id": "alice"})
    resp = api.batch([event()], headers=bearer_key, auth=f"Bearer {alice_again}")
    assert resp.headers["idempotent-replayed"] == "true"
    mallory = api.token({"user_id": "mallory"})
    resp = api.batch([event()], headers=bearer_key, auth=f"Bearer {mallory}")
    assert (resp.status_code, resp.json()) == (422, REUSED)
    assert [e["user_id"] for e in srv.events()] == ["u-1", "alice"]


def test_idempotency_store_never_holds_the_secret(tmp_path: Path) -> None:
    """The fingerprint stores a hash of the credential, never the key itself."""
    db = tmp_path / "events.sqlite3"
    with DevServer(db_path=db, secret_key="sk_very_secret_value") as server:
        helper = Api(server)
        resp = helper.batch(
            [event()], headers={"Idempotency-Key": "k"}, auth="ApiKey sk_very_secret_value"
        )
        assert resp.status_code == 200
        helper.close()
    server.close()
    assert b"sk_very_secret_value" not in db.read_bytes()


def test_idempotency_db_from_before_fingerprints(tmp_path: Path) -> None:
    """An older --db file gains the fingerprint column; its keys still replay."""
    db = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(db)
    conn.execute(
        "CREATE TABLE idempotency (key TEXT PRIMARY KEY, status INTEGER NOT NULL,"
        " body TEXT NOT NULL, created_at TEXT NOT NULL)"
    )
    conn.execute("INSERT INTO idempotency VALUES ('old', 200, '{\"queued\": 1}', 'then')")
    conn.commit()
    conn.close()
    with DevServer(db_path=db) as server:
        helper = Api(server)
        resp = helper.batch([event()], headers={"Idempotency-Key": "old"})
        assert (resp.json(), resp.headers["idempotent-replayed"]) == ({"queued": 1}, "true")
        assert helper.batch([event()], headers={"Idempotency-Key": "new"}).status_code == 200
        helper.close()
    server.close()


def test_idempotency_only_remembers_2xx(api: Api, srv: DevServer) -> None:
    """A key whose answer was an error is not remembered: the retry is processed."""
    key = {"Idempotency-Key": "k-err"}
    assert api.batch([event()] * 501, headers=key).status_code == 413
    srv.script([503])
    assert api.batch([event()], headers=key).status_code == 503
    assert api.batch([event()], headers=key, auth="ApiKey sk_bad").status_code == 401
    assert api.batch([event()], headers=key).json() == {"queued": 1, "skipped": 0}
    assert api.batch([event()], headers=key).json() == {"queued": 1, "skipped": 0}
    assert srv.stats()["events"] == 1
    assert srv.stats()["duplicates_dropped"] == 1


def test_idempotency_concurrent_duplicates_store_once(srv: DevServer) -> None:
    """Racing requests with one key store the batch exactly once."""
    srv.latency_ms = 20
    results: list[int] = []

    def send() -> None:
        helper = Api(srv)
        resp = helper.batch([event()] * 3, headers={"Idempotency-Key": "race"})
        results.append(resp.json()["queued"])
        helper.close()

    threads = [threading.Thread(target=send) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [3] * 6
    assert srv.stats()["events"] == 3
    assert srv.stats()["duplicates_dropped"] == 5


def test_idempotency_on_single_endpoint(api: Api, srv: DevServer) -> None:
    """The single-event endpoint honours Idempotency-Key too."""
    key = {"Idempotency-Key": "one"}
    assert api.post(SINGLE, event(), headers=key).status_code == 202
    resp = api.post(SINGLE, event(), headers=key)
    assert (resp.status_code, resp.json()) == (202, {"queued": True})
    assert srv.stats()["events"] == 1


def test_script_fifo(api: Api, srv: DevServer) -> None:
    """script() answers the next ingestion requests in order, before auth, storing nothing."""
    srv.script(
        [
            503,
            (429, {"detail": "slow down"}, {"Retry-After": "7"}),
            (500, b"<html>oops</html>"),
            (200, {"queued": 0, "skipped": 5}),
        ]
    )
    r1 = api.batch([event()], auth=None)
    assert (r1.status_code, r1.json()) == (503, {"detail": "scripted 503"})
    r2 = api.post(SINGLE, event())
    assert (r2.status_code, r2.json(), r2.headers["retry-after"]) == (
        429,
        {"detail": "slow down"},
        "7",
    )
    r3 = api.batch([event()])
    assert (r3.status_code, r3.content) == (500, b"<html>oops</html>")
    assert api.batch([event()]).json() == {"queued": 0, "skipped": 5}
    assert srv.events() == []
    assert api.batch([event()]).json() == {"queued": 1, "skipped": 0}
    assert srv.stats()["scripted"] == 4


def test_script_does_not_touch_sessions(api: Api, srv: DevServer) -> None:
    """Scripted answers are for ingestion only: the session call still mints."""
    srv.script([503])
    assert api.session().status_code == 200
    assert api.batch([event()]).status_code == 503


def test_script_drop_closes_connection(api: Api, srv: DevServer) -> None:
    """A DROP entry closes the connection without an answer."""
    srv.script([DROP])
    with pytest.raises(httpx.TransportError):
        api.batch([event()])
    assert api.batch([event()]).status_code == 200
    assert srv.requests[0].status == 0


def test_script_rejects_nonsense() -> None:
    """Unknown script entries raise ValueError."""
    with pytest.raises(ValueError):
        DevServer().script(["explode"])


def test_reject_when_refuses_whole_batch(api: Api, srv: DevServer) -> None:
    """One poison event makes reject_when refuse the whole request with 400 {"detail"}."""

    def poison(ev: dict[str, Any]) -> Optional[str]:
        return "poison event" if ev.get("payload", {}).get("poison") else None

    srv.reject_when = poison
    resp = api.batch([event(), event(payload={"poison": True}), event()])
    assert (resp.status_code, resp.json()) == (400, {"detail": "poison event"})
    assert srv.events() == []
    assert api.batch([event(), event()]).json() == {"queued": 2, "skipped": 0}
    resp = api.post(SINGLE, event(payload={"poison": 1}))
    assert (resp.status_code, resp.json()) == (400, {"detail": "poison event"})
    assert srv.stats()["rejected"] == 2
    srv.reject_when = None
    assert api.batch([event(payload={"poison": True})]).status_code == 200


@pytest.mark.parametrize("status", [503, 500, 429, 502, 400, 599])
def test_fail_rate_one_always_fails(api: Api, srv: DevServer, status: int) -> None:
    """fail_rate=1.0 answers every ingestion request with fail_status and stores nothing."""
    srv.fail_rate = 1.0
    srv.fail_status = status
    for _ in range(3):
        resp = api.batch([event()])
        assert resp.status_code == status
        assert "detail" in resp.json()
    assert srv.events() == []
    assert srv.stats()["failed_injected"] == 3
    srv.fail_rate = 0.0
    assert api.batch([event()]).status_code == 200


def test_fail_rate_half_is_mixed(api: Api, srv: DevServer) -> None:
    """fail_rate=0.5 fails some requests and stores only the successful ones."""
    srv.fail_rate = 0.5
    codes = [api.batch([event()]).status_code for _ in range(60)]
    assert 0 < codes.count(503) < 60
    assert srv.stats()["events"] == codes.count(200)


def test_rate_limit_429_with_retry_after(api: Api, srv: DevServer) -> None:
    """Beyond N requests per minute per key the answer is 429 with Retry-After seconds."""
    srv.rate_limit = "3/min"
    assert [api.batch([event()]).status_code for _ in range(3)] == [200] * 3
    resp = api.batch([event()])
    assert resp.status_code == 429
    assert 1 <= int(resp.headers["retry-after"]) <= 60
    assert srv.stats()["rate_limited"] == 1
    assert srv.stats()["events"] == 3
    token = api.token()  # a different key (the pk_) has its own budget
    assert api.batch([event()], auth=f"Bearer {token}").status_code == 200


def test_rate_limit_window_slides() -> None:
    """A per-second limit frees up after the window passes."""
    with DevServer(rate_limit="2/s") as srv:
        helper = Api(srv)
        codes = [helper.batch([event()]).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        time.sleep(1.05)
        assert helper.batch([event()]).status_code == 200
        helper.close()


def test_latency_ms(api: Api, srv: DevServer) -> None:
    """latency_ms delays each answer."""
    srv.latency_ms = 200
    start = time.monotonic()
    assert api.batch([event()]).status_code == 200
    assert time.monotonic() - start >= 0.19


@pytest.mark.parametrize("status", [100, 204, 302, 399, 600])
def test_fail_status_must_be_a_failure_status(srv: DevServer, status: int) -> None:
    """fail_status takes 400..599 only: an injected 2xx would store nothing yet count as sent."""
    with pytest.raises(ValueError, match=r"400\.\.599"):
        srv.fail_status = status
    assert srv.fail_status == 503


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fail_rate": 1.5},
        {"fail_rate": -0.1},
        {"fail_status": 99},
        {"fail_status": 200},
        {"fail_status": 399},
        {"fail_status": 600},
        {"latency_ms": -1},
        {"rate_limit": "lots"},
        {"rate_limit": "0/min"},
        {"secret_key": "pk_nope"},
        {"public_key": "sk_nope"},
        {"hmac_secret": "xyz"},
        {"hmac_secret": "abc"},
        {"token_ttl": 0},
        {"token_ttl": float("nan")},
        {"token_ttl": float("inf")},
        {"token_ttl": -1},
        {"latency_ms": float("nan")},
        {"latency_ms": float("inf")},
        {"port": 70000},
        {"expires_at_style": "rfc2822"},
    ],
)
def test_bad_settings_raise(kwargs: dict[str, Any]) -> None:
    """Nonsense settings are ValueError at construction."""
    with pytest.raises(ValueError):
        DevServer(**kwargs)


@pytest.mark.parametrize(
    ("name", "bad", "good"),
    [
        ("token_ttl", float("nan"), 1.5),
        ("token_ttl", float("inf"), 1.5),
        ("token_ttl", 0.0, 1.5),
        ("expires_at_style", "rfc2822", "offset"),
        ("expires_at_style", None, "fractional"),
    ],
)
def test_settings_checked_at_runtime_too(srv: DevServer, name: str, bad: Any, good: Any) -> None:
    """Setting token_ttl or expires_at_style on a running server is validated like the
    constructor argument: refused, the old value kept; a good one taken."""
    before = getattr(srv, name)
    with pytest.raises(ValueError):
        setattr(srv, name, bad)
    assert getattr(srv, name) == before
    setattr(srv, name, good)
    assert getattr(srv, name) == good


def test_stop_start_same_port(api: Api, srv: DevServer) -> None:
    """stop() refuses connections; start() again listens on the same port, data kept."""
    port = srv.port
    assert api.batch([event()]).status_code == 200
    srv.stop()
    with pytest.raises(httpx.TransportError):
        Api(srv).batch([event()])
    srv.start()
    assert srv.port == port
    assert Api(srv).batch([event()]).status_code == 200
    assert srv.stats()["events"] == 2


def test_stop_is_prompt_with_open_keepalive_connections(srv: DevServer) -> None:
    """stop() returns within a second even with idle keep-alive connections, and cuts them."""
    socks = []
    for _ in range(5):
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        sock.sendall(b"GET /_dev/stats HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        socks.append(sock)
    start = time.monotonic()
    srv.stop()
    assert time.monotonic() - start < 1.0
    for sock in socks:
        sock.settimeout(2)
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(1024) == b""
        sock.close()


def test_requests_log(api: Api, srv: DevServer) -> None:
    """srv.requests records method, path, lower-case headers, body, json and status."""
    api.batch([event()], headers={"Idempotency-Key": "abc", "User-Agent": "t/1"})
    api.batch([event()], auth="ApiKey sk_nope")
    api.http.get("/_dev/stats")
    first, second = srv.requests
    assert isinstance(first, RecordedRequest)
    assert (first.method, first.path, first.status) == ("POST", BATCH, 200)
    assert first.headers["authorization"] == f"ApiKey {SK}"
    assert first.headers["idempotency-key"] == "abc"
    assert first.headers["user-agent"] == "t/1"
    assert first.json == {"events": [event()]}
    assert json.loads(first.body) == first.json
    assert second.status == 401


def test_dev_endpoints(api: Api, srv: DevServer) -> None:
    """/_dev/events, /_dev/stats, /_dev/skipped and POST /_dev/reset need no auth."""
    api.batch([event(user_id="a"), event(user_id="b"), event(user_id="")])
    events = api.http.get("/_dev/events").json()
    assert [e["user_id"] for e in events] == ["a", "b"]
    only_b = api.http.get("/_dev/events", params={"user_id": "b"}).json()
    assert [e["user_id"] for e in only_b] == ["b"]
    stats = api.http.get("/_dev/stats").json()
    assert stats["events"] == 2 and stats["requests"] == 1 and stats["skipped"] == 1
    for name in ("duplicates_dropped", "rejected", "rate_limited"):
        assert stats[name] == 0
    assert len(api.http.get("/_dev/skipped").json()) == 1
    assert api.http.get("/_dev/reset").status_code == 405
    assert api.http.post("/_dev/reset").json() == {"reset": True}
    assert api.http.get("/_dev/events").json() == []
    assert api.http.get("/_dev/stats").json()["requests"] == 0
    assert srv.requests == []
    assert api.http.get("/_dev/nothing").status_code == 404


def test_db_file_persists_across_servers(tmp_path: Path) -> None:
    """With db_path, events and idempotency keys survive a new server on the same file."""
    db = tmp_path / "events.sqlite3"
    with DevServer(db_path=db) as first:
        helper = Api(first)
        helper.batch([event()], headers={"Idempotency-Key": "k1"})
        helper.close()
    first.close()
    with DevServer(db_path=str(db)) as second:
        helper = Api(second)
        assert helper.batch([event()], headers={"Idempotency-Key": "k1"}).status_code == 200
        assert len(second.events()) == 1
        helper.close()
    second.close()


def test_url_and_repr_hide_the_secret(srv: DevServer) -> None:
    """url is http://127.0.0.1:PORT; repr never shows the whole secret key."""
    assert srv.url == f"http://127.0.0.1:{srv.port}"
    assert SK not in repr(srv)
    with pytest.raises(RuntimeError):
        _ = DevServer().url
