"""The one HTTP seam: an ``httpx.Client`` with keep-alive, our headers, errors translated."""

from __future__ import annotations

import datetime
import email.utils
import gzip as gzip_module
import json
import platform
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional

import httpx

from ._paths import REDACT_SCAN_LIMIT, holds_secret, normalize_url, redact_secrets
from ._retry import Retryable
from ._version import __version__

USER_AGENT = f"segops-python/{__version__} python/{platform.python_version_tuple()[0]}.{platform.python_version_tuple()[1]}"  # noqa: E501

BATCH_PATH = "/api/ingestion/track/batch/"
SINGLE_PATH = "/api/ingestion/track/"
SESSION_PATH = "/api/auth/session/"


def header_safe(value: str) -> bool:
    """True when ``value`` can go in an HTTP header as it is: printable ASCII, no spaces.

    httpx refuses anything else, and its error quotes the header, credentials included.
    """
    return value.isascii() and value.isprintable() and " " not in value


def _credentials(headers: Mapping[str, str]) -> List[str]:
    """The key or token in the request's Authorization header (after its scheme)."""
    return [v.partition(" ")[2] for k, v in headers.items() if k.lower() == "authorization"]


def _failure(what: str, exc: Exception, headers: Mapping[str, str]) -> Retryable:
    """A transport failure, told without secrets: h11 quotes the server's bytes in its
    errors ("illegal header line: ..."), and a broken proxy may echo our credentials."""
    told = redact_secrets(str(exc), *_credentials(headers))  # ours stays readable
    return Retryable(f"{what}: {type(exc).__name__}: {told}")


def _cause(exc: Exception, headers: Mapping[str, str]) -> Optional[Exception]:
    """``exc`` as the __cause__ when no exception in its chain holds a secret; else none
    (a traceback prints the whole chain)."""
    secrets = _credentials(headers)
    link: Optional[BaseException] = exc
    for _ in range(10):  # httpx -> httpcore -> h11: a few links
        if link is None:
            return exc
        if holds_secret(str(link), *secrets):
            return None
        link = link.__cause__ or link.__context__
    return None


