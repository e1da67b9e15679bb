"""Authentication: secret keys, the pk_ session handshake, JWTs, signed user ids."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any, Callable

import pytest
from dshelp import BATCH, HMAC_HEX, PK, SESSION, SINGLE, Api, event
from segops.devserver import DevServer


def sign(secret_hex: str, user_id: str, ts: int) -> str:
    """The reference signature: hex HMAC-SHA256 of "user_id|ts"."""
    return hmac.new(
        bytes.fromhex(secret_hex), f"{user_id}|{ts}".encode(), hashlib.sha256
    ).hexdigest()


def b64json(part: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_signature_test_vector() -> None:
    """The contract's test vector (key 00ff, u-4, 1700000000) matches the reference signer."""
    assert (
        sign("00ff", "u-4", 1700000000)
        == "a2671fc6b8bb0721d781eb8ee9695fdcf9e3218c0296aecee05f0660af223462"
    )


@pytest.mark.parametrize(
    ("auth", "status"),
    [
        (None, 401),
        ("ApiKey sk_wrong", 401),
        ("ApiKey", 401),
        ("ApiKey sk_dev_secretX", 401),
        ("Basic c2tfZGV2X3NlY3JldDo=", 401),
        ("sk_dev_secret", 401),
        ("Bearer not.a.jwt", 401),
        ("Bearer garbage", 401),
        ("Bearer " + base64.urlsafe_b64encode(b"[" * 6_000).decode() + ".e30.c2ln", 401),
        ("ApiKey pk_other", 401),
        (f"ApiKey {PK}", 403),
    ],
)
@pytest.mark.parametrize("path", [BATCH, SINGLE])
def test_ingestion_auth_failures(
    api: Api, srv: DevServer, auth: Any, status: int, path: str
) -> None:
    """Missing/wrong credentials are 401 {"detail"}; the configured pk_ used directly is 403."""
    body = {"events": [event()]} if path == BATCH else event()
    resp = api.post(path, body, auth=auth)
    assert resp.status_code == status
    assert isinstance(resp.json()["detail"], str)
    assert srv.events() == []
    assert srv.stats()["unauthorized"] == 1


def test_custom_secret_key(srv: DevServer) -> None:
    """A server configured with another sk_ accepts it and refuses the default."""
    with DevServer(secret_key="sk_live_abcdef123456") as other:
        helper = Api(other)
        assert helper.batch([event()], auth="ApiKey sk_live_abcdef123456").status_code == 200
        assert helper.batch([event()]).status_code == 401
        helper.close()


def test_session_anonymous_uid(api: Api) -> None:
    """Without user_id the uid is "anon:<anonymous_id>"."""
    body = api.session({"anonymous_id": "anonymous"}).json()
    assert body["uid"] == "anon:anonymous"
    assert set(body) == {"token", "expires_at", "uid"}


def test_session_token_is_hs256_jwt(api: Api, srv: DevServer) -> None:
    """The token is a real HS256 JWT with sub/exp/iat/jti; expires_at matches exp ('...Z')."""
    before = int(time.time())
    body = api.session({"user_id": "u-9"}).json()
    assert body["uid"] == "u-9"
    header, payload, sig = body["token"].split(".")
    assert b64json(header) == {"alg": "HS256", "typ": "JWT"}
    claims = b64json(payload)
    assert set(claims) == {"sub", "exp", "iat", "jti"}
    assert claims["sub"] == "u-9"
    assert before <= claims["iat"] <= before + 2
    assert 899 <= claims["exp"] - claims["iat"] <= 902
    assert len(base64.urlsafe_b64decode(sig + "=")) == 32
    assert body["expires_at"].endswith("Z") and "." not in body["expires_at"]
    parsed = datetime.strptime(body["expires_at"], "%Y-%m-%dT%H:%M:%SZ")
    exp = parsed.replace(tzinfo=timezone.utc).timestamp()
    assert abs(exp - claims["exp"]) <= 1


