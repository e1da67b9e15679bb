"""Narrow unit tests at the transport seam (httpx.MockTransport) and pure helpers."""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import json
import math
import threading
import time
import traceback
from typing import Any, Callable, List, Optional

import httpx
import pytest
import segops
from segops._delivery import _classify, _left
from segops._encoding import parse_iso8601
from segops._http import HttpSender, Reply
from segops._paths import WITHHELD, holds_secret, redact_secrets
from segops._retry import Retryable
from segops._session import REFRESH_SKEW, Session


def sender(handler: Callable[[httpx.Request], httpx.Response]) -> HttpSender:
    return HttpSender(
        api_url="http://segops.test/", timeout=2.0, transport=httpx.MockTransport(handler)
    )


def reply(status: int, headers: Optional[dict] = None, body: Any = None) -> Reply:
    """A Reply built by a real httpx round trip through MockTransport."""
    content = json.dumps(body if body is not None else {"detail": f"status {status}"}).encode()
    http = sender(lambda request: httpx.Response(status, headers=headers or {}, content=content))
    return http.post("/api/ingestion/track/batch/", b"{}", {})


# -- classification --------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_classify_2xx_is_success(status: int) -> None:
    """Any 2xx is success."""
    assert _classify(reply(status)).status == status


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_classify_transient_is_retryable(status: int) -> None:
    """408, 429 and 5xx are retryable."""
    with pytest.raises(Retryable) as info:
        _classify(reply(status))
    assert info.value.status == status


@pytest.mark.parametrize("status", [400, 413, 422])
def test_classify_content_errors_are_rejections(status: int) -> None:
    """400/413/422 are neither retried nor auth errors: they split/dead-letter."""
    with pytest.raises(Exception) as info:
        _classify(reply(status, body={"detail": "bad event"}))
    assert not isinstance(info.value, (Retryable, segops.AuthError))
    assert "bad event" in str(info.value)


@pytest.mark.parametrize(
    ("status", "cls"),
    [(401, segops.AuthError), (403, segops.AuthError), (404, segops.DeliveryError)],
)
def test_classify_auth_and_not_found(status: int, cls: type) -> None:
    """401/403 are AuthError; 404 a DeliveryError that is not an AuthError; detail kept."""
    with pytest.raises(cls) as info:
        _classify(reply(status, body={"detail": "why"}))
    assert info.value.status == status
    assert info.value.detail == "why"
    if status == 404:
        assert not isinstance(info.value, segops.AuthError)


def test_retry_after_seconds() -> None:
    """Retry-After in delta-seconds is read as a float."""
    assert reply(429, {"Retry-After": "7"}).retry_after() == 7.0
    with pytest.raises(Retryable) as info:
        _classify(reply(429, {"Retry-After": "3"}))
    assert info.value.retry_after == 3.0


def test_retry_after_http_date() -> None:
    """Retry-After as an HTTP date becomes the seconds until then."""
    value = email.utils.formatdate(time.time() + 30, usegmt=True)
    got = reply(503, {"Retry-After": value}).retry_after()
    assert got is not None and 28.0 <= got <= 30.5


@pytest.mark.parametrize("value", ["soon", "", "-5"])
def test_retry_after_garbage_or_negative(value: str) -> None:
    """Unparsable Retry-After is None; a negative or past one is never below zero."""
    got = reply(429, {"Retry-After": value}).retry_after()
    assert got is None or got == 0.0


def test_retry_after_past_date_is_zero() -> None:
    """An HTTP date in the past means retry now."""
    value = email.utils.formatdate(time.time() - 60, usegmt=True)
    assert reply(429, {"Retry-After": value}).retry_after() == 0.0


