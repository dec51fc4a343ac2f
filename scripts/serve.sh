#!/usr/bin/env bash
# The run command: starts Redis and MariaDB where they are not running, makes the venv, creates the demo database,
# writes the settings to .sidecar.env (for scripts/sidecar, the CLI in any shell) and runs the sidecar in the
# foreground with the native SIP front. Any variable of the README's configuration table set in the environment
# overrides a default; arguments are passed on to `sbc-sidecar run`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/progress.sh
env_file="$PWD/.sidecar.env"

step services "Redis and MariaDB on 127.0.0.1 (apt-get install redis-server mariadb-server when missing)"
bash scripts/services.sh --no-sipp --no-influx
step_done "ready"

bash scripts/venv.sh  # the venv, packages and compile steps

export JAMBONES_MYSQL_HOST="${JAMBONES_MYSQL_HOST:-127.0.0.1}"
export JAMBONES_MYSQL_USER="${JAMBONES_MYSQL_USER:-root}"
export JAMBONES_MYSQL_PASSWORD="${JAMBONES_MYSQL_PASSWORD:-}"
export JAMBONES_MYSQL_DATABASE="${JAMBONES_MYSQL_DATABASE:-jambones_demo}"
export JAMBONES_REDIS_HOST="${JAMBONES_REDIS_HOST:-127.0.0.1}"
export ENCRYPTION_SECRET="${ENCRYPTION_SECRET:-demo-secret-change-me}"
export SIDECAR_SIP_LISTEN="${SIDECAR_SIP_LISTEN:-udp:127.0.0.1:5060,tcp:127.0.0.1:5060}"

bash scripts/write-env.sh "$env_file"

step database "the jambonz tables and the demo account in $JAMBONES_MYSQL_DATABASE on $JAMBONES_MYSQL_HOST"
.venv/bin/sbc-sidecar --env-file "$env_file" db init --demo
step_done

cat <<INFO
[setup] settings written to $env_file; the CLI with them, from any shell:
[setup]   $PWD/scripts/sidecar history demo@sip.demo.local
[setup]   $PWD/scripts/sidecar events tail --from-start
[setup] demo: register demo / demo-password at sip.demo.local on ${SIDECAR_SIP_LISTEN}
INFO
exec .venv/bin/sbc-sidecar --env-file "$env_file" run "$@"
