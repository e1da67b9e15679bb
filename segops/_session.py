"""The pk_ session handshake: mint, cache, refresh, single-flight, re-mint on 401."""

from __future__ import annotations

import bisect
import json
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Optional, Tuple

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


@dataclass(frozen=True)
class _Era:
    """Records up to ``last_id`` were tracked under the identity of ``generation`` (one era
    per ``reset_session()``); ``token`` is that identity's, once minted (``None`` before,
    and after it expired or was refused: its records then go under the current identity)."""

    last_id: int
    generation: int
    token: Optional[Token]
    ended_at: float  # time.monotonic() of the reset that ended it


#: An era without a token is merged with its neighbours (all their records go under the
#: current identity) once no mint that began in it can still be running.
_MINT_GRACE = 120.0


class Session:
    """Holds the session tokens of a pk_ client; thread-safe, one mint in flight.

    Readers take no lock: the eras are replaced whole, never changed in place. A signal
    handler that interrupted a writer on the same thread gets in (the locks are reentrant).
    """

    def __init__(
        self, *, api_key: str, get_user: Callable[[], UserContext], http: HttpSender
    ) -> None:
        self._api_key = api_key
        self._get_user = get_user
        self._http = http
        self._lock = threading.RLock()
        self._mint_lock = threading.RLock()
        self._token: Optional[Token] = None  # the current identity's
        self._generation = 0  # bumped by each reset_session()
        # Oldest first, with their last ids for bisect: replaced together, as one tuple.
        self._eras: Tuple[Tuple[_Era, ...], Tuple[int, ...]] = ((), ())

    def after_fork(self) -> None:
        """Locks held by another thread at fork time would never be released in the child."""
        self._lock = threading.RLock()
        self._mint_lock = threading.RLock()

    def held_by_this_thread(self) -> bool:
        """True while the calling thread is inside a mint or a reset: a signal handler that
        interrupted one (and must not wait for another thread to get in)."""
        return any(_held(lock) for lock in (self._lock, self._mint_lock))

    def current(self, *, timeout: Optional[float] = None) -> Token:
        """A fresh token of the current identity (see :meth:`token_for`)."""
        return self.token_for(None, timeout=timeout)

    def token_for(self, first_id: Optional[int], *, timeout: Optional[float] = None) -> Token:
        """The token for records from ``first_id`` on: the one of the identity they were
        tracked under while it is valid, else the current identity's, minting it if needed;
        concurrent callers share one mint.

        Waiting for another thread's mint counts against ``timeout``: when it runs out this
        raises :class:`Retryable`, like a mint request that timed out.
        """
        token = self._known_token(first_id)
        if token is not None:
            return token
        deadline = None if timeout is None else time.monotonic() + timeout
        # The lock holder may be stuck on a mute server for a whole request timeout.
        acquired = self._mint_lock.acquire(timeout=-1 if deadline is None else _left(deadline))
        if not acquired:
            raise Retryable("session mint: timed out waiting for the mint in flight")
        try:
            # Meanwhile another thread may have minted, or a reset_session() may have ended
            # the era of these records, taking a token minted in it along.
            token = self._known_token(first_id)
            if token is not None:
                return token
            return self._mint_and_cache(None if deadline is None else _left(deadline))
        finally:
            self._mint_lock.release()

    def spans_eras(self, first_id: int, last_id: int) -> bool:
        """True when records ``first_id``..``last_id`` were tracked under two identities."""
        eras, ends = self._eras
        index = bisect.bisect_left(ends, first_id)
        return index < len(eras) and last_id > ends[index]

    def invalidate(self, token: Token) -> None:
        """The server refused ``token`` (401): drop it, whichever identity it was for."""
        with self._lock:
            if self._token is token:
                self._token = None
            self._replace_eras(
                [replace(era, token=None) if era.token is token else era for era in self._eras[0]]
            )

    def reset(self, boundary: Optional[int]) -> None:
        """``reset_session``: a new identity from now on. Records up to ``boundary`` (the
        last id tracked so far; ``None`` when unknown) keep the ended identity's token."""
        with self._lock:
            token, ended = self._token, self._generation
            if boundary is not None:
                # First: a reader (or a signal handler that interrupted this) meanwhile
                # still finds the token for those records.
                era = _Era(boundary, ended, token, time.monotonic())
                self._replace_eras([*self._eras[0], era])
            self._generation = ended + 1
            self._token = None

    def _known_token(self, first_id: Optional[int]) -> Optional[Token]:
        """The usable token for records from ``first_id`` on (``None``: the current
        identity's) without minting, or ``None``."""
        if first_id is not None:
            eras, ends = self._eras
            index = bisect.bisect_left(ends, first_id)
            if index < len(eras):
                token = eras[index].token
                if token is not None and token.fresh(time.time(), RETIRING_SKEW):
                    return token
                # That identity has no usable token: the current one sends them.
        token = self._token
        return token if token is not None and token.fresh(time.time()) else None

    def _mint_and_cache(self, timeout: Optional[float]) -> Token:
        """Mint (caller holds ``_mint_lock``) and keep the token for the identity it was
        minted for: the current one, or the era a reset ended meanwhile."""
        generation = self._generation  # read before _mint() calls get_user()
        token = self._mint(timeout)
        with self._lock:
            if generation == self._generation:
                self._token = token
            else:
                self._replace_eras(
                    [
                        replace(era, token=token) if era.generation == generation else era
                        for era in self._eras[0]
                    ]
                )
        return token

    def _replace_eras(self, eras: List[_Era]) -> None:
        """Store ``eras`` (caller holds ``_lock``), dropping expired tokens and merging
        neighbours without one: the list stays as short as the live tokens allow."""
        now, clock = time.time(), time.monotonic()
        kept: List[_Era] = []
        for era in eras:
            if era.token is not None and not era.token.fresh(now, RETIRING_SKEW):
                era = replace(era, token=None)
            settled = era.token is None and clock - era.ended_at > _MINT_GRACE
            if settled and kept and kept[-1].token is None:
                kept[-1] = replace(era, ended_at=kept[-1].ended_at)
            else:
                kept.append(era)
        self._eras = (tuple(kept), tuple(era.last_id for era in kept))

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


def _held(lock: object) -> bool:
    is_owned = getattr(lock, "_is_owned", None)  # RLock's, as threading.Condition uses it
    return bool(is_owned()) if is_owned is not None else False


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