def test_transport_errors_become_retryable() -> None:
    """A connection error at the transport is Retryable, never an httpx exception."""

    def boom(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(Retryable):
        sender(boom).post("/api/ingestion/track/batch/", b"{}", {})


def test_client_honours_retry_after_at_the_seam(tmp_path: Any) -> None:
    """Through MockTransport: a 429 'Retry-After: 0.5' delays the second call by ~0.5 s."""
    calls: List[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        if len(calls) == 1:
            return httpx.Response(429, headers={"Retry-After": "0.5"}, json={"detail": "slow"})
        return httpx.Response(200, json={"queued": 1, "skipped": 0})

    client = segops.SegOpsClient(
        "http://segops.test",
        "sk_x",
        spool_path=tmp_path / "s.sqlite3",
        flush_interval=60,
        transport=httpx.MockTransport(handler),
        retry_policy=segops.RetryPolicy(attempts=3, timeout=5, wait_initial=0.01, wait_max=0.02),
    )
    try:
        time.sleep(0.05)
        client.track(user_id="u", event_type="e")
        client.flush(timeout=5)
    finally:
        client.shutdown(timeout=1)
    assert len(calls) == 2
    assert 0.45 <= calls[1] - calls[0] < 1.5


@pytest.mark.parametrize("timeout", [1e10, 1e308, math.inf])
def test_flush_and_shutdown_take_timeouts_beyond_timeout_max(
    make_client: Callable[..., segops.SegOpsClient], server: Any, timeout: float
) -> None:
    """A timeout past threading.TIMEOUT_MAX (or infinite) waits as needed: no OverflowError."""
    client = make_client()
    client.track(user_id="u", event_type="flushed")
    client.flush(timeout=timeout)
    client.track(user_id="u", event_type="at_shutdown")
    client.shutdown(timeout=timeout)
    assert [e["event_type"] for e in server.events()] == ["flushed", "at_shutdown"]


@pytest.mark.parametrize("setting", ["timeout", "flush_interval"])
@pytest.mark.parametrize("value", [1e10, math.inf])
def test_client_times_past_timeout_max_are_refused(
    tmp_path: Any, setting: str, value: float
) -> None:
    """timeout/flush_interval past threading.TIMEOUT_MAX are refused (1e10 overflowed later)."""
    with pytest.raises(segops.ConfigurationError, match=setting):
        segops.SegOpsClient(
            "http://127.0.0.1:9", "sk_x", spool_path=tmp_path / "s.sqlite3", **{setting: value}
        )


def test_delivery_wait_is_capped_at_timeout_max() -> None:
    """The wait handed to a session mint (a lock acquire) never exceeds threading.TIMEOUT_MAX."""
    assert _left(time.monotonic() + 1e12) == threading.TIMEOUT_MAX


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        ({"detail": "bad key sk_live_0123456789abcdef"}, "bad key sk_live_…cdef"),
        ({"auth": ["pk_test_abcdefghijkl12 revoked"]}, "auth: [pk_test_…kl12 revoked]"),
        ("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0.abc_-123 expired", "token eyJ…-123 expired"),
        ({"detail": "short sk_a1b2c3d4"}, "short sk_…"),
        (
            {"detail": "Revoked ApiKey sk_live_4eC39HqLyjWDarjtT1zdp7dc…"},
            "Revoked ApiKey sk_live_…p7dc…",
        ),
        ({"detail": "keys sk_…,sk_live_4eC39HqLyjWDarjtT1zdp7dc"}, "keys sk_…,sk_live_…p7dc"),
        ({"detail": "auth=ApiKey%20sk_live_Zq8XabcdefGHIJ12"}, "auth=ApiKey%20sk_live_…IJ12"),
        ({"detail": "Bearer opaque-token-123456789 expired"}, "Bearer opa…6789 expired"),
        ({"detail": "task_id risk_level desk_x"}, "task_id risk_level desk_x"),
        ({"detail": "as before: sk_live_…abcd"}, "as before: sk_live_…abcd"),
        (
            "<html>\n<body>\n  Bad   request\n</body></html>",
            "<html> <body> Bad request </body></html>",
        ),
        (
            {"detail": "rejected: /v1/e%3Fapi_key%3Dsk_live_4f9c2b7e8a1d6f3c5b0e9a7d"},
            "rejected: /v1/e%3Fapi_key%3Dsk_live_…9a7d",
        ),
        ({"detail": "x token%3DeyJhbGciOi.eyJzdWIi.sig9"}, "x token%3DeyJ…sig9"),
        ({"detail": "Bearer token expired"}, "Bearer token expired"),
        ({"detail": "Authorization: Bearer <token>"}, "Authorization: Bearer <token>"),
        ({"detail": "api-key-sk_live_4f9aQ2xZ7bN1mK3pL8vR"}, "api-key-sk_live_…L8vR"),
        ({"detail": "api_key_sk_live_4f9aQ2xZ7bN1mK3pL8vR"}, "api_key_sk_live_…L8vR"),
        ({"detail": "1sk_live_4f9aQ2xZ7bN1mK3pL8vR"}, "1sk_live_…L8vR"),
        ({"detail": "msg\\neyJhbGciOi.eyJzdWIi.sig9"}, "msg\\neyJ…sig9"),
        ({"detail": "key \\u003csk_live_4f9aQ2xZ7bN1mK3pL8vR"}, "key \\u003csk_live_…L8vR"),
        ({"detail": "Key (events_pk_id)=(42) exists."}, "Key (events_pk_id)=(42) exists."),
        ({"detail": "tbl_sk_customer=1029384756"}, "tbl_sk_customer=1029384756"),
        ({"detail": "order_pk_ref=ORD-2026-000123/line-4"}, "order_pk_ref=ORD-2026-000123/line-4"),
        ({"detail": "您的密钥sk_live_4f9aQ2xZ7bN1mK3pL8vRt6Yw无效"}, "您的密钥sk_live_…t6Yw无效"),
        ({"detail": "login?key\\x3dsk_live_9Zx8Yw7Vu6Ts5Rq4Po3Nm"}, "login?key\\x3dsk_live_…o3Nm"),
        ({"detail": "\x1b[1msk_live_9Zx8Yw7Vu6Ts5Rq4Po3Nm\x1b[0m bad"}, "sk_live_…o3Nm bad"),
        ({"detail": f"key pk_live_{'Ab1' * 85}Zz9Q refused"}, "key pk_live_…Zz9Q refused"),
        ({"detail": "name\rsk_live_4f9aQ2xZ7bN1mK3pL8vR"}, "name sk_live_…L8vR"),
        ({"detail": "x\x1b[0msk_live_4f9aQ2xZ7bN1mK3pL8vR"}, "x sk_live_…L8vR"),
    ],
    ids=[
        "sk-key",
        "pk-key-in-field-errors",
        "jwt-in-plain-text",
        "short-key",
        "key-then-ellipsis",
        "key-after-a-redacted-one",
        "url-encoded",
        "opaque-bearer-token",
        "ordinary-words",
        "redacted-already",
        "one-line",
        "after-url-encoded-equals",
        "jwt-after-url-encoded-equals",
        "scheme-then-words",
        "scheme-then-placeholder",
        "after-a-dash",
        "after-an-underscore",
        "after-a-digit",
        "after-a-printed-newline-escape",
        "after-a-printed-unicode-escape",
        "column-name",
        "column-with-a-value",
        "reference",
        "after-chinese-text",
        "after-a-printed-hex-escape",
        "inside-terminal-colours",
        "longer-than-200",
        "after-a-carriage-return",
        "after-a-colour-reset",
    ],
)
def test_reply_detail_redacts_keys_and_tokens(body: Any, shown: str) -> None:
    """Server text that echoes a key or a session token is redacted where it enters."""
    content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    assert Reply(400, content).detail() == shown


