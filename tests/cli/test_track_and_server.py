"""track from shell scripts, the mounted dev-server command, and the demo end to end."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest
from clihelp import REPO, SECRET, Runner, event, pending, seed, server_ids
from segops.devserver import DevServer


@pytest.fixture
def spool_file(tmp_path: Path) -> Path:
    """A spool path under tmp_path (not created)."""
    return tmp_path / "edge.sqlite3"


def test_track_one_event(cli: Runner, server: DevServer, spool_file: Path) -> None:
    """track with flags spools and delivers one event; exit 0."""
    result = cli(
        "track",
        "--user-id",
        "u-9",
        "--event-type",
        "door_opened",
        "--payload",
        '{"demo_id": "one", "floor": 3}',
        "--occurred-at",
        "2024-05-01T10:00:00Z",
        "--anonymous-id",
        "anon-1",
        "--spool",
        str(spool_file),
    )
    assert result.code == 0, result.err
    assert "delivered 1" in result.out
    (stored,) = server.events()
    assert stored["user_id"] == "u-9" and stored["event_type"] == "door_opened"
    assert stored["payload"] == {"demo_id": "one", "floor": 3}
    assert stored["occurred_at"] == "2024-05-01T10:00:00Z"
    assert stored["anonymous_id"] == "anon-1"


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_track_jsonl(
    cli: Runner, server: DevServer, spool_file: Path, tmp_path: Path, source: str
) -> None:
    """track --jsonl FILE|- spools every line in one go and delivers them."""
    ids = [f"j-{i}" for i in range(50)]
    text = "\n".join(json.dumps(event(i)) for i in ids) + "\n\n"  # a blank line is fine
    if source == "file":
        path = tmp_path / "events.jsonl"
        path.write_text(text)
        result = cli("track", "--jsonl", str(path), "--spool", str(spool_file), "--json")
    else:
        result = cli("track", "--jsonl", "-", "--spool", str(spool_file), "--json", stdin=text)
    assert result.code == 0, result.err
    summary = result.json()
    assert summary["tracked"] == 50 and summary["delivered"] == 50 and summary["left"] == 0
    assert sorted(server_ids(server)) == sorted(ids)


def test_track_json_on_empty_input_has_every_key(cli: Runner, spool_file: Path) -> None:
    """track --json with no events prints the same keys as with some (docs/cli.md)."""
    result = cli("track", "--jsonl", "-", "--spool", str(spool_file), "--json", stdin="\n")
    assert result.code == 0, result.err
    keys = {"spool", "tracked", "delivered", "dead_lettered", "skipped", "left", "error"}
    assert set(result.json()) == keys


@pytest.mark.parametrize(
    ("bad_line", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ('["a", "list"]', "expected a JSON object"),
        ('{"user_id": "u"}', "event_type"),
        ('{"user_id": "u", "event_type": "t", "occurred_at": "yesterday"}', "occurred_at"),
        ('{"user_id": "u", "event_type": "t", "colour": "red"}', "colour"),
        ('{"user_id": "u", "event_type": "t", "payload": [1]}', "payload"),
    ],
)
def test_track_jsonl_bad_line_spools_nothing(
    cli: Runner, server: DevServer, spool_file: Path, bad_line: str, fragment: str
) -> None:
    """A bad line: exit 2, one line naming the line number, nothing spooled or sent."""
    lines = [json.dumps(event("a")), json.dumps(event("b")), bad_line, json.dumps(event("c"))]
    result = cli("track", "--jsonl", "-", "--spool", str(spool_file), stdin="\n".join(lines))
    assert result.code == 2
    assert "Traceback" not in result.err
    assert len(result.err_lines) == 1
    assert "line 3" in result.err and fragment in result.err
    assert not spool_file.exists()
    assert server.events() == []


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--user-id", "u"], "--event-type"),
        (["--user-id", "u", "--event-type", "t", "--payload", "{oops"], "not valid JSON"),
        (["--user-id", "u", "--event-type", "t", "--payload", "[1]"], "JSON object"),
        (["--user-id", "u", "--event-type", "t", "--payload", "[" * 100_000], "not valid JSON"),
        (["--user-id", "u", "--event-type", "t", "--occurred-at", "noon"], "occurred_at"),
        (["--jsonl", "-", "--user-id", "u"], "cannot be combined"),
        (["--jsonl", "/nonexistent/events.jsonl"], "cannot read"),
    ],
)
def test_track_bad_input(cli: Runner, spool_file: Path, args: List[str], fragment: str) -> None:
    """Invalid track flags: exit 2 with one line, and no spool file appears."""
    result = cli("track", *args, "--spool", str(spool_file), stdin="")
    assert result.code == 2
    assert len(result.err_lines) == 1 and fragment in result.err
    assert not spool_file.exists()


def test_track_server_down_keeps_events(cli: Runner, server: DevServer, spool_file: Path) -> None:
    """Server down: track still exits 0 (events are durable), says why; replay sends later."""
    server.stop()
    text = "\n".join(json.dumps(event(f"d-{i}")) for i in range(3))
    result = cli("track", "--jsonl", "-", "--spool", str(spool_file), "--timeout", "1", stdin=text)
    assert result.code == 0
    assert "3 waiting" in result.out
    assert "stay spooled" in result.err and "unreachable" in result.err
    assert pending(spool_file) == 3
    server.start()
    replay = cli("replay", "--spool", str(spool_file))
    assert replay.code == 0, replay.err
    assert sorted(server_ids(server)) == ["d-0", "d-1", "d-2"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("command", ["track", "replay"])
def test_an_unreachable_url_holding_the_key_is_reported_redacted(
    bare_cli: Runner, spool_file: Path, command: str
) -> None:
    """The failure summary names the server by its URL as repr(client) shows it: a key in
    the URL's path comes out redacted."""
    key = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"
    url = f"http://127.0.0.1:{free_port()}/ingest/{key}"
    args = ["--api-url", url, "--api-key", key, "--spool", str(spool_file), "--timeout", "1"]
    if command == "track":
        args += ["--user-id", "u", "--event-type", "e"]
    else:
        seed(spool_file, 1)
    result = bare_cli(command, *args)
    assert "unreachable at http://127.0.0.1:" in result.err
    assert "4eC39HqLyjWDarjt" not in result.err + result.out


