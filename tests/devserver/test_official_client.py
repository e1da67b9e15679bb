"""Wire compatibility: the official ``segops==0.2.2`` client against the dev server.

The official client runs in its own throwaway venv (``.venv-official``, see official.py)
in a subprocess, so it can never be confused with this project's ``segops`` package.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dshelp import BATCH, HMAC_HEX, SESSION, SINGLE
from official import OFFICIAL_VERSION, OfficialClientUnavailable, official_python
from segops.devserver import DevServer

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import segops
    from importlib.metadata import version

    cfg = json.loads(sys.argv[1])
    errors = []
    on_error = lambda exc: errors.append(f"{type(exc).__name__}: {exc}")
    out = {"version": version("segops"), "file": segops.__file__}

    # 1. secret key, batching
    c = segops.SegOpsClient(cfg["plain"], "sk_dev_secret", flush_interval=60, on_error=on_error)
    c.track(user_id="u-1", event_type="page_viewed", payload={"path": "/home"})
    c.track(user_id="u-2", event_type="order_placed",
            occurred_at="2026-01-02T03:04:05Z", payload={"total": 89.95})
    c.track(segops.Event(user_id="u-3", event_type="signed_up"))
    c.identify(user_id="u-1", traits={"plan": "starter"})
    c.shutdown()

    # 2. secret key, batch=False (one request per event)
    c = segops.SegOpsClient(cfg["plain"], "sk_dev_secret", batch=False, on_error=on_error)
    c.track(user_id="s-1", event_type="single_sent", payload={"n": 1})
    c.track(user_id="s-2", event_type="single_sent")
    c.shutdown()

    # 3. public key + get_user: two flushes share one minted token
    c = segops.SegOpsClient(cfg["plain"], "pk_dev_public", flush_interval=60, on_error=on_error,
                            get_user=lambda: segops.UserContext(user_id="alice"))
    c.track(user_id="ignored-1", event_type="clicked")
    c.flush()
    c.track(user_id="ignored-2", event_type="clicked")
    c.shutdown()

    # 4. public key without get_user: anonymous
    c = segops.SegOpsClient(cfg["plain"], "pk_dev_public", batch=False, on_error=on_error)
    c.track(user_id="anon-sent", event_type="visited")
    c.shutdown()

    # 5. require_signed: a signed user id mints; an unsigned one is refused
    signed = segops.sign_user_id(cfg["hmac"], "bob")
    c = segops.SegOpsClient(cfg["signed"], "pk_dev_public", batch=False, on_error=on_error,
                            get_user=lambda: segops.UserContext(**signed))
    c.track(user_id="bob-sent", event_type="signed_event", payload={"ok": True})
    c.shutdown()
    n_before = len(errors)
    c = segops.SegOpsClient(cfg["signed"], "pk_dev_public", batch=False, on_error=on_error,
                            get_user=lambda: segops.UserContext(user_id="mallory"))
    c.track(user_id="mallory", event_type="should_not_land")
    c.shutdown()
    out["unsigned_errors"] = errors[n_before:]
    out["errors"] = errors[:n_before]
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="session")
def official_py() -> Path:
    """The python of the official-client venv (created on first use)."""
    try:
        return official_python()
    except OfficialClientUnavailable as exc:
        pytest.skip(f"official segops=={OFFICIAL_VERSION} not installable: {exc}")


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[DevServer, DevServer]]:
    """A plain server and a require_signed one."""
    plain = DevServer().start()
    signed = DevServer(hmac_secret=HMAC_HEX, require_signed=True).start()
    yield plain, signed
    for srv in (plain, signed):
        srv.stop()
        srv.close()


@pytest.fixture(scope="module")
def run_official(
    official_py: Path,
    servers: tuple[DevServer, DevServer],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """Run the scenario script once with the official client; its JSON report."""
    plain, signed = servers
    tmp_path = tmp_path_factory.mktemp("official")
    cfg = {"plain": plain.url, "signed": signed.url, "hmac": HMAC_HEX}
    script = tmp_path / "scenario.py"
    script.write_text(SCRIPT)
    proc = subprocess.run(
        [str(official_py), "-I", str(script), json.dumps(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(tmp_path),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return report


def test_it_is_really_the_official_client(run_official: dict[str, Any]) -> None:
    """The subprocess imported segops 0.2.2 from the throwaway venv, not this repo."""
    assert run_official["version"] == OFFICIAL_VERSION
    assert ".venv-official" in run_official["file"]
    assert run_official["errors"] == []


def test_official_secret_key_batches(
    run_official: dict[str, Any], servers: tuple[DevServer, DevServer]
) -> None:
    """sk_ with batching: one batch request, events stored exactly as sent."""
    plain, _ = servers
    batch = [e for e in plain.events() if e["endpoint"] == "batch" and e["auth"] == "apikey"]
    assert [(e["user_id"], e["event_type"]) for e in batch] == [
        ("u-1", "page_viewed"),
        ("u-2", "order_placed"),
        ("u-3", "signed_up"),
        ("u-1", "context_identified"),
    ]
    for ev in batch:
        assert set(ev["raw"]) == {"user_id", "event_type", "occurred_at", "payload"}
    assert batch[0]["payload"] == {"path": "/home"}
    assert batch[1]["occurred_at"] == "2026-01-02T03:04:05Z"
    assert batch[1]["payload"] == {"total": 89.95}
    assert batch[2]["payload"] == {}
    assert batch[3]["payload"] == {"plan": "starter"}
    assert batch[0]["occurred_at"].endswith("+00:00")
    reqs = [
        r
        for r in plain.requests
        if r.path == BATCH and "apikey" in r.headers.get("authorization", "").lower()
    ]
    assert len(reqs) == 1
    assert reqs[0].headers["content-type"] == "application/json"
    assert reqs[0].status == 200


def test_official_batch_false_uses_single_endpoint(
    run_official: dict[str, Any], servers: tuple[DevServer, DevServer]
) -> None:
    """batch=False posts each event to /api/ingestion/track/ and gets 202."""
    plain, _ = servers
    single = [r for r in plain.requests if r.path == SINGLE]
    assert [r.status for r in single] == [202, 202, 202]  # 2 sk_ + 1 anonymous pk_
    stored = [e for e in plain.events() if e["event_type"] == "single_sent"]
    assert [e["user_id"] for e in stored] == ["s-1", "s-2"]
    assert stored[1]["payload"] == {}


def test_official_public_key_user_id_replaced(
    run_official: dict[str, Any], servers: tuple[DevServer, DevServer]
) -> None:
    """pk_ + get_user: one session mint, token reused, stored user_id is the uid."""
    plain, _ = servers
    clicked = [e for e in plain.events() if e["event_type"] == "clicked"]
    assert [e["user_id"] for e in clicked] == ["alice", "alice"]
    assert [e["sent_user_id"] for e in clicked] == ["ignored-1", "ignored-2"]
    assert {e["auth"] for e in clicked} == {"bearer"}
    sessions = [r for r in plain.requests if r.path == SESSION]
    assert [r.json for r in sessions] == [{"user_id": "alice"}, {"anonymous_id": "anonymous"}]
    assert all(r.headers["authorization"] == "ApiKey pk_dev_public" for r in sessions)
    (visited,) = plain.events(user_id="anon:anonymous")
    assert visited["sent_user_id"] == "anon-sent"


def test_official_signed_user_id(
    run_official: dict[str, Any], servers: tuple[DevServer, DevServer]
) -> None:
    """require_signed: sign_user_id() output mints for "bob"; an unsigned user is refused."""
    _, signed = servers
    (bob,) = signed.events()
    assert (bob["user_id"], bob["sent_user_id"], bob["event_type"]) == (
        "bob",
        "bob-sent",
        "signed_event",
    )
    assert bob["payload"] == {"ok": True}
    assert len(run_official["unsigned_errors"]) == 1
    assert "403" in run_official["unsigned_errors"][0]
    assert signed.stats()["tokens_minted"] == 1
