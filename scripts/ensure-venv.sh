#!/usr/bin/env bash
# Make the project's virtual environment (.venv, or $1) and install lab into it, editable, with
# the development tools. Nothing goes into the system's Python: Debian 12's is externally managed
# (PEP 668). The venv is made with $PYTHON (default: the first python3 on PATH); on Debian, as
# root, python3-venv is installed when the interpreter is Debian's and lacks it. Safe to run
# again: a working venv is kept, and pip runs only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}
STAMP="$VENV/.lab-installed"

say() { echo "ensure-venv: $*" >&2; }
die() { say "$*"; exit 1; }

new_enough() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
is_debian_root() { [[ $(id -u) -eq 0 && -r /etc/debian_version ]] && command -v apt-get >/dev/null; }
# Whether Debian's package manager owns this interpreter (and so python3-venv would complete it).
from_debian() { command -v dpkg >/dev/null && dpkg -S "$(readlink -f "$1")" >/dev/null 2>&1; }

venv_works() {
    [[ -x $VENV/bin/python ]] && new_enough "$VENV/bin/python" && "$VENV/bin/python" -m pip --version >/dev/null 2>&1
}

make_venv() {
    local python log
    python=$(command -v "$PYTHON") || die "no $PYTHON on PATH: install Python 3.11 or newer (Debian: apt-get install python3), or give PYTHON=/path/to/python3"
    new_enough "$python" || die "$python is Python $("$python" -c 'import platform; print(platform.python_version())'); lab needs 3.11 or newer (give PYTHON=...)"
    if [[ -e $VENV ]]; then
        [[ -f $VENV/pyvenv.cfg ]] || die "$VENV exists and is not a virtual environment; move it away"
        say "$VENV does not work (its interpreter is gone, or pip is missing): making it again"
        rm -rf "$VENV"
    fi
    say "making $VENV with $python ($("$python" -c 'import platform; print(platform.python_version())'))"
    log=$(mktemp)
    if ! "$python" -m venv "$VENV" >"$log" 2>&1; then
        rm -rf "$VENV"
        if is_debian_root && from_debian "$python"; then
            local version
            version=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
            say "Debian's $python cannot make a venv without python3-venv: installing it"
            apt-get update -qq >&2
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                python3-venv "python$version-venv" >&2
            "$python" -m venv "$VENV" >"$log" 2>&1 || { cat "$log" >&2; rm -f "$log"; die "$python -m venv failed"; }
        else
            cat "$log" >&2
            rm -f "$log"
            die "$python -m venv failed (on Debian or Ubuntu: apt-get install python3-venv)"
        fi
    fi
    rm -f "$log"
}

venv_works || make_venv
wanted=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ $(cat "$STAMP" 2>/dev/null || true) != "$wanted" ]]; then
    say "installing lab and its development tools into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[dev]'
    echo "$wanted" >"$STAMP"
fi
