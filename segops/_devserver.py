"""A local SegOps ingestion server: the development server and compatibility oracle.

This is an independent, stdlib-only implementation of the *server* side of the
wire contract (``segops-api.md``): the batch and single-event ingestion endpoints,
the ``pk_`` session handshake with real HS256 JWTs, signed user ids, the
``Idempotency-Key`` de-duplication, gzip request bodies, plus a few things the hosted
service does not have: fault injection (``fail_rate``, ``latency_ms``,
``rate_limit``), deterministic test hooks (:meth:`DevServer.script`,
:attr:`DevServer.reject_when`, :meth:`DevServer.revoke_tokens`), a request log
(:attr:`DevServer.requests`) and unauthenticated inspection endpoints under ``/_dev/``.

It deliberately imports nothing from the client package (no encoding, validation,
signing or delivery code), so that the client's tests run against an implementation
that does not share its bugs.

Run it with ``python -m segops._devserver`` (or ``segops dev-server``).
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import gzip
import hashlib
import hmac
import io
import json
import math
import os
import random
import re
import secrets
import signal
import socket
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import (
    Any,
    Callable,
    Deque,
    Dict,
    Iterable,
    List,
    Optional,
    Sequence,
    Tuple,
    Type,
    Union,
)
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "DROP",
    "MAX_BATCH_EVENTS",
    "DevServer",
    "RecordedRequest",
    "add_arguments",
    "main",
    "run",
]

#: Documented server limit on events per batch request.
MAX_BATCH_EVENTS = 500
#: Largest request body accepted, before and after gzip decompression (bytes).
MAX_BODY_BYTES = 16 * 1024 * 1024
#: How many requests :attr:`DevServer.requests` keeps (the oldest are dropped).
MAX_RECORDED_REQUESTS = 10_000
#: Signatures are accepted within this many seconds of the server clock.
SIGNATURE_TOLERANCE = 300
#: A scripted response that closes the connection without answering.
DROP = "drop"

BATCH_PATH = "/api/ingestion/track/batch/"
SINGLE_PATH = "/api/ingestion/track/"
SESSION_PATH = "/api/auth/session/"

_EVENT_FIELDS = ("user_id", "event_type", "occurred_at", "payload", "anonymous_id")
_SESSION_FIELDS = ("user_id", "anonymous_id", "user_id_sig", "user_id_ts")
_EXPIRES_AT_STYLES = ("seconds", "fractional", "offset")

# Every pattern is ASCII-only: in Python ``\d`` also matches full-width and other
# Unicode digits (full-width U+FF10..U+FF19, ...), which no real server accepts.
_ISO_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2})"
    r"(?::([0-9]{2})(?:[.,]([0-9]{1,9}))?)?"
    r"(?:([Zz])|([+-])([0-9]{2}):?([0-9]{2}))?\Z"
)
_RATE_RE = re.compile(
    r"\s*([0-9]+)\s*/\s*(s|sec|second|m|min|minute|h|hr|hour)\s*\Z",
    re.IGNORECASE | re.ASCII,
)
_RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_HEX_RE = re.compile(r"[0-9a-fA-F]+\Z")
#: ``Content-Length`` is 1*DIGIT (RFC 9110): ``int()`` would also take ``+5``, `` 5``, ``1_0``.
_LENGTH_RE = re.compile(r"[0-9]+\Z")
#: A chunk-size line (RFC 9112 7.1): hex digits, optional ``;ext``, CRLF. ``int(x, 16)``
#: alone would take ``-1`` (read to EOF, past the size cap), ``0x10`` and ``+5``.
_CHUNK_LINE_RE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?\r\n\Z")
#: Bytes of chunk trailers read before the body is refused (they are otherwise unbounded).
_MAX_TRAILER_BYTES = 64 * 1024

Json = Any
RejectHook = Callable[[Dict[str, Any]], Optional[str]]
ScriptItem = Union[int, str, Tuple[Any, ...], List[Any]]


# ── small helpers ────────────────────────────────────────────────────────────


def _utc_iso(ts: float) -> str:
    """``ts`` as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
    dt = datetime.fromtimestamp(ts, timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_KEY_ENVIRONMENTS = frozenset({"live", "test", "dev", "prod", "staging", "sandbox", "local"})


def _redact(key: str) -> str:
    """``sk_dev_secret`` -> ``sk_dev_…cret``, by the client's rule (``segops._paths.redact``,
    not imported: the server stays independent of the client). A key of 12 characters or
    fewer shows only its prefix: four more characters would give most of it away. A longer
    one shows a known environment word and the last four characters, nothing else."""
    if len(key) <= 12:
        return key[:3] + "…"
    env = key[3:].split("_", 1)[0] if key.count("_") >= 2 else ""
    prefix = key[:3] + (env + "_" if env in _KEY_ENVIRONMENTS else "")
    return f"{prefix}…{key[-4:]}"


def parse_iso8601(text: str) -> Optional[datetime]:
    """Parse an ISO-8601 / RFC 3339 date-time; ``None`` when it is not one.

    Accepts ``T``/space, optional seconds, 1-9 fractional digits, ``Z`` or
    ``±HH:MM``/``±HHMM`` offsets; a value without an offset is taken as UTC.
    """
    m = _ISO_RE.match(text)
    if m is None:
        return None
    year, month, day, hour, minute, second, frac, _, sign, off_h, off_m = m.groups()
    micro = int((frac + "000000")[:6]) if frac else 0
    tz = timezone.utc
    if sign:
        oh, om = int(off_h), int(off_m)
        if oh > 23 or om > 59:
            return None
        delta = timedelta(hours=oh, minutes=om)
        tz = timezone(-delta if sign == "-" else delta)
    try:
        return datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second or 0), micro, tz
        )
    except ValueError:
        return None


def parse_rate_limit(spec: str) -> Tuple[int, float]:
    """``"60/min"`` -> ``(60, 60.0)``: (requests, window seconds). Raises ValueError."""
    m = _RATE_RE.match(spec)
    if m is None or int(m.group(1)) < 1:
        raise ValueError(f"rate limit must look like 'N/min' (or N/s, N/h), got {spec!r}")
    return int(m.group(1)), _RATE_UNITS[m.group(2)[0].lower()]


def _user_id_signature(secret_hex: str, user_id: str, ts: int) -> str:
    key = bytes.fromhex(secret_hex)
    return hmac.new(key, f"{user_id}|{ts}".encode(), hashlib.sha256).hexdigest()