def test_track_reports_an_event_the_server_refused(
    cli: Runner, server: DevServer, spool_file: Path
) -> None:
    """A 400 dead-letters the event: track says so with the reason, in --json too, exit 1."""
    server.reject_when = lambda item: "event_type 'signup' is reserved"
    args = ("--user-id", "u", "--event-type", "signup", "--spool", str(spool_file), "--json")
    result = cli("track", *args)
    assert result.code == 1
    report = result.json()
    assert (report["delivered"], report["dead_lettered"], report["left"]) == (0, 1, 0)
    assert "'signup' is reserved" in report["error"] and "dead letters" in report["error"]
    assert result.err_lines == [f"segops track: error: {report['error']}"]


def test_track_timeout_0_spools_without_any_network(
    cli: Runner, server: DevServer, spool_file: Path
) -> None:
    """--timeout 0 means spool only: no request at all, no error, exit 0."""
    result = cli(
        "track",
        "--user-id",
        "u",
        "--event-type",
        "t",
        "--spool",
        str(spool_file),
        "--timeout",
        "0",
        "--json",
    )
    assert result.code == 0, result.err
    report = result.json()
    assert report["tracked"] == 1 and report["left"] == 1 and report["error"] is None
    assert result.err == "" and not server.requests


def test_track_and_replay_take_a_timeout_beyond_timeout_max(
    cli: Runner, server: DevServer, spool_file: Path
) -> None:
    """--timeout 1e10 (past threading.TIMEOUT_MAX) delivers instead of overflowing."""
    args = ("--spool", str(spool_file), "--timeout", "1e10")
    tracked = cli("track", "--user-id", "u", "--event-type", "t", *args)
    assert tracked.code == 0 and "delivered 1" in tracked.out, tracked.err
    assert tracked.err == ""
    seed(spool_file, 2)
    replayed = cli("replay", *args, "--json")
    assert replayed.code == 0, replayed.err
    assert replayed.json()["delivered"] == 2 and len(server.events()) == 3


