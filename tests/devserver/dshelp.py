"""Shared helpers of the dev-server tests (imported by conftest and the test modules)."""

from __future__ import annotations

import gzip
import json
from typing import Any, Optional

import httpx
from segops.devserver import DevServer

SK = "sk_dev_secret"
PK = "pk_dev_public"
HMAC_HEX = "00ff" * 8
BATCH = "/api/ingestion/track/batch/"
SINGLE = "/api/ingestion/track/"
SESSION = "/api/auth/session/"


def event(**overrides: Any) -> dict[str, Any]:
    """A valid wire event, with fields replaced (or removed when set to ...)."""
    ev: dict[str, Any] = {
        "user_id": "u-1",
        "event_type": "page_viewed",
        "occurred_at": "2026-11-26T04:16:56.709521+00:00",
        "payload": {"path": "/"},
    }
    for name, value in overrides.items():
        if value is ...:
            ev.pop(name, None)
        else:
            ev[name] = value
    return ev


class Api:
    """Thin httpx wrapper around one DevServer."""

    def __init__(self, srv: DevServer) -> None:
        self.srv = srv
        self.http = httpx.Client(base_url=srv.url, timeout=10.0, verify=False)

    def post(
        self,
        path: str,
        body: Any = None,
        *,
        auth: Optional[str] = f"ApiKey {SK}",
        headers: Optional[dict[str, str]] = None,
        raw: Optional[bytes] = None,
        gzipped: bool = False,
    ) -> httpx.Response:
        hdrs = {"Content-Type": "application/json"}
        if auth is not None:
            hdrs["Authorization"] = auth
        hdrs.update(headers or {})
        data = raw if raw is not None else json.dumps(body).encode()
        if gzipped:
            data = gzip.compress(data)
            hdrs["Content-Encoding"] = "gzip"
        return self.http.post(path, content=data, headers=hdrs)

    def batch(self, events: list[Any], **kw: Any) -> httpx.Response:
        return self.post(BATCH, {"events": events}, **kw)

    def session(self, body: Any = None, *, key: str = PK) -> httpx.Response:
        return self.post(
            SESSION, {"anonymous_id": "a-1"} if body is None else body, auth=f"ApiKey {key}"
        )

    def token(self, body: Any = None) -> str:
        resp = self.session(body)
        assert resp.status_code == 200, resp.text
        return str(resp.json()["token"])

    def close(self) -> None:
        self.http.close()


def raw_exchange(srv: DevServer, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send ``data`` on a fresh connection, half-close it, and return all the bytes answered."""
    import socket

    with socket.create_connection(("127.0.0.1", srv.port), timeout=timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


def raw_post_head(path: str, *extra: str) -> bytes:
    """The request line and headers of an authenticated JSON POST, with ``extra`` header lines."""
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: x",
        f"Authorization: ApiKey {SK}",
        "Content-Type: application/json",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
