"""Every example of the public Python SDK doc runs unchanged against a local DevServer.

The snippets below are copied verbatim from ``python-sdk-docs.txt``; only the hosted URL is
replaced by the DevServer's, and the server is configured with the doc's literal keys.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, Iterator

import pytest
import segops
from _support import child_env, run_script, write_script
from segops.devserver import DevServer

HOSTED = "https://api.segops.ai"
HMAC_SECRET = "0f" * 32

QUICK_START = """
import segops

client = segops.SegOpsClient("https://api.segops.ai", "sk_...")

client.track(
    user_id="user-123",
    event_type="order_placed",
    payload={"order_id": "ord-456", "total": 89.95},
)

client.shutdown()  # flush + stop the background thread on exit
"""

CONTEXT_MANAGER = """
with segops.SegOpsClient("https://api.segops.ai", "sk_...") as client:
    client.track(user_id="user-123", event_type="page_viewed", payload={"path": "/home"})
"""

PK_CLIENT = """
client = segops.SegOpsClient(
    "https://api.segops.ai",
    "pk_...",
    get_user=lambda: segops.UserContext(
        user_id=current_user.id,
        user_id_sig=signed["user_id_sig"],  # from your backend
        user_id_ts=signed["user_id_ts"],
    ),
)
"""

TRACK_METHODS = """
client.track(user_id="user-123", event_type="page_viewed", payload={"path": "/home"})
# OccurredAt defaults to the current UTC time when omitted.

# Or with a dataclass:
client.track(segops.Event(user_id="user-123", event_type="page_viewed"))
"""

IDENTIFY = """
client.identify(
    user_id="user-123",
    traits={"email": "[email protected]", "plan": "starter", "company": "Acme Corp"},
)
"""

SIGNING = """
import os
import segops

signed = segops.sign_user_id(os.environ["SEGOPS_HMAC_SECRET"], current_user.id)
# -> {"user_id": ..., "user_id_sig": ..., "user_id_ts": ...} — hand to get_user()
"""

ATEXIT = """
import atexit
from segops import SegOpsClient

client = SegOpsClient(os.environ["SEGOPS_API_URL"], os.environ["SEGOPS_SECRET_KEY"])
atexit.register(client.shutdown)   # flush on a clean worker shutdown
"""


@pytest.fixture
def doc_server() -> Iterator[DevServer]:
    """A DevServer that accepts the doc's literal keys and checks signed user ids."""
    srv = DevServer(
        secret_key="sk_...", public_key="pk_...", hmac_secret=HMAC_SECRET, require_signed=True
    )
    srv.start()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture(autouse=True)
def spool_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The doc never passes spool_path: keep the default spool under tmp_path."""
    path = tmp_path / "spools"
    monkeypatch.setenv("SEGOPS_SPOOL_DIR", str(path))
    return path


def run_doc(snippet: str, srv: DevServer, namespace: Dict[str, Any]) -> Dict[str, Any]:
    """exec a doc snippet with only the hosted URL swapped for the DevServer's."""
    exec(compile(snippet.replace(HOSTED, srv.url), "<doc>", "exec"), namespace)
    return namespace


def test_quick_start(doc_server: DevServer) -> None:
    """The quick start stores order_placed with its payload once shutdown() returns."""
    before = dt.datetime.now(dt.timezone.utc)
    run_doc(QUICK_START, doc_server, {})
    (event,) = doc_server.events()
    assert event["user_id"] == "user-123"
    assert event["event_type"] == "order_placed"
    assert event["payload"] == {"order_id": "ord-456", "total": 89.95}
    occurred = dt.datetime.fromisoformat(event["occurred_at"])
    assert occurred.utcoffset() == dt.timedelta(0)
    assert abs((occurred - before).total_seconds()) < 5


def test_context_manager_flushes_on_exit(doc_server: DevServer) -> None:
    """Leaving the with-block delivers the page_viewed event."""
    run_doc(CONTEXT_MANAGER, doc_server, {"segops": segops})
    events = doc_server.events()
    assert [(e["user_id"], e["event_type"], e["payload"]) for e in events] == [
        ("user-123", "page_viewed", {"path": "/home"})
    ]


def test_track_keywords_and_event_dataclass(doc_server: DevServer) -> None:
    """Both track() forms of the Methods section are delivered; the dataclass sends {}."""
    with segops.SegOpsClient(doc_server.url, "sk_...") as client:
        run_doc(TRACK_METHODS, doc_server, {"segops": segops, "client": client})
    raws = [e["raw"] for e in doc_server.events()]
    assert [r["payload"] for r in raws] == [{"path": "/home"}, {}]
    assert all(set(r) == {"user_id", "event_type", "occurred_at", "payload"} for r in raws)
    assert {r["event_type"] for r in raws} == {"page_viewed"}


