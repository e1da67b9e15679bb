"""Default spool location and permissions; secrets never leak into reprs, logs or errors."""

from __future__ import annotations

import contextlib
import logging
import socket
import stat
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Iterator, List

import pytest
import segops
from _support import FAST, SK, ErrorLog, ingestion, wait_until
from segops._http import HttpSender
from segops._paths import redact
from segops._retry import Retryable
from segops.devserver import DevServer

SECRET = "sk_live_0123456789abcdefSECRETtail"


@pytest.fixture
def spool_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "spool-home"
    monkeypatch.setenv("SEGOPS_SPOOL_DIR", str(path))
    return path


@pytest.fixture
def new_client() -> Iterator[Callable[..., segops.SegOpsClient]]:
    """Clients without spool_path (default location); all shut down at teardown."""
    made: List[segops.SegOpsClient] = []

    def make(url: str, key: str, **kwargs: object) -> segops.SegOpsClient:
        client = segops.SegOpsClient(url, key, flush_interval=60, **kwargs)  # type: ignore[arg-type]
        made.append(client)
        return client

    yield make
    for client in made:
        with contextlib.suppress(segops.SegOpsError):
            client.shutdown(timeout=0.5)


def test_segops_spool_dir_is_honoured(
    spool_dir: Path, new_client: Callable[..., segops.SegOpsClient]
) -> None:
    """Without spool_path the spool is created inside $SEGOPS_SPOOL_DIR."""
    client = new_client("http://127.0.0.1:9", SECRET)
    client.track(user_id="u", event_type="e")
    assert client.spool_path.parent == spool_dir
    assert client.spool_path.exists()
    assert client.stats().spool_path == str(client.spool_path)


