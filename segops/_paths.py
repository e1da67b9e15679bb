"""Where spools live by default, and how a spool file is named."""

from __future__ import annotations

import hashlib
import html
import os
import re
import sys
import unicodedata
from pathlib import Path
from typing import Optional

SPOOL_DIR_ENV = "SEGOPS_SPOOL_DIR"


def default_spool_dir() -> Path:
    """``$SEGOPS_SPOOL_DIR``, else the per-user cache directory's ``segops`` folder."""
    configured = os.environ.get(SPOOL_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    return _user_cache_dir() / "segops"


def _user_cache_dir() -> Path:
    home = Path.home()
    if sys.platform == "darwin":
        return home / "Library" / "Caches"
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA")
        return Path(local) if local else home / "AppData" / "Local"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) if xdg else home / ".cache"


def spool_name(api_url: str, api_key: str) -> str:
    """A file name derived from (api_url, api_key) that never reveals the key."""
    # surrogatepass: a key or URL read from undecodable bytes still names a file here, so
    # that the caller's own check can refuse it with its message, not a codec error.
    text = f"{normalize_url(api_url)}\n{api_key}"
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return f"spool-{digest[:24]}.sqlite3"


def default_spool_path(api_url: str, api_key: str) -> Path:
    """The spool the library uses for this url/key when none is given."""
    return default_spool_dir() / spool_name(api_url, api_key)


def make_cache_dir_private() -> None:
    """Tighten an existing per-user ``segops`` cache folder to 0700, as a new one is made.

    Only that folder, which is ours: never ``$SEGOPS_SPOOL_DIR`` or a given ``spool_path``,
    whose owners chose their permissions. The files inside are 0600 either way.
    """
    if os.environ.get(SPOOL_DIR_ENV) or not hasattr(os, "getuid"):
        return
    folder = _user_cache_dir() / "segops"
    try:
        info = folder.stat()
        if info.st_uid == os.getuid() and info.st_mode & 0o077:
            os.chmod(folder, 0o700)
    except OSError:
        pass  # missing (the spool creates it 0700) or not ours to change


def normalize_url(api_url: str) -> str:
    """The base URL without trailing slashes (the API doc says to strip one before joining).

    Idempotent: the client normalizes its URL and then names the spool from it, the CLI names
    it from the URL as given, and both must pick the same file whatever the URL ends with.
    (Stripping only one made ``…//`` two different spools.) A URL with one trailing slash or
    none, the usual ones, keeps its spool name. The scheme is lowercased (``HTTP://`` is
    ``http://``, as RFC 3986 and the official client's urllib have it)."""
    scheme, sep, rest = api_url.partition("://")
    if sep and scheme.lower() in ("http", "https"):
        api_url = scheme.lower() + sep + rest
    return api_url.rstrip("/")


def redact(secret: str) -> str:
    """``sk_live_…abcd``: enough to tell keys apart, never enough to use one."""
    if len(secret) <= 12:
        return secret[:3] + "…"
    # Show a known environment word, never a stretch of the secret that merely looks like one.
    env = secret[3:].split("_", 1)[0] if secret.count("_") >= 2 else ""
    prefix = secret[:3] + (env + "_" if env in _KEY_ENVIRONMENTS else "")
    return f"{prefix}…{secret[-4:]}"


_KEY_ENVIRONMENTS = frozenset({"live", "test", "dev", "prod", "staging", "sandbox", "local"})


