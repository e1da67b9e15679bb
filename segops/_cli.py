"""The ``segops`` command line (also ``python -m segops``). See ``docs/cli.md``.

Exit codes: 0 done; 1 work left undone (events still pending, server unreachable, auth
rejected: the reason is printed); 2 usage or configuration error; 130 interrupted. Every
error is one line on stderr, never a traceback, and no secret key is ever printed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import IO, Any, Callable, Dict, List, NoReturn, Optional, Sequence, Tuple

import spool

from ._cli_drain import (
    DrainResult,
    EarlyProbe,
    LastError,
    Progress,
    SpoolStatus,
    UsageError,
    describe_refusals,
    drain_spool,
    human_age,
    human_bytes,
    open_spool,
    own_request_running,
    session_user,
    spool_status,
)
from ._client import SegOpsClient
from ._encoding import encode_event, event_from_args
from ._errors import ConfigurationError, EventRejected, SegOpsError, translate_spool_error
from ._http import header_safe
from ._paths import (
    SPOOL_DIR_ENV,
    default_spool_dir,
    default_spool_path,
    display_url,
    normalize_url,
    redact,
    redact_secrets,
    redact_typed,
)
from ._version import __version__

PROG = "segops"
ENV_URL = "SEGOPS_API_URL"
ENV_KEY = "SEGOPS_API_KEY"
ENV_SECRET = "SEGOPS_SECRET_KEY"
DEFAULT_TRACK_TIMEOUT = 5.0

Handler = Callable[[argparse.Namespace], int]


# -- argument parsing --------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        # argparse quotes the offending argument whole: a mistyped "--apikey=sk_..." too.
        message = redact_typed(message)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _config_options() -> _Parser:
    parent = _Parser(add_help=False)
    parent.add_argument("--api-url", metavar="URL", help=f"SegOps base URL (env {ENV_URL})")
    parent.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"sk_/pk_ API key (env {ENV_KEY}, or {ENV_SECRET})",
    )
    return parent


def _spool_option() -> _Parser:
    parent = _Parser(add_help=False)
    parent.add_argument(
        "--spool",
        metavar="PATH",
        help="spool file (default: the one the library uses for this url/key, "
        "under $SEGOPS_SPOOL_DIR or the user cache dir)",
    )
    return parent


def _json_option() -> _Parser:
    parent = _Parser(add_help=False)
    parent.add_argument("--json", action="store_true", help="print a machine-readable result")
    return parent


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"must be >= 0 seconds: {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The whole ``segops`` argument parser."""
    config, spool_opt, json_opt = _config_options(), _spool_option(), _json_option()
    parser = _Parser(
        prog=PROG,
        description="SegOps client tools: rescue a spool, inspect it, send events from "
        "scripts, run a local dev server, or watch the demo.",
        epilog="Exit codes: 0 done, 1 work left undone (the reason is printed), "
        "2 usage or configuration error, 130 interrupted (what is spooled stays spooled).",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    replay = commands.add_parser(
        "replay",
        parents=[spool_opt, config, json_opt],
        help="deliver everything left in a spool",
        description="Deliver every event in a spool with the client's delivery engine. Safe "
        "while live workers use the same spool. Exit 1 if events remain.",
    )
    replay.add_argument(
        "--user-id",
        metavar="ID",
        help="pk_ keys only: the session identity (default: anonymous); the server "
        "attributes every replayed event to it, so prefer an sk_ key",
    )
    replay.add_argument(
        "--timeout",
        type=_positive_seconds,
        metavar="SECONDS",
        help="give up after this long (default: no limit; delivery errors stop it anyway)",
    )
    replay.set_defaults(handler=cmd_replay)

    status = commands.add_parser(
        "status",
        parents=[config, json_opt],
        help="pending, leased and dead-lettered events of a spool",
        description="Show a spool's pending, leased and dead-lettered events, the oldest "
        "event's age and the file size. Never creates a spool.",
    )
    which = status.add_mutually_exclusive_group()
    which.add_argument("--spool", metavar="PATH", help="spool file (default: as for replay)")
    which.add_argument(
        "--all", action="store_true", help="every *.sqlite3 spool in the spool directory"
    )
    status.set_defaults(handler=cmd_status)

    dead = commands.add_parser(
        "dead-letters",
        help="list, retry or purge events the server rejected",
        description="Events the server refused (HTTP 400/422) are kept aside as dead "
        "letters with the server's reason.",
    )
    dead_cmds = dead.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    dead_cmds.required = True
    ids = _Parser(add_help=False)
    ids.add_argument(
        "--id",
        dest="ids",
        type=int,
        action="append",
        metavar="N",
        help="only this dead letter (repeatable; default: all)",
    )
    dl_list = dead_cmds.add_parser(
        "list", parents=[spool_opt, config, json_opt], help="show dead letters and why"
    )
    dl_list.add_argument("--limit", type=_positive_int, metavar="N", help="show at most N")
    dl_list.set_defaults(handler=cmd_dead_list)
    dl_retry = dead_cmds.add_parser(
        "retry",
        parents=[spool_opt, config, json_opt, ids],
        help="put dead letters back in the queue and deliver them",
    )
    dl_retry.add_argument("--user-id", metavar="ID", help="pk_ keys only (see replay)")
    dl_retry.add_argument("--timeout", type=_positive_seconds, metavar="SECONDS")
    dl_retry.set_defaults(handler=cmd_dead_retry)
    dl_purge = dead_cmds.add_parser(
        "purge",
        parents=[spool_opt, config, json_opt, ids],
        help="delete dead letters for good (needs --yes)",
    )
    dl_purge.add_argument("--yes", action="store_true", help="really delete them")
    dl_purge.set_defaults(handler=cmd_dead_purge)

    track = commands.add_parser(
        "track",
        parents=[spool_opt, config, json_opt],
        help="spool events from a shell script, then try to deliver them",
        description="Validate, spool (all or nothing), then deliver within --timeout. "
        "What cannot be sent stays spooled; exit 0 once the events are on disk.",
    )
    track.add_argument("--user-id", metavar="ID")
    track.add_argument("--event-type", metavar="TYPE")
    track.add_argument("--payload", metavar="JSON", help="a JSON object (default {})")
    track.add_argument("--occurred-at", metavar="TS", help="ISO-8601 time (default: now)")
    track.add_argument("--anonymous-id", metavar="ID")
    track.add_argument(
        "--jsonl",
        metavar="FILE",
        help="one event object per line ('-' = stdin) instead of the flags above",
    )
    track.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=DEFAULT_TRACK_TIMEOUT,
        metavar="SECONDS",
        help=f"how long to try delivering (default {DEFAULT_TRACK_TIMEOUT:g}; 0 = spool only)",
    )
    track.set_defaults(handler=cmd_track)

    dev = commands.add_parser(
        "dev-server",
        help="run a local SegOps ingestion server",
        description="Run a local SegOps ingestion server (development and tests only).",
    )
    from . import _devserver

    _devserver.add_arguments(dev)
    dev.set_defaults(handler=_devserver.run)

    demo = commands.add_parser(
        "demo",
        help="watch the client survive an outage and a crash (about 10 s)",
        description="Start a dev server, track from threads and a worker process, take the "
        "server down, SIGKILL the worker, bring the server back, replay, count.",
    )
    from . import _demo

    _demo.add_arguments(demo)
    demo.set_defaults(handler=_demo.run)
    return parser


