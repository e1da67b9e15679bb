"""The command line: ``python -m segops._devserver`` / ``main()`` / ``add_arguments`` + ``run``."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any, Optional

import httpx
import pytest
from dshelp import BATCH, event
from segops import devserver
from segops._paths import redact
from segops.devserver import add_arguments, main, run

URL_RE = re.compile(r"segops dev-server listening on (http://127\.0\.0\.1:\d+)")


def spawn(*args: str, env: Optional[dict[str, str]] = None) -> subprocess.Popen[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SEGOPS_")}
    full_env.update(env or {})
    return subprocess.Popen(
        [sys.executable, "-m", "segops._devserver", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
    )


def first_line(proc: subprocess.Popen[str], timeout: float = 15.0) -> str:
    """The first stdout line, or fail if none arrives in time."""
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()))  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    if not box:
        proc.kill()
        pytest.fail(f"no output from the dev server; stderr={proc.communicate()[1]!r}")
    return box[0]


@pytest.fixture
def served() -> Iterator[Any]:
    """Start a subprocess server; yields a function(args, env) -> (proc, url)."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str, env: Optional[dict[str, str]] = None) -> tuple[Any, str]:
        proc = spawn(*args, env=env)
        procs.append(proc)
        line = first_line(proc)
        match = URL_RE.search(line)
        assert match, line
        return proc, match.group(1)

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_subprocess_serves_and_exits_0_on_signal(served: Any, sig: signal.Signals) -> None:
    """The CLI prints one line with the URL (secret redacted), serves, and exits 0 on a signal."""
    proc, url = served("--secret-key", "sk_live_supersecret_1234")
    auth = {"Authorization": "ApiKey sk_live_supersecret_1234"}
    resp = httpx.post(url + BATCH, json={"events": [event()]}, headers=auth)
    assert resp.json() == {"queued": 1, "skipped": 0}
    assert len(httpx.get(url + "/_dev/events").json()) == 1
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "sk_live_supersecret_1234" not in out + err
    assert err == ""


@pytest.mark.parametrize(
    ("key", "shown"),
    [("sk_a1b2c3d4", "sk_…"), ("sk_a1b2c3d4e5f6", "sk_…e5f6"), ("sk_dev_secret", "sk_dev_…cret")],
)
def test_banner_redacts_the_secret_key_as_the_client_does(key: str, shown: str) -> None:
    """The first line shows the secret key as segops' redact() would: a short key only as sk_…."""
    proc = spawn("--secret-key", key)
    try:
        line = first_line(proc)
    finally:
        proc.kill()
        proc.wait()
    assert shown == redact(key)
    assert f"(secret key {shown}," in line


def test_banner_and_verbose_log_show_no_key(served: Any) -> None:
    """The banner shows the public key redacted too, and --verbose logs a request's path
    without its query string (a key may ride in it)."""
    proc, url = served("--public-key", "pk_live_51HxYzAbCdEf0123456789", "--verbose")
    httpx.post(url + BATCH + "?api_key=sk_live_4eC39HqLyjWDarjtT1zdp7dc", json={"events": []})
    proc.terminate()
    out, err = proc.communicate(timeout=10)
    assert f"POST {BATCH}?… -> 401" in err
    for secret in ("4eC39HqLyjWDarjt", "51HxYzAbCdEf0123"):
        assert secret not in out + err


def test_recorded_request_repr_hides_the_credential() -> None:
    """repr() of a recorded request (pytest prints it in a failed assertion) shows the
    Authorization scheme only."""
    with devserver.DevServer() as srv:
        httpx.post(
            srv.url + BATCH,
            json={"events": [event()]},
            headers={"Authorization": "ApiKey sk_dev_secret"},
        )
        shown = repr(srv.requests[0])
    assert "'authorization': 'ApiKey …'" in shown and "sk_dev_secret" not in shown
    for value in ("sk_dev_secret", "ApiKey\tsk_dev_secret", "sk_dev secret"):
        record = devserver.RecordedRequest("POST", "/x", {"authorization": value}, b"", None, 401)
        assert "'authorization': '…'" in repr(record) and "secret" not in repr(record)