# A key is "sk_"/"pk_" and 8 or more key characters (real keys are far longer; shorter
# runs are names such as "pk_id"). It starts anywhere but inside a word ("task_", "desk_"),
# or right after a printed escape ("\\nsk_...", "\\u003csk_...") or a URL-encoded byte
# ("%3Dsk_..."); after "_", "-" or a digit ("api_key_sk_live_...") only when it holds a
# digit, as generated keys do and names such as "tbl_sk_customer" do not. Scanned text is
# at most REDACT_SCAN_LIMIT long, so a start inside a long run costs little.
_AFTER_ESCAPE = (
    r"(?<=\\[A-Za-z])|(?<=\\u[0-9A-Fa-f]{4})|(?<=\\x[0-9A-Fa-f]{2})|(?<=%[0-9A-Fa-f]{2})"
)
_START = rf"(?:(?<![A-Za-z])|{_AFTER_ESCAPE})"
# Taken to the end of the run: a start can only be at its beginning (or, for the second
# form, where a digit follows within 200 characters), so this stays linear.
_KEY_BODY = r"[sp]k_[A-Za-z0-9_-]{8}[A-Za-z0-9_-]*"
_KEY_LIKE = re.compile(
    # ASCII only: "\w" would take CJK text ("密钥sk_live_...") for the inside of a word.
    rf"(?:(?<![A-Za-z0-9_-])|{_AFTER_ESCAPE})"
    + _KEY_BODY
    + r"|(?<=[0-9_-])(?=[sp]k_[A-Za-z0-9_-]{0,200}[0-9])"
    + _KEY_BODY
)
# A JWT (header.payload.signature, base64url; the header starts with '{"' = "eyJ"): the
# shape of the session tokens the server mints.
_JWT_LIKE = re.compile(_START + r"eyJ[\w-]+\.[\w-]+\.[\w-]*")
# An opaque credential after an auth scheme, also URL-encoded ("Bearer%20..."): 16 or more
# characters with a digit, so that "Bearer token expired" stays as it is.
_AFTER_SCHEME = re.compile(
    r"(?i)\b(bearer|apikey|token|basic)((?:\s|%20)+)(?=[^\s\"',;&]*[0-9])([^\s\"',;&]{16,})"
)
# Terminal control sequences (ECMA-48: CSI with any parameters, other escape sequences such
# as "ESC ( B", the C1 CSI) and other C0/C1 control characters become blanks: a server's
# text must not drive the user's terminal, nor hide a key from the patterns ("\x1b(Bsk_..."
# leaves a letter right before the key). A blank, not nothing: "name\rsk_live_..." must not
# become "namesk_live_...", which no pattern takes for a key. Tab and newline stay. A
# sequence never takes for its final byte the start of a key or token ("\x9bsk_live_..."
# must keep its "s"), nor "%" or "\" (a printed escape before a key: "\x1b%3Dsk_live_...").
_FINAL = r"(?![sp]k_|eyJ)"
_CONTROLS = re.compile(
    rf"(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*{_FINAL}[\x40-\x7e]"
    rf"|\x1b[\x20-\x24\x26-\x2f]*{_FINAL}[\x30-\x5b\x5d-\x7e]|[\x00-\x08\x0b-\x1f\x7f-\x9f]"
)
# ESC as Python's repr() or JSON prints it ("\\x1b(B"): the same sequences, in text.
_PRINTED_ESC = re.compile(r"\\(?:x1b|u001b)")
# Any character as a program may print it: repr() and JSON ("\\n", "\\x00", "\\u200b"), C
# and shells (octal "\\033"), Rust and Perl ("\\u{200b}", "\\x{200b}"), Ruby ("\\e"),
# Python's "\\N{ZERO WIDTH SPACE}", R's "<U+200B>", URL encoding ("%E2%80%8B"), also with the
# backslash doubled (a repr quoted in JSON text). An echo of this client's secret that went
# through one of them has its line breaks and invisible characters printed so. A run of
# backslashes is taken from its start only (linear).
_PRINTED_CHARACTER = re.compile(
    r"(?<!\\)\\+(?:[xu]\{(?P<braced>[0-9A-Fa-f]{1,6})\}|x(?P<hex2>[0-9A-Fa-f]{2})"
    r"|u(?P<hex4>[0-9A-Fa-f]{4})|U(?P<hex8>[0-9A-Fa-f]{8})|(?P<octal>[0-7]{3})"
    r"|N\{(?P<name>[A-Za-z0-9 -]{1,80})\}|(?P<named>[0abefnrtv]))"
    r"|%(?P<percent>[0-9A-Fa-f]{2})|<U\+(?P<unicode>[0-9A-Fa-f]{4,6})>"
)
# Printed bytes in a row ("b'...\\xe2\\x80\\x8b...'", "\\342\\200\\213", "%E2%80%8B"): UTF-8
# first, as a bytes repr prints an invisible character as its encoding.
_PRINTED_BYTES = re.compile(r"(?:(?<!\\)\\+(?:x[0-9A-Fa-f]{2}|[0-3][0-7]{2})|%[0-9A-Fa-f]{2}){2,}")
_PRINTED_BYTE = re.compile(r"x([0-9A-Fa-f]{2})|\\([0-3][0-7]{2})|%([0-9A-Fa-f]{2})")
_SURROGATE = re.compile("[\ud800-\udfff]")
_NAMED_ESCAPES = {
    "0": "\0",
    "a": "\a",
    "b": "\b",
    "e": "\x1b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
}
# What a server may have put between the characters of this client's own key or token (a
# wrapped or decorated echo): controls and their sequences, line breaks, and characters a
# terminal shows as nothing (format characters such as zero-width spaces and bidi marks,
# variation selectors, fillers; a line break with the indent after it). Dropped to find
# the secret, in the rare text that needs it.
_INVISIBLE_CHARACTERS = (
    r"[\x00-\x1f\x7f-\x9f\xad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f"
    r"\u200b-\u200f\u202a-\u202e\u2060-\u206f\u2800\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufffb"
    r"\u0600-\u0605\u06dd\u070f\u0890\u0891\u08e2\U000110bd\U000110cd\U00013430-\U0001345f"
    r"\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff]"
)
# OSC/DCS/APC strings (ESC ] ... BEL or ST, also the C1 forms): removed whole in every
# reading but the last.
_TERMINAL_STRING = (
    r"[\x1b][\]P_^][^\x07\x1b]*(?:\x07|\x1b\\)?|[\x90\x9d\x9e\x9f][^\x07\x9c]*[\x07\x9c]?"
)
# Three readings, as "ESC [ 0 k" may be a sequence ending in the key's "k" or one cut short
# before it: sequences whole; sequence introducers and parameters without a final byte; and
# every invisible character alone. Blanks of any kind go in all three.
_INVISIBLE = (
    re.compile(rf"{_TERMINAL_STRING}|{_CONTROLS.pattern}|{_INVISIBLE_CHARACTERS}|\s"),
    re.compile(
        rf"{_TERMINAL_STRING}|(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*"
        rf"|\x1b[\x20-\x2f]*|{_INVISIBLE_CHARACTERS}|\s"
    ),
    re.compile(rf"{_INVISIBLE_CHARACTERS}|\s"),
)
#: What server text that echoes this client's credential in pieces shows instead.
WITHHELD = "(the server's text is withheld: it echoes this client's credential)"
# The characters a credential is made of (ASCII, no blank or delimiter): a cut drops the
# run of them it went through, the start of a key or token too short for the patterns.
_CUT_CREDENTIAL = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "\"',;&")
# Any "sk_"/"pk_" run, wherever it starts: for text the user typed (a CLI argument such as
# "--api-keysk_live_..."), where a false alarm costs nothing.
_KEY_ANYWHERE = re.compile(_KEY_BODY)
# What redact() leaves of a key (the prefix, before its ellipsis): not a secret.
_REDACTED_PREFIX = re.compile(r"[sp]k_(?:[a-z]+_)?")
#: Server text longer than this is cut before it is redacted (the regexes are linear, but a
#: megabyte of HTML is no explanation anyway); callers keep far less of it.
REDACT_SCAN_LIMIT = 4096


