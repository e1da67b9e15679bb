"""The pk_ session handshake: mint, cache, refresh, single-flight, re-mint on 401."""

from __future__ import annotations

import bisect
import json
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from spool._sync import held_here  # one distribution: the signal-safe helpers live there

from ._encoding import parse_iso8601
from ._errors import AuthError, DeliveryError
from ._http import SESSION_PATH, HttpSender, Reply, header_safe
from ._retry import Retryable
from ._types import UserContext

#: A token is replaced this long before it expires.
REFRESH_SKEW = 60.0
#: How long a retired session token (``reset_session``) may still be used before it expires.
RETIRING_SKEW = 5.0
#: A token said to live longer than this (by the answer's ``Date``) is judged by our clock.
_MAX_TOKEN_LIFE = 86400.0


@dataclass(frozen=True)
class Token:
    """A minted session token and when to stop using it."""

    value: str
    expires_at: float  # the server's wall clock
    uid: str
    minted_at: float = 0.0  # time.monotonic() when its mint was answered
    #: The server's clock less this machine's, from the mint answer's ``Date``: 0 without
    #: one, or when our clock lies within the second the Date names (ours then judges
    #: the token, less than a second either way of the 60 s rule); else taken from the end
    #: of that second, so that the token is stale up to a second early.
    offset: float = 0.0

    def fresh(self, skew: float = REFRESH_SKEW) -> bool:
        """True until ``skew`` seconds before it expires, by the server's clock: a local
        clock minutes ahead of it would otherwise take every token for stale at once and
        mint for every request. (The wall clock, not the monotonic one: that one stops
        while the machine sleeps.)"""
        return time.time() + self.offset < self.expires_at - skew

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


class _State(NamedTuple):
    """Everything a sender reads, replaced whole: one read sees one consistent state."""

    token: Optional[Token]  # the current identity's
    generation: int  # bumped by each reset_session()
    eras: Tuple[_Era, ...]  # oldest first
    ends: Tuple[int, ...]  # their last ids, for bisect


#: Every this many eras, expired tokens are dropped and neighbours without one merged.
_COMPACT_EVERY = 32


