#!/usr/bin/env bash
# Writes the sidecar's settings found in the environment to FILE, one NAME='value' a line, mode 0600: the file
# `sbc-sidecar --env-file`, SIDECAR_ENV_FILE and scripts/sidecar read, and that a shell can `source`.
# Usage: scripts/write-env.sh FILE
set -euo pipefail
file=${1:?usage: scripts/write-env.sh FILE}

# The names of the README's configuration table (the jambonz ones and our SIDECAR_ options).
pattern='^(JAMBONES_|SIDECAR_|DRACHTIO_|ENCRYPTION_SECRET$|JWT_SECRET$|LEGACY_CRYPTO$|ENABLE_JAMBONES_|SBC_|'
pattern+='EXPIRES_INTERVAL$|CHECK_EXPIRES_INTERVAL$|SEND_OPTIONS_PING_INTERVAL$|OPTIONS_|REGISTER_RESPONSE_REMOVE$|'
pattern+='DEAD_SBC_IN_SECOND$|ENABLE_METRICS$|STATS_|NODE_ENV$)'
not_settings='SIDECAR_ENV_FILE|SIDECAR_PYTHON'  # where the file is, and which Python makes the venv

quote() { local value=${1//\'/\'\\\'\'}; printf "'%s'" "$value"; }

umask 077  # the file holds ENCRYPTION_SECRET and the database password
rm -f "$file.tmp"
{
  echo "# Written by scripts/serve.sh at $(date -u +%FT%TZ): the settings the sidecar runs with."
  echo "# Read by scripts/sidecar and 'sbc-sidecar --env-file'; variables set in the environment win."
  for name in $(compgen -e | grep -E "$pattern" | grep -v -x -E "$not_settings" | sort); do
    echo "$name=$(quote "${!name}")"
  done
} > "$file.tmp"
mv "$file.tmp" "$file"
