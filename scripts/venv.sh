#!/usr/bin/env bash
# Makes .venv (once) and installs the project into it, with the test extra when asked, then compiles the hot path.
# Usage: scripts/venv.sh [test]
#
# The interpreter: $SIDECAR_PYTHON if set, else Debian's /usr/bin/python3.11, else python3. Debian
# builds its interpreter with PGO and LTO; a plain source build (pyenv's default) runs this service
# about a quarter slower (bench/README.md). A .venv made by another interpreter is made again.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/progress.sh
extra=""
[ "${1:-}" = "test" ] && extra="[test]"

# Debian packages, with sudo when not root; the package lists are refreshed only when an install fails.
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get install -y -qq "$@" >/dev/null 2>&1 \
    || { $sudo apt-get update -qq && $sudo apt-get install -y -qq "$@" >/dev/null; }
}

# A command whose output goes to .venv/setup.log, shown only when it fails.
quietly() {
  if ! "$@" >>.venv/setup.log 2>&1; then
    tail -n 40 .venv/setup.log >&2
    echo "venv.sh: '$*' failed; its whole output is in .venv/setup.log" >&2
    return 1
  fi
}

python="${SIDECAR_PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x /usr/bin/python3.11 ]; then python=/usr/bin/python3.11; else python=$(command -v python3); fi
fi
step venv "a Python virtual environment in .venv from $python (python3-venv from apt when missing)"
wanted=$("$python" -c 'import sys; print(sys.base_prefix, sys.version_info[:2] >= (3, 11))')
case "$wanted" in *True) ;; *) echo "venv.sh: $python is older than Python 3.11" >&2; exit 2 ;; esac
if [ -x .venv/bin/python ] && [ "$(.venv/bin/python -c 'import sys; print(sys.base_prefix)')" != "${wanted% *}" ]; then
  rm -rf .venv
fi
if [ -x .venv/bin/python ]; then
  step_done "exists"
else
  if ! "$python" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    apt_install python3-venv
    "$python" -m venv .venv
  fi
  step_done "made"
fi

step packages "the project and its dependencies${extra:+ (with the test extra)} into .venv with pip, from PyPI"
stamp=".venv/.installed${extra}"
if [ -z "$extra" ] && [ -f ".venv/.installed[test]" ] && [ ! pyproject.toml -nt ".venv/.installed[test]" ]; then
  stamp=".venv/.installed[test]"  # the test install holds everything the plain one has
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  quietly .venv/bin/python -m pip install -q --upgrade pip
  quietly .venv/bin/python -m pip install -q -e ".${extra}"
  touch "$stamp"
  installed="installed"
else
  installed="up to date"
fi
# mypyc (from mypy) and setuptools compile the hot path (runtime/compiled.py); an older venv may lack them
if ! .venv/bin/python -c 'import mypyc.build, setuptools' 2>/dev/null; then
  quietly .venv/bin/python -m pip install -q "setuptools>=77" "mypy>=1.10"
  installed="installed"
fi
step_done "$installed"

# The hot-path modules compiled in place (a no-op when up to date). Debian's compiler and headers are added
# for Debian's interpreter when missing; without them the source runs (compile.py says so in one line).
step compile "the SIP edge with mypyc (scripts/compile.py; gcc and python3.11-dev from apt when missing)"
if [ "$python" = /usr/bin/python3.11 ] && command -v apt-get >/dev/null \
  && { ! command -v gcc >/dev/null || [ ! -f /usr/include/python3.11/Python.h ]; }; then
  apt_install gcc python3.11-dev 2>/dev/null || true
fi
if .venv/bin/python scripts/compile.py; then step_done; else step_done "left as Python"; fi
