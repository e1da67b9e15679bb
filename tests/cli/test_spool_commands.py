"""replay, status and dead-letters against a real dev server and real spool files."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest
import segops
from clihelp import SECRET, Runner, event, pending, seed, server_ids
from segops.devserver import DevServer

import spool


@pytest.fixture
def spool_file(tmp_path: Path) -> Path:
    """A spool path under tmp_path (not created)."""
    return tmp_path / "rescue.sqlite3"


def test_replay_drains_a_spool(cli: Runner, server: DevServer, spool_file: Path) -> None:
    """replay delivers every spooled event once, reports it in JSON, exits 0."""
    ids = seed(spool_file, 1200)
    result = cli("replay", "--spool", str(spool_file), "--json")
    assert result.code == 0, result.err
    summary = result.json()
    assert summary["delivered"] == 1200
    assert summary["left"] == 0 and summary["ok"] is True
    assert sorted(server_ids(server)) == sorted(ids)
    assert pending(spool_file) == 0


def test_replay_plain_summary(cli: Runner, server: DevServer, spool_file: Path) -> None:
    """Without --json (and not on a TTY) replay prints one plain summary line."""
    seed(spool_file, 3)
    result = cli("replay", "--spool", str(spool_file))
    assert result.code == 0, result.err
    assert result.out.strip().splitlines() == [
        line for line in result.out.strip().splitlines() if line.startswith("segops replay:")
    ]
    assert "delivered 3 event(s)" in result.out and "0 left" in result.out


def test_replay_uses_the_default_spool(cli: Runner, server: DevServer, spool_dir: Path) -> None:
    """Without --spool, replay drains the spool the library uses for that url/key."""
    path = spool_dir / segops._paths.spool_name(server.url, SECRET)
    ids = seed(path, 5)
    result = cli("replay")
    assert result.code == 0, result.err
    assert sorted(server_ids(server)) == sorted(ids)


@pytest.mark.parametrize("ending", ["", "/", "//", "///"])
def test_the_cli_finds_the_library_spool_whatever_the_url_ends_with(
    bare_cli: Runner,
    base_env: Dict[str, str],
    spool_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    ending: str,
) -> None:
    """The CLI and the library pick the same default spool, even for a URL ending in //."""
    url = "http://127.0.0.1:9" + ending  # nothing listens: the event stays spooled
    monkeypatch.setenv("SEGOPS_SPOOL_DIR", str(spool_dir))
    client = segops.SegOpsClient(url, SECRET, background=False)
    client.track(user_id="u", event_type="e")
    with contextlib.suppress(segops.SegOpsError):
        client.shutdown(timeout=0)
    env = {**base_env, "SEGOPS_API_URL": url, "SEGOPS_API_KEY": SECRET}
    result = bare_cli("status", "--json", env=env)
    assert result.code == 0, result.err
    assert result.json()["spool"] == str(client.spool_path) and result.json()["pending"] == 1


def test_spool_names_of_plain_urls_do_not_change() -> None:
    """Existing spools keep their names: pinned for a URL with and without its slash."""
    for url in ("http://127.0.0.1:8765", "http://127.0.0.1:8765/"):
        name = segops._paths.spool_name(url, "sk_dev_secret")
        assert name == "spool-1be3094b29079fe9a454161e.sqlite3"


def test_replay_with_server_down(cli: Runner, server: DevServer, spool_file: Path) -> None:
    """Server unreachable: exit 1, the reason on stderr, every event still spooled."""
    seed(spool_file, 40)
    server.stop()
    result = cli("replay", "--spool", str(spool_file))
    assert result.code == 1
    assert "Traceback" not in result.err
    assert len(result.err_lines) == 1
    assert "40 event(s) left" in result.err and "unreachable" in result.err
    assert pending(spool_file) == 40


def test_replay_with_rejected_key(
    cli: Runner, server: DevServer, spool_file: Path, env: Dict[str, str]
) -> None:
    """A wrong key: exit 1, says the key was refused (redacted), events kept."""
    seed(spool_file, 4)
    wrong = "sk_wrong_key_abcdef123456"
    result = cli("replay", "--spool", str(spool_file), env={**env, "SEGOPS_API_KEY": wrong})
    assert result.code == 1
    assert "refused the API key" in result.err and "HTTP 401" in result.err
    assert wrong not in result.err + result.out
    assert pending(spool_file) == 4