def redact_secrets(text: str, *secrets: Optional[str]) -> str:
    """Server text (an error detail, a dead letter's reason) made safe to store and print:
    each of ``secrets`` (this client's key; ``None`` is skipped), anything shaped like an
    ``sk_``/``pk_`` key, any JWT (a session token) and whatever follows ``Bearer`` or
    ``ApiKey`` come out as :func:`redact` shows keys. Better a server's ``pk_events_id``
    shown as ``pk_…`` than a credential printed whole.

    The known ``secrets`` are replaced in the whole text before it is cut (a cut must not
    leave a piece of one that no pattern recognizes), also when control or invisible
    characters or line breaks were put between their characters."""
    known = [secret for secret in secrets if secret]
    for secret in known:
        text = text.replace(secret, redact(secret))
    if known and _echoes_in_pieces(text, known):
        return WITHHELD
    if len(text) > REDACT_SCAN_LIMIT:
        text = _cut(text)
    return _redact_patterns(_blanked(text))


def holds_secret(text: str, *secrets: Optional[str]) -> bool:
    """True when ``text`` may hold one of ``secrets`` or anything shaped like a key or
    token. Text longer than REDACT_SCAN_LIMIT counts as holding one: the patterns are not
    run over more than that (one of them is quadratic on crafted input)."""
    if len(text) > REDACT_SCAN_LIMIT:
        return True
    return redact_secrets(text, *secrets) != _blanked(text)