# -- session expires_at -----------------------------------------------------------------------

EXPIRY = dt.datetime(2031, 5, 17, 8, 30, 15, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize(
    ("text", "micro"),
    [
        ("2031-05-17T08:30:15Z", 0),
        ("2031-05-17T08:30:15.123456Z", 123456),
        ("2031-05-17T08:30:15.5Z", 500000),
        ("2031-05-17T08:30:15.123456789Z", 123456),
        ("2031-05-17T08:30:15+00:00", 0),
        ("2031-05-17T10:30:15.25+02:00", 250000),
        ("2031-05-17T08:30:15z", 0),
    ],
)
def test_session_expires_at_parsing(text: str, micro: int) -> None:
    """The mint answer's expires_at (Z/offset, with or without fraction) is parsed exactly."""
    bodies: List[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append((request.headers["authorization"], json.loads(request.content)))
        return httpx.Response(200, json={"token": "tok", "expires_at": text, "uid": "alice"})

    session = Session(
        api_key="pk_test_key",
        get_user=lambda: segops.UserContext(user_id="alice"),
        http=sender(handler),
    )
    token = session.current()
    assert token.expires_at == pytest.approx(EXPIRY.timestamp() + micro / 1e6, abs=1e-6)
    assert (token.value, token.uid) == ("tok", "alice")
    assert bodies == [("ApiKey pk_test_key", {"user_id": "alice"})]
    assert session.current() is token  # far from expiry: reused, no second mint
    assert len(bodies) == 1


def test_session_refreshes_inside_skew() -> None:
    """A token expiring in less than 60 s is replaced on the next use."""
    count = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        count[0] += 1
        soon = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=REFRESH_SKEW - 1)
        return httpx.Response(
            200, json={"token": f"t{count[0]}", "expires_at": soon.isoformat(), "uid": "u"}
        )

    session = Session(
        api_key="pk_k", get_user=lambda: segops.UserContext(anonymous_id="a"), http=sender(handler)
    )
    assert session.current().value == "t1"
    assert session.current().value == "t2"


@pytest.mark.parametrize("local_clock_ahead", [1200.0, -1200.0, 0.0])
def test_session_token_lifetime_follows_the_servers_clock(local_clock_ahead: float) -> None:
    """A local clock 20 minutes off the server's (whose Date says so) neither mints for
    every request nor keeps a token past its life: the 900 s token is reused."""
    count = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        count[0] += 1
        server_now = time.time() - local_clock_ahead
        expires = dt.datetime.fromtimestamp(server_now + 900, dt.timezone.utc)
        return httpx.Response(
            200,
            json={"token": f"t{count[0]}", "expires_at": expires.isoformat(), "uid": "u"},
            headers={"Date": email.utils.formatdate(server_now, usegmt=True)},
        )

    session = Session(
        api_key="pk_k", get_user=lambda: segops.UserContext(user_id="u"), http=sender(handler)
    )
    first = session.current()
    assert session.current() is first and count[0] == 1
    assert first.offset == pytest.approx(-local_clock_ahead, abs=1.5)
    assert first.fresh(skew=898) and not first.fresh(skew=902)  # ~900 s left, server time


def _minted_with(date_ahead: float, life: float, date_only: bool = False) -> Any:
    """A token minted by a server whose clock (and Date) is ``date_ahead`` s ahead of ours;
    with ``date_only``, only its Date is (its expires_at is set by a clock like ours)."""

    def handler(request: httpx.Request) -> httpx.Response:
        server_now = time.time() + date_ahead
        base = time.time() if date_only else server_now
        expires = dt.datetime.fromtimestamp(base + life, dt.timezone.utc)
        return httpx.Response(
            200,
            json={"token": "t", "expires_at": expires.isoformat(), "uid": "u"},
            headers={"Date": email.utils.formatdate(server_now, usegmt=True)},
        )

    return Session(
        api_key="pk_k", get_user=lambda: segops.UserContext(user_id="u"), http=sender(handler)
    ).current()


def test_session_token_is_never_used_late(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our clock 1.6 s behind the server's (more than Date's resolution): the token is
    stale once the server's clock says 60 s are left, not 1.6 s later."""
    token = _minted_with(date_ahead=1.6, life=120.0)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 120.0 - 60.0 + 0.05)  # 59.95 s left
    assert not token.fresh()


def test_session_token_follows_the_60s_rule_exactly_when_clocks_agree() -> None:
    """Clocks that agree within Date's one-second resolution: our clock judges the token,
    so it is reused right up to 60 s before expires_at (a test's reuse window relies on it)."""
    token = _minted_with(date_ahead=0.0, life=63.0)
    assert token.offset == 0.0 and token.fresh()