def spool_unstorable_event(path: Path) -> None:
    """Append an event the server answers 2xx for but skips (an unparseable occurred_at)."""
    with spool.Spool(path) as store:
        store.append(json.dumps({**event("skip-me"), "occurred_at": "yesterday"}).encode())


def test_replay_reports_events_the_server_skipped(
    cli: Runner, server: DevServer, spool_file: Path
) -> None:
    """A 2xx with skipped > 0: replay counts those events as skipped, not delivered (exit 0)."""
    seed(spool_file, 2)
    spool_unstorable_event(spool_file)
    result = cli("replay", "--spool", str(spool_file), "--json")
    assert result.code == 0, result.err
    summary = result.json()
    assert (summary["delivered"], summary["skipped"], summary["left"]) == (2, 1, 0)
    spool_unstorable_event(spool_file)
    text = cli("replay", "--spool", str(spool_file))
    assert text.code == 0, text.err
    assert "delivered 0 event(s)" in text.out and "1 skipped by the server" in text.out
    assert server.stats()["skipped"] == 2


def test_replay_of_missing_spool_creates_nothing(cli: Runner, spool_file: Path) -> None:
    """replay/status on a path with no spool exit 2 and do not create a file."""
    for args in (["replay"], ["status"], ["dead-letters", "list"]):
        result = cli(*args, "--spool", str(spool_file))
        assert result.code == 2
        assert "no spool at" in result.err
    assert not spool_file.exists()


@pytest.mark.parametrize("command", [["replay"], ["status"], ["dead-letters", "list"]])
def test_reading_commands_refuse_a_foreign_database_untouched(
    cli: Runner, tmp_path: Path, command: List[str]
) -> None:
    """Another application's SQLite file is refused (exit 1) and stays byte for byte intact."""
    app_db = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(app_db)) as db:
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        db.execute("INSERT INTO users (name) VALUES ('ada')")
        db.commit()
    os.chmod(app_db, 0o644)
    before = app_db.read_bytes()
    result = cli(*command, "--spool", str(app_db))
    assert result.code == 1 and "not a spool" in result.err, result.err
    assert app_db.read_bytes() == before
    assert stat.S_IMODE(app_db.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]


def test_reading_commands_refuse_an_empty_file(cli: Runner, spool_file: Path) -> None:
    """A zero-byte file is not a spool: exit 2, and it stays empty."""
    spool_file.touch()
    for args in (["replay"], ["status"], ["dead-letters", "list"]):
        result = cli(*args, "--spool", str(spool_file))
        assert result.code == 2 and "empty file" in result.err, result.err
    assert spool_file.stat().st_size == 0


def test_reading_commands_report_a_corrupt_spool_and_leave_it(
    cli: Runner, spool_file: Path
) -> None:
    """A damaged spool is exit 1 'corrupt', not moved aside and replaced by an empty one."""
    seed(spool_file, 3)
    raw = bytearray(spool_file.read_bytes())
    raw[16:18] = b"\x00\x03"  # an impossible page size
    spool_file.write_bytes(bytes(raw))
    for args in (["replay"], ["status"], ["dead-letters", "list"]):
        result = cli(*args, "--spool", str(spool_file))
        assert result.code == 1 and "corrupt" in result.err, result.err
    assert spool_file.read_bytes() == bytes(raw)
    assert not list(spool_file.parent.glob("*.corrupt-*"))


def test_replay_timeout_names_a_live_lease(
    cli: Runner, server: DevServer, spool_file: Path
) -> None:
    """replay --timeout while another process holds the batch says so, not "server"."""
    seed(spool_file, 5)
    holder = spool.Spool(spool_file)
    try:
        assert holder.claim(500, lease=60.0) is not None
        result = cli("replay", "--spool", str(spool_file), "--timeout", "1")
    finally:
        holder.close()
    assert result.code == 1
    assert "leased by another process" in result.err, result.err
    assert not [r for r in server.requests if r.path.startswith("/api/")]  # nothing sent