def test_subprocess_flags_apply(served: Any) -> None:
    """Flags reach the server: --fail-rate/--fail-status and --public-key."""
    proc, url = served("--fail-rate", "1", "--fail-status", "502", "--public-key", "pk_cli")
    auth = {"Authorization": "ApiKey sk_dev_secret"}
    assert httpx.post(url + BATCH, json={"events": []}, headers=auth).status_code == 502
    session = httpx.post(
        url + "/api/auth/session/",
        json={"anonymous_id": "a"},
        headers={"Authorization": "ApiKey pk_cli"},
    )
    assert session.status_code == 200
    proc.terminate()
    assert proc.wait(timeout=10) == 0


def test_subprocess_keys_from_env(served: Any) -> None:
    """SEGOPS_SECRET_KEY / SEGOPS_API_KEY provide the keys when flags are absent."""
    env = {"SEGOPS_SECRET_KEY": "sk_from_env_123", "SEGOPS_API_KEY": "pk_from_env_456"}
    proc, url = served(env=env)
    resp = httpx.post(
        url + BATCH, json={"events": []}, headers={"Authorization": "ApiKey sk_from_env_123"}
    )
    assert resp.status_code == 200
    session = httpx.post(
        url + "/api/auth/session/",
        json={"anonymous_id": "a"},
        headers={"Authorization": "ApiKey pk_from_env_456"},
    )
    assert session.status_code == 200
    proc.terminate()
    assert proc.wait(timeout=10) == 0


@pytest.mark.parametrize(
    "args",
    [
        ["--bogus"],
        ["--port", "notanumber"],
        ["--fail-rate", "2"],
        ["--rate-limit", "fast"],
        ["--hmac-secret", "nothex"],
        ["--secret-key", "pk_wrongprefix"],
        ["--expires-at-style", "nope"],
        ["--token-ttl", "nan"],
        ["--token-ttl", "inf"],
        ["--token-ttl", "0"],
        ["--latency-ms", "nan"],
    ],
)
def test_bad_flags_exit_2_one_line(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Bad flags or values exit 2 with a single-line message on stderr."""
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0]


def test_bad_flag_subprocess_exit_2() -> None:
    """Through the real entry point, a bad flag exits 2."""
    proc = spawn("--bogus")
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 2
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("status", ["200", "302", "399"])
def test_fail_status_must_be_a_failure_status(status: str) -> None:
    """--fail-status outside 400..599 exits 2 with one line naming the range (not serving)."""
    proc = spawn("--fail-status", status)
    try:
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 2
    assert err.splitlines() == [
        f"segops dev-server: error: fail_status must be a failure status 400..599, got {status}"
    ]


def test_port_in_use_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    """A port that cannot be bound is a one-line error and exit 1."""
    with devserver.DevServer() as busy:
        assert main(["--port", str(busy.port)]) == 1
    assert "cannot listen" in capsys.readouterr().err


def test_add_arguments_and_run_as_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI can mount the flags on its own parser and call run(ns) (here in a thread)."""
    parser = argparse.ArgumentParser(prog="segops")
    sub = parser.add_subparsers(dest="cmd")
    add_arguments(sub.add_parser("dev-server"))
    ns = parser.parse_args(["dev-server", "--port", "0", "--token-ttl", "30"])
    stop = threading.Event()
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(run(ns, stop_event=stop)))
    thread.start()
    try:
        for _ in range(200):
            match = URL_RE.search(capsys.readouterr().out)
            if match:
                break
            stop.wait(0.02)
        assert match
        resp = httpx.post(
            match.group(1) + "/api/auth/session/",
            json={"anonymous_id": "x"},
            headers={"Authorization": "ApiKey pk_dev_public"},
        )
        assert resp.status_code == 200
    finally:
        stop.set()
        thread.join(5)
    assert codes == [0]


def test_public_module_all() -> None:
    """segops.devserver exports a pinned __all__."""
    assert devserver.__all__ == [
        "DROP",
        "MAX_BATCH_EVENTS",
        "DevServer",
        "RecordedRequest",
        "add_arguments",
        "main",
        "run",
    ]