class Session:
    """Holds the session tokens of a pk_ client; thread-safe, one mint in flight.

    Readers take no lock: they read one immutable :class:`_State`, which writers (holding
    ``_lock``) replace whole. A signal handler that interrupted a writer on the same thread
    gets in (the locks are reentrant).
    """

    def __init__(
        self, *, api_key: str, get_user: Callable[[], UserContext], http: HttpSender
    ) -> None:
        self._api_key = api_key
        self._get_user = get_user
        self._http = http
        self._lock = threading.RLock()
        self._mint_lock = threading.RLock()
        self._state = _State(None, 0, (), ())
        # The generation the mint in flight began in: its era must keep its place (and get
        # the token) even when a reset ends it before the answer comes.
        self._minting: Optional[int] = None

    def after_fork(self) -> None:
        """Locks held by another thread at fork time would never be released in the child,
        nor would its mint end there."""
        self._lock = threading.RLock()
        self._mint_lock = threading.RLock()
        self._minting = None

    def held_by_this_thread(self) -> bool:
        """True while the calling thread is inside a mint or a reset: a signal handler that
        interrupted one (and must not wait for another thread to get in)."""
        return any(held_here(lock) for lock in (self._lock, self._mint_lock))

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
        token = _known_token(self._state, first_id)
        if token is not None:
            return token
        deadline = None if timeout is None else time.monotonic() + timeout
        if held_here(self._lock):
            # A signal handler that interrupted this thread inside a reset or a mint: the
            # mint in flight on another thread waits for this thread to store its token.
            if not self._mint_lock.acquire(blocking=False):
                return self._mint_and_cache(timeout, alongside=True)
        # The lock holder may be stuck on a mute server for a whole request timeout.
        elif not self._mint_lock.acquire(timeout=-1 if deadline is None else _left(deadline)):
            raise Retryable("session mint: timed out waiting for the mint in flight")
        try:
            # Meanwhile another thread may have minted, or a reset_session() may have ended
            # the era of these records, taking a token minted in it along.
            token = _known_token(self._state, first_id)
            if token is not None:
                return token
            return self._mint_and_cache(None if deadline is None else _left(deadline))
        finally:
            self._mint_lock.release()

    def spans_eras(self, first_id: int, last_id: int) -> bool:
        """True when records ``first_id``..``last_id`` were tracked under two identities."""
        state = self._state
        index = bisect.bisect_left(state.ends, first_id)
        return index < len(state.ends) and last_id > state.ends[index]

    def refused(self, token: Token, *, sent_at: float) -> None:
        """The server refused ``token`` (401) in a request sent at ``sent_at`` (monotonic):
        drop it, whichever identity it was for. When it was an old era's token, also the
        current identity's cached token if it is older than that request (the server may
        have revoked them all), so that the next request mints once. A token minted after
        the refused one is kept: senders that met the same 401 share its mint."""
        with self._lock:
            state = self._state
            of_an_era = any(era.token is token for era in state.eras)
            eras = [replace(era, token=None) if era.token is token else era for era in state.eras]
            current = state.token
            # Refused while current (or once current): tokens minted after it are newer than
            # what the server refused. An old era's token: the current one may be as stale.
            cutoff = sent_at if of_an_era else token.minted_at
            if current is token or (current is not None and current.minted_at <= cutoff):
                current = None
            self._store(state._replace(token=current), eras)

    def reset(self, boundary: Optional[int]) -> None:
        """``reset_session``: a new identity from now on. Records up to ``boundary`` (the
        last id tracked so far; ``None`` when unknown) keep the ended identity's token."""
        with self._lock:
            state = self._state
            eras = list(state.eras)
            if boundary is not None:
                # A concurrent reset may have read a later id and got here first: the
                # records up to it are that era's already.
                last_id = max([boundary, *state.ends[-1:]])
                era = _Era(last_id, state.generation, state.token)
                if _mergeable(era, self._minting) and eras and _mergeable(eras[-1], self._minting):
                    eras[-1] = era  # neither identity has a token: both go under the current
                else:
                    eras.append(era)
            self._store(_State(None, state.generation + 1, (), ()), eras)

    def _mint_and_cache(self, timeout: Optional[float], *, alongside: bool = False) -> Token:
        """Mint (caller holds ``_mint_lock``, unless ``alongside`` another mint) and keep the
        token for the identity it was minted for."""
        generation: Optional[int] = None
        token: Optional[Token] = None
        try:
            generation, identity = self._identity_of_a_generation(alongside)
            token = self._mint(identity, timeout)
            return token
        finally:
            self._keep(token, generation, alongside)

    def _identity_of_a_generation(self, alongside: bool) -> Tuple[int, Dict[str, Any]]:
        """``get_user()``'s answer and the generation it belongs to, marked as minting
        (unless ``alongside``): read again when a reset_session() came while it ran (it
        may have answered for either identity)."""
        for _ in range(3):
            with self._lock:
                generation = self._state.generation
                if not alongside:
                    self._minting = generation
            identity = self._identity()
            if self._state.generation == generation:
                return generation, identity
        # Whose answer that was cannot be told: better no token now than a wrong one.
        raise Retryable("session mint: reset_session() kept coming while get_user() ran")

    def _keep(self, token: Optional[Token], generation: Optional[int], alongside: bool) -> None:
        """Store ``token`` for ``generation`` (the current one, or the era a reset ended
        meanwhile) and clear the minting mark under the same lock: a reset sees the mint in
        flight or its token, never neither."""
        with self._lock:
            if not alongside:
                self._minting = None
            if token is None or generation is None:
                return
            state = self._state
            if generation == state.generation:
                self._state = state._replace(token=token)
                return
            eras = [
                replace(era, token=token) if era.generation == generation else era
                for era in state.eras
            ]
            self._store(state, eras)

    def _store(self, state: _State, eras: List[_Era]) -> None:
        """Replace the state with ``state`` holding ``eras`` (caller holds ``_lock``);
        every _COMPACT_EVERY eras, expired tokens are dropped and neighbours without one
        merged, so the list stays as short as the live tokens allow."""
        if eras and len(eras) % _COMPACT_EVERY == 0:
            eras = _compacted(eras, self._minting)
        self._state = state._replace(eras=tuple(eras), ends=tuple(era.last_id for era in eras))

    def _mint(self, identity: Dict[str, Any], timeout: Optional[float]) -> Token:
        body = json.dumps(identity, separators=(",", ":")).encode()
        headers = {"Authorization": f"ApiKey {self._api_key}"}
        reply = self._http.post(SESSION_PATH, body, headers, timeout=timeout)
        if reply.ok:
            return _token_from(reply)
        detail = reply.detail(self._api_key)
        if reply.status in (401, 403):
            raise AuthError(
                f"session mint refused: HTTP {reply.status}: {detail}",
                status=reply.status,
                detail=detail,
            )
        if reply.status in (408, 429) or reply.status >= 500:
            raise Retryable(
                f"session mint: HTTP {reply.status}",
                status=reply.status,
                retry_after=reply.retry_after(),
            )
        raise DeliveryError(
            f"session mint failed: HTTP {reply.status}: {detail}",
            status=reply.status,
            detail=detail,
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


def _known_token(state: _State, first_id: Optional[int]) -> Optional[Token]:
    """The usable token for records from ``first_id`` on (``None``: the current identity's)
    without minting, or ``None``."""
    if first_id is not None:
        index = bisect.bisect_left(state.ends, first_id)
        if index < len(state.eras):
            token = state.eras[index].token
            if token is not None and token.fresh(RETIRING_SKEW):
                return token
            # That identity has no usable token: the current one sends them.
    token = state.token
    return token if token is not None and token.fresh() else None


def _mergeable(era: _Era, minting: Optional[int]) -> bool:
    """An era without a token that no mint in flight can give one to."""
    return era.token is None and era.generation != minting


def _compacted(eras: List[_Era], minting: Optional[int]) -> List[_Era]:
    kept: List[_Era] = []
    for era in eras:
        if era.token is not None and not era.token.fresh(RETIRING_SKEW):
            era = replace(era, token=None)
        if kept and _mergeable(era, minting) and _mergeable(kept[-1], minting):
            kept[-1] = era
        else:
            kept.append(era)
    return kept


def _left(deadline: float) -> float:
    """Seconds until ``deadline``, never negative (a lock wait rejects negative timeouts)."""
    return max(0.0, deadline - time.monotonic())


def _clock_offset(reply: Reply, expires_at: float) -> float:
    """The server's clock less this machine's, by ``reply``'s ``Date`` (0 without one, or
    when our clock lies within the second Date names). ``Date`` is cut to the second, so
    otherwise its end is taken: the token counts as stale up to a second early. A ``Date``
    that would make the token already expired, or live for more than a day, is not the
    clock that set ``expires_at`` (a proxy's, say)."""
    server = reply.server_time()
    if server is None:
        return 0.0
    local = time.time()
    offset = server + 1.0 - local
    if 0.0 <= offset <= 1.0:
        return 0.0  # the clocks agree as far as Date tells: ours, to the 60 s rule exactly
    left = expires_at - (local + offset)
    return offset if 0 < left <= _MAX_TOKEN_LIFE else 0.0


def _token_from(reply: Reply) -> Token:
    data = reply.json()
    try:
        value = data["token"]
        expires = parse_iso8601(data["expires_at"]).timestamp()
    except (TypeError, KeyError, ValueError) as exc:
        # Not chained: the cause quotes the server's value, which may echo the key.
        raise DeliveryError(
            "session mint: the server's answer has no usable token/expires_at"
            f" ({type(exc).__name__})",
            status=reply.status,
        ) from None
    if not (isinstance(value, str) and value and header_safe(value)):
        # It could never go in a header: failing here sends nothing and mints again later,
        # where httpx would fail every request until expiry, quoting the token.
        raise DeliveryError(
            "session mint: the server's token holds characters a header cannot carry",
            status=reply.status,
        )
    offset = _clock_offset(reply, expires)
    return Token(value, expires, str(data.get("uid", "")), time.monotonic(), offset)
