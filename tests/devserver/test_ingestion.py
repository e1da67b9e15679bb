"""The ingestion endpoints: batch and single event, validation, bodies, routing."""

from __future__ import annotations

import gzip
import http.client
import json
import threading
from typing import Any

import pytest
from dshelp import BATCH, SESSION, SINGLE, Api, event, raw_exchange
from segops.devserver import DevServer


def test_batch_stores_events_and_answers_counts(api: Api, srv: DevServer) -> None:
    """A valid batch answers 200 {"queued": N, "skipped": 0} and stores every event."""
    resp = api.batch([event(), event(user_id="u-2", payload={})])
    assert resp.status_code == 200
    assert resp.json() == {"queued": 2, "skipped": 0}
    stored = srv.events()
    assert [e["user_id"] for e in stored] == ["u-1", "u-2"]
    assert stored[0]["raw"] == event()
    assert stored[0]["auth"] == "apikey"
    assert stored[0]["endpoint"] == "batch"
    assert stored[0]["received_at"].endswith("Z")


def test_single_event_answers_202_queued_true(api: Api, srv: DevServer) -> None:
    """POST /api/ingestion/track/ with one event answers 202 {"queued": true}."""
    resp = api.post(SINGLE, event(anonymous_id="anon-7"))
    assert resp.status_code == 202
    assert resp.json() == {"queued": True}
    (stored,) = srv.events()
    assert stored["endpoint"] == "single"
    assert stored["anonymous_id"] == "anon-7"
    assert stored["payload"] == {"path": "/"}


def test_empty_batch_is_fine(api: Api) -> None:
    """An empty events list queues nothing."""
    resp = api.batch([])
    assert (resp.status_code, resp.json()) == (200, {"queued": 0, "skipped": 0})


INVALID_EVENTS: list[tuple[str, Any]] = [
    ("missing user_id", event(user_id=...)),
    ("empty user_id", event(user_id="")),
    ("blank user_id", event(user_id="   ")),
    ("null user_id", event(user_id=None)),
    ("int user_id", event(user_id=42)),
    ("missing event_type", event(event_type=...)),
    ("empty event_type", event(event_type="")),
    ("list event_type", event(event_type=["x"])),
    ("missing occurred_at", event(occurred_at=...)),
    ("garbage occurred_at", event(occurred_at="yesterday")),
    ("date-only occurred_at", event(occurred_at="2026-11-26")),
    ("month 13 occurred_at", event(occurred_at="2026-13-01T00:00:00Z")),
    ("numeric occurred_at", event(occurred_at=1700000000)),
    ("missing payload", event(payload=...)),
    ("list payload", event(payload=[1, 2])),
    ("string payload", event(payload="{}")),
    ("null payload", event(payload=None)),
    ("int anonymous_id", event(anonymous_id=5)),
    ("null anonymous_id", event(anonymous_id=None)),
    ("extra field", event(context={"ip": "1.2.3.4"})),
    ("not an object", ["u-1", "page_viewed"]),
    ("a string", "event"),
]


@pytest.mark.parametrize(("case", "bad"), INVALID_EVENTS, ids=[c for c, _ in INVALID_EVENTS])
def test_invalid_batch_event_is_skipped(api: Api, srv: DevServer, case: str, bad: Any) -> None:
    """An invalid event in a batch is skipped (counted) while the valid ones are stored."""
    resp = api.batch([event(user_id="good-1"), bad, event(user_id="good-2")])
    assert resp.status_code == 200, case
    assert resp.json() == {"queued": 2, "skipped": 1}
    assert [e["user_id"] for e in srv.events()] == ["good-1", "good-2"]
    assert srv.stats()["skipped"] == 1
    (skipped,) = srv.skipped_events()
    assert skipped["event"] == bad and skipped["errors"]


@pytest.mark.parametrize(("case", "bad"), INVALID_EVENTS, ids=[c for c, _ in INVALID_EVENTS])
def test_invalid_single_event_is_400_with_field_errors(
    api: Api, srv: DevServer, case: str, bad: Any
) -> None:
    """An invalid single event is refused with 400 {"field": ["message"]} and not stored."""
    resp = api.post(SINGLE, bad)
    assert resp.status_code == 400, case
    body = resp.json()
    assert isinstance(body, dict) and body
    if isinstance(bad, dict):
        assert all(
            isinstance(v, list) and all(isinstance(m, str) for m in v) for v in body.values()
        )
    else:
        assert isinstance(body["detail"], str)
    assert srv.events() == []


