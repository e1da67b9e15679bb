"""The official 0.2.2 client's transport seam, kept for code written against it.

0.2.2 takes ``transport=`` as a callable ``(url, *, body, headers, timeout) -> Response``
(often a fake in users' tests). We take an ``httpx.BaseTransport``; such a callable is
wrapped in :class:`CallableTransport`, so both kinds work unchanged.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from typing import Any, Dict, Optional, Protocol, Union

import httpx

from ._errors import ConfigurationError

# Connection-level headers httpx adds itself; 0.2.2's callables never saw them.
_HIDDEN_HEADERS = frozenset(
    {"host", "accept", "accept-encoding", "connection", "content-length", "content-encoding"}
)


@dataclass
class Response:
    """A minimal HTTP response, as 0.2.2's transports return it."""

    status: int
    body: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class Transport(Protocol):
    """0.2.2's transport: one JSON POST; a non-2xx is a status, not an exception."""

    def __call__(
        self, url: str, *, body: Dict[str, Any], headers: Dict[str, str], timeout: float
    ) -> Response: ...


class CallableTransport(httpx.BaseTransport):
    """An ``httpx`` transport that hands each request to a 0.2.2-style callable.

    The callable's exceptions become ``httpx.ConnectError``: the retry policy treats them
    as a server it could not reach, as 0.2.2's urllib transport errors were.
    """

    def __init__(self, send: Transport) -> None:
        self._send = send

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        raw = request.read()
        if request.headers.get("content-encoding") == "gzip":
            raw = gzip.decompress(raw)
        headers = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in request.headers.raw
            if name.decode("latin-1").lower() not in _HIDDEN_HEADERS
        }
        timeout = request.extensions.get("timeout", {}).get("read")
        try:
            reply = self._send(
                str(request.url), body=json.loads(raw), headers=headers, timeout=timeout
            )
            status, body = int(reply.status), reply.body
        except Exception as exc:
            raise httpx.ConnectError(
                f"the transport raised {type(exc).__name__}: {exc}", request=request
            ) from exc
        content = body.encode("utf-8") if isinstance(body, str) else bytes(body or b"")
        return httpx.Response(status, content=content, request=request)


def as_httpx_transport(
    transport: Union[httpx.BaseTransport, Transport, None],
) -> Optional[httpx.BaseTransport]:
    """``transport`` as an ``httpx.BaseTransport``: as it is, or a 0.2.2 callable wrapped."""
    if transport is None or isinstance(transport, httpx.BaseTransport):
        return transport
    if callable(transport):
        return CallableTransport(transport)
    raise ConfigurationError(
        "transport must be an httpx.BaseTransport or a callable"
        f" (url, *, body, headers, timeout) -> Response, not {type(transport).__name__}"
    )