def test_a_date_that_is_not_the_tokens_clock_is_ignored() -> None:
    """A Date a day off the clock that set expires_at (a proxy's) would make the token
    expired at once, or live a day: our clock judges it instead."""
    assert _minted_with(date_ahead=86400.0, life=900.0, date_only=True).offset == 0.0
    assert _minted_with(date_ahead=-86400.0, life=900.0, date_only=True).offset == 0.0


def test_session_token_ages_while_the_machine_sleeps(monkeypatch: pytest.MonkeyPatch) -> None:
    """A token is judged by the wall clock, which runs on while the machine sleeps (the
    monotonic clock does not): 70 s asleep puts a 120 s token inside its last 60 s."""
    count = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        count[0] += 1
        expires = dt.datetime.fromtimestamp(time.time() + 120, dt.timezone.utc)
        return httpx.Response(
            200,
            json={"token": f"t{count[0]}", "expires_at": expires.isoformat(), "uid": "u"},
            headers={"Date": email.utils.formatdate(time.time(), usegmt=True)},
        )

    session = Session(
        api_key="pk_k", get_user=lambda: segops.UserContext(user_id="u"), http=sender(handler)
    )
    assert session.current().value == "t1"
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 70)  # woken up 70 s later
    assert session.current().value == "t2"


def minting_session(uids: List[str]) -> Session:
    """A Session whose mints return tokens t1, t2, ... for the uid get_user() gives."""
    count = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        count[0] += 1
        later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
        uid = json.loads(request.content)["user_id"]
        return httpx.Response(
            200, json={"token": f"t{count[0]}", "expires_at": later.isoformat(), "uid": uid}
        )

    return Session(
        api_key="pk_k", get_user=lambda: segops.UserContext(user_id=uids[-1]), http=sender(handler)
    )


def test_reply_detail_of_a_huge_body_is_quick() -> None:
    """A megabyte of key- and token-like text is redacted in linear time (it took minutes
    when every position could start a match)."""
    started = time.monotonic()
    for body in (b"0eyJ" * (1 << 18), b"-sk_" * (1 << 18), b"%20eyJ" * (1 << 17)):
        Reply(400, body).detail()
    assert time.monotonic() - started < 2.0


def test_session_401s_met_by_two_senders_share_one_new_mint() -> None:
    """Two senders refused with the same token: the second keeps the token the first one
    minted after its request went out, instead of minting again."""
    session = minting_session(["alice"])
    first = session.current()
    sent_at = time.monotonic()  # both senders' requests went out with the first token
    session.refused(first, sent_at=sent_at)
    second = session.current()  # the first sender's re-mint
    session.refused(first, sent_at=sent_at)  # the second sender's 401 comes in
    assert session.current() is second and second is not first


def test_reply_detail_never_shows_a_piece_of_a_known_secret() -> None:
    """This client's key is replaced before the text is cut: one straddling the scan limit
    (and glued to a word, where no pattern finds it) shows no piece once blanks collapse."""
    key = "sk_live_4f9aQ2xZ7bN1mK3pL8vR"
    body = ("pad" + " " * 4077 + "x" + key).encode()  # the key begins at 4081
    shown = Reply(401, body).detail(key)
    assert key[:12] not in shown and shown.startswith("pad xsk_")