@dataclass(frozen=True)
class Reply:
    """A server answer, reduced to what delivery decisions need."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        """The body as JSON, or ``None`` when it is not JSON."""
        try:
            return json.loads(self.body) if self.body else None
        except (ValueError, RecursionError):  # RecursionError: nested deeper than it recurses
            return None

    def detail(self, *secrets: Optional[str]) -> str:
        """The server's explanation (``{"detail": ...}`` or field errors), kept short, with
        anything shaped like a key or a session token redacted: servers echo credentials."""
        # A body too big to be an explanation is shown as text (cut): parsing megabytes of
        # JSON to show 500 characters of it took most of a second.
        data = self.json() if len(self.body) <= _DETAIL_JSON_LIMIT else None
        if isinstance(data, dict) and "detail" in data:
            text = _plain(data["detail"])
        elif data is not None and data != {}:  # field errors, a list, a bare string
            text = _plain(data)
        else:
            text = self.body.decode("utf-8", "replace")
        text = text.strip() or f"HTTP {self.status}"
        # One line (an HTML page has many), cut after redaction: never half a key shown.
        # A lone surrogate (JSON may carry one) becomes "?": the text is stored and logged.
        shown = " ".join(redact_secrets(text, *secrets).split())[:500]
        return shown.encode("utf-8", "replace").decode("utf-8")

    def retry_after(self) -> Optional[float]:
        """``Retry-After`` in seconds, from either delta-seconds or an HTTP date."""
        value = self.headers.get("retry-after")
        if not value:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        when = _http_date(value)
        if when is None:
            return None
        # Against the server's clock when it says what time it is: ours may be off.
        now = self.server_time()
        return max(0.0, when - (time.time() if now is None else now))

    def server_time(self) -> Optional[float]:
        """The answer's ``Date`` (the server's clock, to the second), or ``None``."""
        value = self.headers.get("date")
        return _http_date(value) if value else None


def _plain(value: Any) -> str:
    """A JSON error value as readable text, never a Python repr (which prints a line break
    inside an echoed credential as ``\\n``, hiding it from the redaction). Strings as they
    are; at the top, an object as ``field: message; other: message`` and a list as
    ``message; message``; inside, ``[a, b]`` and ``{key: value}``. Only the first
    _PLAIN_LIMIT characters are built: no more is ever scanned or shown."""
    pieces: List[str] = []
    size = 0
    for piece in _plain_pieces(value, 0):
        pieces.append(piece)
        size += len(piece)
        if size > _PLAIN_LIMIT:
            break
    return "".join(pieces)


def _plain_pieces(value: Any, depth: int) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif not isinstance(value, (list, dict)):
        yield json.dumps(value)
    elif depth >= _PLAIN_DEPTH:
        yield "…"
    else:
        inner = depth > 0
        if inner:
            yield "[" if isinstance(value, list) else "{"
        items = value.items() if isinstance(value, dict) else ((None, v) for v in value)
        for index, (key, item) in enumerate(items):
            if index:
                yield ", " if inner else "; "
            if key is not None:
                yield f"{key}: "
            yield from _plain_pieces(item, depth + 1)
        if inner:
            yield "]" if isinstance(value, list) else "}"
        elif not value:
            yield "[]" if isinstance(value, list) else "{}"


_DETAIL_JSON_LIMIT = 256 * 1024
# Error bodies nest two or three levels; deeper is spelled "…" (and never recurses far).
_PLAIN_DEPTH = 8
# Characters of server text built at most: the redaction looks at no more.
_PLAIN_LIMIT = REDACT_SCAN_LIMIT * 4


def _http_date(value: str) -> Optional[float]:
    """An HTTP date as a Unix timestamp, or ``None`` when it is not one."""
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # the asctime form carries no zone; HTTP dates are GMT
        when = when.replace(tzinfo=datetime.timezone.utc)
    try:
        return when.timestamp()
    except (OverflowError, ValueError, OSError):
        return None


class HttpSender:
    """POSTs JSON bodies to the API over one keep-alive connection pool."""

    def __init__(
        self,
        *,
        api_url: str,
        timeout: float,
        transport: Optional[httpx.BaseTransport] = None,
        gzip: bool = False,
    ) -> None:
        self._base = normalize_url(api_url)
        self._timeout = timeout
        self._transport = transport
        self._gzip = gzip
        self._client: Optional[httpx.Client] = None  # built on first use, here or after fork
        self._client_lock = threading.Lock()
        self._transport_inherited = False
        # Clients inherited across fork(): kept alive, never closed (their sockets are the
        # parent's), so their finalisers cannot touch the parent's connections either.
        self._inherited: List[httpx.Client] = []

    def _new_client(self) -> httpx.Client:
        return httpx.Client(
            transport=self._transport,
            timeout=self._timeout,
            headers={"User-Agent": USER_AGENT, "Content-Type": "application/json"},
        )

    def post(
        self,
        path: str,
        body: bytes,
        headers: Dict[str, str],
        *,
        timeout: Optional[float] = None,
    ) -> Reply:
        """Send one request; transport failures become :class:`Retryable`."""
        if self._gzip:
            body = gzip_module.compress(body, compresslevel=5)
            headers = {**headers, "Content-Encoding": "gzip"}
        limit = self._timeout if timeout is None else max(0.05, min(timeout, self._timeout))
        try:
            response = self._pool().post(
                self._base + path, content=body, headers=headers, timeout=limit
            )
        except httpx.TimeoutException as exc:
            raise Retryable(f"request timed out: {type(exc).__name__}") from exc
        except (httpx.LocalProtocolError, UnicodeEncodeError) as exc:
            # A header httpx cannot send (e.g. a token with a newline): its message quotes
            # the header, credentials included, so only the exception's type is passed on,
            # and not as __cause__ either: tracebacks print the cause in full.
            raise Retryable(f"could not build the request: {type(exc).__name__}") from None
        except httpx.TransportError as exc:
            raise _failure("could not reach the server", exc, headers) from _cause(exc, headers)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise _failure("HTTP failure", exc, headers) from _cause(exc, headers)
        return Reply(response.status_code, response.content, dict(response.headers))

    def _pool(self) -> httpx.Client:
        client = self._client
        if client is None:
            with self._client_lock:
                client = self._client
                if client is None:
                    client = self._client = self._fresh_client()
        return client

    def _fresh_client(self) -> httpx.Client:
        if self._transport_inherited and self._transport is not None:
            # A transport passed in was shared with the parent at fork(): its pooled
            # keep-alive sockets are the parent's too, and two processes talking over one
            # socket garble each other's requests. close() drops them (closing the child's
            # copies of the descriptors; the parent's connections stay up) and the
            # transport opens new connections on demand, as httpx.HTTPTransport does.
            self._transport.close()
            self._transport_inherited = False
        return self._new_client()

    def after_fork(self) -> None:
        """In the child: a fresh lock, and a new pool built on first use (not here: a fork
        must stay cheap for children that never send)."""
        if self._client is not None:
            self._inherited.append(self._client)
        self._client = None
        self._client_lock = threading.Lock()
        self._transport_inherited = True

    def close(self) -> None:
        client = self._client
        if client is not None:
            client.close()