def test_replay_timeout_names_its_own_unanswered_request(
    cli: Runner, server: DevServer, spool_file: Path
) -> None:
    """replay --timeout waiting on its own slow request says so, not "another process"."""
    seed(spool_file, 5)
    server.latency_ms = 3000.0
    result = cli("replay", "--spool", str(spool_file), "--timeout", "1")
    assert result.code == 1
    assert "had not answered this command's own request" in result.err, result.err
    assert "another process" not in result.err


@pytest.fixture
def mute_url() -> Iterator[str]:
    """The URL of a socket that takes connections (the kernel's backlog) but never answers."""
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(16)
        yield f"http://127.0.0.1:{hole.getsockname()[1]}"


def test_replay_timeout_keeps_its_documented_bound(
    cli: Runner, spool_file: Path, env: Dict[str, str], mute_url: str
) -> None:
    """Against a mute server, replay --timeout T ends (diagnosis included) by T + 0.5 s."""
    seed(spool_file, 1)
    mute_env = {**env, "SEGOPS_API_URL": mute_url}
    result = cli("replay", "--spool", str(spool_file), "--timeout", "1", "--json", env=mute_env)
    assert result.code == 1
    summary = result.json()
    assert summary["seconds"] <= 1.5, summary
    assert "unreachable" in summary["error"] and summary["left"] == 1