def test_reply_detail_never_shows_the_start_of_a_key_the_cut_went_through() -> None:
    """An unknown key (or token) the scan limit cuts leaves none of its characters: the
    cut's last word goes, since too short a piece is no key to the patterns."""
    for secret in ("sk_4eC39HqLyjWDarjt", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIi.c2ln"):
        body = ("err" + " " * 4086 + secret).encode()  # cut 7 characters into the secret
        shown = Reply(400, body).detail()
        assert secret[:4] not in shown and shown.startswith("err")


def test_reply_detail_cut_inside_a_token_with_slashes_shows_none_of_it() -> None:
    """A Bearer token holding "/" or "+" (base64) that the scan limit cuts is dropped
    whole, not shown up to its first "/"."""
    token = "Zx81/Qm4Lp2Vn7Rt5Ks3Wd9+Ab12cd34"
    body = ("err" + " " * 4076 + "Bearer " + token).encode()  # cut 10 characters in
    shown = Reply(401, body).detail()
    assert token[:4] not in shown and shown.startswith("err Bearer")


@pytest.mark.parametrize(
    ("text", "held"),
    [
        ("illegal header line: bytearray(b'X: 1\\r\\nY')", False),
        ("bad line\r\nnext \x1b[1mbold\x1b[0m", False),
        ("x" * 4000, False),
        ("x" * 5000, True),  # not scanned past the limit: assumed to hold one
        ("echo: ApiKey sk_live_4f9aQ2xZ7bN1mK3pL8vR", True),
        ("x" * 5000 + " sk_live_4f9aQ2xZ7bN1mK3pL8vR", True),
        ("glued:XYZmy-own-secret-value", True),
    ],
)
def test_holds_secret_decides_whether_an_error_may_be_chained(text: str, held: bool) -> None:
    """holds_secret() decides whether an httpx error may be chained as __cause__: plain text
    with control characters holds none; a key does, and so does text past the scan limit."""
    assert holds_secret(text, "my-own-secret-value") is held


def test_an_echo_of_the_key_with_escapes_between_its_characters_is_quick() -> None:
    """Each character of the key twice, each behind an ESC: a gap-tolerant pattern took
    twice as long per character (hours for a whole key); the text is searched linearly."""
    body = "".join("\x1b" + c + "\x1b" + c for c in KEY) + "!"
    started = time.monotonic()
    Reply(400, body.encode()).detail(KEY)
    redact_secrets(("\x1b" + KEY) * 30_000, KEY)
    assert time.monotonic() - started < 1.0


def test_a_long_detail_in_chinese_stays_readable() -> None:
    """The cut drops only a run of ASCII credential characters, not the words before it."""
    shown = Reply(400, json.dumps({"detail": "错误" * 3000}).encode()).detail()
    assert shown.startswith("错误错误") and len(shown) == 500


def test_holds_secret_is_quick_on_crafted_text() -> None:
    """Runs of JWT starts made the token pattern quadratic over a whole 88 KB transport
    error (20 s per retry); text past the scan limit is not scanned."""
    started = time.monotonic()
    for text in ("0eyJ" * 250_000, "_eyJ" * 250_000, "0eyJ" * 1000):
        holds_secret(text, "sk_live_own")
    assert time.monotonic() - started < 1.0


KEY = "sk_live_4f9aQ2xZ7bN1mK3pL8vR"


@pytest.mark.parametrize(
    "text",
    [
        "x \x1b(B" + KEY,
        "\x1bM" + KEY,
        "\x1b[38:5:196m" + KEY,
        "\x1b[>4;1m" + KEY,
        "\x9b1m" + KEY,
        "\x9b" + KEY,
        "\x1b7" + KEY,
        "bytearray(b'X-Junk : \\x1b(B" + KEY + "')",
        repr("\x1b\n" + KEY),
        "\x1b%3D" + KEY,
        "\x1b\\u003c" + KEY,
    ],
    ids=[
        "charset",
        "esc-letter",
        "colon-colour",
        "private-csi",
        "c1-csi",
        "bare-c1",
        "esc-7",
        "printed",
        "esc-then-printed-newline",
        "esc-then-url-escape",
        "esc-then-unicode-escape",
    ],
)
def test_a_key_behind_any_escape_sequence_is_redacted(text: str) -> None:
    """Escape sequences become blanks whole, without taking the key's first letter: none
    leaves a letter glued to the key, which the patterns would then skip."""
    shown = redact_secrets(text)
    assert "4f9aQ2xZ7b" not in shown and "sk_live_…L8vR" in shown
    assert holds_secret(text)


@pytest.mark.parametrize(
    "echo",
    [
        "sk_\x00live_4f9aQ2xZ7bN1mK3pL8vR",
        "sk_live_\x1b[0m4f9aQ2xZ7b\r\nN1mK3pL8vR",
        "sk_live_4f9a\u200bQ2xZ7b\xadN1mK3pL8vR",
        "\u2066".join(KEY),
        "s\\x1b[0mk_live_4f9aQ2xZ7bN1mK3pL8vR",
        "s\x9b1mk_live_4f9aQ2xZ7bN1mK3pL8vR",
        "sk_live_4f9aQ2xZ7b\n    N1mK3pL8vR",
        "s\x1bk_live_4f9aQ2xZ7bN1mK3pL8vR",
        "sk_live_4f9a\x9bQ2xZ7bN1mK3pL8vR",
        "s\u180bk_live_4f9aQ2xZ7bN1mK3pL8vR",
        "s\x1b[0k_live_4f9aQ2xZ7bN1mK3pL8vR",
        "s\x1b]0;t\x07k_live_4f9aQ2xZ7bN1mK3pL8vR",
        "sk_live_ 4f9aQ2xZ7bN1mK3pL8vR",
        "sk_l \x1b[0mive_4f9aQ2xZ7bN1mK3pL8vR",
        "sk_l \x1b]0;x\x07ive_4f9aQ2xZ7bN1mK3pL8vR",
        "sk_l\xa0ive_4f9aQ2xZ7bN1mK3pL8vR",
        "sk_l\x9d0;x\x9cive_4f9aQ2xZ7bN1mK3pL8vR",
        "sk_liv\\ne_4f9aQ2xZ7bN1mK3pL8vR",
        "sk_live_4f9a\\x00Q2xZ7bN1mK3pL8vR",
        "sk_live_4f9a\\u200bQ2xZ7bN1mK3pL8vR",
        "sk_live_4f9a\\t  Q2xZ7bN1mK3pL8vR",
        "sk_liv\\udb40\\udc20e_4f9aQ2xZ7bN1mK3pL8vR",
        "sk_liv\\\\ne_4f9aQ2xZ7bN1mK3pL8vR",
        "sk_live_4f\\xe2\\x80\\x8b9aQ2xZ7bN1mK3pL8vR",
        "sk_liv\\u{200b}e_4f9aQ2xZ7bN1mK3pL8vR",
        "sk_liv\\e[0me_4f9aQ2xZ7bN1mK3pL8vR",
        "sk_liv\u2800e_4f9aQ2xZ7bN1mK3pL8vR",
        "sk_liv\\342\\200\\213e_4f9aQ2xZ7bN1mK3pL8vR",
        "sk_liv\\033[0me_4f9aQ2xZ7bN1mK3pL8vR",
        "sk_liv\\x{200b}e_4f9aQ2xZ7bN1mK3pL8vR",
        "sk_liv%E2%80%8Be_4f9aQ2xZ7bN1mK3pL8vR",
        "sk_liv&#8203;e_4f9aQ2xZ7bN1mK3pL8vR",
        "sk_liv&ZeroWidthSpace;e_4f9aQ2xZ7bN1mK3pL8vR",
        "sk_liv<U+200B>e_4f9aQ2xZ7bN1mK3pL8vR",
        "sk_liv\\N{ZERO WIDTH SPACE}e_4f9aQ2xZ7bN1mK3pL8vR",
        "sk_liv\U00013430e_4f9aQ2xZ7bN1mK3pL8vR",
    ],
    ids=[
        "nul",
        "colour-and-wrap",
        "invisible",
        "bidi",
        "printed-esc",
        "c1-csi",
        "indented-wrap",
        "esc-before-a-letter",
        "bare-c1-inside",
        "mongolian-selector",
        "csi-ending-in-the-key",
        "osc-string",
        "space",
        "space-and-colour",
        "space-and-osc",
        "no-break-space",
        "c1-osc",
        "printed-newline",
        "printed-nul",
        "printed-zero-width-space",
        "printed-tab-and-spaces",
        "printed-surrogate-pair",
        "printed-twice",
        "printed-utf8-bytes",
        "rust-escape",
        "ruby-escape",
        "braille-blank",
        "octal-bytes",
        "octal-escape",
        "perl-escape",
        "url-encoded",
        "html-numeric",
        "html-named",
        "r-notation",
        "python-name",
        "egyptian-format-control",
    ],
)
def test_text_echoing_this_clients_key_in_pieces_is_withheld(echo: str) -> None:
    """Server text that echoes the client's own key with control or invisible characters
    (or a wrapped line) between its characters, which a terminal would show whole, is
    withheld: cut up, it would glue other credentials in it to the words before them."""
    others = "id\tsk_live_OTHERCUSTOMER9876543210 Bearer\na1b2c3d4e5f6g7h8i9j0k1l2"
    shown = redact_secrets(f"echo: {echo} refused; {others}", KEY)
    assert shown == WITHHELD
    assert holds_secret(f"echo: {echo}", KEY)


def test_printed_escapes_that_are_no_bytes_stay_as_they_are() -> None:
    """Octal escapes above \\377 (a Windows path) are no bytes: shown as they are, no error."""
    text = 'bad value at C:\\400\\401 and "\\777\\777"'
    assert redact_secrets(text, KEY) == text


def test_text_that_the_echo_search_cannot_read_is_withheld(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Should reading printed escapes fail on some text, the text is withheld: redaction
    never raises where a refusal is stored or an error shown."""

    def broken(text: str) -> str:
        raise ValueError("bytes must be in range(0, 256)")

    monkeypatch.setattr(segops._paths, "_unprinted", broken)
    assert redact_secrets("some server text", KEY) == WITHHELD


WRAPPED_ECHO = "could not verify the key you sent: sk_liv\ne_4f9aQ2xZ7bN1mK3pL8vR"


@pytest.mark.parametrize(
    "body",
    [
        {"detail": [WRAPPED_ECHO]},
        {"detail": {"api_key": [WRAPPED_ECHO]}},
        {"non_field_errors": [WRAPPED_ECHO]},
        [WRAPPED_ECHO],
        WRAPPED_ECHO,
    ],
    ids=["list-detail", "object-detail", "field-errors", "top-level-list", "bare-string"],
)
def test_a_wrapped_echo_inside_a_list_or_object_is_withheld(body: Any) -> None:
    """A wrapped echo of the client's key inside a JSON list or object (DRF-style errors) is
    withheld as it is in a plain string: no repr prints its line break as a visible escape."""
    assert Reply(401, json.dumps(body).encode()).detail(KEY) == WITHHELD


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        ({"detail": ["first problem", "second problem"]}, "first problem; second problem"),
        (
            {"email": ["is invalid", "is too long"], "name": "is missing"},
            "email: [is invalid, is too long]; name: is missing",
        ),
        (
            {"detail": [{"loc": ["body", "seq"], "msg": "required"}, {"msg": "bad"}]},
            "{loc: [body, seq], msg: required}; {msg: bad}",
        ),
        ({"detail": {"seq": [{"min": 0}], "ok": False}}, "seq: [{min: 0}]; ok: false"),
        ({"detail": [[[[[[[[[["deep"]]]]]]]]]]}, "[[[[[[[…]]]]]]]"),
        (["top", "level"], "top; level"),
        ("a bare string", "a bare string"),
        ({"detail": []}, "[]"),
        ({"detail": ""}, "HTTP 400"),
        ({"detail": "bad \ud800 value"}, "bad ? value"),
    ],
    ids=[
        "list",
        "field-errors",
        "fastapi-422",
        "nested",
        "deep",
        "top-level-list",
        "bare-string",
        "empty-list",
        "empty-string",
        "lone-surrogate",
    ],
)
def test_reply_detail_spells_out_lists_and_objects(body: Any, shown: str) -> None:
    """Error lists and objects read as text, not as Python reprs."""
    assert Reply(400, json.dumps(body).encode()).detail() == shown


def test_reply_detail_of_a_huge_json_body_is_quick() -> None:
    """A JSON error body of megabytes is shown as cut text, not parsed whole first."""
    body = json.dumps({"detail": [[[[]]]] * 300_000}).encode()
    started = time.monotonic()
    shown = Reply(400, body).detail()
    assert time.monotonic() - started < 1.0  # parsing it first took 0.5-0.7 s
    assert shown.startswith('{"detail": [[[[]]], [[[]]]') and len(shown) <= 500


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"detail":' * 50_000])
def test_reply_of_deeply_nested_json_is_not_json(body: bytes) -> None:
    """A body nested deeper than the parser recurses reads as no JSON (it raised
    RecursionError out of the flusher's decisions)."""
    reply = Reply(400, body)
    assert reply.json() is None
    assert len(reply.detail()) <= 4097  # cut, and no RecursionError


def test_session_mint_refusal_never_shows_the_key() -> None:
    """A session call refused with a detail that echoes the key (even glued to a word,
    where no pattern finds it) raises an AuthError that shows it redacted."""
    key = "pk_live_abcdefghijklmnop12"

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"detail": f"unknown key x{key}"})

    session = Session(
        api_key=key, get_user=lambda: segops.UserContext(user_id="u"), http=sender(handler)
    )
    with pytest.raises(segops.AuthError) as caught:
        session.current()
    assert key not in str(caught.value) and key not in caught.value.detail


def test_session_401_seen_late_keeps_a_token_minted_since() -> None:
    """A sender whose request with the old token went out after another sender re-minted
    (it was preempted in between) keeps the new token: one mint per 401 storm."""
    session = minting_session(["alice"])
    first = session.current()
    session.refused(first, sent_at=time.monotonic())
    second = session.current()
    session.refused(first, sent_at=time.monotonic())  # sent after `second` was minted
    assert session.current() is second


def test_session_gives_up_a_mint_when_resets_keep_racing_get_user() -> None:
    """A reset during every read of get_user(): no token at all (Retryable), rather than
    one identity's token in another identity's era."""
    uids = ["u0"]
    session = minting_session(uids)

    def get_user() -> segops.UserContext:
        uids.append(f"u{len(uids)}")
        session.reset(len(uids) * 10)
        return segops.UserContext(user_id=uids[-1])

    session._get_user = get_user
    with pytest.raises(Retryable):
        session.current()
    assert all(era.token is None for era in session._state.eras)


def test_session_resets_whose_boundaries_arrive_out_of_order() -> None:
    """Two threads resetting at once may pass their boundaries in either order: records up
    to the larger one keep the first era's token, not the current identity's."""
    uids = ["alice"]
    session = minting_session(uids)
    alice = session.current()
    uids.append("bob")
    session.reset(5)  # read last_id() == 5 after the other thread read 3
    session.reset(3)
    assert session.token_for(4) is alice and session.token_for(1) is alice
    assert session.token_for(6).uid == "bob" and not session.spans_eras(1, 5)


def test_session_eras_without_tokens_stay_few() -> None:
    """Resetting again and again without minting keeps one era, not one per reset."""
    session = minting_session(["alice"])
    for boundary in range(1, 5001):
        session.reset(boundary)
    assert len(session._state.eras) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"token": "t"},
        {"expires_at": "2031-01-01T00:00:00Z"},
        {"token": "t", "expires_at": "tomorrow"},
        {"token": "t", "expires_at": 1954000000},
        {"token": "t", "expires_at": None},
        ["t", "2031-01-01T00:00:00Z"],
    ],
    ids=["no-expiry", "no-token", "bad-text", "epoch-number", "null", "a-list"],
)
def test_session_bad_answer_is_delivery_error(body: Any) -> None:
    """A mint answer without a usable token/expires_at is a DeliveryError."""
    session = Session(
        api_key="pk_k",
        get_user=lambda: segops.UserContext(user_id="u"),
        http=sender(lambda request: httpx.Response(200, json=body)),
    )
    with pytest.raises(segops.DeliveryError):
        session.current()


