# Sourced by scripts/test and scripts/demo: make .venv from nothing, install the project.
# BOOTSTRAP_EXTRAS (set by the caller): "" for the demo (httpx, tenacity, filelock only),
# "dev" for the tests, which also try the "gevent" and "uwsgi" extras (compiled where no
# wheel fits; without a C compiler their tests are skipped). Re-installs only when
# pyproject.toml changed since the last install at that level.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
EXTRAS="${BOOTSTRAP_EXTRAS:-}"
say() { echo "segops bootstrap: $*" >&2; }
# One bootstrap at a time per checkout (scripts/demo and scripts/test started together on
# a fresh clone would both build .venv). flock(2) through Python, which every machine
# running this has (macOS has no flock command): the lock belongs to fd 9's open file,
# which this shell keeps, so it holds after python exits, until fd 9 is closed below.
if ! command -v "$PY" >/dev/null 2>&1; then
    say "no $PY found: install Python 3.9 or newer, or name one with PYTHON=/path/to/python3"
    exit 1
fi
# A checkout nobody may write (a read-only mount, another user's) cannot make the lock
# file: with a ready .venv it needs no lock (nothing is written), so go on without one.
if { exec 9>>.segops-bootstrap.lock; } 2>/dev/null; then
    if ! "$PY" -c 'import fcntl; fcntl.flock(9, fcntl.LOCK_EX | fcntl.LOCK_NB)' 2>/dev/null; then
        say "another bootstrap of this checkout is running; waiting for it"
        "$PY" -c 'import fcntl; fcntl.flock(9, fcntl.LOCK_EX)'
    fi
fi
# .venv is made in three steps, with a sentinel file beside it until the last one is done.
# A .venv whose python can import pip is used (and adopted, whoever made it). One that
# does not (an interrupted run, a python3 without ensurepip, its Python removed or upgraded
# under it) is made again when this script made it, and left alone otherwise.
# (Imported, not run: running pip reads the user's pip configuration, whose errors are not
# the venv's.)
usable() { [ -x .venv/bin/python ] && .venv/bin/python -c "import pip._internal.cli.main" >/dev/null 2>&1; }
if usable; then
    [ -f .venv/.segops-venv-ok ] || touch .venv/.segops-venv-ok
    rm -f .segops-venv-creating
else
    if [ -e .venv ] && [ ! -f .segops-venv-creating ] && [ ! -f .venv/.segops-venv-ok ]; then
        say ".venv exists but has no working pip, and this script did not make it:"
        say "remove it (rm -rf .venv) or give it pip (.venv/bin/python -m ensurepip), then run again"
        exit 1
    fi
    if [ -e .venv ]; then
        say "removing the unusable .venv this script made"
        rm -rf .venv
    fi
    touch .segops-venv-creating
    say "creating .venv with $("$PY" --version 2>&1)"
    "$PY" -m venv .venv
    .venv/bin/python -m pip --version >/dev/null
    touch .venv/.segops-venv-ok
    rm -f .segops-venv-creating
fi
# Not sha256sum: macOS has only shasum.
want="$(.venv/bin/python -c 'import hashlib; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest())')"
installed() { [ -f ".venv/.segops-installed-$1" ] && [ "$(cat ".venv/.segops-installed-$1")" = "$want" ]; }
if ! installed dev && { [ -n "$EXTRAS" ] || ! installed base; }; then
    say "installing the project${EXTRAS:+ with its $EXTRAS tools} (first run: a minute or more)"
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    if [ -n "$EXTRAS" ]; then
        .venv/bin/python -m pip install -q -e ".[$EXTRAS]"
        echo "$want" > .venv/.segops-installed-dev
    else
        .venv/bin/python -m pip install -q -e .
        echo "$want" > .venv/.segops-installed-base
    fi
fi
# The optional native extras: tried again on each run until they install (a compiler may
# have been added since), but only when the last attempt was for another pyproject.toml or
# more than a day ago, so a machine without a compiler does not pay for a failed build
# on every run.
if [ -n "$EXTRAS" ]; then
    for native in gevent uwsgi; do
        done_stamp=".venv/.segops-installed-$native"
        failed_stamp=".venv/.segops-failed-$native"
        installed "$native" && continue
        if [ -f "$failed_stamp" ] && [ "$(cat "$failed_stamp")" = "$want" ] \
            && [ -z "$(find "$failed_stamp" -mmin +1440)" ]; then
            continue
        fi
        log=".venv/segops-$native-install.log"
        if .venv/bin/python -m pip install -q -e ".[$EXTRAS,$native]" >"$log" 2>&1; then
            echo "$want" > "$done_stamp"
            rm -f "$failed_stamp"
        else
            echo "$want" > "$failed_stamp"
            say "$native could not be installed (no C compiler?), so its tests are skipped;" \
                "see $log. Retried in a day, or at once after: rm $failed_stamp"
        fi
    done
fi
exec 9>&-  # the bootstrap lock: not held by the demo or the tests exec'd next
export PATH="$ROOT/.venv/bin:$PATH"