def test_track_timeout_keeps_its_bound(
    spool_file: Path, mute_url: str, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """Against a mute server, track --timeout T ends (diagnosis included) by T + 0.5 s."""
    from segops._cli import main

    monkeypatch.setenv("SEGOPS_API_URL", mute_url)
    monkeypatch.setenv("SEGOPS_API_KEY", SECRET)
    args = ["track", "--spool", str(spool_file), "--user-id", "u", "--event-type", "e"]
    started = time.monotonic()
    code = main([*args, "--timeout", "1"])
    elapsed = time.monotonic() - started
    assert code == 0 and elapsed <= 1.5, elapsed  # probing after the timeout took 1.9 s
    assert "unreachable" in capsys.readouterr().err


def test_replay_races_a_live_client(cli: Runner, server: DevServer, spool_file: Path) -> None:
    """replay while a live client tracks and flushes on the same spool: each event stored once."""
    old = seed(spool_file, 3000, prefix="old")
    client = segops.SegOpsClient(server.url, SECRET, spool_path=spool_file, flush_interval=0.05)
    live = [f"live-{i}" for i in range(1500)]
    server.latency_ms = 5.0  # keep both senders busy at the same time

    def track() -> None:
        for demo_id in live:
            client.track(event(demo_id))

    tracker = threading.Thread(target=track)
    tracker.start()
    result = cli("replay", "--spool", str(spool_file), "--json")
    tracker.join()
    client.flush(timeout=30)
    client.shutdown()
    assert result.code == 0, result.err
    counts = Counter(server_ids(server))
    assert set(counts) == set(old) | set(live)
    assert max(counts.values()) == 1
    assert pending(spool_file) == 0


def test_status_json_and_text(cli: Runner, spool_file: Path) -> None:
    """status reports pending, dead letters, oldest age and size, as text and JSON."""
    seed(spool_file, 7)
    data = cli("status", "--spool", str(spool_file), "--json")
    assert data.code == 0
    report = data.json()
    assert report["pending"] == 7 and report["leased"] == 0 and report["dead_letters"] == 0
    assert report["oldest_age_seconds"] >= 0 and report["file_bytes"] > 0
    text = cli("status", "--spool", str(spool_file))
    assert text.code == 0
    assert "pending       7" in text.out and "oldest event" in text.out


def test_status_all_lists_every_spool(cli: Runner, spool_dir: Path) -> None:
    """status --all lists each *.sqlite3 spool in SEGOPS_SPOOL_DIR."""
    seed(spool_dir / "a.sqlite3", 2)
    seed(spool_dir / "b.sqlite3", 3)
    result = cli("status", "--all", "--json")
    assert result.code == 0
    rows = {Path(r["spool"]).name: r["pending"] for r in result.json()["spools"]}
    assert rows == {"a.sqlite3": 2, "b.sqlite3": 3}
    table = cli("status", "--all")
    assert "a.sqlite3" in table.out and "PENDING" in table.out


@pytest.fixture
def mixed_spool_dir(spool_dir: Path) -> Dict[str, bytes]:
    """SEGOPS_SPOOL_DIR with two healthy spools, a garbage and an empty *.sqlite3 file;
    returns the bad files' bytes, to check they stay as they are."""
    seed(spool_dir / "a.sqlite3", 2)
    seed(spool_dir / "d.sqlite3", 3)
    (spool_dir / "b-garbage.sqlite3").write_bytes(bytes(range(256)) * 20)
    (spool_dir / "c-empty.sqlite3").touch()
    return {
        name: (spool_dir / name).read_bytes() for name in ("b-garbage.sqlite3", "c-empty.sqlite3")
    }


def test_status_all_json_reports_unreadable_files(
    cli: Runner, spool_dir: Path, mixed_spool_dir: Dict[str, bytes]
) -> None:
    """status --all --json: a row per file, "error" on the bad ones, exit 1, files untouched."""
    names = sorted(p.name for p in spool_dir.iterdir())
    result = cli("status", "--all", "--json")
    assert result.code == 1, result.err
    assert "Traceback" not in result.err and "--spool" not in result.err
    assert result.err_lines == [
        f'segops status: error: 2 of 4 file(s) in {spool_dir} could not be read (see "error")'
    ]
    rows = {Path(r["spool"]).name: r for r in result.json()["spools"]}
    assert sorted(rows) == ["a.sqlite3", "b-garbage.sqlite3", "c-empty.sqlite3", "d.sqlite3"]
    for name, count in (("a.sqlite3", 2), ("d.sqlite3", 3)):
        row = rows[name]
        assert set(row) == {
            "spool",
            "pending",
            "leased",
            "dead_letters",
            "oldest_age_seconds",
            "file_bytes",
            "error",
        }
        assert row["pending"] == count and row["file_bytes"] > 0 and row["error"] is None
    assert "corrupt" in rows["b-garbage.sqlite3"]["error"]
    assert rows["c-empty.sqlite3"]["error"].endswith("is an empty file, not a spool")
    for name in ("b-garbage.sqlite3", "c-empty.sqlite3"):
        assert set(rows[name]) == set(rows["a.sqlite3"])
        assert rows[name]["pending"] is None and rows[name]["file_bytes"] is None
        assert (spool_dir / name).read_bytes() == mixed_spool_dir[name]
    assert sorted(p.name for p in spool_dir.iterdir()) == names


def test_status_all_table_reports_unreadable_files(
    cli: Runner, spool_dir: Path, mixed_spool_dir: Dict[str, bytes]
) -> None:
    """status --all: every healthy spool listed, an ERROR column for the bad files, exit 1."""
    result = cli("status", "--all")
    assert result.code == 1, result.err
    assert result.err_lines == [
        f"segops status: error: 2 of 4 file(s) in {spool_dir} could not be read (see ERROR)"
    ]
    header, *lines = result.out.splitlines()
    assert header.split() == ["PENDING", "LEASED", "DEAD", "OLDEST", "SIZE", "SPOOL", "ERROR"]
    at_spool, at_error = header.index("SPOOL"), header.index("ERROR")
    cells = {
        Path(line[at_spool:at_error].strip()).name: (line[:at_spool].split(), line[at_error:])
        for line in lines
    }
    assert sorted(cells) == ["a.sqlite3", "b-garbage.sqlite3", "c-empty.sqlite3", "d.sqlite3"]
    assert cells["a.sqlite3"][0][0] == "2" and cells["d.sqlite3"][0][0] == "3"
    assert cells["a.sqlite3"][1] == "" and cells["d.sqlite3"][1] == ""
    assert cells["b-garbage.sqlite3"][0] == ["-"] * 5
    assert "corrupt" in cells["b-garbage.sqlite3"][1]
    assert cells["c-empty.sqlite3"][1].endswith("is an empty file, not a spool")
    assert "--spool" not in result.out + result.err
    for name, before in mixed_spool_dir.items():
        assert (spool_dir / name).read_bytes() == before


def test_status_all_healthy_spools_have_no_error_column(cli: Runner, spool_dir: Path) -> None:
    """status --all with only readable spools: no ERROR column, "error": null, exit 0."""
    seed(spool_dir / "a.sqlite3", 1)
    table = cli("status", "--all")
    assert table.code == 0 and table.err == ""
    assert table.out.splitlines()[0].split() == [
        "PENDING",
        "LEASED",
        "DEAD",
        "OLDEST",
        "SIZE",
        "SPOOL",
    ]
    result = cli("status", "--all", "--json")
    assert result.code == 0
    assert [r["error"] for r in result.json()["spools"]] == [None]


def test_status_all_with_no_spools(cli: Runner, spool_dir: Path) -> None:
    """status --all on an empty/missing spool dir says so and exits 0."""
    result = cli("status", "--all")
    assert result.code == 0
    assert "no spools in" in result.out
    assert not spool_dir.exists()


@pytest.fixture
def as_ordinary_user() -> List[str]:
    """A command prefix under which permission bits apply (root ignores them otherwise)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root, and no setpriv to drop the capabilities")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]


@pytest.mark.parametrize("mode", [0o000, 0o300], ids=["mode-000", "mode-300"])
def test_status_all_fails_on_a_spool_dir_it_cannot_list(
    base_env: Dict[str, str], spool_dir: Path, as_ordinary_user: List[str], mode: int
) -> None:
    """status --all on an unlistable spool dir: one-line error, exit 1 (not "no spools")."""
    seed(spool_dir / "a.sqlite3", 1)
    spool_dir.chmod(mode)
    try:
        command = [*as_ordinary_user, sys.executable, "-m", "segops", "status", "--all"]
        proc = subprocess.run(command, env=base_env, capture_output=True, text=True, timeout=60)
    finally:
        spool_dir.chmod(0o700)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == (
        f"segops status: error: cannot list the spool directory {spool_dir}: Permission denied\n"
    )


def test_status_all_fails_when_the_spool_dir_is_a_file(cli: Runner, spool_dir: Path) -> None:
    """SEGOPS_SPOOL_DIR naming a file is a configuration error (exit 2), not "no spools"."""
    spool_dir.parent.mkdir(parents=True, exist_ok=True)
    spool_dir.write_bytes(b"")
    result = cli("status", "--all")
    assert result.code == 2 and result.out == ""
    assert result.err_lines == [
        f"segops status: error: the spool directory {spool_dir} is not a directory "
        "(check SEGOPS_SPOOL_DIR)"
    ]


def poison(item: Dict[str, Any]) -> Optional[str]:
    """reject_when hook: refuse events whose payload says poison."""
    return "poison event refused" if item.get("payload", {}).get("poison") else None


@pytest.fixture
def with_dead_letter(cli: Runner, server: DevServer, spool_file: Path) -> Path:
    """A spool whose one poison event the server refused: 4 delivered, 1 dead letter."""
    server.reject_when = poison
    lines = [event(f"ok-{i}") for i in range(4)]
    lines.insert(2, event("bad", poison=True))
    stdin = "\n".join(json.dumps(x) for x in lines) + "\n"
    result = cli("track", "--jsonl", "-", "--spool", str(spool_file), stdin=stdin)
    assert result.code == 1 and "refused 1 event(s)" in result.err, result.err
    assert sorted(server_ids(server)) == [f"ok-{i}" for i in range(4)]
    return spool_file


def test_dead_letters_list(cli: Runner, with_dead_letter: Path) -> None:
    """dead-letters list shows id, the server's reason, when, and the event."""
    result = cli("dead-letters", "list", "--spool", str(with_dead_letter), "--json")
    assert result.code == 0
    (letter,) = result.json()
    assert "poison event refused" in letter["reason"] and "400" in letter["reason"]
    assert letter["event"]["payload"]["demo_id"] == "bad"
    assert letter["failed_at"].endswith("Z")
    text = cli("dead-letters", "list", "--spool", str(with_dead_letter))
    assert text.code == 0 and "poison event refused" in text.out and '"bad"' in text.out
    status = cli("status", "--spool", str(with_dead_letter), "--json").json()
    assert status["dead_letters"] == 1 and status["pending"] == 0


def test_dead_letters_retry(cli: Runner, server: DevServer, with_dead_letter: Path) -> None:
    """retry while the server still refuses: exit 1; after the fix: delivered, exit 0."""
    again = cli("dead-letters", "retry", "--spool", str(with_dead_letter))
    assert again.code == 1
    assert "rejected again" in again.err
    server.reject_when = None
    fixed = cli("dead-letters", "retry", "--spool", str(with_dead_letter), "--json")
    assert fixed.code == 0, fixed.err
    assert fixed.json()["delivered"] == 1
    assert sorted(server_ids(server)) == sorted(["bad"] + [f"ok-{i}" for i in range(4)])
    empty = cli("dead-letters", "list", "--spool", str(with_dead_letter), "--json")
    assert empty.json() == []


def test_dead_letters_retry_fails_when_the_server_skips_them(
    cli: Runner, server: DevServer, with_dead_letter: Path
) -> None:
    """retry whose events the server skips (2xx, not stored) exits 1, as when rejected again."""
    server.reject_when = None
    server.script([(200, {"queued": 0, "skipped": 1})])
    result = cli("dead-letters", "retry", "--spool", str(with_dead_letter), "--json")
    assert result.code == 1
    assert result.json()["skipped"] == 1 and result.json()["delivered"] == 0
    assert result.err_lines == [
        "segops dead-letters retry: error: the server skipped 1 event(s) as invalid: "
        "they were not stored"
    ]


TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1LTEifQ.c2lnbmF0dXJl"  # JWT-shaped
HTML_400 = f"<html>\n<body>\nBad\tRequest: Bearer {TOKEN}\n</body>\n</html>"


def test_dead_letter_reasons_are_stored_without_credentials(
    cli: Runner, server: DevServer, spool_file: Path
) -> None:
    """A 400/422 body that echoes the API key or a session token is stored redacted."""
    seed(spool_file, 2)
    echo = (422, {"detail": f"Authorization was ApiKey {SECRET}"})
    server.script([echo, echo, (400, HTML_400)])  # the batch, then each event alone
    assert cli("replay", "--spool", str(spool_file)).code == 0
    with spool.Spool(spool_file) as store:
        reasons = [d.reason for d in store.dead_letters()]
    assert reasons == [
        "HTTP 422: Authorization was ApiKey sk_…6789",
        "HTTP 400: <html> <body> Bad Request: Bearer eyJ…dXJl </body> </html>",  # one line
    ]


def test_dead_letters_list_redacts_and_keeps_one_line_per_letter(
    cli: Runner, spool_file: Path
) -> None:
    """Stored reasons: list hides keys and tokens (--json too); a multi-line one keeps its row."""
    seed(spool_file, 0)
    with spool.Spool(spool_file) as store:
        store.append_many([json.dumps(event("a")).encode(), json.dumps(event("b")).encode()])
        batch = store.claim(2)
        assert batch is not None
        store.dead_letter(batch.records[:1], f"HTTP 422: key {SECRET} refused")
        store.dead_letter(batch.records[1:], f"HTTP 400: {HTML_400}")
        store.ack(batch)
    listed = cli("dead-letters", "list", "--spool", str(spool_file), "--json")
    assert listed.code == 0 and SECRET not in listed.out and TOKEN not in listed.out
    assert "sk_…6789" in listed.json()[0]["reason"]
    table = cli("dead-letters", "list", "--spool", str(spool_file))
    assert table.code == 0 and SECRET not in table.out and TOKEN not in table.out
    rows = table.out.splitlines()
    assert len(rows) == 3 and "Bad Request: Bearer" in rows[2], table.out


@pytest.mark.parametrize("select", [[], ["--id", "3"]])
def test_dead_letters_purge(cli: Runner, with_dead_letter: Path, select: list) -> None:
    """purge refuses without --yes (exit 2, nothing deleted), then deletes with it."""
    refused = cli("dead-letters", "purge", "--spool", str(with_dead_letter), *select)
    assert refused.code == 2 and "--yes" in refused.err and len(refused.err_lines) == 1
    listed = cli("dead-letters", "list", "--spool", str(with_dead_letter), "--json").json()
    assert len(listed) == 1
    ids = ["--id", str(listed[0]["id"])] if select else []
    done = cli("dead-letters", "purge", "--spool", str(with_dead_letter), *ids, "--yes", "--json")
    assert done.code == 0
    assert done.json()["purged"] == 1
    assert cli("dead-letters", "list", "--spool", str(with_dead_letter), "--json").json() == []


@pytest.mark.parametrize("action", [["retry"], ["purge", "--yes"]])
def test_dead_letters_with_an_unknown_id_change_nothing(
    cli: Runner, server: DevServer, with_dead_letter: Path, action: List[str]
) -> None:
    """retry or purge --id naming no dead letter (a typo): exit 2 naming the id, and
    nothing requeued, deleted or sent, also for the ids given with it that do exist."""
    listed = cli("dead-letters", "list", "--spool", str(with_dead_letter), "--json").json()
    real = str(listed[0]["id"])
    sent = len(server.requests)
    result = cli(
        "dead-letters", *action, "--spool", str(with_dead_letter), "--id", real, "--id", "999"
    )
    assert result.code == 2, (result.out, result.err)
    assert len(result.err_lines) == 1 and "no dead letter with id 999 in " in result.err
    after = cli("dead-letters", "list", "--spool", str(with_dead_letter), "--json").json()
    assert after == listed
    assert len(server.requests) == sent


@pytest.mark.parametrize(
    "action", [["retry"], ["retry", "--id", "{id}"], ["purge", "--yes"], ["purge", "--id", "{id}"]]
)
def test_dead_letters_retry_and_purge_do_not_load_every_letter(
    with_dead_letter: Path,
    env: Dict[str, str],
    action: List[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Checking the ids (or counting for purge's prompt) reads ids only: loading every dead
    letter with its data took as much memory as the table holds (1 GB of letters, 1 GB of
    RSS for a plain ``retry``, which needs no check at all)."""
    with spool.Spool(with_dead_letter) as sp:
        [letter] = sp.dead_letters()
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    def refused(self: spool.Spool, limit: Optional[int] = None) -> list:
        raise AssertionError("dead_letters() loads every letter's data")

    monkeypatch.setattr(spool.Spool, "dead_letters", refused)
    args = [a.format(id=letter.id) for a in action]
    from segops._cli import main

    code = main(["dead-letters", *args, "--spool", str(with_dead_letter)])
    out, err = capsys.readouterr()
    expected = 2 if args == ["purge", "--id", str(letter.id)] else (1 if "retry" in args else 0)
    assert code == expected, (out, err)  # retry: the server refuses the poison event again
    assert "AssertionError" not in err and "loads every" not in err


def test_replay_with_public_key(
    cli: Runner, server: DevServer, spool_file: Path, env: Dict[str, str]
) -> None:
    """A pk_ key replays through the session handshake as --user-id (documented caveat)."""
    seed(spool_file, 3)
    pk_env = {**env, "SEGOPS_API_KEY": server.public_key}
    result = cli("replay", "--spool", str(spool_file), "--user-id", "ops-1", env=pk_env)
    assert result.code == 0, result.err
    assert {e["user_id"] for e in server.events()} == {"ops-1"}
    assert server.stats()["tokens_minted"] == 1


def test_replay_of_an_empty_spool(cli: Runner, spool_file: Path) -> None:
    """replay on an existing but empty spool says there is nothing to send, exit 0."""
    seed(spool_file, 0)
    result = cli("replay", "--spool", str(spool_file))
    assert result.code == 0, result.err
    assert "nothing to send" in result.out