def test_identify_example(doc_server: DevServer) -> None:
    """identify() becomes a context_identified event whose payload is the traits."""
    with segops.SegOpsClient(doc_server.url, "sk_...") as client:
        run_doc(IDENTIFY, doc_server, {"segops": segops, "client": client})
    (event,) = doc_server.events()
    assert event["event_type"] == "context_identified"
    assert event["user_id"] == "user-123"
    assert event["payload"] == {
        "email": "[email protected]",
        "plan": "starter",
        "company": "Acme Corp",
    }


def test_types_section_dataclasses(doc_server: DevServer) -> None:
    """Event and Context behave as the Types section shows (payload/traits default {})."""
    event = segops.Event(user_id="u-1", event_type="signed_up")
    assert event.occurred_at is None and event.payload == {}
    ctx = segops.Context(user_id="u-1")
    assert ctx.traits == {}
    with segops.SegOpsClient(doc_server.url, "sk_...") as client:
        client.track(event)
        client.identify(segops.Context(user_id="u-1", traits={"plan": "pro"}))
    stored = doc_server.events()
    assert [(e["event_type"], e["payload"]) for e in stored] == [
        ("signed_up", {}),
        ("context_identified", {"plan": "pro"}),
    ]


@pytest.mark.parametrize(("user_pk", "uid"), [("user-123", "user-123"), (123, "123")])
def test_pk_client_with_signed_user_id(
    doc_server: DevServer, monkeypatch: pytest.MonkeyPatch, user_pk: Any, uid: str
) -> None:
    """The signing snippet plus the pk_ snippet (str or Django-style int id): a signed
    session, events under the user."""
    monkeypatch.setenv("SEGOPS_HMAC_SECRET", HMAC_SECRET)
    ns: Dict[str, Any] = {"current_user": SimpleNamespace(id=user_pk)}
    run_doc(SIGNING, doc_server, ns)
    signed = ns["signed"]
    assert set(signed) == {"user_id", "user_id_sig", "user_id_ts"}
    assert segops.verify_user_id(HMAC_SECRET, uid, signed["user_id_sig"], signed["user_id_ts"])
    assert segops.verify_user_id(HMAC_SECRET, user_pk, signed["user_id_sig"], signed["user_id_ts"])
    run_doc(PK_CLIENT, doc_server, ns)
    client = ns["client"]
    try:
        client.track(user_id="someone-else", event_type="page_viewed")
        client.flush(timeout=10)
    finally:
        client.shutdown(timeout=5)
    (event,) = doc_server.events()
    assert event["user_id"] == uid
    assert event["auth"] == "bearer"
    sessions = [r for r in doc_server.requests if r.path == "/api/auth/session/"]
    assert len(sessions) == 1
    assert sessions[0].headers["authorization"] == "ApiKey pk_..."
    assert sessions[0].json == {
        "user_id": uid,
        "user_id_sig": signed["user_id_sig"],
        "user_id_ts": signed["user_id_ts"],
    }


def test_reset_session_is_noop_for_sk(doc_server: DevServer) -> None:
    """reset_session() on an sk_ client does nothing and delivery goes on."""
    with segops.SegOpsClient(doc_server.url, "sk_...") as client:
        client.reset_session()
        client.track(user_id="u", event_type="e")
    assert len(doc_server.events()) == 1


@pytest.mark.timeout(60)
def test_atexit_pattern_in_a_worker_process(doc_server: DevServer, tmp_path: Path) -> None:
    """The WSGI atexit.register(client.shutdown) pattern delivers when the process exits."""
    body = ATEXIT + '\nclient.track(user_id="user-9", event_type="worker_done")\nprint("ok")\n'
    script = write_script(tmp_path, "worker.py", "import os\n" + body)
    env = child_env(
        SEGOPS_API_URL=doc_server.url,
        SEGOPS_SECRET_KEY="sk_...",
        SEGOPS_SPOOL_DIR=str(tmp_path / "worker-spool"),
    )
    result = run_script(script, env=env)
    assert result.returncode == 0, result.stderr
    assert [(e["user_id"], e["event_type"]) for e in doc_server.events()] == [
        ("user-9", "worker_done")
    ]


def test_async_offload_pattern(doc_server: DevServer) -> None:
    """The async section's pattern (track/shutdown in a worker thread) delivers the event."""
    anyio = pytest.importorskip("anyio")
    client = segops.SegOpsClient(doc_server.url, "sk_...")

    async def handler() -> None:
        track = functools.partial(client.track, user_id="uid", event_type="checkout_completed")
        await anyio.to_thread.run_sync(track)
        await anyio.to_thread.run_sync(client.shutdown)

    anyio.run(handler)
    assert [e["event_type"] for e in doc_server.events()] == ["checkout_completed"]


def test_examples_used_the_default_spool_dir(doc_server: DevServer, spool_dir: Path) -> None:
    """A doc-style client (no spool_path) writes under $SEGOPS_SPOOL_DIR and empties it."""
    run_doc(QUICK_START, doc_server, {})
    files = sorted(p.name for p in spool_dir.iterdir())
    assert files and all(p.startswith("spool-") for p in files)
    assert not any("sk_" in name for name in os.listdir(spool_dir))