def test_field_error_names_the_field(api: Api) -> None:
    """The 400 body of the single endpoint is keyed by the offending field."""
    assert api.post(SINGLE, event(payload=[])).json().keys() == {"payload"}
    assert api.post(SINGLE, event(extra=1)).json() == {"extra": ["Unexpected field."]}


@pytest.mark.parametrize(
    "stamp",
    [
        "2026-11-26T04:16:56Z",
        "2026-11-26T04:16:56.709521Z",
        "2026-11-26T04:16:56.709521+00:00",
        "2026-11-26T04:16:56.7+05:30",
        "2026-11-26T04:16:56.123456789-08:00",
        "2026-11-26T04:16:56+0100",
        "2026-11-26T04:16z",
        "2026-11-26 04:16:56",
    ],
)
def test_occurred_at_formats_accepted(api: Api, srv: DevServer, stamp: str) -> None:
    """ISO-8601 with Z, offsets, fractional seconds (and naive = UTC) is accepted verbatim."""
    assert api.batch([event(occurred_at=stamp)]).json() == {"queued": 1, "skipped": 0}
    assert srv.events()[0]["occurred_at"] == stamp


def test_500_events_accepted_501_is_413(api: Api, srv: DevServer) -> None:
    """The documented cap: 500 events pass, 501 are refused with 413 and nothing stored."""
    assert api.batch([event()] * 500).json() == {"queued": 500, "skipped": 0}
    resp = api.batch([event()] * 501)
    assert resp.status_code == 413
    assert "detail" in resp.json()
    assert srv.stats()["events"] == 500


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        (b"{not json", BATCH),
        (b"", BATCH),
        (b"[]", BATCH),
        (b'"events"', BATCH),
        (b"{}", BATCH),
        (b'{"events": {"a": 1}}', BATCH),
        (b'{"events": null}', BATCH),
        (b'{"events": [{"user_id": NaN}]}', BATCH),
        (b'{"events": [{"user_id": "u\\udcff"}]}', BATCH),
        (b'{"user_id": "u", "payload": {"f": "\\ud83d"}}', SINGLE),
        (b"\xff\xfe\x00garbage", BATCH),
        (b"[" * 100_000, BATCH),
        (b"{not json", SINGLE),
        (b"[1]", SINGLE),
        (b"", SINGLE),
    ],
)
def test_garbage_bodies_are_400_detail(api: Api, srv: DevServer, raw: bytes, path: str) -> None:
    """Malformed JSON, wrong shapes and junk bytes get 400 {"detail": ...}, never a crash."""
    resp = api.post(path, raw=raw)
    assert resp.status_code == 400
    assert isinstance(resp.json()["detail"], str)
    assert srv.stats()["rejected"] == 1
    assert api.batch([event()]).status_code == 200  # still serving


@pytest.mark.parametrize(
    ("raw_value", "stored"),
    [("\\ud83d\\ude00", "\U0001f600"), ("\\u00e9t\\u00e9", "\u00e9t\u00e9"), ("plain", "plain")],
)
def test_unicode_escapes_accepted(api: Api, srv: DevServer, raw_value: str, stored: str) -> None:
    """A surrogate pair and other \\u escapes are valid JSON: stored as the characters."""
    one = json.dumps(event(payload={"v": "@"})).replace('"@"', f'"{raw_value}"')
    body = '{"events": [' + one + "]}"
    assert api.post(BATCH, raw=body.encode()).json() == {"queued": 1, "skipped": 0}
    assert srv.events()[0]["payload"] == {"v": stored}


@pytest.mark.parametrize(
    "stamp", ["2026-11-26T04:16:56+24:00", "2026-11-26T04:16:56+05:60", "2026-02-30T04:16Z"]
)
def test_occurred_at_out_of_range_refused(api: Api, srv: DevServer, stamp: str) -> None:
    """An offset past 23:59 or a day the month lacks is not a date-time: skipped, not stored."""
    assert api.batch([event(occurred_at=stamp)]).json() == {"queued": 0, "skipped": 1}
    assert srv.events() == []


def test_gzip_body_accepted(api: Api, srv: DevServer) -> None:
    """Content-Encoding: gzip bodies are decompressed; the request log keeps the plain body."""
    body = {"events": [event(), event(user_id="u-2")]}
    resp = api.post(BATCH, body, gzipped=True)
    assert resp.json() == {"queued": 2, "skipped": 0}
    rec = srv.requests[-1]
    assert rec.headers["content-encoding"] == "gzip"
    assert rec.json == body
    assert json.loads(rec.body) == body