def test_track_default_spool_then_status(cli: Runner, server: DevServer, spool_dir: Path) -> None:
    """Without --spool, track and status agree on the library's default spool."""
    server.stop()
    result = cli("track", "--user-id", "u", "--event-type", "t", "--timeout", "0")
    assert result.code == 0
    status = cli("status", "--json")
    assert status.code == 0, status.err
    report = status.json()
    assert report["pending"] == 1
    assert Path(report["spool"]).parent == spool_dir


def test_dev_server_command(base_env: Dict[str, str], tmp_path: Path) -> None:
    """`segops dev-server` serves the API; track reaches it; SIGTERM stops it with exit 0."""
    db = tmp_path / "dev.sqlite3"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "segops",
            "dev-server",
            "--port",
            "0",
            "--db",
            str(db),
            "--secret-key",
            SECRET,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=base_env,
        cwd=str(REPO),
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        match = re.search(r"listening on (http://\S+)", first)
        assert match, first
        url = match.group(1)
        env = {**base_env, "SEGOPS_API_URL": url, "SEGOPS_API_KEY": SECRET}
        track = subprocess.run(
            [
                sys.executable,
                "-m",
                "segops",
                "track",
                "--user-id",
                "u",
                "--event-type",
                "t",
                "--spool",
                str(tmp_path / "s.sqlite3"),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            cwd=str(REPO),
        )
        assert track.returncode == 0, track.stderr
        assert "delivered 1" in track.stdout
        assert SECRET not in first
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
    assert code == 0
    with DevServer(db_path=db, secret_key=SECRET) as again:
        assert len(again.events()) == 1


@pytest.mark.demo
def test_demo_end_to_end(bare_cli: Runner) -> None:
    """`segops demo` finishes with lost 0, exit 0, and removes its temp directory."""
    result = bare_cli("demo", "--threads", "2", "--events", "200", timeout=60)
    assert result.code == 0, result.out + result.err
    assert re.search(r"^\s+lost\s+0\s", result.out, re.M), result.out
    assert re.search(r"^\s+stored twice\s+0\s", result.out, re.M)
    assert "OK: every acknowledged event arrived exactly once." in result.out
    tmp = re.search(r"spool (\S+)/spool\.sqlite3", result.out)
    assert tmp and not Path(tmp.group(1)).exists()
    assert "Traceback" not in result.err


_READ_SYSCALL = {"x86_64": 0, "aarch64": 63}


def _blocked_reading_stdin(pid: int) -> bool:
    """True while ``pid`` waits in read(0, ...) (Linux: /proc/PID/syscall)."""
    import platform

    try:
        fields = Path(f"/proc/{pid}/syscall").read_text().split()
    except OSError:
        return False
    number = _READ_SYSCALL.get(platform.machine())
    return len(fields) > 1 and fields[0] == str(number) and int(fields[1], 16) == 0


@pytest.mark.skipif(
    not Path("/proc/self/syscall").exists()
    or __import__("platform").machine() not in _READ_SYSCALL,
    reason="needs Linux's /proc/PID/syscall on x86_64 or aarch64",
)
def test_ctrl_c_while_reading_input_says_nothing_was_spooled(
    env: Dict[str, str], spool_file: Path
) -> None:
    """Ctrl-C while track still reads its --jsonl input: exit 130, and the message says that
    nothing was spooled (not that the events are safe on disk)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "segops", "track", "--jsonl", "-", "--spool", str(spool_file)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(event("ctrl-c")) + "\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 30
        while not _blocked_reading_stdin(proc.pid):
            assert time.monotonic() < deadline, "track never waited for more input"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert err.strip() == "segops track: error: interrupted before anything was spooled"
    assert not spool_file.exists() or pending(spool_file) == 0