@pytest.mark.parametrize(
    ("style", "pattern"),
    [
        ("seconds", r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"),
        ("fractional", r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"),
        ("offset", r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00"),
    ],
)
def test_expires_at_styles(style: str, pattern: str) -> None:
    """expires_at_style picks whole seconds + Z, fractional + Z, or a +00:00 offset."""
    import re

    with DevServer(expires_at_style=style) as srv:
        helper = Api(srv)
        assert re.fullmatch(pattern, helper.session().json()["expires_at"])
        helper.close()


def test_bearer_replaces_user_id_with_uid(api: Api, srv: DevServer) -> None:
    """With a Bearer token every stored event's user_id is the token's uid."""
    token = api.token({"user_id": "real-user"})
    resp = api.batch([event(user_id="spoofed"), event(user_id="other")], auth=f"Bearer {token}")
    assert resp.json() == {"queued": 2, "skipped": 0}
    assert api.post(SINGLE, event(user_id="x"), auth=f"Bearer {token}").status_code == 202
    stored = srv.events()
    assert [e["user_id"] for e in stored] == ["real-user"] * 3
    assert [e["sent_user_id"] for e in stored] == ["spoofed", "other", "x"]
    assert {e["auth"] for e in stored} == {"bearer"}
    assert srv.events(user_id="real-user") == stored
    assert srv.events(user_id="spoofed") == []


@pytest.mark.parametrize("key", ["pk_wrong", "sk_dev_secret", "pk_"])
def test_session_needs_the_public_key(api: Api, key: str) -> None:
    """The session call with anything but the configured pk_ is 401."""
    resp = api.session(key=key)
    assert resp.status_code == 401
    assert "detail" in resp.json()


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"user_id": ""},
        {"user_id": 5},
        {"anonymous_id": None},
        {"user_id": "u", "user_id_ts": "1700000000"},
        {"user_id": "u", "user_id_ts": True},
        {"user_id": "u", "user_id_sig": "zz", "user_id_ts": 1},
        {"user_id_sig": "abcd", "user_id_ts": 1, "anonymous_id": "a"},
        {"user_id": "u", "user_id_sig": "abcd"},
        {"user_id": "u", "traits": {}},
        [],
    ],
)
def test_session_body_validation(api: Api, body: Any) -> None:
    """Malformed session bodies are 400 with a JSON error."""
    resp = api.session(body)
    assert resp.status_code == 400, resp.text
    assert resp.json()


def test_session_empty_body_is_400(api: Api) -> None:
    """An empty session body (no identity at all) is 400."""
    resp = api.post(SESSION, raw=b"", auth=f"ApiKey {PK}")
    assert resp.status_code == 400


def test_token_expiry(api: Api, srv: DevServer) -> None:
    """A token past token_ttl is refused with 401; a fresh one works again."""
    srv.token_ttl = 0.5
    token = api.token()
    assert api.batch([event()], auth=f"Bearer {token}").status_code == 200
    time.sleep(1.6)
    resp = api.batch([event()], auth=f"Bearer {token}")
    assert resp.status_code == 401
    assert api.batch([event()], auth=f"Bearer {api.token()}").status_code == 200


def test_revoke_tokens(api: Api, srv: DevServer) -> None:
    """revoke_tokens() invalidates every token minted so far, not later ones."""
    old = api.token()
    srv.revoke_tokens()
    assert api.batch([event()], auth=f"Bearer {old}").status_code == 401
    assert api.batch([event()], auth=f"Bearer {api.token()}").status_code == 200


def test_token_of_another_server_is_refused(api: Api) -> None:
    """Tokens are signed with a per-server secret: another server's token is 401."""
    with DevServer() as other:
        foreign = Api(other).token()
    assert api.batch([event()], auth=f"Bearer {foreign}").status_code == 401


def test_tampered_token_is_refused(api: Api) -> None:
    """Changing the payload (sub) of a token breaks its signature."""
    header, payload, sig = api.token({"user_id": "alice"}).split(".")
    claims = b64json(payload)
    claims["sub"] = "mallory"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert api.batch([event()], auth=f"Bearer {header}.{forged}.{sig}").status_code == 401
    none_header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    assert api.batch([event()], auth=f"Bearer {none_header}.{payload}.").status_code == 401


