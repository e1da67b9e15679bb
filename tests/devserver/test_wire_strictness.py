"""Strict reading of the wire: body framing, timeouts, ASCII-only formats, early refusals."""

from __future__ import annotations

import json
import socket

import pytest
from dshelp import BATCH, SINGLE, Api, event, raw_exchange, raw_post_head
from segops import _devserver
from segops.devserver import DevServer

BODY = json.dumps({"events": [event()]}).encode()
FULL_WIDTH_2026 = "\uff12\uff10\uff12\uff16"


def status_of(answer: bytes) -> int:
    """The status code of a raw HTTP answer."""
    return int(answer.split(b" ", 2)[1])


@pytest.mark.parametrize(
    "stamp",
    [
        f"{FULL_WIDTH_2026}-11-26T04:16:56Z",
        "2026-11-26T04:16:56+\uff10\uff11:00",
        "2026-11-26T04:16:56.\u0663Z",  # ARABIC-INDIC DIGIT THREE as a fraction
    ],
)
@pytest.mark.parametrize("path", [BATCH, SINGLE])
def test_occurred_at_non_ascii_digits_refused(
    api: Api, srv: DevServer, stamp: str, path: str
) -> None:
    """occurred_at digits must be ASCII: full-width or other Unicode digits are invalid."""
    if path == BATCH:
        assert api.batch([event(occurred_at=stamp)]).json() == {"queued": 0, "skipped": 1}
    else:
        resp = api.post(SINGLE, event(occurred_at=stamp))
        assert resp.status_code == 400 and "occurred_at" in resp.json()
    assert srv.events() == []


def test_rate_limit_spec_needs_ascii_digits() -> None:
    """A rate limit written with full-width digits is a ValueError, like any other typo."""
    with pytest.raises(ValueError):
        DevServer(rate_limit="\uff16\uff10/min")


@pytest.mark.parametrize("size_line", ["-1", "0x{n:x}", "+{n:x}", "{u}", " ", "\uff11"], ids=repr)
def test_chunk_size_must_be_plain_hex(srv: DevServer, size_line: str) -> None:
    """A chunk-size line that is not plain hex digits is 400 at once, nothing stored."""
    n = len(BODY)
    size = size_line.format(n=n, u=f"{n:x}"[0] + "_" + f"{n:x}"[1:])  # "1_2f": int() takes it
    # Only the size line is sent: a server that took "-1" as "read to EOF", or "0x.." as a
    # size, would wait for more and time out instead of answering.
    data = raw_post_head(BATCH, "Transfer-Encoding: chunked") + size.encode() + b"\r\n"
    with socket.create_connection(("127.0.0.1", srv.port), timeout=3) as sock:
        sock.sendall(data)
        answer = sock.recv(65536)
    assert status_of(answer) == 400
    assert b'"detail"' in answer
    assert srv.stats()["events"] == 0


def test_chunk_extension_accepted(srv: DevServer) -> None:
    """A chunk-size may carry a ';name=value' extension (RFC 9112), in any hex case."""
    size = f"{len(BODY):X};foo=bar".encode()
    data = raw_post_head(BATCH, "Transfer-Encoding: chunked") + size + b"\r\n" + BODY
    assert status_of(raw_exchange(srv, data + b"\r\n0\r\n\r\n")) == 200
    assert srv.stats()["events"] == 1


def test_chunked_body_over_the_cap_is_413(srv: DevServer) -> None:
    """Chunks adding up to more than 16 MiB are refused with 413, without reading on."""
    piece = b" " * (9 * 1024 * 1024)
    size_line = f"{len(piece):x}\r\n".encode()
    # The second size line alone passes the cap: the server must answer before its data.
    data = raw_post_head(BATCH, "Transfer-Encoding: chunked") + size_line + piece + b"\r\n"
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(data + size_line)
        answer = sock.recv(65536)
    assert status_of(answer) == 413
    assert srv.stats()["rejected"] == 1


@pytest.mark.parametrize("length", ["+{n}", "{u}", "-{n}", "0x{n:x}", "{n}.0"])
def test_content_length_must_be_digits(srv: DevServer, length: str) -> None:
    """Content-Length is 1*DIGIT: signs, underscores, hex and decimals are 400."""
    n = len(BODY)
    value = length.format(n=n, u=f"{n}"[0] + "_" + f"{n}"[1:])  # "1_50": int() takes it
    head = raw_post_head(BATCH, f"Content-Length: {value}")
    answer = raw_exchange(srv, head + BODY)
    assert status_of(answer) == 400
    assert srv.stats()["events"] == 0


def test_stalled_body_is_408(srv: DevServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A body that stops arriving before the read timeout is answered 408 {"detail"}."""
    monkeypatch.setattr(_devserver._Handler, "timeout", 0.5)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
        sock.sendall(raw_post_head(BATCH, "Content-Length: 100") + b"{")
        answer = sock.recv(65536)
    assert status_of(answer) == 408
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["detail"]
    assert srv.stats()["rejected"] == 1


def test_http09_request_gets_a_real_400(srv: DevServer) -> None:
    """An HTTP/0.9 request line is answered with a status line, headers and Content-Length."""
    answer = raw_exchange(srv, b"GET /_dev/stats\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400")
    head, body = answer.split(b"\r\n\r\n", 1)
    assert f"Content-Length: {len(body)}".encode() in head
    assert "detail" in json.loads(body)


@pytest.mark.parametrize(
    ("raw", "headers", "status"),
    [
        (b"x" * (_devserver.MAX_BODY_BYTES + 1), {}, 413),
        (b"not gzip", {"Content-Encoding": "gzip"}, 400),
        (b"{}", {"Content-Encoding": "br"}, 415),
    ],
    ids=["oversize", "corrupt-gzip", "unknown-encoding"],
)
def test_early_refusals_count_as_rejected(
    api: Api, srv: DevServer, raw: bytes, headers: dict[str, str], status: int
) -> None:
    """Body refusals come before routing, auth and the script, and count in rejected."""
    srv.script([503])
    resp = api.post("/api/ingestion/track/batch", raw=raw, headers=headers, auth="ApiKey nope")
    assert resp.status_code == status
    assert srv.stats()["rejected"] == 1
    assert srv.stats()["unauthorized"] == 0
    assert Api(srv).batch([event()]).status_code == 503  # the script item is still queued