def test_xdg_cache_home_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, new_client: Callable[..., segops.SegOpsClient]
) -> None:
    """Without $SEGOPS_SPOOL_DIR, Linux uses $XDG_CACHE_HOME/segops."""
    if not hasattr(__import__("os"), "fork"):
        pytest.skip("POSIX layout")
    monkeypatch.delenv("SEGOPS_SPOOL_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    client = new_client("http://127.0.0.1:9", SECRET)
    assert client.spool_path.parent == tmp_path / "xdg" / "segops"


def test_an_existing_cache_folder_is_made_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, new_client: Callable[..., segops.SegOpsClient]
) -> None:
    """A pre-existing 0755 $XDG_CACHE_HOME/segops becomes 0700, like a new one."""
    if not hasattr(__import__("os"), "getuid"):
        pytest.skip("POSIX permissions")
    monkeypatch.delenv("SEGOPS_SPOOL_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    folder = tmp_path / "xdg" / "segops"
    folder.mkdir(parents=True)
    folder.chmod(0o755)
    new_client("http://127.0.0.1:9", SECRET).track(user_id="u", event_type="e")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_a_chosen_spool_dir_keeps_its_permissions(
    spool_dir: Path, new_client: Callable[..., segops.SegOpsClient]
) -> None:
    """$SEGOPS_SPOOL_DIR belongs to whoever set it: its mode is left alone."""
    spool_dir.mkdir()
    spool_dir.chmod(0o750)
    new_client("http://127.0.0.1:9", SECRET).track(user_id="u", event_type="e")
    assert stat.S_IMODE(spool_dir.stat().st_mode) == 0o750


def test_spool_name_is_a_hash_without_the_key(
    spool_dir: Path, new_client: Callable[..., segops.SegOpsClient]
) -> None:
    """The file name reveals no part of the key (or the URL)."""
    client = new_client("http://127.0.0.1:9", SECRET)
    name = client.spool_path.name
    for fragment in (SECRET, "sk_live", "SECRET", "0123456789abcdef", "127.0.0.1"):
        assert fragment not in name
    assert all(SECRET not in p.name for p in spool_dir.iterdir())


def test_same_url_and_key_share_a_spool_others_do_not(
    spool_dir: Path, new_client: Callable[..., segops.SegOpsClient]
) -> None:
    """Same url/key (trailing slash or not) -> same file; another url or key -> another file."""
    a = new_client("http://127.0.0.1:9", SECRET).spool_path
    b = new_client("http://127.0.0.1:9/", SECRET).spool_path
    c = new_client("http://127.0.0.1:9", SECRET + "x").spool_path
    d = new_client("http://127.0.0.1:10", SECRET).spool_path
    assert a == b
    assert len({a, c, d}) == 3


@pytest.mark.parametrize("scheme", ["HTTP", "Http"])
def test_an_uppercase_scheme_is_http_and_shares_its_spool(
    spool_dir: Path,
    new_client: Callable[..., segops.SegOpsClient],
    server: DevServer,
    scheme: str,
) -> None:
    """``HTTP://`` is ``http://`` (schemes are case-insensitive; the official client's urllib
    takes it): accepted, sent to the server, one spool with the lowercase URL's."""
    upper = new_client(server.url.replace("http", scheme, 1), SK)
    upper.track(user_id="u", event_type="e")
    upper.flush(timeout=10)
    assert len(ingestion(server)) == 1
    assert upper.spool_path == new_client(server.url, SK).spool_path


def test_clients_on_different_keys_never_mix(
    spool_dir: Path, new_client: Callable[..., segops.SegOpsClient]
) -> None:
    """Events tracked for one key are not visible in the spool of another key."""
    one = new_client("http://127.0.0.1:9", "sk_one_aaaaaaaaaaaa")
    two = new_client("http://127.0.0.1:9", "sk_two_bbbbbbbbbbbb")
    one.track(user_id="u", event_type="e")

    def live(c: segops.SegOpsClient) -> int:
        stats = c.stats()
        return stats.pending + stats.in_flight

    assert (live(one), live(two)) == (1, 0)
    again = new_client("http://127.0.0.1:9", "sk_one_aaaaaaaaaaaa")
    assert live(again) == 1


def test_spool_file_0600_and_dir_0700(
    spool_dir: Path, new_client: Callable[..., segops.SegOpsClient]
) -> None:
    """The spool directory is created 0700 and the db (and its side files) 0600."""
    client = new_client("http://127.0.0.1:9", SECRET)
    client.track(user_id="u", event_type="e")
    assert stat.S_IMODE(spool_dir.stat().st_mode) == 0o700
    files = [p for p in spool_dir.iterdir() if p.name.startswith(client.spool_path.name)]
    assert client.spool_path in files
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


def test_repr_redacts_the_key(tmp_path: Path) -> None:
    """repr(client) shows a redacted key, never the key itself."""
    client = segops.SegOpsClient("http://127.0.0.1:9", SECRET, spool_path=tmp_path / "s.sqlite3")
    try:
        text = repr(client)
        assert SECRET not in text and "0123456789abcdefSECRET" not in text
        assert "http://127.0.0.1:9" in text
    finally:
        client.shutdown(timeout=0.5)


@pytest.mark.parametrize(
    "key",
    [SECRET + "\n", SECRET + "\r\n", " " + SECRET, "sk_live_0123 456789", "sk_live_0123é456789"],
    ids=["trailing newline", "CRLF", "leading space", "inner space", "non-ASCII"],
)
def test_unsendable_keys_are_refused_at_construction(spool_dir: Path, key: str) -> None:
    """A key no HTTP header can carry is a ConfigurationError that does not quote it."""
    with pytest.raises(segops.ConfigurationError) as info:
        segops.SegOpsClient("http://127.0.0.1:9", key)
    assert isinstance(info.value, ValueError)
    assert key.strip() not in str(info.value) and "0123456789" not in str(info.value)
    assert not spool_dir.exists()  # refused before any file was made


@pytest.mark.parametrize(
    "url",
    [
        "https://ops:hunter2pw@api.example.com",
        "http://:hunter2pw@127.0.0.1:9",
        "ftp://u:hunter2pw@x",
        "https://ops:hunter2pw/x?y#z@api.example.com",  # "/", "?", "#" in the password
    ],
)
def test_urls_with_credentials_are_refused_without_echoing_them(spool_dir: Path, url: str) -> None:
    """A user name or password in api_url is a ConfigurationError that does not quote it."""
    with pytest.raises(segops.ConfigurationError) as info:
        segops.SegOpsClient(url, SECRET)
    assert "hunter2pw" not in str(info.value)
    assert not spool_dir.exists()


@pytest.mark.parametrize(
    ("key", "shown"),
    [
        ("sk_live_0123456789abcd", "sk_live_…abcd"),
        ("pk_test_0123456789abcd", "pk_test_…abcd"),
        ("sk_0123456789abcdef_ghij", "sk_…ghij"),  # no environment word: none shown
        ("sk_0123456789abcdef", "sk_…cdef"),
        ("sk_short", "sk_…"),
    ],
)
def test_redact_shows_the_environment_and_last_four_only(key: str, shown: str) -> None:
    """redact() keeps the prefix, a known environment word and the last 4 characters."""
    assert redact(key) == shown


def test_a_header_httpx_refuses_is_reported_without_its_value() -> None:
    """httpx quotes a bad header in its error; the SDK passes on only the error's type."""
    with DevServer() as srv:
        sender = HttpSender(api_url=srv.url, timeout=2.0)
        try:
            for bad in ("Bearer token\nSECRETPART", "Bearer tokén-SECRETPART"):
                with pytest.raises(Retryable) as info:
                    sender.post("/api/ingestion/track/batch/", b"{}", {"Authorization": bad})
                assert "SECRETPART" not in f"{info.value} {info.value!r}"
                printed = "".join(traceback.format_exception(info.type, info.value, info.tb))
                assert "SECRETPART" not in printed, "the httpx error is chained as the cause"
        finally:
            sender.close()


@pytest.fixture
def echoing_proxy() -> Iterator[str]:
    """A broken proxy on 127.0.0.1: answers every request with a malformed header line
    that echoes the request's Authorization value (h11 quotes such a line in its error)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                auth = [
                    line.split(b":", 1)[1].strip()
                    for line in data.split(b"\r\n")
                    if line.lower().startswith(b"authorization:")
                ]
                conn.sendall(
                    b"HTTP/1.1 502 Bad Gateway\r\nX-Upstream-Auth : "
                    + b"".join(auth)
                    + b"\r\nContent-Length: 0\r\n\r\n"
                )

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


@pytest.mark.parametrize(
    "authorization",
    [f"ApiKey {SECRET}", "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0.c2lnbmF0dXJlX1NFQ1JFVA"],
)
def test_a_transport_error_quoting_our_credentials_is_redacted(
    echoing_proxy: str, authorization: str
) -> None:
    """A transport error quoting the server's bytes (h11: "illegal header line: ...") is
    passed on without the key or token it echoes, in the message and the whole chain."""
    credential = authorization.split(" ", 1)[1]
    sender = HttpSender(api_url=echoing_proxy, timeout=2.0)
    try:
        with pytest.raises(Retryable) as info:
            sender.post("/api/ingestion/track/batch/", b"{}", {"Authorization": authorization})
    finally:
        sender.close()
    printed = "".join(traceback.format_exception(info.type, info.value, info.tb))
    assert "illegal header line" in printed  # the server's explanation is kept, redacted
    assert credential not in printed
    assert credential[-12:-4] not in printed


def test_a_transport_error_without_secrets_keeps_its_cause(echoing_proxy: str) -> None:
    """Without a credential to echo, the httpx error stays chained for diagnosis."""
    sender = HttpSender(api_url=echoing_proxy, timeout=2.0)
    try:
        with pytest.raises(Retryable) as info:
            sender.post("/api/ingestion/track/batch/", b"{}", {})
    finally:
        sender.close()
    assert "illegal header line" in str(info.value)
    assert info.value.__cause__ is not None


def test_secrets_absent_from_logs_and_errors_in_a_failing_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A run refused with 401 logs (DEBUG, all loggers) and raises without the sk_ key."""
    caplog.set_level(logging.DEBUG)
    errors = ErrorLog()
    with DevServer(secret_key="sk_live_the_right_one_1234") as srv:
        client = segops.SegOpsClient(
            srv.url,
            SECRET,
            spool_path=tmp_path / "s.sqlite3",
            flush_interval=0.1,
            batch_size=1,
            retry_policy=FAST,
            on_error=errors,
        )
        try:
            client.track(user_id="u", event_type="e")
            wait_until(lambda: errors.items, timeout=5)
            with pytest.raises(segops.AuthError) as info:
                client.flush(timeout=3)
            raised = [info.value, *errors.items]
            with pytest.raises(segops.SegOpsError) as at_shutdown:
                client.shutdown(timeout=1)
            raised.append(at_shutdown.value)
        finally:
            client.shutdown(timeout=0.5)
        assert srv.requests[0].headers["authorization"] == f"ApiKey {SECRET}"  # it was sent
    texts = [caplog.text] + [f"{e!s} {e!r} {getattr(e, 'detail', '')}" for e in raised]
    for text in texts:
        assert SECRET not in text
        assert "0123456789abcdefSECRET" not in text
    assert SECRET.encode() not in (tmp_path / "s.sqlite3").read_bytes()


def test_session_token_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A pk_ run with a revoked token and a refused re-mint never logs the token or key."""
    caplog.set_level(logging.DEBUG)
    pk = "pk_live_public_key_abcdef123456"
    with DevServer(public_key=pk) as srv:
        client = segops.SegOpsClient(
            srv.url,
            pk,
            get_user=lambda: segops.UserContext(user_id="alice"),
            spool_path=tmp_path / "s.sqlite3",
            flush_interval=60,
            retry_policy=FAST,
            on_error=lambda exc: None,
        )
        try:
            client.track(user_id="a", event_type="e")
            client.flush(timeout=5)
            token = ingestion(srv)[0].headers["authorization"].split(" ", 1)[1]
            srv.revoke_tokens()
            srv.public_key = "pk_live_rotated_key_999999"
            client.track(user_id="a", event_type="e")
            with pytest.raises(segops.AuthError) as info:
                client.flush(timeout=5)
        finally:
            with contextlib.suppress(segops.SegOpsError):
                client.shutdown(timeout=0.5)
    time.sleep(0.05)
    for text in (caplog.text, str(info.value), repr(info.value), repr(client)):
        assert token not in text
        assert pk not in text


def test_corrupt_spool_is_moved_aside_and_reported(tmp_path: Path) -> None:
    """A garbage spool file is kept as evidence, a fresh one works, on_error hears of it."""
    path = tmp_path / "s.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    seen: List[BaseException] = []
    client = segops.SegOpsClient(
        "http://127.0.0.1:9", "sk_x", spool_path=path, on_error=seen.append, background=False
    )
    try:
        client.track(user_id="u", event_type="after_recovery")
        assert client.stats().pending == 1
    finally:
        with contextlib.suppress(segops.SegOpsError):
            client.shutdown(timeout=0.1)
    corrupt = [e for e in seen if isinstance(e, segops.SpoolCorrupt)]
    assert len(corrupt) == 1 and "moved aside" in str(corrupt[0])
    evidence = list(tmp_path.glob("s.sqlite3.corrupt-*"))
    assert evidence and evidence[0].read_bytes().startswith(b"this is not a database")


@pytest.mark.parametrize(
    "url",
    [
        SECRET,
        f" {SECRET}",
        f'"{SECRET}"',
        f"ApiKey {SECRET}",
        f"https://api.example.com/?api_key={SECRET}",
        f"https://{SECRET}.example.com",
    ],
)
def test_a_key_anywhere_in_the_url_is_redacted(spool_dir: Path, url: str) -> None:
    """A key pasted into api_url, however wrapped, never shows in the error or the repr."""
    try:
        client = segops.SegOpsClient(url, SECRET)
    except segops.ConfigurationError as exc:
        assert "SECRETtail" not in str(exc)
        assert redact(SECRET) in str(exc)
    else:
        try:
            assert "SECRETtail" not in repr(client)
        finally:
            client.shutdown(timeout=0.1)


@pytest.mark.parametrize("url", ["https://api.example.com/?x=1", "https://api.example.com/#top"])
def test_api_url_with_query_or_fragment_is_refused(spool_dir: Path, url: str) -> None:
    """The API paths are appended to api_url, so a query or fragment is a ConfigurationError."""
    with pytest.raises(segops.ConfigurationError, match="base URL"):
        segops.SegOpsClient(url, SECRET)


def test_spool_path_with_tilde_is_under_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """spool_path="~/..." is expanded like a shell path."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    client = segops.SegOpsClient("http://127.0.0.1:9", SECRET, spool_path="~/s.sqlite3")
    try:
        assert client.spool_path == tmp_path / "home" / "s.sqlite3"
        assert (tmp_path / "home" / "s.sqlite3").exists()
    finally:
        client.shutdown(timeout=0)
    assert not (tmp_path / "~").exists()