def test_a_mint_answer_echoing_the_key_as_its_expiry_never_prints_it() -> None:
    """The DeliveryError for an unusable expires_at chains no cause quoting the value (a
    server echoing the key there would have it printed in the traceback)."""
    key = "pk_live_4f9aQ2xZ7bN1mK3pL8vR"
    session = Session(
        api_key=key,
        get_user=lambda: segops.UserContext(user_id="u"),
        http=sender(lambda request: httpx.Response(200, json={"token": "t", "expires_at": key})),
    )
    with pytest.raises(segops.DeliveryError) as caught:
        session.current()
    assert key not in "".join(traceback.format_exception(caught.type, caught.value, caught.tb))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-02T03:04:05Z", dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)),
        (
            "2024-01-02T03:04:05.000001+00:00",
            dt.datetime(2024, 1, 2, 3, 4, 5, 1, tzinfo=dt.timezone.utc),
        ),
        ("2024-01-02T04:04:05-01:00", dt.datetime(2024, 1, 2, 5, 4, 5, tzinfo=dt.timezone.utc)),
    ],
)
def test_parse_iso8601(text: str, expected: dt.datetime) -> None:
    """parse_iso8601 handles Z, offsets and fractions on any Python >= 3.9."""
    assert parse_iso8601(text) == expected