def test_bad_gzip_is_400_and_unknown_encoding_is_415(api: Api) -> None:
    """A corrupt gzip body is 400; an encoding other than gzip/identity is 415."""
    resp = api.post(BATCH, raw=b"not gzip", headers={"Content-Encoding": "gzip"})
    assert resp.status_code == 400
    resp = api.post(BATCH, raw=gzip.compress(b"{}"), headers={"Content-Encoding": "br"})
    assert resp.status_code == 415


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", BATCH, 405),
        ("PUT", SINGLE, 405),
        ("DELETE", "/api/auth/session/", 405),
        ("POST", "/api/ingestion/track/batch", 404),
        ("POST", "/api/ingestion/", 404),
        ("GET", "/", 404),
        ("PATCH", "/nope", 404),
    ],
)
def test_routing_errors_are_json(api: Api, method: str, path: str, status: int) -> None:
    """Unknown paths (including a missing trailing slash) are 404, wrong methods 405, in JSON."""
    resp = api.http.request(method, path, headers={"Authorization": "ApiKey sk_dev_secret"})
    assert resp.status_code == status
    assert resp.headers["content-type"] == "application/json"
    assert "detail" in resp.json()


@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "PROPFIND"])
@pytest.mark.parametrize("path", [BATCH, SINGLE, SESSION])
def test_any_other_method_on_an_api_path_is_405_with_allow(
    srv: DevServer, method: str, path: str
) -> None:
    """Methods the stdlib does not know answer 405 with Allow (not 501), like GET or PUT."""
    request = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    head, _, body = raw_exchange(srv, request.encode()).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405 ") and b"\r\nAllow: POST\r\n" in head + b"\r\n"
    assert json.loads(body) == {"detail": f'Method "{method}" not allowed.'}


def test_keep_alive_reuses_one_connection(srv: DevServer) -> None:
    """HTTP/1.1 keep-alive: several requests on one connection, each with Content-Length."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    body = json.dumps({"events": [event()]})
    hdrs = {"Authorization": "ApiKey sk_dev_secret", "Content-Type": "application/json"}
    for _ in range(3):
        conn.request("POST", BATCH, body=body, headers=hdrs)
        resp = conn.getresponse()
        assert resp.version == 11
        assert resp.getheader("Content-Length") is not None
        assert json.loads(resp.read()) == {"queued": 1, "skipped": 0}
    conn.request("GET", "/nope")
    assert conn.getresponse().status == 404
    conn.close()
    assert srv.stats()["events"] == 3


def test_chunked_request_body(srv: DevServer) -> None:
    """A Transfer-Encoding: chunked body is read correctly."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    chunks = iter([b'{"events": [', json.dumps(event()).encode(), b"]}"])
    conn.request(
        "POST",
        BATCH,
        body=chunks,
        headers={"Authorization": "ApiKey sk_dev_secret", "Content-Type": "application/json"},
        encode_chunked=True,
    )
    resp = conn.getresponse()
    assert (resp.status, json.loads(resp.read())) == (200, {"queued": 1, "skipped": 0})
    conn.close()


def test_raw_garbage_request_line(srv: DevServer) -> None:
    """A non-HTTP request line gets a JSON 400 and the server keeps serving."""
    import socket

    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
        sock.sendall(b"\x16\x03\x01 garbage garbage garbage garbage\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400")
    assert b'"detail"' in data
    assert Api(srv).batch([event()]).status_code == 200


def test_concurrent_clients(srv: DevServer) -> None:
    """Many threads posting at once: every event is stored exactly once."""
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        helper = Api(srv)
        try:
            for i in range(10):
                resp = helper.batch([event(user_id=f"w{n}-{i}")] * 5)
                assert resp.json() == {"queued": 5, "skipped": 0}
        except BaseException as exc:
            errors.append(exc)
        finally:
            helper.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert srv.stats()["events"] == 8 * 10 * 5


@pytest.mark.parametrize(
    ("ctype", "status"),
    [
        ("application/json", 200),
        ("application/json; charset=utf-8", 200),
        ("Application/JSON", 200),
        ("text/plain", 415),
        ("application/x-www-form-urlencoded", 415),
        (None, 415),
    ],
)
def test_content_type_must_be_json(api: Api, srv: DevServer, ctype: Any, status: int) -> None:
    """Like DRF, a non-empty body must be sent as application/json (else 415)."""
    raw = json.dumps({"events": [event()]}).encode()
    resp = api.http.post(
        BATCH,
        content=raw,
        headers={
            "Authorization": "ApiKey sk_dev_secret",
            **({"Content-Type": ctype} if ctype else {}),
        },
    )
    assert resp.status_code == status
    assert srv.requests[-1].json == {"events": [event()]}
    assert srv.stats()["events"] == (1 if status == 200 else 0)
