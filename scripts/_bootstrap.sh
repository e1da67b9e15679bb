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
# A venv whose creation was cut short (Ctrl-C, or a python3 without ensurepip) has a
# python but no pip: made again rather than failing on every later run.
if [ ! -f .venv/.segops-venv-ok ]; then
    rm -rf .venv
    say "creating .venv with $("$PY" --version 2>&1)"
    "$PY" -m venv .venv
    .venv/bin/python -m pip --version >/dev/null
    touch .venv/.segops-venv-ok
fi
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
installed() { [ -f ".venv/.segops-installed-$1" ] && [ "$(cat ".venv/.segops-installed-$1")" = "$want" ]; }
if ! installed dev && { [ -n "$EXTRAS" ] || ! installed base; }; then
    say "installing the project${EXTRAS:+ with its $EXTRAS tools} (first run: a minute or more)"
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    if [ -n "$EXTRAS" ]; then
        .venv/bin/python -m pip install -q -e ".[$EXTRAS]"
        for native in gevent uwsgi; do
            if ! .venv/bin/python -m pip install -q -e ".[$EXTRAS,$native]" >/dev/null 2>&1; then
                say "$native could not be installed (no C compiler?): its tests are skipped"
            fi
        done
        echo "$want" > .venv/.segops-installed-dev
    else
        .venv/bin/python -m pip install -q -e .
        echo "$want" > .venv/.segops-installed-base
    fi
fi
export PATH="$ROOT/.venv/bin:$PATH"