# -- signing ----------------------------------------------------------------------------------

VECTOR = "a2671fc6b8bb0721d781eb8ee9695fdcf9e3218c0296aecee05f0660af223462"


def test_sign_user_id_test_vector() -> None:
    """Key 00ff, user u-4, ts 1700000000 gives the documented signature."""
    assert segops.sign_user_id("00ff", "u-4", 1700000000) == {
        "user_id": "u-4",
        "user_id_sig": VECTOR,
        "user_id_ts": 1700000000,
    }


def test_sign_user_id_defaults_ts_to_now() -> None:
    """Without ts the signature is stamped with the current whole second."""
    before = int(time.time())
    signed = segops.sign_user_id("00ff", "u-4")
    assert before <= signed["user_id_ts"] <= int(time.time())
    assert isinstance(signed["user_id_ts"], int)
    assert segops.verify_user_id(
        "00ff", "u-4", str(signed["user_id_sig"]), int(signed["user_id_ts"])
    )


@pytest.mark.parametrize(
    ("offset", "ok"), [(0, True), (299, True), (-299, True), (301, False), (-301, False)]
)
def test_verify_user_id_window(offset: int, ok: bool) -> None:
    """verify_user_id accepts the vector within +-5 minutes of now, not beyond."""
    now = 1700000000 + offset
    assert segops.verify_user_id("00ff", "u-4", VECTOR, 1700000000, now=now) is ok