@pytest.fixture
def signed_srv(srv: DevServer) -> Iterator[DevServer]:
    """The server with require_signed on."""
    srv.require_signed = True
    yield srv


def signed_body(user_id: str = "u-4", *, skew: int = 0, secret: str = HMAC_HEX) -> dict[str, Any]:
    ts = int(time.time()) + skew
    return {"user_id": user_id, "user_id_sig": sign(secret, user_id, ts), "user_id_ts": ts}


def test_require_signed_accepts_valid_signature(api: Api, signed_srv: DevServer) -> None:
    """A correctly signed user_id within the window mints a token for that uid."""
    resp = api.session(signed_body())
    assert resp.status_code == 200
    assert resp.json()["uid"] == "u-4"


@pytest.mark.parametrize("skew", [-290, 290])
def test_signature_inside_window(api: Api, signed_srv: DevServer, skew: int) -> None:
    """Signatures up to ~5 minutes old or ahead are accepted."""
    assert api.session(signed_body(skew=skew)).status_code == 200


@pytest.mark.parametrize(
    ("make_body", "status"),
    [
        (lambda: {"user_id": "u-4"}, 403),
        (lambda: {"user_id": "u-4", "user_id_ts": 1700000000}, 403),
        (lambda: signed_body(skew=-400), 401),
        (lambda: signed_body(skew=400), 401),
        (lambda: signed_body(secret="11" * 16), 401),
        (lambda: {**signed_body(), "user_id": "u-5"}, 401),
        (lambda: {**signed_body(), "user_id_sig": "00" * 32}, 401),
    ],
    ids=["unsigned", "ts-no-sig", "too-old", "too-new", "wrong-secret", "other-user", "zeros"],
)
def test_require_signed_refusals(
    api: Api, signed_srv: DevServer, make_body: Callable[[], dict[str, Any]], status: int
) -> None:
    """Unsigned user ids are 403; forged or out-of-window signatures are 401."""
    # Bodies are built when the test runs: a timestamp made at collection time drifts
    # into the window during a long session.
    resp = api.session(make_body())
    assert resp.status_code == status
    assert "detail" in resp.json()
    assert signed_srv.stats()["tokens_minted"] == 0


@pytest.mark.parametrize("ts", [10**400, -(10**400)], ids=["far-future", "far-past"])
def test_signed_timestamp_past_float_range_is_out_of_window(
    api: Api, srv: DevServer, ts: int
) -> None:
    """A signed user_id_ts too big for a float is refused as out of window (401), not a 500."""
    resp = api.session(
        {"user_id": "u-4", "user_id_sig": sign(HMAC_HEX, "u-4", ts), "user_id_ts": ts}
    )
    out_of_window = api.session(signed_body(skew=-400))
    assert (resp.status_code, resp.json()) == (401, out_of_window.json())


def test_require_signed_still_allows_anonymous(api: Api, signed_srv: DevServer) -> None:
    """require_signed concerns user ids: anonymous sessions still mint."""
    assert api.session({"anonymous_id": "visitor"}).json()["uid"] == "anon:visitor"


def test_signature_checked_even_when_not_required(api: Api) -> None:
    """A given signature is always verified, require_signed or not."""
    assert api.session({**signed_body(), "user_id_sig": "ab" * 32}).status_code == 401
    assert api.session(signed_body()).status_code == 200
    assert api.session({"user_id": "unsigned-ok"}).status_code == 200


def test_uppercase_signature_is_refused(api: Api) -> None:
    """The contract's signature is lowercase hex: the same digits in uppercase are 401."""
    body = signed_body()
    resp = api.session({**body, "user_id_sig": body["user_id_sig"].upper()})
    assert (resp.status_code, resp.json()) == (401, {"detail": "Invalid user_id signature."})
    assert api.session(body).status_code == 200


def test_signature_without_hmac_secret_is_401() -> None:
    """A signature sent to a server without an HMAC secret cannot be verified: 401."""
    with DevServer() as srv:
        helper = Api(srv)
        assert helper.session(signed_body()).status_code == 401
        helper.close()
