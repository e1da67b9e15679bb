"""The pk_ session handshake: mint, cache, refresh, single-flight, re-mint on 401."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from ._encoding import parse_iso8601
from ._errors import AuthError, DeliveryError
from ._http import SESSION_PATH, HttpSender, Reply, header_safe
from ._retry import Retryable
from ._types import UserContext

#: A token is replaced this long before it expires.
REFRESH_SKEW = 60.0
#: How long a retired session token (``reset_session``) may still be used before it expires.
RETIRING_SKEW = 5.0


@dataclass(frozen=True)
class Token:
    """A minted session token and when to stop using it (monotonic-free: wall clock)."""

    value: str
    expires_at: float
    uid: str

    def fresh(self, now: float, skew: float = REFRESH_SKEW) -> bool:
        return now < self.expires_at - skew

    def __repr__(self) -> str:
        return f"Token(uid={self.uid!r}, expires_at={self.expires_at})"


class Session:
    """Holds the current session token of a pk_ client; thread-safe, one mint in flight."""

    def __init__(
        self, *, api_key: str, get_user: Callable[[], UserContext], http: HttpSender
    ) -> None:
        self._api_key = api_key
        self._get_user = get_user
        self._http = http
        self._lock = threading.Lock()
        self._mint_lock = threading.Lock()
        self._token: Optional[Token] = None
        # Bumped by reset() (reset_session): a mint that began under an older generation read
        # get_user() before the reset, so its token must not be cached for later requests.
        self._generation = 0
        # One entry per reset_session(), oldest first: (the token of the identity it ended,
        # or None once that token is unusable; the last record id tracked under it).
        self._retired: List[Tuple[Optional[Token], int]] = []

    def after_fork(self) -> None:
        """Locks held by another thread at fork time would never be released in the child."""
        self._lock = threading.Lock()
        self._mint_lock = threading.Lock()

    def current(self, *, timeout: Optional[float] = None) -> Token:
        """A fresh token, minting one if needed; concurrent callers share one mint.

        Waiting for another thread's mint counts against ``timeout``: when it runs out this
        raises :class:`Retryable`, like a mint request that timed out.
        """
        token = self._token
        if token is not None and token.fresh(time.time()):
            return token
        deadline = None if timeout is None else time.monotonic() + timeout
        # The lock holder may be stuck on a mute server for a whole request timeout.
        acquired = self._mint_lock.acquire(timeout=-1 if deadline is None else _left(deadline))
        if not acquired:
            raise Retryable("session mint: timed out waiting for the mint in flight")
        try:
            token = self._token  # another thread may have minted while we waited
            if token is not None and token.fresh(time.time()):
                return token
            return self._mint_and_cache(None if deadline is None else _left(deadline))
        finally:
            self._mint_lock.release()

    def invalidate(self, token: Optional[Token] = None) -> None:
        """Drop the cached token (only if it is still ``token``, when one is given)."""
        with self._lock:
            if token is None or self._token is token:
                self._token = None

    def reset(self, boundary: Optional[int]) -> None:
        """``reset_session``: drop the cached token; records up to ``boundary`` (the last id
        tracked so far; ``None`` when unknown) keep being sent under it while it is valid."""
        with self._lock:
            token, self._token = self._token, None
            self._generation += 1
            if boundary is None:
                return
            if token is not None and not token.fresh(time.time(), RETIRING_SKEW):
                token = None
            # Even without a token: its records must not go under a later identity's one.
            self._retired.append((token, boundary))
            self._retired = _compacted(self._retired)

    def retired_token(self, first: int, last: int) -> Union[Token, str, None]:
        """The token for records ``first``..``last``: the retired token of the identity
        they were tracked under, ``None`` for the current one (also when that token is
        gone), or ``"split"`` when they span two identities."""
        with self._lock:
            now = time.time()
            self._retired = _compacted(
                [(t if t and t.fresh(now, RETIRING_SKEW) else None, b) for t, b in self._retired]
            )
            for token, boundary in self._retired:
                if first <= boundary:
                    return token if last <= boundary else "split"
        return None

    def forget_retired(self, token: Token) -> None:
        """The server refused ``token`` (401): its records go under the current identity."""
        with self._lock:
            self._retired = _compacted([(None if t is token else t, b) for t, b in self._retired])

    def _mint_and_cache(self, timeout: Optional[float]) -> Token:
        """Mint (caller holds ``_mint_lock``) and cache the token unless a reset came first."""
        generation = self._generation  # read before _mint() calls get_user()
        token = self._mint(timeout)
        with self._lock:
            if generation == self._generation:
                self._token = token
        # After a reset the token is still handed to this caller: its batch was claimed before
        # the reset, so it holds only events tracked under the old identity. Later callers
        # find no token and mint with the current get_user().
        return token

    def _mint(self, timeout: Optional[float]) -> Token:
        body = json.dumps(self._identity(), separators=(",", ":")).encode()
        headers = {"Authorization": f"ApiKey {self._api_key}"}
        reply = self._http.post(SESSION_PATH, body, headers, timeout=timeout)
        if reply.ok:
            return _token_from(reply)
        if reply.status in (401, 403):
            raise AuthError(
                f"session mint refused: HTTP {reply.status}: {reply.detail()}",
                status=reply.status,
                detail=reply.detail(),
            )
        if reply.status in (408, 429) or reply.status >= 500:
            raise Retryable(
                f"session mint: HTTP {reply.status}",
                status=reply.status,
                retry_after=reply.retry_after(),
            )
        raise DeliveryError(
            f"session mint failed: HTTP {reply.status}: {reply.detail()}",
            status=reply.status,
            detail=reply.detail(),
        )

    def _identity(self) -> Dict[str, Any]:
        # The user's callback: whatever it raises reaches flush()/on_error as one of ours.
        try:
            user = self._get_user()
        except Exception as exc:
            raise DeliveryError(
                f"get_user() raised {type(exc).__name__}: {exc}; events stay spooled"
            ) from exc
        if not isinstance(user, UserContext):
            raise DeliveryError(
                f"get_user() must return a segops.UserContext, not {type(user).__name__};"
                " events stay spooled"
            )
        body: Dict[str, Any] = {}
        for name in ("user_id", "anonymous_id", "user_id_sig"):
            value = getattr(user, name)
            if value is not None and value != "":
                body[name] = str(value)
        if user.user_id_ts is not None:
            try:
                body["user_id_ts"] = int(user.user_id_ts)
            except (TypeError, ValueError, OverflowError) as exc:
                raise DeliveryError(
                    f"get_user() returned a user_id_ts that is not Unix seconds"
                    f" ({type(user.user_id_ts).__name__}); events stay spooled"
                ) from exc
        return body


def _compacted(
    retired: List[Tuple[Optional[Token], int]],
) -> List[Tuple[Optional[Token], int]]:
    """Adjacent entries without a token merged (their records all go under the current
    identity): tokens expire, so the list stays short however often the session is reset."""
    out: List[Tuple[Optional[Token], int]] = []
    for token, boundary in retired:
        if out and token is None and out[-1][0] is None:
            out[-1] = (None, boundary)
        else:
            out.append((token, boundary))
    return out


def _left(deadline: float) -> float:
    """Seconds until ``deadline``, never negative (a lock wait rejects negative timeouts)."""
    return max(0.0, deadline - time.monotonic())


def _token_from(reply: Reply) -> Token:
    data = reply.json()
    try:
        value = data["token"]
        expires = parse_iso8601(data["expires_at"]).timestamp()
    except (TypeError, KeyError, ValueError) as exc:
        raise DeliveryError(
            "session mint: the server's answer has no usable token/expires_at",
            status=reply.status,
        ) from exc
    if not (isinstance(value, str) and value and header_safe(value)):
        # It could never go in a header: failing here sends nothing and mints again later,
        # where httpx would fail every request until expiry, quoting the token.
        raise DeliveryError(
            "session mint: the server's token holds characters a header cannot carry",
            status=reply.status,
        )
    return Token(value, expires, str(data.get("uid", "")))