# -- entry point -------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI and return its exit code."""
    parser = build_parser()
    try:
        ns, extras = parser.parse_known_args(None if argv is None else list(argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    prog = _prog_of(ns)
    if extras:  # name the subcommand whose flags these are not
        unknown = redact_typed(" ".join(extras))  # "--api_key sk_..." is a typo, not a flag
        return _fail(prog, f"unrecognized arguments: {unknown} (see {prog} --help)", 2)
    handler: Handler = ns.handler
    try:
        return handler(ns)
    except UsageError as exc:
        return _fail(prog, str(exc), 2)
    except ConfigurationError as exc:
        return _fail(prog, str(exc), 2)
    except KeyboardInterrupt as exc:
        said = str(exc) if isinstance(exc, _Interrupted) else ""
        return _fail(prog, said or "interrupted; spooled events are safe on disk", 130)
    except BrokenPipeError:
        return 1
    except (SegOpsError, spool.SpoolError, OSError) as exc:
        return _fail(prog, _one_line(exc), 1)
    except ValueError as exc:
        return _fail(prog, _one_line(exc), 2)


class _Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what it left behind when the usual "safe on disk" would not be true."""


def _prog_of(ns: argparse.Namespace) -> str:
    parts = [PROG, ns.command]
    action = getattr(ns, "action", None)
    if action:
        parts.append(action)
    return " ".join(parts)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text


def _fail(prog: str, message: str, code: int) -> int:
    sys.stderr.write(f"{prog}: error: {' '.join(message.split())}\n")
    return code


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


# -- configuration -----------------------------------------------------------------------


def _api_url(ns: argparse.Namespace, *, required: bool = True) -> Optional[str]:
    url = getattr(ns, "api_url", None) or os.environ.get(ENV_URL) or None
    if url is None and required:
        raise UsageError(f"no API URL: pass --api-url or set {ENV_URL}")
    return url


def _given_api_key(ns: argparse.Namespace) -> Optional[str]:
    """The key from the flag or the environment, as given (not checked)."""
    return (
        getattr(ns, "api_key", None)
        or os.environ.get(ENV_KEY)
        or os.environ.get(ENV_SECRET)
        or None
    )


def _api_key(ns: argparse.Namespace, *, required: bool = True) -> Optional[str]:
    key = _given_api_key(ns)
    if key is None and required:
        raise UsageError(f"no API key: pass --api-key or set {ENV_KEY} (or {ENV_SECRET})")
    if key is not None and not key.startswith(("sk_", "pk_")):
        raise UsageError(f"the API key {redact(key)} is neither an sk_ nor a pk_ key")
    if key is not None and not header_safe(key):
        # Before it names a default spool: the library refuses it too, with this message.
        raise UsageError(
            f"the API key {redact(key)} holds whitespace, control or non-ASCII characters"
            " (a newline read from a file?)"
        )
    return key


def _credentials(ns: argparse.Namespace) -> Tuple[str, str]:
    url, key = _api_url(ns), _api_key(ns)
    assert url is not None and key is not None
    if not normalize_url(url).startswith(("http://", "https://")):
        raise UsageError(
            f"the API URL must start with http:// or https://: {display_url(url, key)!r}"
        )
    return url, key


def _spool_path(ns: argparse.Namespace) -> Path:
    """``--spool``, else the library's default spool for the configured url/key."""
    given = getattr(ns, "spool", None)
    if given:
        return Path(given).expanduser()
    url = _api_url(ns, required=False)
    key = _api_key(ns, required=False)
    if url is None or key is None:
        missing = ENV_URL if url is None else ENV_KEY
        raise UsageError(
            f"which spool? pass --spool PATH, or give --api-url and --api-key ({missing} is "
            "not set) to use the library's default spool"
        )
    return default_spool_path(url, key)


# -- replay ------------------------------------------------------------------------------


class _ProgressLine:
    """A self-overwriting progress line on a terminal; silent otherwise."""

    def __init__(self, label: str, stream: IO[str]) -> None:
        self._label = label
        self._stream = stream
        self._enabled = stream.isatty()
        self._width = 0

    def __call__(self, p: Progress) -> None:
        if not self._enabled:
            return
        eta = "-" if p.eta is None else human_age(p.eta)
        text = (
            f"{self._label}: sent {p.sent:,} | remaining {p.remaining:,} | "
            f"{p.rate:,.0f} events/s | ETA {eta}"
        )
        pad = max(0, self._width - len(text))
        self._width = len(text)
        self._stream.write("\r" + text + " " * pad)
        self._stream.flush()

    def clear(self) -> None:
        if self._enabled and self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()


def _drain_with_progress(
    ns: argparse.Namespace, label: str, path: Path, url: str, key: str
) -> DrainResult:
    line = _ProgressLine(label, sys.stderr)
    try:
        return drain_spool(
            path,
            url,
            key,
            user_id=getattr(ns, "user_id", None),
            timeout=getattr(ns, "timeout", None),
            on_progress=line,
        )
    finally:
        line.clear()


def _report_drain(prog: str, result: DrainResult, as_json: bool) -> int:
    if as_json:
        _print_json(result.as_json())
    elif result.to_send == 0 and result.delivered == 0 and not result.error:
        _out(f"{prog}: nothing to send; {result.spool} has no pending events")
    else:
        skipped = f"{result.skipped:,} skipped by the server; " if result.skipped else ""
        _out(
            f"{prog}: delivered {result.delivered:,} event(s) in {result.seconds:.1f}s "
            f"({result.rate:,.0f} events/s); {result.dead_lettered} new dead letter(s); "
            f"{skipped}{result.left:,} left"
        )
        if result.dead_lettered:
            _out(f"  see why: segops dead-letters list --spool {result.spool}")
        if result.skipped:
            _out("  the server dropped the skipped events as invalid: they were not stored")
    if result.left:
        reason = result.error or "events are still leased by another process"
        sys.stderr.write(
            f"{prog}: error: {result.left:,} event(s) left in {result.spool}: {reason}\n"
        )
        return 1
    return 0


def cmd_replay(ns: argparse.Namespace) -> int:
    """``segops replay``: drain a spool."""
    url, key = _credentials(ns)
    path = _spool_path(ns)
    result = _drain_with_progress(ns, "replay", path, url, key)
    return _report_drain("segops replay", result, ns.json)


# -- status ------------------------------------------------------------------------------


# One row of ``status --all``: the file, and its status or why it could not be read.
_StatusRow = Tuple[str, Optional[SpoolStatus], Optional[str]]


def cmd_status(ns: argparse.Namespace) -> int:
    """``segops status``: one spool, or every spool in the spool directory."""
    if ns.all:
        return _status_all(ns)
    row = spool_status(_spool_path(ns))
    if ns.json:
        _print_json(row.as_json())
    else:
        _print_status(row)
    return 0


def _print_status(row: SpoolStatus) -> None:
    _out(f"spool         {row.path}")
    _out(f"pending       {row.pending:,}")
    _out(f"leased        {row.leased:,}")
    _out(f"dead letters  {row.dead_letters:,}")
    _out(f"oldest event  {human_age(row.oldest_age)}")
    _out(f"file size     {human_bytes(row.file_bytes)}")


def _status_all(ns: argparse.Namespace) -> int:
    """``status --all``: a row per ``*.sqlite3`` file of the spool directory. A file that
    cannot be read gets a row saying why, the others are still shown, and the exit code is 1
    once every row is out."""
    folder = default_spool_dir()
    paths = _spool_files(folder)
    rows: List[_StatusRow] = []
    for path in paths:
        try:  # read-only, as for one spool: nothing is created, moved or repaired
            rows.append((str(path), spool_status(path, hint=None), None))
        except (UsageError, SegOpsError, spool.SpoolError, OSError) as exc:
            rows.append((str(path), None, _one_line(exc)))
    if ns.json:
        _print_json({"spool_dir": str(folder), "spools": [_status_row_json(r) for r in rows]})
    elif not rows:
        _out(f"no spools in {folder}")
    else:
        _print_status_table(rows)
    failed = sum(1 for _, _, error in rows if error is not None)
    if failed:
        where = '"error"' if ns.json else "ERROR"
        return _fail(
            _prog_of(ns),
            f"{failed} of {len(rows)} file(s) in {folder} could not be read (see {where})",
            1,
        )
    return 0


def _spool_files(folder: Path) -> List[Path]:
    """The ``*.sqlite3`` files of the spool directory; none when it does not exist. A
    directory that cannot be listed raises OSError (exit 1): ``glob`` would find nothing and
    report "no spools", as if all were clear. A path that is not a directory is a
    configuration error (exit 2)."""
    if not folder.exists():
        return []
    if not folder.is_dir():
        raise UsageError(f"the spool directory {folder} is not a directory (check {SPOOL_DIR_ENV})")
    try:
        names = os.listdir(folder)
    except OSError as exc:
        raise OSError(f"cannot list the spool directory {folder}: {exc.strerror or exc}") from None
    # As glob("*.sqlite3") matched: hidden files are not listed.
    return sorted(folder / n for n in names if n.endswith(".sqlite3") and not n.startswith("."))


def _status_row_json(row: _StatusRow) -> Dict[str, Any]:
    path, status, error = row
    if status is not None:
        return {**status.as_json(), "error": None}
    keys = ("pending", "leased", "dead_letters", "oldest_age_seconds", "file_bytes")
    return {"spool": path, **dict.fromkeys(keys), "error": error}


def _print_status_table(rows: List[_StatusRow]) -> None:
    header: Tuple[str, ...] = ("PENDING", "LEASED", "DEAD", "OLDEST", "SIZE", "SPOOL")
    errors = any(error is not None for _, _, error in rows)
    if errors:
        header += ("ERROR",)
    table = [header]
    for path, r, error in rows:
        if r is None:
            cells: Tuple[str, ...] = ("-", "-", "-", "-", "-", path)
        else:
            cells = (
                f"{r.pending:,}",
                f"{r.leased:,}",
                f"{r.dead_letters:,}",
                human_age(r.oldest_age),
                human_bytes(r.file_bytes),
                r.path,
            )
        table.append(cells + ((error or "",) if errors else ()))
    _print_table(table)


def _print_table(table: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        cells = [cell.ljust(w) for cell, w in zip(row[:-1], widths)]
        _out("  ".join([*cells, row[-1]]).rstrip())


# -- dead letters ------------------------------------------------------------------------


def _collapsed(text: str) -> str:
    """``text`` on one line: a table row must not break on a multi-line reason."""
    return " ".join(text.split())


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _preview(data: bytes, width: int = 80) -> str:
    """``event_type user=… payload={…}``, cut to ``width`` characters."""
    item = _event_json(data)
    if isinstance(item, dict):
        payload = json.dumps(item.get("payload"), ensure_ascii=False, separators=(",", ":"))
        text = f"{item.get('event_type')} user={item.get('user_id')} payload={payload}"
    else:
        text = str(item)
    return _shorten(_collapsed(text), width)


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _event_json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return data.decode("utf-8", "replace")


def cmd_dead_list(ns: argparse.Namespace) -> int:
    """``segops dead-letters list``. Reasons are the server's words, stored by any version of
    the client: keys and tokens in them are redacted here too."""
    key = _given_api_key(ns)
    store = open_spool(_spool_path(ns))
    try:
        letters = store.dead_letters(limit=ns.limit)
    except spool.SpoolError as exc:
        raise translate_spool_error(exc) from exc
    finally:
        store.close()
    if ns.json:
        _print_json(
            [
                {
                    "id": d.id,
                    "reason": redact_secrets(d.reason, key),
                    "failed_at": _iso(d.failed_at),
                    "event": _event_json(d.data),
                }
                for d in letters
            ]
        )
        return 0
    if not letters:
        _out(f"no dead letters in {store.path}")
        return 0
    table = [("ID", "FAILED AT (UTC)", "REASON", "EVENT")] + [
        (
            str(d.id),
            _iso(d.failed_at),
            _shorten(_collapsed(redact_secrets(d.reason, key)), 48),
            _preview(d.data),
        )
        for d in letters
    ]
    _print_table(table)
    return 0


def cmd_dead_retry(ns: argparse.Namespace) -> int:
    """``segops dead-letters retry``: requeue, then deliver like replay."""
    url, key = _credentials(ns)
    path = _spool_path(ns)
    store = open_spool(path)
    try:
        if ns.ids:
            _refuse_unknown_ids(store, ns.ids)
        requeued = store.requeue_dead(ns.ids)
    except spool.SpoolError as exc:
        raise translate_spool_error(exc) from exc
    finally:
        store.close()
    if not requeued:
        if ns.json:
            _print_json({"spool": str(store.path), "requeued": 0})
        else:
            _out(f"no dead letters to retry in {store.path}")
        return 0
    if not ns.json:
        _out(f"segops dead-letters retry: requeued {requeued} event(s); delivering")
    result = _drain_with_progress(ns, "retry", path, url, key)
    code = _report_drain("segops dead-letters retry", result, ns.json)
    if code == 0 and result.dead_lettered:
        sys.stderr.write(
            f"segops dead-letters retry: error: {result.dead_lettered} event(s) were rejected "
            "again and are back in the dead letters\n"
        )
        return 1
    if code == 0 and result.skipped:
        sys.stderr.write(
            f"segops dead-letters retry: error: the server skipped {result.skipped} event(s) "
            "as invalid: they were not stored\n"
        )
        return 1
    return code


def _refuse_unknown_ids(store: spool.Spool, ids: Optional[List[int]]) -> List[int]:
    """The ids of the spool's dead letters (those among ``ids`` when given); a UsageError
    naming any of ``ids`` that is not one of them (a mistyped id must not read as "done":
    nothing is changed then). Ids only: loading every letter's data for this took as much
    memory as the dead letters hold."""
    found = store.dead_letter_ids(ids)
    unknown = sorted(set(ids or ()) - set(found))
    if unknown:
        raise UsageError(
            f"no dead letter with id {', '.join(map(str, unknown))} in {store.path}"
            " (segops dead-letters list shows them); nothing was changed"
        )
    return found


def cmd_dead_purge(ns: argparse.Namespace) -> int:
    """``segops dead-letters purge``: needs ``--yes``."""
    store = open_spool(_spool_path(ns))
    try:
        count = len(_refuse_unknown_ids(store, ns.ids))
        if not ns.yes:
            raise UsageError(
                f"this would delete {count} dead letter(s) from {store.path} for good; "
                "add --yes to do it"
            )
        purged = store.purge_dead(ns.ids)
    except spool.SpoolError as exc:
        raise translate_spool_error(exc) from exc
    finally:
        store.close()
    if ns.json:
        _print_json({"spool": str(store.path), "purged": purged})
    else:
        _out(f"purged {purged} dead letter(s) from {store.path}")
    return 0


# -- track -------------------------------------------------------------------------------


def _track_input(ns: argparse.Namespace) -> List[Dict[str, Any]]:
    """The events to track, read and checked: from ``--jsonl`` or the single-event flags."""
    if ns.jsonl is None:
        return [_single_event(ns)]
    given = [f"--{f.replace('_', '-')}" for f in _SINGLE_FLAGS if getattr(ns, f) is not None]
    if given:
        raise UsageError(f"--jsonl cannot be combined with {', '.join(given)}")
    return _jsonl_events(ns.jsonl)


_SINGLE_FLAGS = ("user_id", "event_type", "payload", "occurred_at", "anonymous_id")


def _validated(fields: Dict[str, Any]) -> Dict[str, Any]:
    """The wire event for ``fields``, or ValueError/TypeError naming the bad field."""
    wire = event_from_args(fields, user_id=None, event_type=None, occurred_at=None, payload=None)
    encode_event(wire)
    return wire


def _clean(exc: BaseException) -> str:
    return _one_line(exc).replace("track(): ", "")


def _single_event(ns: argparse.Namespace) -> Dict[str, Any]:
    if not ns.user_id or not ns.event_type:
        raise UsageError("give --user-id and --event-type (or --jsonl FILE)")
    fields: Dict[str, Any] = {"user_id": ns.user_id, "event_type": ns.event_type}
    if ns.payload is not None:
        try:
            payload = json.loads(ns.payload)
        except (ValueError, RecursionError) as exc:
            raise UsageError(f"--payload is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise UsageError(f"--payload must be a JSON object, not {type(payload).__name__}")
        fields["payload"] = payload
    if ns.occurred_at is not None:
        fields["occurred_at"] = ns.occurred_at
    if ns.anonymous_id is not None:
        fields["anonymous_id"] = ns.anonymous_id
    try:
        return _validated(fields)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"invalid event: {_clean(exc)}") from None


def _read_lines(source: str) -> List[str]:
    try:
        if source == "-":
            return sys.stdin.read().splitlines()
        with open(source, encoding="utf-8") as fh:
            return fh.read().splitlines()
    except UnicodeDecodeError as exc:
        raise UsageError(f"{source}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror or exc}") from None


def _jsonl_events(source: str) -> List[Dict[str, Any]]:
    """Every event of a JSONL file, validated; the first bad line raises UsageError."""
    name = "stdin" if source == "-" else source
    events = []
    for number, line in enumerate(_read_lines(source), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise UsageError(f"{name} line {number}: not valid JSON: {exc}") from None
        if not isinstance(item, dict):
            raise UsageError(
                f"{name} line {number}: expected a JSON object, got {type(item).__name__}"
            )
        try:
            events.append(_validated(item))
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{name} line {number}: {_clean(exc)}") from None
    return events


def cmd_track(ns: argparse.Namespace) -> int:
    """``segops track``: validate everything, spool in one transaction, try to deliver."""
    try:
        events = _track_input(ns)
    except KeyboardInterrupt:  # reading or checking the input: nothing is spooled yet
        raise _Interrupted("interrupted before anything was spooled") from None
    url, key = _credentials(ns)
    path = _spool_path(ns)
    if not events:
        if ns.json:
            empty = {
                "tracked": 0,
                "delivered": 0,
                "dead_lettered": 0,
                "skipped": 0,
                "left": 0,
                "error": None,
            }
            _print_json({"spool": str(path.resolve()), **empty})
        else:
            _out("segops track: no events in the input; nothing to do")
        return 0
    seen = LastError()
    client = SegOpsClient(
        url,
        key,
        spool_path=path,
        background=False,  # the flush below is the only sender
        on_error=seen,
        get_user=session_user(key, ns.user_id),
    )
    error: Optional[str] = None
    reachability: Optional[EarlyProbe] = None
    try:
        dead_before = client.stats().dead_letters  # a refusal shows as a new dead letter
        try:
            tracked = client.track_many(events)
        except KeyboardInterrupt:
            raise _Interrupted(
                "interrupted while spooling; the events are spooled all or none"
                f" (segops status --spool {shlex.quote(str(path))} tells which)"
            ) from None
        try:
            if ns.timeout != 0:  # 0: spool only, no network at all
                # Why a timeout happened is probed before it does, as replay does: probing
                # after it kept the command up to 0.9 s past --timeout.
                reachability = EarlyProbe(url, time.monotonic() + ns.timeout)
                client.flush(timeout=ns.timeout)
        except EventRejected:  # the rest is delivered; told below, with the dead letters
            pass
        except (SegOpsError, spool.SpoolError) as exc:  # spooled already: durable, exit 0
            error = seen.describe(
                exc, url, key, own_request=own_request_running(), reachability=reachability
            )
    finally:
        if reachability is not None:
            reachability.cancel()
        with contextlib.suppress(SegOpsError):
            client.shutdown(timeout=0.0)
    final = client.stats()  # the snapshot taken by shutdown()
    status = spool_status(path)
    left = status.pending + status.leased
    dead_lettered = max(0, final.dead_letters - dead_before)
    refused = describe_refusals(dead_lettered, final.skipped, status.path, seen.rejected)
    if ns.json:
        _print_json(
            {
                "spool": status.path,
                "tracked": tracked,
                "delivered": final.delivered - final.skipped,
                "dead_lettered": dead_lettered,
                "skipped": final.skipped,
                "left": left,
                "error": "; ".join(filter(None, (refused, error))) or None,
            }
        )
    else:
        _out(
            f"segops track: spooled {tracked} event(s); delivered "
            f"{final.delivered - final.skipped}; {left} waiting in {status.path}"
        )
    if left and error:
        sys.stderr.write(
            f"segops track: {left} event(s) stay spooled for the next run or `segops replay`: "
            f"{error}\n"
        )
    if refused:  # not stored, and no later run will send them: the script must know
        sys.stderr.write(f"segops track: error: {refused}\n")
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
