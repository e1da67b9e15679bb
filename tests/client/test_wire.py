"""Wire shape: paths, headers, body fields and batching exactly as segops-api.md says."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import re
import sys
import time
import uuid
from typing import Any, Callable

import pytest
import segops
from _support import SK, ingestion, payload_ids
from segops.devserver import DevServer

MakeClient = Callable[..., segops.SegOpsClient]
BATCH = "/api/ingestion/track/batch/"
EVENT_FIELDS = {"user_id", "event_type", "occurred_at", "payload"}


def test_batch_request_path_and_headers(server: DevServer, make_client: MakeClient) -> None:
    """A batch goes to /api/ingestion/track/batch/ with ApiKey auth, JSON, UA and a UUID key."""
    client = make_client()
    client.track(user_id="u1", event_type="page_viewed")
    client.flush(timeout=5)
    (req,) = ingestion(server)
    assert req.method == "POST"
    assert req.path == BATCH
    assert req.headers["authorization"] == f"ApiKey {SK}"
    assert req.headers["content-type"] == "application/json"
    major, minor = sys.version_info[:2]
    assert req.headers["user-agent"] == f"segops-python/{segops.__version__} python/{major}.{minor}"
    assert uuid.UUID(req.headers["idempotency-key"])
    assert "content-encoding" not in req.headers
    assert req.status == 200


def test_body_is_events_list_with_exact_fields(server: DevServer, make_client: MakeClient) -> None:
    """Body is {"events": [...]} and each event has exactly the four wire fields."""
    client = make_client()
    client.track(user_id="u1", event_type="a", payload={"k": [1, "two", None, True]})
    client.track(user_id="u2", event_type="b")
    client.flush(timeout=5)
    (req,) = ingestion(server)
    assert set(req.json) == {"events"}
    first, second = req.json["events"]
    assert set(first) == EVENT_FIELDS and set(second) == EVENT_FIELDS
    assert first["payload"] == {"k": [1, "two", None, True]}
    assert second["payload"] == {}
    assert (first["user_id"], first["event_type"]) == ("u1", "a")


@pytest.mark.parametrize("via", ["dict", "dataclass"])
def test_anonymous_id_only_when_given(server: DevServer, make_client: MakeClient, via: str) -> None:
    """anonymous_id is sent when the caller supplied one and absent otherwise."""
    client = make_client()
    if via == "dict":
        client.track({"user_id": "u", "event_type": "e", "anonymous_id": "anon-1"})
    else:
        client.track(segops.Event(user_id="u", event_type="e", anonymous_id="anon-1"))
    client.track({"user_id": "u", "event_type": "e"})
    client.flush(timeout=5)
    with_anon, without = (e["raw"] for e in server.events())
    assert with_anon["anonymous_id"] == "anon-1"
    assert set(with_anon) == EVENT_FIELDS | {"anonymous_id"}
    assert set(without) == EVENT_FIELDS


def test_occurred_at_is_track_time_not_send_time(
    server: DevServer, make_client: MakeClient
) -> None:
    """occurred_at is stamped at track() (UTC ISO-8601), not when the batch is sent."""
    client = make_client()
    before = dt.datetime.now(dt.timezone.utc)
    client.track(user_id="u", event_type="e")
    after = dt.datetime.now(dt.timezone.utc)
    time.sleep(1.2)
    client.flush(timeout=5)
    (event,) = server.events()
    occurred = dt.datetime.fromisoformat(event["occurred_at"])
    received = dt.datetime.fromisoformat(event["received_at"].replace("Z", "+00:00"))
    assert occurred.utcoffset() == dt.timedelta(0)
    assert before - dt.timedelta(milliseconds=5) <= occurred <= after + dt.timedelta(milliseconds=5)
    assert (received - occurred).total_seconds() >= 1.0


def test_explicit_occurred_at_string_is_kept(server: DevServer, make_client: MakeClient) -> None:
    """A valid ISO-8601 occurred_at from the caller reaches the server unchanged."""
    client = make_client()
    client.track(user_id="u", event_type="e", occurred_at="2024-03-01T12:00:00Z")
    client.flush(timeout=5)
    assert server.events()[0]["raw"]["occurred_at"] == "2024-03-01T12:00:00Z"


@pytest.mark.timeout(60)
def test_requests_carry_at_most_500_events(server: DevServer, make_client: MakeClient) -> None:
    """1,200 tracked events go out as requests of <= 500 (and batching fills them)."""
    client = make_client()
    for i in range(1200):
        client.track(user_id="u", event_type="bulk", payload={"i": i})
    client.flush(timeout=30)
    sizes = [len(r.json["events"]) for r in ingestion(server)]
    assert max(sizes) == 500
    assert sum(sizes) == 1200
    assert sorted(e["payload"]["i"] for e in server.events()) == list(range(1200))


@pytest.mark.parametrize("suffix", ["/", ""])
def test_trailing_slash_in_api_url(server: DevServer, make_client: MakeClient, suffix: str) -> None:
    """One trailing slash on api_url is stripped before joining the path."""
    client = make_client(url=server.url + suffix)
    client.track(user_id="u", event_type="e")
    client.flush(timeout=5)
    assert [r.path for r in server.requests] == [BATCH]
    assert len(server.events()) == 1


def test_gzip_sends_content_encoding(server: DevServer, make_client: MakeClient) -> None:
    """gzip=True compresses the body and says so; the server stores the events."""
    client = make_client(gzip=True)
    client.track(user_id="u", event_type="zipped", payload={"x": "y" * 1000})
    client.flush(timeout=5)
    (req,) = ingestion(server)
    assert req.headers["content-encoding"] == "gzip"
    assert json.loads(req.body)["events"][0]["event_type"] == "zipped"
    assert server.events()[0]["payload"] == {"x": "y" * 1000}


def test_gzip_body_really_is_gzip(make_client: MakeClient) -> None:
    """With gzip=True the bytes on the wire are a gzip stream (checked at the transport)."""
    import httpx

    seen: dict[str, Any] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["raw"] = request.content
        seen["enc"] = request.headers.get("content-encoding")
        return httpx.Response(200, json={"queued": 1, "skipped": 0})

    client = make_client(gzip=True, transport=httpx.MockTransport(handler))
    client.track(user_id="u", event_type="e")
    client.flush(timeout=5)
    assert seen["enc"] == "gzip"
    assert json.loads(gzip.decompress(seen["raw"]))["events"][0]["user_id"] == "u"


def test_idempotency_key_stable_across_retry(server: DevServer, make_client: MakeClient) -> None:
    """A batch retried after a 503 keeps its Idempotency-Key and its exact body."""
    server.script([(503, {"detail": "busy"})])
    client = make_client()
    for i in range(3):
        client.track(user_id="u", event_type="e", payload={"i": i})
    client.flush(timeout=10)
    requests = ingestion(server)
    (failed,) = [r for r in requests if r.status == 503]
    key = failed.headers["idempotency-key"]
    retried = [r for r in requests if r.status == 200 and r.headers["idempotency-key"] == key]
    assert len(retried) == 1
    assert retried[0].body == failed.body
    assert sorted(payload_ids(server)) == [0, 1, 2]
    assert server.stats()["duplicates_dropped"] == 0


def test_different_batches_get_different_keys(server: DevServer, make_client: MakeClient) -> None:
    """Two separately flushed batches carry two different Idempotency-Keys."""
    client = make_client()
    client.track(user_id="u", event_type="one")
    client.flush(timeout=5)
    client.track(user_id="u", event_type="two")
    client.flush(timeout=5)
    keys = [r.headers["idempotency-key"] for r in ingestion(server)]
    assert len(keys) == 2 and keys[0] != keys[1]
    assert server.stats()["duplicates_dropped"] == 0


@pytest.mark.parametrize(("flush_interval", "n"), [(60.0, 5), (0.01, 50)])
def test_single_event_path_for_batch_false(
    server: DevServer, make_client: MakeClient, flush_interval: float, n: int
) -> None:
    """batch=False: each track() itself posts one bare event to /api/ingestion/track/."""
    client = make_client(batch=False, settle=False, flush_interval=flush_interval)
    for i in range(n):
        seen = len(server.requests)
        client.track(user_id="u", event_type="now", payload={"i": i})
        sent = server.requests[seen:]
        assert sent, f"track #{i} returned before anything was sent"
        req = sent[-1]
        assert req.path == "/api/ingestion/track/", f"track #{i} went to {req.path}"
        assert req.json["payload"] == {"i": i}
        assert set(req.json) == EVENT_FIELDS
        assert req.headers["authorization"] == f"ApiKey {SK}"
        assert req.headers["content-type"] == "application/json"
        assert uuid.UUID(req.headers["idempotency-key"])  # its retries may be recognized
        assert req.status == 202
    assert [r.path for r in ingestion(server)] == ["/api/ingestion/track/"] * n
    assert client.stats().pending == 0


def test_wire_json_is_compact_utf8(server: DevServer, make_client: MakeClient) -> None:
    """Non-ASCII text survives the trip byte-exact (UTF-8 JSON)."""
    client = make_client()
    client.track(user_id="ü-☃", event_type="e", payload={"name": "Zoë 🚀"})
    client.flush(timeout=5)
    (event,) = server.events()
    assert event["user_id"] == "ü-☃"
    assert event["payload"] == {"name": "Zoë 🚀"}
    assert re.search(rb"\\u[0-9a-f]{4}", ingestion(server)[0].body) is None