def redact_typed(text: str) -> str:
    """Text the user typed (CLI arguments) with every ``sk_``/``pk_`` run redacted, glued
    to other characters or not ("--api-keysk_live_...")."""
    return _KEY_ANYWHERE.sub(lambda m: redact(m.group()), text)


def _echoes_in_pieces(text: str, secrets: list[str]) -> bool:
    """True when ``text`` holds one of ``secrets`` with invisible characters (or a wrapped
    line) between its characters: a terminal would show it whole. Such text is withheld
    rather than cut up: removing the characters would glue other credentials to the words
    before them, which the patterns then miss."""
    # What could reach the shown part (cut at REDACT_SCAN_LIMIT), with room for long gaps.
    try:
        unprinted = _unprinted(text[: REDACT_SCAN_LIMIT * 4])
    except Exception:  # a notation this misreads: withheld, never an error where it is shown
        return True
    for invisible in _INVISIBLE:
        if invisible.search(unprinted):
            squeezed = invisible.sub("", unprinted)
            if any(secret in squeezed for secret in secrets):
                return True
    return False


def _unprinted(text: str) -> str:
    """``text`` with its printed escapes turned back into the characters they print."""
    if "&" in text:  # HTML: "&#8203;", "&ZeroWidthSpace;"
        text = html.unescape(text)
    text = _PRINTED_BYTES.sub(_unprint_bytes, text)
    text = _PRINTED_CHARACTER.sub(_unprint, text)
    if _SURROGATE.search(text):  # JSON prints U+E0020 as the pair "\\udb40\\udc20"
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def _unprint_bytes(match: re.Match[str]) -> str:
    """Printed bytes as UTF-8; those that are not stay printed, for _unprint (Latin-1)."""
    data = bytes(
        int(hexa, 16) if hexa else int(octal, 8) if octal else int(percent, 16)
        for hexa, octal, percent in _PRINTED_BYTE.findall(match.group())
    )
    return data.decode("utf-8", "backslashreplace")


def _unprint(match: re.Match[str]) -> str:
    """The character a printed escape stands for (itself when it names none)."""
    kind = match.lastgroup or ""
    value = match.group(kind)
    if kind == "named":
        return _NAMED_ESCAPES[value]
    if kind == "name":
        try:
            return unicodedata.lookup(value)
        except KeyError:
            return match.group()
    code = int(value, 8 if kind == "octal" else 16)
    return chr(code) if code <= sys.maxunicode else match.group()


def _blanked(text: str) -> str:
    """``text`` with its escape sequences (printed ones too) and control characters blank."""
    return _CONTROLS.sub(" ", _PRINTED_ESC.sub("\x1b", text))


def _cut(text: str) -> str:
    """``text`` cut to REDACT_SCAN_LIMIT, less the run of credential characters the cut
    went through: it may be the start of a key or token, too short for the patterns."""
    return text[:REDACT_SCAN_LIMIT].rstrip(_CUT_CREDENTIAL) + "…"


def _redact_patterns(text: str) -> str:
    text = _AFTER_SCHEME.sub(_redact_credential, text)
    text = _KEY_LIKE.sub(_redact_match, text)
    return _JWT_LIKE.sub(_redact_match, text)


def _redact_match(match: re.Match[str]) -> str:
    found = match.group()
    already = match.string.startswith("…", match.end()) and _REDACTED_PREFIX.fullmatch(found)
    return found if already else redact(found)


def _redact_credential(match: re.Match[str]) -> str:
    scheme, space, credential = match.groups()
    if "…" in credential:  # redacted already
        return match.group()
    return f"{scheme}{space}{redact(credential)}"


def display_url(text: str, api_key: Optional[str] = None) -> str:
    """``text`` as an error or repr may show it: the API key (and anything that looks like
    an ``sk_``/``pk_`` key) comes out redacted wherever it appears, a ``user:password@``
    part as ``…@``."""
    if api_key:
        text = text.replace(api_key, redact(api_key))
    text = _KEY_LIKE.sub(_redact_match, text)
    scheme, slashes, rest = text.partition("//")
    if slashes and "@" in rest:
        # Up to the last "@": a password may itself hold "/", "?", "#" or "@".
        return f"{scheme}//…@{rest.rpartition('@')[2]}"
    return text
