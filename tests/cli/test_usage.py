"""The command line's surface: entry points, one-line usage errors, missing configuration."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import segops
from clihelp import Result, Runner


def assert_one_line_error(result: Result, code: int = 2) -> str:
    """Exit ``code``, one line on stderr, no traceback; returns the line."""
    assert result.code == code, (result.code, result.out, result.err)
    assert "Traceback" not in result.err
    assert len(result.err_lines) == 1, result.err
    return result.err_lines[0]


def test_version_through_python_m(bare_cli: Runner) -> None:
    """`python -m segops --version` prints the package version and exits 0."""
    result = bare_cli("--version")
    assert result.code == 0
    assert result.out.strip() == f"segops {segops.__version__}"


def test_console_script_is_the_same_program() -> None:
    """The installed `segops` script runs the same CLI as `python -m segops`."""
    script = Path(sys.executable).parent / "segops"
    if not script.exists():
        pytest.skip(f"no console script next to {sys.executable}")
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"segops {segops.__version__}"


@pytest.mark.parametrize(
    "args",
    [["--help"], ["replay", "--help"], ["track", "--help"], ["dead-letters", "list", "--help"]],
)
def test_help_exits_zero(bare_cli: Runner, args: List[str]) -> None:
    """--help works for the program and its subcommands."""
    result = bare_cli(*args)
    assert result.code == 0
    assert "usage:" in result.out


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ([], "required"),
        (["frobnicate"], "invalid choice"),
        (["replay", "--bogus"], "unrecognized arguments"),
        (["track", "--timeout", "soon"], "not a number"),
        (["track", "--timeout", "-1"], ">= 0"),
        (["status", "--all", "--spool", "x.sqlite3"], "not allowed with"),
        (["dead-letters"], "required"),
        (["dead-letters", "list", "--limit", "0"], ">= 1"),
        (["dead-letters", "retry", "--id", "x"], "invalid int"),
        (["dev-server", "--port", "http"], "invalid int"),
        (["dev-server", "--port", "0", "--db", "/nonexistent/dir/x.db"], "/nonexistent/dir/x.db"),
    ],
)
def test_bad_flags_exit_2_with_one_line(bare_cli: Runner, args: List[str], fragment: str) -> None:
    """Bad flags exit 2 with a single stderr line naming the problem."""
    line = assert_one_line_error(bare_cli(*args))
    assert fragment in line
    assert line.startswith("segops")


@pytest.mark.parametrize(
    ("args", "env_var"),
    [
        (["replay"], "SEGOPS_API_URL"),
        (["replay", "--api-url", "http://127.0.0.1:9"], "SEGOPS_API_KEY"),
        (["track", "--user-id", "u", "--event-type", "t"], "SEGOPS_API_URL"),
        (["status"], "--spool"),
        (["dead-letters", "list"], "--spool"),
        (["dead-letters", "retry", "--spool", "s.sqlite3"], "SEGOPS_API_URL"),
    ],
)
def test_missing_configuration_exits_2(bare_cli: Runner, args: List[str], env_var: str) -> None:
    """Without a URL/key (flags or env) the command says what to set and exits 2."""
    line = assert_one_line_error(bare_cli(*args))
    assert env_var in line


@pytest.mark.parametrize(
    ("url", "key", "fragment"),
    [
        ("ftp://example.test", "sk_x_1234567890", "http://"),
        ("sk_live_SECRET0123456789abcd", "sk_live_SECRET0123456789abcd", "http://"),
        ("http://127.0.0.1:9", "not-a-key-1234567890", "neither an sk_ nor a pk_"),
    ],
)
def test_bad_configuration_exits_2(bare_cli: Runner, url: str, key: str, fragment: str) -> None:
    """An unusable URL or key is a configuration error (exit 2), and the key is redacted."""
    result = bare_cli("replay", "--api-url", url, "--api-key", key, "--spool", "x.sqlite3")
    line = assert_one_line_error(result)
    assert fragment in line
    assert key not in result.err + result.out
    assert "SECRET0123456789" not in result.err + result.out  # nor a key or password as URL


TRACK = ["track", "--user-id", "u", "--event-type", "t", "--timeout", "0"]


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(TRACK, id="track"),
        pytest.param([*TRACK, "--spool", "x.sqlite3"], id="track-spool"),
        pytest.param(["status"], id="status"),
        pytest.param(["replay"], id="replay"),
    ],
)
def test_a_key_with_undecodable_bytes_is_refused_by_name(bare_cli: Runner, args: List[str]) -> None:
    """A key holding a byte the locale cannot decode (a surrogate escape) gets the library's
    message, whether or not a default spool would be named from it (not a codec error)."""
    key = "sk_live_\udcff4eC39HqLyjWDarjtT1zdp7dc"
    result = bare_cli(*args, "--api-url", "http://127.0.0.1:9", "--api-key", key)
    line = assert_one_line_error(result)
    assert "holds whitespace, control or non-ASCII characters" in line
    assert "4eC39HqLyjWDarjt" not in result.err + result.out


def test_a_url_with_undecodable_bytes_is_refused_by_name(bare_cli: Runner) -> None:
    """The same for the URL: a usage error naming it, not a codec error."""
    result = bare_cli(
        *TRACK, "--api-url", "http://127.0.0.1:9/\udcff", "--api-key", "sk_x_12345678"
    )
    line = assert_one_line_error(result)
    assert "not a usable URL" in line


@pytest.mark.parametrize(
    "args",
    [
        ["replay", "--api_key", "sk_live_4eC39HqLyjWDarjtT1zdp7dc"],
        ["status", "--apikey=sk_live_4eC39HqLyjWDarjtT1zdp7dc"],
        ["replay", "--api=sk_live_4eC39HqLyjWDarjtT1zdp7dc"],
        ["track", "--user-id", "u", "--event-type", "t", "pk_live_4eC39HqLyjWDarjtT1zdp7dc"],
        ["replay", "--api-keysk_live_4eC39HqLyjWDarjtT1zdp7dc"],
        ["replay", "-ksk_live_4eC39HqLyjWDarjtT1zdp7dc"],
    ],
)
def test_a_mistyped_key_flag_is_not_echoed(bare_cli: Runner, args: List[str]) -> None:
    """A misspelt or ambiguous --api-key flag is a usage error that names the flag, not the
    key argparse would quote whole."""
    result = bare_cli(*args)
    line = assert_one_line_error(result)
    assert "4eC39HqLyjWDarjt" not in result.err + result.out
    assert "_live_…p7dc" in line


def test_secret_key_env_is_accepted(bare_cli: Runner, base_env: Dict[str, str]) -> None:
    """SEGOPS_SECRET_KEY works when SEGOPS_API_KEY is not set."""
    secret = "sk_s_123456789"
    env = {**base_env, "SEGOPS_API_URL": "http://127.0.0.1:9", "SEGOPS_SECRET_KEY": secret}
    result = bare_cli("status", env=env)
    line = assert_one_line_error(result)
    assert "no spool at" in line  # got as far as computing the default spool path
    assert secret not in result.err