def _signature_ok(secret_hex: str, user_id: str, sig: str, ts: int) -> bool:
    # The contract says *lowercase* hex: comparing exactly (no ``.lower()``) makes the
    # oracle refuse an uppercase signature the way a strict server would.
    expected = _user_id_signature(secret_hex, user_id, ts)
    return hmac.compare_digest(expected.encode("ascii"), sig.encode("utf-8"))


def _loads(body: bytes) -> Json:
    """Strict JSON (UTF-8, no NaN/Infinity, no lone surrogates). Raises ValueError."""

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        parsed = json.loads(body.decode("utf-8"), parse_constant=no_constants)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc
    # json.loads turns a "\udcff" escape into half a UTF-16 pair, which no UTF-8 store
    # can hold: refuse the body as a strict parser would, instead of failing later. Only
    # a \u escape can make one (the body decoded as UTF-8): skip the re-encoding otherwise.
    if b"\\u" not in body:
        return parsed
    try:
        json.dumps(parsed, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("JSON string holds a lone surrogate (not valid Unicode)") from exc
    return parsed


def validate_event(event: Any) -> Optional[Dict[str, List[str]]]:
    """Field errors of one wire event (DRF style), or ``None`` when it is valid."""
    if not isinstance(event, dict):
        kind = type(event).__name__
        return {"non_field_errors": [f"Invalid data. Expected a dictionary, but got {kind}."]}
    errors: Dict[str, List[str]] = {}
    for name in ("user_id", "event_type", "anonymous_id"):
        if name not in event:
            if name != "anonymous_id":
                errors[name] = ["This field is required."]
            continue
        value = event[name]
        if value is None:
            errors[name] = ["This field may not be null."]
        elif not isinstance(value, str):
            errors[name] = ["Not a valid string."]
        elif not value.strip():
            errors[name] = ["This field may not be blank."]
    if "occurred_at" not in event:
        errors["occurred_at"] = ["This field is required."]
    else:
        value = event["occurred_at"]
        if not isinstance(value, str) or parse_iso8601(value) is None:
            errors["occurred_at"] = [
                "Datetime has wrong format. Use one of these formats instead: "
                "YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z]."
            ]
    if "payload" not in event:
        errors["payload"] = ["This field is required."]
    elif not isinstance(event["payload"], dict):
        kind = type(event["payload"]).__name__
        errors["payload"] = [f'Expected a dictionary of items but got type "{kind}".']
    for name in event:
        if name not in _EVENT_FIELDS:
            errors[str(name)] = ["Unexpected field."]
    return errors or None


# ── public records ───────────────────────────────────────────────────────────


@dataclass(frozen=True)
class RecordedRequest:
    """One API request the server received (``/_dev/`` calls are not recorded)."""

    method: str
    path: str
    #: Header names in lower case; repeated headers joined with ", ".
    headers: Dict[str, str]
    #: The request body after gzip decoding (the raw body when decoding failed).
    body: bytes
    #: The parsed JSON body, or ``None`` when the body was empty or not JSON.
    json: Any
    #: The status answered (0 when the connection was dropped by a script).
    status: int
    #: When the request had been read: ``time.monotonic()`` of the server's process (so
    #: tests running the server in-process can time requests without polling).
    received: float = 0.0

    def __repr__(self) -> str:
        # Shown by test failures: the credential goes as its scheme only.
        headers = {
            name: _scheme_only(value) if name == "authorization" else value
            for name, value in self.headers.items()
        }
        return (
            f"RecordedRequest(method={self.method!r}, path={_without_query(self.path)!r}, "
            f"headers={headers!r}, status={self.status!r}, body={self.body[:200]!r})"
        )


def _scheme_only(authorization: str) -> str:
    """``ApiKey …``: the scheme of an Authorization value, never the credential (nor a
    value without a scheme, which is a credential itself)."""
    scheme, space, _ = authorization.partition(" ")
    return f"{scheme} …" if space and scheme.isalpha() else "…"


def _without_query(path: str) -> str:
    """A request path fit to print: a query string may carry a key (``?api_key=sk_...``)."""
    base, query, _ = path.partition("?")
    return base + ("?…" if query else "")


@dataclass
class _Answer:
    status: int
    body: Any = None
    headers: Dict[str, str] = field(default_factory=dict)
    close: bool = False


@dataclass
class _Auth:
    kind: str  # "apikey" | "bearer"
    uid: Optional[str]
    rate_key: str
    #: Who is calling, for idempotency fingerprints: a hash of the API key (never the
    #: key itself) or the token's subject, so every token of one identity matches.
    identity: str


_NO_BODY = object()


# ── the server ───────────────────────────────────────────────────────────────


class DevServer:
    """A local SegOps ingestion server on a background thread.

    ``DevServer().start()`` (or ``with DevServer() as srv:``) listens on
    ``srv.url``; events land in SQLite and are readable with :meth:`events`.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        db_path: Optional[Union[str, os.PathLike[str]]] = None,
        secret_key: str = "sk_dev_secret",
        public_key: str = "pk_dev_public",
        hmac_secret: Optional[str] = None,
        require_signed: bool = False,
        token_ttl: float = 900.0,
        expires_at_style: str = "seconds",
        fail_rate: float = 0.0,
        fail_status: int = 503,
        latency_ms: float = 0.0,
        rate_limit: Optional[str] = None,
        verbose: bool = False,
    ) -> None:
        if not secret_key.startswith("sk_") or len(secret_key) < 4:
            raise ValueError("secret_key must start with 'sk_'")
        if not public_key.startswith("pk_") or len(public_key) < 4:
            raise ValueError("public_key must start with 'pk_'")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, got {port}")
        self._lock = threading.RLock()
        self.host = host
        self._port = port
        self.secret_key = secret_key
        self.public_key = public_key
        self._hmac_secret: Optional[str] = None
        self.hmac_secret = hmac_secret
        self.require_signed = require_signed
        self._token_ttl = 900.0
        self.token_ttl = token_ttl
        self._expires_at_style = "seconds"
        self.expires_at_style = expires_at_style
        self._fail_rate = 0.0
        self._fail_status = 503
        self._latency_ms = 0.0
        self._rate: Optional[Tuple[int, float]] = None
        self._rate_spec: Optional[str] = None
        self._windows: Dict[str, Deque[float]] = {}
        self.fail_rate = fail_rate
        self.fail_status = fail_status
        self.latency_ms = latency_ms
        self.rate_limit = rate_limit
        self.verbose = verbose
        #: Test hook: called with each event dict of an ingestion request; a returned
        #: reason refuses the whole request with ``400 {"detail": reason}``.
        self.reject_when: Optional[RejectHook] = None

        self._random = random.Random()
        self._jwt_secret = secrets.token_bytes(32)
        self._tokens: Dict[str, float] = {}  # jti -> exact expiry (unix seconds)
        self._script: Deque[_Answer] = collections.deque()
        self._requests: Deque[RecordedRequest] = collections.deque(maxlen=MAX_RECORDED_REQUESTS)
        self._skipped: Deque[Dict[str, Any]] = collections.deque(maxlen=MAX_RECORDED_REQUESTS)
        self._counters: Dict[str, int] = {}
        self._reset_counters()

        self.db_path = ":memory:" if db_path is None else os.fspath(db_path)
        self._db = sqlite3.connect(self.db_path, check_same_thread=False)
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS events (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                user_id TEXT NOT NULL,
                sent_user_id TEXT NOT NULL,
                event_type TEXT NOT NULL,
                occurred_at TEXT NOT NULL,
                payload TEXT NOT NULL,
                anonymous_id TEXT,
                raw TEXT NOT NULL,
                received_at TEXT NOT NULL,
                idempotency_key TEXT,
                auth TEXT NOT NULL,
                endpoint TEXT NOT NULL
            );
            CREATE INDEX IF NOT EXISTS events_user ON events (user_id);
            CREATE TABLE IF NOT EXISTS idempotency (
                key TEXT PRIMARY KEY,
                status INTEGER NOT NULL,
                body TEXT NOT NULL,
                created_at TEXT NOT NULL,
                fingerprint TEXT
            );
            """
        )
        self._migrate_idempotency()
        self._db.commit()

        self._httpd: Optional[_HTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    def _migrate_idempotency(self) -> None:
        # A --db file from before fingerprints lacks the column; its old rows keep NULL
        # and replay on the key alone, as they did when they were written.
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(idempotency)")}
        if "fingerprint" not in columns:
            self._db.execute("ALTER TABLE idempotency ADD COLUMN fingerprint TEXT")

    # ── runtime settings ──

    @property
    def fail_rate(self) -> float:
        """Probability (0..1) of answering ingestion requests with :attr:`fail_status`."""
        return self._fail_rate

    @fail_rate.setter
    def fail_rate(self, value: float) -> None:
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"fail_rate must be within 0..1, got {value}")
        self._fail_rate = float(value)

    @property
    def fail_status(self) -> int:
        """The status of injected failures (default 503)."""
        return self._fail_status

    @fail_status.setter
    def fail_status(self, value: int) -> None:
        # A 1xx-3xx "failure" is none: a 2xx would even count as delivered, storing nothing.
        if not 400 <= int(value) <= 599:
            raise ValueError(f"fail_status must be a failure status 400..599, got {value}")
        self._fail_status = int(value)

    @property
    def latency_ms(self) -> float:
        """Delay added before answering every API request (milliseconds)."""
        return self._latency_ms

    @latency_ms.setter
    def latency_ms(self, value: float) -> None:
        # NaN passes a plain ``< 0`` test and then breaks time.sleep() on every request.
        if not math.isfinite(float(value)) or float(value) < 0:
            raise ValueError(f"latency_ms must be a finite number >= 0, got {value}")
        self._latency_ms = float(value)

    @property
    def token_ttl(self) -> float:
        """Lifetime of minted session tokens (seconds, fractions allowed)."""
        return self._token_ttl

    @token_ttl.setter
    def token_ttl(self, value: float) -> None:
        # NaN slips past ``<= 0`` and inf overflows the expiry: both must be refused.
        if not math.isfinite(float(value)) or float(value) <= 0:
            raise ValueError(f"token_ttl must be a finite number > 0 seconds, got {value}")
        self._token_ttl = float(value)

    @property
    def expires_at_style(self) -> str:
        """How minted tokens' ``expires_at`` is written: ``seconds``, ``fractional`` or
        ``offset`` (see ``--expires-at-style``)."""
        return self._expires_at_style

    @expires_at_style.setter
    def expires_at_style(self, value: str) -> None:
        if value not in _EXPIRES_AT_STYLES:
            raise ValueError(
                f"expires_at_style must be one of {', '.join(_EXPIRES_AT_STYLES)}, got {value!r}"
            )
        self._expires_at_style = value

    @property
    def rate_limit(self) -> Optional[str]:
        """``"N/min"`` (or ``N/s``, ``N/h``) ingestion requests per API key, or ``None``."""
        return self._rate_spec

    @rate_limit.setter
    def rate_limit(self, value: Optional[str]) -> None:
        parsed = None if value is None else parse_rate_limit(value)
        with self._lock:
            self._rate = parsed
            self._rate_spec = value
            self._windows = {}

    @property
    def hmac_secret(self) -> Optional[str]:
        """Hex HMAC secret used to check ``user_id_sig`` at the session call."""
        return self._hmac_secret

    @hmac_secret.setter
    def hmac_secret(self, value: Optional[str]) -> None:
        if value is not None and (len(value) % 2 or not _HEX_RE.match(value)):
            raise ValueError("hmac_secret must be a non-empty, even-length hex string")
        self._hmac_secret = value

    # ── lifecycle ──

    @property
    def port(self) -> int:
        """The bound port after :meth:`start` (the requested one before)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (valid after :meth:`start`)."""
        if self._port == 0:
            raise RuntimeError("DevServer.url is known only after start()")
        host = self.host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self._port}"

    @property
    def running(self) -> bool:
        """Whether the server is listening."""
        return self._httpd is not None

    def start(self) -> DevServer:
        """Listen on a background thread. After :meth:`stop`, rebinds the same port."""
        with self._lock:
            if self._httpd is not None:
                return self
            cls = _HTTPServer6 if ":" in self.host else _HTTPServer
            httpd = cls((self.host, self._port), _Handler, self)
            self._port = int(httpd.server_address[1])
            thread = threading.Thread(
                target=httpd.serve_forever,
                kwargs={"poll_interval": 0.02},
                name=f"segops-devserver:{self._port}",
                daemon=True,
            )
            self._httpd, self._thread = httpd, thread
            thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection (clients see refused/reset)."""
        with self._lock:
            httpd, thread = self._httpd, self._thread
            self._httpd = self._thread = None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        httpd.close_connections()
        if thread is not None:
            thread.join(timeout=2.0)

    def close(self) -> None:
        """Stop and close the database (the object is unusable afterwards)."""
        self.stop()
        with self._lock:
            self._db.close()

    def __enter__(self) -> DevServer:
        return self.start()

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.url if self._port else f"{self.host}:?"
        state = "running" if self.running else "stopped"
        return f"<DevServer {where} {state} secret_key={_redact(self.secret_key)}>"

    # ── inspection ──

    def events(self, user_id: Optional[str] = None) -> List[Dict[str, Any]]:
        """Stored events, oldest first (optionally only those of ``user_id``).

        Each is ``{"id", "user_id", "event_type", "occurred_at", "payload",
        "anonymous_id", "sent_user_id", "received_at", "idempotency_key", "auth",
        "endpoint", "raw"}``; ``raw`` is the event object exactly as received and
        ``user_id`` is the token's uid for Bearer requests (``sent_user_id`` keeps
        what the client sent).
        """
        query = (
            "SELECT id, user_id, event_type, occurred_at, payload, anonymous_id, sent_user_id,"
            " received_at, idempotency_key, auth, endpoint, raw FROM events"
        )
        params: Tuple[str, ...] = ()
        if user_id is not None:
            query += " WHERE user_id = ?"
            params = (user_id,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY id", params).fetchall()
        out = []
        for row in rows:
            out.append(
                {
                    "id": row[0],
                    "user_id": row[1],
                    "event_type": row[2],
                    "occurred_at": row[3],
                    "payload": json.loads(row[4]),
                    "anonymous_id": row[5],
                    "sent_user_id": row[6],
                    "received_at": row[7],
                    "idempotency_key": row[8],
                    "auth": row[9],
                    "endpoint": row[10],
                    "raw": json.loads(row[11]),
                }
            )
        return out

    def stats(self) -> Dict[str, int]:
        """Counters: ``events`` stored, ``requests``, ``duplicates_dropped``, ``rejected``,
        ``skipped``, ``rate_limited``, ``failed_injected``, ``scripted``,
        ``unauthorized``, ``tokens_minted``."""
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM events").fetchone()
            out = dict(self._counters)
        out["events"] = int(count)
        return out

    def skipped_events(self) -> List[Dict[str, Any]]:
        """Events skipped by batch validation: ``{"event", "errors", "received_at"}``."""
        with self._lock:
            return list(self._skipped)

    @property
    def requests(self) -> List[RecordedRequest]:
        """The last API requests received (up to 10,000), oldest first."""
        with self._lock:
            return list(self._requests)

    def reset(self) -> None:
        """Forget stored events, idempotency keys, counters, the request log and
        rate-limit windows. Settings, hooks, the script and tokens are kept."""
        with self._lock:
            self._db.execute("DELETE FROM events")
            self._db.execute("DELETE FROM idempotency")
            self._db.commit()
            self._requests.clear()
            self._skipped.clear()
            self._windows = {}
            self._reset_counters()

    # ── test hooks ──

    def script(self, responses: Iterable[ScriptItem]) -> None:
        """Queue canned answers for the next ingestion requests (FIFO).

        Each item is a status (``503``), ``(status, body)``, ``(status, body,
        headers)`` or :data:`DROP` (close the connection without answering).
        ``body`` may be a JSON value, ``str`` or ``bytes``. Scripted requests are
        answered before authentication and store nothing.
        """
        answers = [self._script_answer(item) for item in responses]
        with self._lock:
            self._script.extend(answers)

    def clear_script(self) -> None:
        """Drop the canned answers not used yet."""
        with self._lock:
            self._script.clear()

    def revoke_tokens(self) -> None:
        """Invalidate every session token minted so far (they get 401)."""
        with self._lock:
            self._tokens.clear()

    def mint_token(self, uid: str, ttl: Optional[float] = None) -> str:
        """Mint a session token for ``uid`` directly (a test shortcut)."""
        return self._mint(uid, self.token_ttl if ttl is None else ttl)[0]

    # ── internals: bookkeeping ──

    def _reset_counters(self) -> None:
        self._counters = dict.fromkeys(
            (
                "requests",
                "duplicates_dropped",
                "rejected",
                "skipped",
                "rate_limited",
                "failed_injected",
                "scripted",
                "unauthorized",
                "tokens_minted",
            ),
            0,
        )

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] = self._counters.get(name, 0) + n

    @staticmethod
    def _script_answer(item: ScriptItem) -> _Answer:
        if isinstance(item, str):
            if item != DROP:
                raise ValueError(f"unknown scripted response {item!r} (use DROP or a status)")
            return _Answer(0, close=True)
        if isinstance(item, int):
            return _Answer(item, {"detail": f"scripted {item}"})
        if isinstance(item, (tuple, list)) and 1 <= len(item) <= 3:
            status = int(item[0])
            body = item[1] if len(item) > 1 else {"detail": f"scripted {status}"}
            headers = {str(k): str(v) for k, v in (item[2] if len(item) > 2 else {}).items()}
            return _Answer(status, body, headers)
        raise ValueError(f"bad scripted response {item!r}")

    def _log(self, line: str) -> None:
        if self.verbose:
            sys.stderr.write(f"segops dev-server: {line}\n")
            sys.stderr.flush()

    # ── internals: tokens ──

    def _mint(self, uid: str, ttl: float) -> Tuple[str, float]:
        now = time.time()
        exact_exp = now + ttl
        jti = secrets.token_hex(12)
        header = {"alg": "HS256", "typ": "JWT"}
        payload = {"sub": uid, "exp": math.ceil(exact_exp), "iat": int(now), "jti": jti}
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(payload, separators=(",", ":")).encode())
        )
        sig = hmac.new(self._jwt_secret, signing_input.encode("ascii"), hashlib.sha256).digest()
        with self._lock:
            if len(self._tokens) > 10_000:
                self._tokens = {k: v for k, v in self._tokens.items() if v > now}
            self._tokens[jti] = exact_exp
            self._counters["tokens_minted"] += 1
        return f"{signing_input}.{_b64url(sig)}", exact_exp

    def _verify_token(self, token: str) -> Optional[str]:
        """The token's uid, or ``None`` when it is not a live token of this server."""
        parts = token.split(".")
        if len(parts) != 3:
            return None
        try:
            header = json.loads(_b64url_decode(parts[0]))
            signature = _b64url_decode(parts[2])
            expected = hmac.new(
                self._jwt_secret, f"{parts[0]}.{parts[1]}".encode("ascii"), hashlib.sha256
            ).digest()
            if not isinstance(header, dict) or header.get("alg") != "HS256":
                return None
            if not hmac.compare_digest(signature, expected):
                return None
            payload = json.loads(_b64url_decode(parts[1]))
        except (ValueError, UnicodeError, RecursionError):  # RecursionError: deeply nested
            return None
        if not isinstance(payload, dict):
            return None
        sub, exp, jti = payload.get("sub"), payload.get("exp"), payload.get("jti")
        if not isinstance(sub, str) or not isinstance(exp, int) or not isinstance(jti, str):
            return None
        now = time.time()
        with self._lock:
            live_until = self._tokens.get(jti)
        if live_until is None or now >= live_until or now >= exp:
            return None
        return sub

    def _format_expiry(self, exact_exp: float) -> str:
        dt = datetime.fromtimestamp(exact_exp, timezone.utc)
        if self.expires_at_style == "fractional":
            return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        dt = dt.replace(microsecond=0)
        if self.expires_at_style == "offset":
            return dt.isoformat()
        return dt.strftime("%Y-%m-%dT%H:%M:%SZ")

    # ── internals: request handling ──

    def _handle(
        self,
        method: str,
        raw_path: str,
        headers: Dict[str, str],
        raw_body: bytes,
        early: Optional[_Answer],
    ) -> _Answer:
        received = time.monotonic()
        split = urlsplit(raw_path)
        path = split.path
        if path == "/_dev" or path.startswith("/_dev/"):
            return early or self._handle_dev(method, path, split.query)
        body = raw_body
        answer = early
        if answer is None:
            body, answer = _decode_body(headers, raw_body)
        parsed: Any = _NO_BODY
        parse_error: Optional[_Answer] = None
        if answer is None and body:
            try:
                parsed = _loads(body)
            except ValueError as exc:
                parse_error = _Answer(400, {"detail": f"JSON parse error - {exc}"})
            ctype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if ctype != "application/json":
                # Like DRF: only JSON bodies are parsed (the log still shows the JSON).
                shown = ctype or "(none)"
                parse_error = _Answer(
                    415, {"detail": f'Unsupported media type "{shown}" in request.'}
                )
        if answer is None:
            answer = self._route(method, path, headers, body, parsed, parse_error)
        else:
            # Refused before routing (unreadable, oversize or undecodable body): no script
            # item is used and no credential is checked, but it is still a refusal.
            self._count("rejected")
        record = RecordedRequest(
            method=method,
            path=raw_path,
            headers=dict(headers),
            body=body,
            json=None if parsed is _NO_BODY else parsed,
            status=answer.status,
            received=received,
        )
        with self._lock:
            self._requests.append(record)
            self._counters["requests"] += 1
        self._log(f"{method} {_without_query(raw_path)} -> {answer.status or 'dropped'}")
        return answer

    def _route(
        self,
        method: str,
        path: str,
        headers: Dict[str, str],
        body: bytes,
        parsed: Any,
        parse_error: Optional[_Answer],
    ) -> _Answer:
        routes = {BATCH_PATH: "batch", SINGLE_PATH: "single", SESSION_PATH: "session"}
        kind = routes.get(path)
        if kind is None:
            return _Answer(404, {"detail": "Not found."})
        if method != "POST":
            return _Answer(405, {"detail": f'Method "{method}" not allowed.'}, {"Allow": "POST"})
        if self._latency_ms > 0:
            time.sleep(self._latency_ms / 1000.0)
        if kind == "session":
            return self._session(headers, parsed, parse_error)
        return self._ingest(kind, headers, body, parsed, parse_error)

    def _authenticate(self, headers: Dict[str, str]) -> Tuple[Optional[_Auth], _Answer]:
        value = headers.get("authorization", "").strip()
        scheme, _, cred = value.partition(" ")
        cred = cred.strip()
        scheme = scheme.lower()
        if not value:
            return None, _Answer(401, {"detail": "Authentication credentials were not provided."})
        if scheme == "apikey":
            if hmac.compare_digest(cred.encode(), self.secret_key.encode()):
                identity = "apikey:" + hashlib.sha256(cred.encode()).hexdigest()
                return _Auth("apikey", None, self.secret_key, identity), _Answer(200)
            if cred.startswith("pk_") and hmac.compare_digest(
                cred.encode(), self.public_key.encode()
            ):
                return None, _Answer(
                    403,
                    {
                        "detail": "A public key cannot write events: mint a session token at "
                        f"{SESSION_PATH} and send it as 'Authorization: Bearer <token>'."
                    },
                )
            return None, _Answer(401, {"detail": "Invalid API key."})
        if scheme == "bearer":
            uid = self._verify_token(cred)
            if uid is not None:
                return _Auth("bearer", uid, self.public_key, f"bearer:{uid}"), _Answer(200)
            return None, _Answer(401, {"detail": "Invalid or expired session token."})
        return None, _Answer(
            401, {"detail": "Unsupported Authorization scheme (use 'ApiKey' or 'Bearer')."}
        )

    def _rate_limited(self, key: str) -> Optional[_Answer]:
        with self._lock:
            if self._rate is None:
                return None
            limit, window = self._rate
            now = time.monotonic()
            hits = self._windows.setdefault(key, collections.deque())
            while hits and hits[0] <= now - window:
                hits.popleft()
            if len(hits) < limit:
                hits.append(now)
                return None
            retry = max(1, math.ceil(hits[0] + window - now))
            self._counters["rate_limited"] += 1
        return _Answer(
            429,
            {"detail": f"Request was throttled. Expected available in {retry} seconds."},
            {"Retry-After": str(retry)},
        )

    def _ingest(
        self,
        kind: str,
        headers: Dict[str, str],
        body: bytes,
        parsed: Any,
        parse_error: Optional[_Answer],
    ) -> _Answer:
        with self._lock:
            scripted = self._script.popleft() if self._script else None
            if scripted is not None:
                self._counters["scripted"] += 1
        if scripted is not None:
            return scripted
        auth, failure = self._authenticate(headers)
        if auth is None:
            self._count("unauthorized")
            return failure
        limited = self._rate_limited(auth.rate_key)
        if limited is not None:
            return limited
        if self._fail_rate > 0 and self._random.random() < self._fail_rate:
            self._count("failed_injected")
            extra = {"Retry-After": "1"} if self._fail_status == 429 else {}
            return _Answer(self._fail_status, {"detail": "Injected failure (fail_rate)."}, extra)
        idem_key = headers.get("idempotency-key", "").strip() or None
        fingerprint = None
        if idem_key is not None:
            path = BATCH_PATH if kind == "batch" else SINGLE_PATH
            fingerprint = _fingerprint("POST", path, auth.identity, body, parsed)
            known = self._idempotent_answer(idem_key, fingerprint)
            if known is not None:
                return known

        def refuse(status: int, body: Any) -> _Answer:
            self._count("rejected")
            return _Answer(status, body)

        if parse_error is not None:
            return refuse(parse_error.status, parse_error.body)
        if parsed is _NO_BODY:
            return refuse(400, {"detail": "Empty request body."})
        if kind == "batch":
            if not isinstance(parsed, dict):
                return refuse(400, {"detail": 'Expected a JSON object {"events": [...]}.'})
            items = parsed.get("events")
            if not isinstance(items, list):
                return refuse(400, {"detail": "'events' must be a list of events."})
            if len(items) > MAX_BATCH_EVENTS:
                return refuse(
                    413,
                    {"detail": f"Too many events: {len(items)} > {MAX_BATCH_EVENTS} per request."},
                )
        else:
            if not isinstance(parsed, dict):
                return refuse(400, {"detail": "Expected one event as a JSON object."})
            items = [parsed]
        hook = self.reject_when
        if hook is not None:
            for item in items:
                if isinstance(item, dict):
                    reason = hook(item)
                    if reason:
                        return refuse(400, {"detail": str(reason)})
        good: List[Dict[str, Any]] = []
        bad: List[Tuple[Any, Dict[str, List[str]]]] = []
        for item in items:
            errors = validate_event(item)
            if errors is None:
                good.append(item)
            else:
                bad.append((item, errors))
        if kind == "single" and bad:
            return refuse(400, bad[0][1])
        if kind == "single":
            answer = _Answer(202, {"queued": True})
        else:
            answer = _Answer(200, {"queued": len(good), "skipped": len(bad)})
        self._store(kind, auth, idem_key, fingerprint, good, bad, answer)
        return answer

    def _idempotent_answer(self, idem_key: str, fingerprint: str) -> Optional[_Answer]:
        """The replayed first answer, a 422 for a key reused on another request, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT status, body, fingerprint FROM idempotency WHERE key = ?", (idem_key,)
            ).fetchone()
            if row is None:
                return None
            if row[2] is not None and row[2] != fingerprint:
                # Replaying another request's answer would tell the client that events
                # it never had accepted were stored: refuse, as Stripe-style APIs do.
                self._counters["rejected"] += 1
                return _Answer(422, {"detail": "Idempotency-Key reused for a different request"})
            self._counters["duplicates_dropped"] += 1
        return _Answer(int(row[0]), json.loads(row[1]), {"Idempotent-Replayed": "true"})

    def _store(
        self,
        kind: str,
        auth: _Auth,
        idem_key: Optional[str],
        fingerprint: Optional[str],
        good: List[Dict[str, Any]],
        bad: List[Tuple[Any, Dict[str, List[str]]]],
        answer: _Answer,
    ) -> None:
        received = _utc_iso(time.time())
        rows = [
            (
                auth.uid if auth.uid is not None else ev["user_id"],
                ev["user_id"],
                ev["event_type"],
                ev["occurred_at"],
                json.dumps(ev["payload"]),
                ev.get("anonymous_id"),
                json.dumps(ev),
                received,
                idem_key,
                auth.kind,
                kind,
            )
            for ev in good
        ]
        with self._lock:
            if idem_key is not None and fingerprint is not None:
                # A concurrent request with the same key may have won the race.
                known = self._idempotent_answer(idem_key, fingerprint)
                if known is not None:
                    answer.status, answer.body, answer.headers = (
                        known.status,
                        known.body,
                        known.headers,
                    )
                    return
            try:
                self._db.executemany(
                    "INSERT INTO events (user_id, sent_user_id, event_type, occurred_at,"
                    " payload, anonymous_id, raw, received_at, idempotency_key, auth, endpoint)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                if idem_key is not None:
                    self._db.execute(
                        "INSERT INTO idempotency (key, status, body, created_at, fingerprint)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (idem_key, answer.status, json.dumps(answer.body), received, fingerprint),
                    )
                self._db.commit()
            except BaseException:
                self._db.rollback()
                raise
            self._counters["skipped"] += len(bad)
            for item, errors in bad:
                self._skipped.append({"event": item, "errors": errors, "received_at": received})

    def _session(
        self, headers: Dict[str, str], parsed: Any, parse_error: Optional[_Answer]
    ) -> _Answer:
        scheme, _, cred = headers.get("authorization", "").strip().partition(" ")
        cred = cred.strip()
        if scheme.lower() != "apikey" or not hmac.compare_digest(
            cred.encode(), self.public_key.encode()
        ):
            self._count("unauthorized")
            detail = "Invalid public key."
            if cred.startswith("sk_"):
                detail = "Session tokens are minted with a pk_ public key, not a secret key."
            return _Answer(401, {"detail": detail})
        if parse_error is not None:
            return parse_error
        body = {} if parsed is _NO_BODY else parsed
        if not isinstance(body, dict):
            return _Answer(400, {"detail": "Expected a JSON object."})
        errors: Dict[str, List[str]] = {}
        for name in body:
            if name not in _SESSION_FIELDS:
                errors[str(name)] = ["Unexpected field."]
        for name in ("user_id", "anonymous_id", "user_id_sig"):
            if name in body and (not isinstance(body[name], str) or not body[name].strip()):
                errors[name] = ["Must be a non-empty string."]
        sig = body.get("user_id_sig")
        if isinstance(sig, str) and "user_id_sig" not in errors and not _HEX_RE.match(sig):
            errors["user_id_sig"] = ["Must be a hex string."]
        ts = body.get("user_id_ts")
        if "user_id_ts" in body and (not isinstance(ts, int) or isinstance(ts, bool)):
            errors["user_id_ts"] = ["A valid integer is required."]
        if errors:
            return _Answer(400, errors)
        user_id: Optional[str] = body.get("user_id")
        anonymous_id: Optional[str] = body.get("anonymous_id")
        if user_id is None and anonymous_id is None:
            return _Answer(400, {"detail": "Either user_id or anonymous_id is required."})
        if sig is not None:
            if user_id is None:
                return _Answer(400, {"user_id": ["Required with user_id_sig."]})
            if ts is None:
                return _Answer(400, {"user_id_ts": ["Required with user_id_sig."]})
            secret = self._hmac_secret
            if secret is None:
                self._count("unauthorized")
                return _Answer(
                    401,
                    {"detail": "Cannot verify user_id_sig: the dev server has no HMAC secret."},
                )
            if not _signature_ok(secret, user_id, sig, ts):
                self._count("unauthorized")
                return _Answer(401, {"detail": "Invalid user_id signature."})
            now = time.time()  # compared, not subtracted: an int past float range is valid
            if not now - SIGNATURE_TOLERANCE <= ts <= now + SIGNATURE_TOLERANCE:
                self._count("unauthorized")
                return _Answer(
                    401,
                    {"detail": "Expired user_id signature: user_id_ts is outside ±300 s."},
                )
        elif self.require_signed and user_id is not None:
            self._count("unauthorized")
            return _Answer(
                403,
                {"detail": "This key requires a signed user_id (user_id_sig + user_id_ts)."},
            )
        uid = user_id if user_id is not None else f"anon:{anonymous_id}"
        token, exact_exp = self._mint(uid, self.token_ttl)
        return _Answer(
            200, {"token": token, "expires_at": self._format_expiry(exact_exp), "uid": uid}
        )

    def _handle_dev(self, method: str, path: str, query: str) -> _Answer:
        if path == "/_dev/events":
            if method != "GET":
                return _Answer(405, {"detail": f'Method "{method}" not allowed.'}, {"Allow": "GET"})
            user = parse_qs(query).get("user_id")
            return _Answer(200, self.events(user[-1] if user else None))
        if path == "/_dev/stats":
            if method != "GET":
                return _Answer(405, {"detail": f'Method "{method}" not allowed.'}, {"Allow": "GET"})
            return _Answer(200, self.stats())
        if path == "/_dev/skipped":
            if method != "GET":
                return _Answer(405, {"detail": f'Method "{method}" not allowed.'}, {"Allow": "GET"})
            return _Answer(200, self.skipped_events())
        if path == "/_dev/reset":
            if method != "POST":
                return _Answer(
                    405, {"detail": f'Method "{method}" not allowed.'}, {"Allow": "POST"}
                )
            self.reset()
            return _Answer(200, {"reset": True})
        return _Answer(404, {"detail": "Not found."})


def _decode_body(headers: Dict[str, str], raw: bytes) -> Tuple[bytes, Optional[_Answer]]:
    encodings = [
        e.strip().lower() for e in headers.get("content-encoding", "").split(",") if e.strip()
    ]
    body = raw
    for enc in reversed(encodings):
        if enc == "identity":
            continue
        if enc not in ("gzip", "x-gzip"):
            return raw, _Answer(415, {"detail": f'Unsupported Content-Encoding "{enc}".'})
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(body)) as gz:
                body = gz.read(MAX_BODY_BYTES + 1)
        except (OSError, EOFError, ValueError) as exc:
            return raw, _Answer(400, {"detail": f"Invalid gzip body: {exc}"})
        if len(body) > MAX_BODY_BYTES:
            return raw, _Answer(413, {"detail": "Request body too large."})
    return body, None


def _fingerprint(method: str, path: str, identity: str, body: bytes, parsed: Any) -> str:
    """What an Idempotency-Key is bound to: method, path, caller and the decoded body.

    A JSON body is compared by value (key order and whitespace do not matter, so a client
    that re-encodes an unchanged batch after a restart still matches); anything else is
    compared byte for byte. Only hashes are kept, never a credential.
    """
    if parsed is _NO_BODY:
        content = body
    else:
        content = json.dumps(
            parsed, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")
    parts = [method, path, identity, hashlib.sha256(content).hexdigest()]
    return hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()


def _encode(answer: _Answer) -> Tuple[bytes, str]:
    body = answer.body
    if body is None and answer.status in (204, 304):
        return b"", "application/json"
    if isinstance(body, bytes):
        return body, "application/octet-stream"
    if isinstance(body, str):
        return body.encode("utf-8"), "text/plain; charset=utf-8"
    return json.dumps(body).encode("utf-8"), "application/json"


# ── HTTP plumbing ────────────────────────────────────────────────────────────


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: Tuple[str, int], handler: Any, dev: DevServer) -> None:
        self.dev = dev
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), which can stall on DNS.
        import socketserver

        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if self.dev.verbose:
            super().handle_error(request, client_address)


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "segops-devserver/1"
    sys_version = ""
    timeout = 120  # idle keep-alive connections are closed after this
    wbufsize = 64 * 1024  # headers and body leave in one write (no Nagle/delayed-ACK stalls)
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = do_GET

    def __getattr__(self, name: str) -> Any:
        # Every other method (TRACE, CONNECT, PROPFIND, ...) is routed too: an API path
        # answers 405 with Allow, as a wrong method should, not the stdlib's 501.
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.dev.verbose:
            sys.stderr.write(f"{self.address_string()} - {format % args}\n")

    def log_request(self, code: Union[int, str] = "-", size: Union[int, str] = "-") -> None:
        pass  # the DevServer logs one line per request itself when verbose

    def send_error(
        self, code: int, message: Optional[str] = None, explain: Optional[str] = None
    ) -> None:
        if self.request_version == "HTTP/0.9":
            # parse_request failed before reading a version: answer as HTTP/1.x anyway
            # (the stdlib would send a bare body without a status line).
            self.request_version = "HTTP/1.0"
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "Error"
        self._write(_Answer(code, {"detail": message or phrase}, close=True))

    def _headers(self) -> Dict[str, str]:
        out: Dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            out[key] = f"{out[key]}, {value}" if key in out else value
        return out

    def _read_body(self, headers: Dict[str, str]) -> Tuple[bytes, Optional[_Answer]]:
        try:
            if "chunked" in headers.get("transfer-encoding", "").lower():
                return self._read_chunked()
            return self._read_sized(headers.get("content-length"))
        except socket.timeout:  # an alias of TimeoutError since 3.10, distinct on 3.9
            # The socket timeout doubles as the body read timeout: a client that stalls
            # mid-body is answered like a server would (408), not with a 500.
            return b"", _Answer(408, {"detail": "Timed out reading the request body."}, close=True)

    def _read_sized(self, length_text: Optional[str]) -> Tuple[bytes, Optional[_Answer]]:
        if length_text is None:
            return b"", None
        digits = length_text.strip(" \t")
        if not _LENGTH_RE.match(digits):
            return b"", _Answer(400, {"detail": "Invalid Content-Length."}, close=True)
        length = int(digits)
        if length > MAX_BODY_BYTES:
            return b"", _Answer(413, {"detail": "Request body too large."}, close=True)
        data = self.rfile.read(length)
        if len(data) < length:
            return data, _Answer(400, {"detail": "Incomplete request body."}, close=True)
        return data, None

    def _read_chunked(self) -> Tuple[bytes, Optional[_Answer]]:
        invalid = _Answer(400, {"detail": "Invalid chunked body."}, close=True)
        chunks: List[bytes] = []
        total = 0
        while True:
            match = _CHUNK_LINE_RE.match(self.rfile.readline(1024))
            if match is None:
                return b"", invalid
            size = int(match.group(1), 16)
            if size == 0:
                return (b"".join(chunks), None) if self._skip_trailers() else (b"", invalid)
            total += size
            if total > MAX_BODY_BYTES:
                return b"", _Answer(413, {"detail": "Request body too large."}, close=True)
            data = self.rfile.read(size)
            if len(data) < size or self.rfile.readline(3) != b"\r\n":
                return b"", invalid
            chunks.append(data)

    def _skip_trailers(self) -> bool:
        """Read the trailer section up to its empty line; False when it is unbounded."""
        budget = _MAX_TRAILER_BYTES
        while budget > 0:
            line = self.rfile.readline(min(budget, 8192))
            if line in (b"\r\n", b"\n"):
                return True
            if not line.endswith(b"\n"):
                return False  # EOF or a line longer than the budget
            budget -= len(line)
        return False

    def _dispatch(self) -> None:
        dev = self.server.dev
        if self.request_version == "HTTP/0.9":
            # An HTTP/0.9 answer would be a bare body (no status line, no Content-Length):
            # refuse the request with a complete 400 instead (send_error sees to that).
            self.send_error(400, "HTTP/0.9 requests are not supported.")
            return
        try:
            headers = self._headers()
            body, early = self._read_body(headers)
            answer = dev._handle(self.command, self.path, headers, body, early)
        except Exception as exc:
            if dev.verbose:
                import traceback

                traceback.print_exc()
            answer = _Answer(500, {"detail": f"dev-server internal error: {exc!r}"}, close=True)
        self._write(answer)

    def _write(self, answer: _Answer) -> None:
        if answer.status == 0:  # scripted DROP
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        data, content_type = _encode(answer)
        self.send_response(answer.status)
        names = {k.lower() for k in answer.headers}
        if "content-type" not in names:
            self.send_header("Content-Type", content_type)
        for name, value in answer.headers.items():
            if name.lower() not in ("content-length", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        if answer.close or self.close_connection:
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and data:
            self.wfile.write(data)
        self.wfile.flush()


# ── command line ─────────────────────────────────────────────────────────────


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the dev-server flags to ``parser`` (the ``segops dev-server`` subcommand)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 = any)")
    parser.add_argument("--db", metavar="PATH", default=None, help="SQLite file (default: memory)")
    parser.add_argument(
        "--secret-key",
        metavar="KEY",
        default=None,
        help="sk_ key accepted on ingestion (env SEGOPS_SECRET_KEY; default sk_dev_secret)",
    )
    parser.add_argument(
        "--public-key",
        metavar="KEY",
        default=None,
        help="pk_ key accepted at the session call (env SEGOPS_PUBLIC_KEY; default pk_dev_public)",
    )
    parser.add_argument(
        "--hmac-secret", metavar="HEX", default=None, help="hex secret for user_id_sig"
    )
    parser.add_argument(
        "--require-signed", action="store_true", help="a user_id must come with a valid signature"
    )
    parser.add_argument(
        "--token-ttl", metavar="S", type=float, default=900.0, help="session token lifetime (900)"
    )
    parser.add_argument(
        "--expires-at-style",
        choices=_EXPIRES_AT_STYLES,
        default="seconds",
        help="format of expires_at: ...:SSZ (seconds), ...:SS.ffffffZ, ...:SS+00:00 (offset)",
    )
    parser.add_argument(
        "--fail-rate", metavar="F", type=float, default=0.0, help="probability 0..1 of failing"
    )
    parser.add_argument(
        "--fail-status", metavar="N", type=int, default=503, help="status of injected failures"
    )
    parser.add_argument(
        "--latency-ms", metavar="MS", type=float, default=0.0, help="delay before each answer"
    )
    parser.add_argument(
        "--rate-limit", metavar="N/min", default=None, help="ingestion calls per key (429 beyond)"
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="log every request")


def _keys_from(ns: argparse.Namespace) -> Tuple[str, str]:
    api_key = os.environ.get("SEGOPS_API_KEY", "")
    secret = ns.secret_key or os.environ.get("SEGOPS_SECRET_KEY") or ""
    if not secret and api_key.startswith("sk_"):
        secret = api_key
    public = ns.public_key or os.environ.get("SEGOPS_PUBLIC_KEY") or ""
    if not public and api_key.startswith("pk_"):
        public = api_key
    return secret or "sk_dev_secret", public or "pk_dev_public"


def run(ns: argparse.Namespace, *, stop_event: Optional[threading.Event] = None) -> int:
    """Serve with the parsed flags until SIGINT/SIGTERM (or ``stop_event``); 0 on a clean stop,
    2 for bad settings, 1 when the address cannot be bound."""
    prog = "segops dev-server"
    secret, public = _keys_from(ns)
    hmac_secret = ns.hmac_secret or os.environ.get("SEGOPS_HMAC_SECRET") or None
    try:
        srv = DevServer(
            host=ns.host,
            port=ns.port,
            db_path=ns.db,
            secret_key=secret,
            public_key=public,
            hmac_secret=hmac_secret,
            require_signed=ns.require_signed,
            token_ttl=ns.token_ttl,
            expires_at_style=ns.expires_at_style,
            fail_rate=ns.fail_rate,
            fail_status=ns.fail_status,
            latency_ms=ns.latency_ms,
            rate_limit=ns.rate_limit,
            verbose=ns.verbose,
        )
    except ValueError as exc:
        sys.stderr.write(f"{prog}: error: {exc}\n")
        return 2
    except sqlite3.Error as exc:  # SQLite's message names no file: say which
        sys.stderr.write(f"{prog}: error: --db {ns.db}: {exc}\n")
        return 2
    try:
        srv.start()
    except OSError as exc:
        sys.stderr.write(f"{prog}: error: cannot listen on {ns.host}:{ns.port}: {exc.strerror}\n")
        srv.close()
        return 1
    done = stop_event or threading.Event()
    previous: Dict[signal.Signals, Any] = {}

    def on_signal(signum: int, frame: Optional[FrameType]) -> None:
        done.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    sys.stdout.write(
        f"{prog} listening on {srv.url} (secret key {_redact(srv.secret_key)}, "
        f"public key {_redact(srv.public_key)})\n"
    )
    sys.stdout.flush()
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        srv.close()
    return 0


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``segops dev-server`` / ``python -m segops._devserver``; returns the exit code."""
    parser = _OneLineParser(
        prog="segops dev-server",
        description="Run a local SegOps ingestion server (development and tests only).",
    )
    add_arguments(parser)
    try:
        ns = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else 2
    return run(ns)


if __name__ == "__main__":
    sys.exit(main())
