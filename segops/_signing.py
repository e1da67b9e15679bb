"""Signing a user id for the pk_ session handshake (run on your backend only)."""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Optional, TypedDict, Union

from ._encoding import id_text

#: How far a signature's timestamp may be from the server's clock, in seconds.
SIGNATURE_TOLERANCE = 300


def _signature(secret_hex: str, user_id: str, ts: int) -> str:
    try:
        key = bytes.fromhex(secret_hex)
    except (TypeError, ValueError) as exc:
        raise ValueError("secret_hex must be a hex string") from exc
    message = f"{user_id}|{ts}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


class SignedUserId(TypedDict):
    """What :func:`sign_user_id` returns: the ``UserContext`` fields, typed one by one."""

    user_id: str
    user_id_sig: str
    user_id_ts: int


def sign_user_id(
    secret_hex: str, user_id: Union[str, int], ts: Optional[int] = None
) -> SignedUserId:
    """Sign ``user_id`` with the public key's HMAC secret.

    Returns ``{"user_id", "user_id_sig", "user_id_ts"}``, ready for ``UserContext``. An
    ``int`` id (a Django ``user.id``) is signed and returned as its decimal string, the
    form ``track()`` sends. Never ship ``secret_hex`` to a client.
    """
    text = id_text(user_id)
    if not text:
        raise ValueError("user_id must be a non-empty string or an int")
    stamp = int(time.time()) if ts is None else int(ts)
    return {
        "user_id": text,
        "user_id_sig": _signature(secret_hex, text, stamp),
        "user_id_ts": stamp,
    }


def verify_user_id(
    secret_hex: str,
    user_id: Union[str, int],
    sig: str,
    ts: int,
    *,
    now: Optional[float] = None,
    tolerance: int = SIGNATURE_TOLERANCE,
) -> bool:
    """Check a signature made by :func:`sign_user_id` (for servers).

    True only when the signature matches and ``ts`` is within ``tolerance`` seconds of ``now``.
    """
    try:
        stamp = int(ts)
        expected = _signature(secret_hex, id_text(user_id) or "", stamp)
    except (TypeError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - stamp) > tolerance:
        return False
    # Exactly: the contract says lowercase hex, and the service refuses anything else.
    return hmac.compare_digest(expected.encode("ascii"), str(sig).encode("utf-8", "replace"))
