#!/usr/bin/env bash
# Installs (apt) and starts on loopback what the sidecar and its tests need, where it is missing:
# Redis, MariaDB, InfluxDB 1.x, sipp and socat. Idempotent: a service already answering is left alone.
# Usage: scripts/services.sh [--no-influx] [--no-sipp] (--no-sipp: neither sipp nor socat, the tests' tools)
set -euo pipefail

want_influx=1
want_sipp=1
for arg in "$@"; do
  case "$arg" in
    --no-influx) want_influx=0 ;;
    --no-sipp) want_sipp=0 ;;
    *) echo "unknown option $arg" >&2; exit 2 ;;
  esac
done

SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi

say() { echo "[services] $*"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && exec 3>&- ; }

wait_port() {
  local port=$1 name=$2
  for _ in $(seq 1 60); do
    if port_open "$port"; then return 0; fi
    sleep 0.5
  done
  echo "[services] $name did not start listening on 127.0.0.1:$port" >&2
  return 1
}

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# The Redis Cluster of the tests and of bench/run --redis-cluster is joined with redis-cli.
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
if [ "$want_influx" = 1 ] && ! command -v influxd >/dev/null 2>&1; then missing+=(influxdb); fi
if [ "$want_sipp" = 1 ] && ! command -v sipp >/dev/null 2>&1; then missing+=(sip-tester); fi
# The two-SBC test forwards MySQL into its network namespaces with socat (a test tool, like sipp).
if [ "$want_sipp" = 1 ] && ! command -v socat >/dev/null 2>&1; then missing+=(socat); fi
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian's influxdb unit listens on every interface; ours is started below on loopback only.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet influxdb 2>/dev/null; then
    $SUDO systemctl disable --now influxdb >/dev/null 2>&1 || true
  fi
fi

if ! port_open 6379; then
  say "starting redis on 127.0.0.1:6379"
  $SUDO mkdir -p /var/lib/redis /var/log/redis
  $SUDO redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/sidecar.log
  wait_port 6379 redis
fi

if ! port_open 3306; then
  say "starting mariadb on 127.0.0.1:3306"
  $SUDO mkdir -p /run/mysqld && $SUDO chown mysql:mysql /run/mysqld 2>/dev/null || true
  if [ ! -d /var/lib/mysql/mysql ]; then
    $SUDO mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  fi
  $SUDO start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- \
    --user=mysql --bind-address=127.0.0.1
  wait_port 3306 mariadb
fi
# A fresh install lets root in through the Unix socket only; the service and the tests log in over TCP
# as root with an empty password (the local development set-up). Only when that fails is it allowed.
if ! mariadb -h 127.0.0.1 -u root -e 'SELECT 1' >/dev/null 2>&1; then
  say "letting root log in to mariadb over TCP on 127.0.0.1 with an empty password"
  $SUDO mariadb -e "ALTER USER root@localhost IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD('');
    CREATE USER IF NOT EXISTS root@'127.0.0.1' IDENTIFIED BY '';
    GRANT ALL ON *.* TO root@'127.0.0.1' WITH GRANT OPTION;"
fi

if [ "$want_influx" = 1 ] && ! port_open 8086; then
  say "starting influxdb on 127.0.0.1:8086"
  conf=/etc/influxdb/sidecar-loopback.conf
  $SUDO mkdir -p /var/lib/influxdb/meta /var/lib/influxdb/data /var/lib/influxdb/wal /var/log/influxdb
  $SUDO tee "$conf" >/dev/null <<'CONF'
reporting-disabled = true
bind-address = "127.0.0.1:8088"
[meta]
  dir = "/var/lib/influxdb/meta"
[data]
  dir = "/var/lib/influxdb/data"
  wal-dir = "/var/lib/influxdb/wal"
[http]
  bind-address = "127.0.0.1:8086"
  log-enabled = false
CONF
  $SUDO start-stop-daemon --start --oknodo --background --make-pidfile --pidfile /run/influxd-sidecar.pid \
    --startas /bin/sh -- -c "exec /usr/bin/influxd -config $conf >>/var/log/influxdb/sidecar.log 2>&1"
  wait_port 8086 influxdb
fi

say "ready: redis 6379, mariadb 3306$([ "$want_influx" = 1 ] && echo ', influxdb 8086')$([ "$want_sipp" = 1 ] && echo ", sipp $(command -v sipp)")"
