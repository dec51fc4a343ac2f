#!/usr/bin/env bash
# The run command: starts Redis and MariaDB where they are not running, creates the demo database,
# and runs the sidecar in the foreground with the native SIP front.
# Any variable of the README's configuration table may be set in the environment to override.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh --no-sipp
bash scripts/venv.sh
export JAMBONES_MYSQL_HOST="${JAMBONES_MYSQL_HOST:-127.0.0.1}"
export JAMBONES_MYSQL_USER="${JAMBONES_MYSQL_USER:-root}"
export JAMBONES_MYSQL_PASSWORD="${JAMBONES_MYSQL_PASSWORD:-}"
export JAMBONES_MYSQL_DATABASE="${JAMBONES_MYSQL_DATABASE:-jambones_demo}"
export JAMBONES_REDIS_HOST="${JAMBONES_REDIS_HOST:-127.0.0.1}"
export JAMBONES_TIME_SERIES_HOST="${JAMBONES_TIME_SERIES_HOST:-127.0.0.1}"
export ENCRYPTION_SECRET="${ENCRYPTION_SECRET:-demo-secret-change-me}"
export SIDECAR_SIP_LISTEN="${SIDECAR_SIP_LISTEN:-udp:127.0.0.1:5060,tcp:127.0.0.1:5060}"
.venv/bin/sbc-sidecar db init --demo
exec .venv/bin/sbc-sidecar run "$@"