@pytest.mark.parametrize(
    ("user", "sig", "ts"),
    [
        ("u-5", VECTOR, 1700000000),
        ("u-4", VECTOR[:-1] + "0", 1700000000),
        ("u-4", VECTOR, 1700000001),
        ("u-4", "", 1700000000),
        ("u-4", VECTOR.upper(), 1700000000),  # the contract: lowercase hex, as servers check
        ("u-4", VECTOR[:-1] + "\u00e9", 1700000000),
    ],
)
def test_verify_user_id_rejects_tampering(user: str, sig: str, ts: int) -> None:
    """A different user, signature or timestamp does not verify."""
    assert segops.verify_user_id("00ff", user, sig, ts, now=1700000000) is False


@pytest.mark.parametrize("bad", [True, "", None, 4.0, b"u-4"])
def test_sign_user_id_needs_a_str_or_int_id(bad: Any) -> None:
    """Only a non-empty str or an int (not a bool) can be signed."""
    with pytest.raises(ValueError):
        segops.sign_user_id("00ff", bad, 1)


def test_sign_user_id_bad_secret() -> None:
    """A non-hex secret is a ValueError."""
    with pytest.raises(ValueError):
        segops.sign_user_id("not-hex", "u-4", 1)


@pytest.mark.parametrize("zone", ["UTC", "America/Los_Angeles", "Asia/Tokyo"])
def test_retry_after_asctime_date_is_gmt(monkeypatch: pytest.MonkeyPatch, zone: str) -> None:
    """An asctime-form Retry-After (no zone written) is GMT, whatever the local time zone."""
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        when = time.gmtime(time.time() + 30)
        asctime = time.strftime("%a %b %d %H:%M:%S %Y", when).replace(" 0", "  ", 1)
        wait = reply(429, headers={"Retry-After": asctime}).retry_after()
    finally:
        monkeypatch.undo()
        time.tzset()
    assert wait is not None and 27 <= wait <= 31


def test_session_token_a_header_cannot_carry_is_refused_without_quoting_it(
    tmp_path: Any,
) -> None:
    """A minted token with a newline is refused at mint: never sent, never in a traceback."""
    paths: List[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        token = {"token": "eyJ.SECRETPART\nsig", "expires_at": "2099-01-01T00:00:00Z"}
        return httpx.Response(200, json=token)

    client = segops.SegOpsClient(
        "http://segops.test",
        "pk_test_0123456789abcdef",
        get_user=lambda: segops.UserContext(user_id="u"),
        spool_path=tmp_path / "s.sqlite3",
        flush_interval=60,
        on_error=lambda exc: None,
        transport=httpx.MockTransport(handler),
        retry_policy=segops.RetryPolicy(attempts=2, timeout=2, wait_initial=0.01, wait_max=0.02),
    )
    try:
        client.track(user_id="u", event_type="e")
        with pytest.raises(segops.DeliveryError) as info:
            client.flush(timeout=2)
    finally:
        with contextlib.suppress(segops.SegOpsError):  # the event stays spooled
            client.shutdown(timeout=0.1)
    printed = "".join(traceback.format_exception(info.type, info.value, info.tb))
    assert "SECRETPART" not in printed
    assert "header" in str(info.value)
    assert set(paths) == {"/api/auth/session/"}, "an ingestion request went out with it"


@pytest.mark.parametrize(
    "setting",
    [
        {"timeout": math.nan},
        {"timeout": math.inf},
        {"wait_initial": math.nan},
        {"wait_max": -1.0},
        {"retry_after_max": math.nan},
        {"retry_after_max": math.inf},
        {"attempts": 0},
        {"retry_after_max": None},
    ],
    ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()),
)
def test_retry_policy_refuses_times_that_are_not_finite(setting: Any) -> None:
    """A NaN timeout made every claim fail (NULL lease) and an infinite one a lease that
    never lapses: RetryPolicy refuses them, and negative or NaN waits, at construction."""
    with pytest.raises(ValueError, match="RetryPolicy"):
        segops.RetryPolicy(**setting)


def test_retry_policy_still_takes_plain_numbers() -> None:
    """Float attempts, int times and a zero retry_after_max stay valid."""
    policy = segops.RetryPolicy(attempts=2.0, timeout=5, wait_initial=1, retry_after_max=0)  # type: ignore[arg-type]
    assert policy.attempts == 2.0
