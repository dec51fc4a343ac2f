#!/usr/bin/env bash
# The test command: installs and starts what the tests need, then runs lint and the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
bash scripts/venv.sh test
.venv/bin/ruff check .
.venv/bin/mypy
set +e
timeout --kill-after=30 1500 .venv/bin/python -m pytest -p no:cacheprovider "$@"
status=$?
set -e
if [ "$status" = 5 ]; then
  echo "pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit "$status"
