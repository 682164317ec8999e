#!/usr/bin/env bash
# Project-local PostgreSQL (+TimescaleDB) and Mosquitto under $STACK_DIR: `stack.sh up|down|status`.
# Driven by `wulian stack ...`, which passes the settings as environment variables:
#   STACK_DIR, PG_PORT, MQTT_PORT, PG_MAJOR, STACK_USER
# Broker security is always on, through Mosquitto's dynamic-security plugin: service accounts (ingest,
# api, simulator, gateway) and the plugin's administrator get generated passwords in
# $STACK_DIR/secrets.env (0600, read by wulian/settings.py), rendered into the plugin's config
# $STACK_DIR/mosquitto/dynamic-security.json (devices: `wulian device add`, over the control topic).
# Fail closed: if that cannot be set up (no Python with Wulian, no plugin), the broker is not started.
# PostgreSQL refuses to run as root, so when run as root both servers run as $STACK_USER (created
# if missing). Nothing here touches the machine's own PostgreSQL or Mosquitto instances.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
STACK_DIR="${STACK_DIR:-$(cd "$HERE/../.." && pwd)/.stack}"
PG_PORT="${PG_PORT:-55432}"
MQTT_PORT="${MQTT_PORT:-51883}"
PG_MAJOR="${PG_MAJOR:-15}"
STACK_USER="${STACK_USER:-wulian}"
ROOT_DIR="$(cd "$HERE/../.." && pwd)"
PG_BIN="/usr/lib/postgresql/$PG_MAJOR/bin"
PGDATA="$STACK_DIR/pg"
RUN="$STACK_DIR/run"
MQ="$STACK_DIR/mosquitto"

log() { printf '[stack] %s\n' "$*" >&2; }

as_user() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u "$STACK_USER" -- "$@"; else "$@"; fi
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pg_running() { [ -f "$PGDATA/postmaster.pid" ] && as_user "$PG_BIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; }

mq_pid() { [ -f "$MQ/mosquitto.pid" ] && cat "$MQ/mosquitto.pid" 2>/dev/null || true; }
mq_running() { local p; p="$(mq_pid)"; [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }

prepare_dirs() {
  if [ "$(id -u)" -eq 0 ] && ! id "$STACK_USER" >/dev/null 2>&1; then
    log "creating system user $STACK_USER (PostgreSQL will not run as root)"
    useradd --system --no-create-home --shell /usr/sbin/nologin "$STACK_USER"
  fi
  mkdir -p "$STACK_DIR" "$RUN" "$MQ/data"
  if [ "$(id -u)" -eq 0 ]; then
    chown "$STACK_USER" "$STACK_DIR" "$RUN" "$MQ" "$MQ/data"
    # the servers' user must be able to reach the stack dir through its parents
    local d="$STACK_DIR"
    while [ "$d" != "/" ]; do chmod o+x "$d" 2>/dev/null || true; d="$(dirname "$d")"; done
  fi
}

pg_up() {
  if pg_running; then log "postgresql already running on $PG_PORT"; return; fi
  if port_busy "$PG_PORT"; then log "port $PG_PORT is taken by another process: set WULIAN_STACK__PG_PORT"; exit 1; fi
  if [ ! -f "$PGDATA/PG_VERSION" ]; then
    log "initdb $PGDATA"
    as_user "$PG_BIN/initdb" -D "$PGDATA" -U wulian --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    cat "$HERE/postgresql.conf" >> "$PGDATA/postgresql.conf"
  fi
  # per-start settings that depend on where the stack lives
  as_user "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$STACK_DIR/postgresql.log" -w -t 60 \
    -o "-p $PG_PORT -k $RUN -c listen_addresses=127.0.0.1" start >/dev/null
  as_user "$PG_BIN/psql" -h "$RUN" -p "$PG_PORT" -U wulian -d postgres -Atqc \
    "SELECT 1 FROM pg_database WHERE datname='wulian'" | grep -q 1 || \
    as_user "$PG_BIN/createdb" -h "$RUN" -p "$PG_PORT" -U wulian wulian
  log "postgresql up on 127.0.0.1:$PG_PORT (data $PGDATA)"
}

# The Python that renders the accounts (WULIAN_PYTHON, default the checkout's .venv) and the plugin.
PY="${WULIAN_PYTHON:-$ROOT_DIR/.venv/bin/python}"
DYNSEC_PLUGIN="${DYNSEC_PLUGIN:-/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so}"

# Refuse before anything starts if the broker could not be secured (fail closed).
mq_preflight() {
  if [ ! -x "$PY" ] || ! "$PY" -c 'import wulian.ingest.broker_accounts' 2>/dev/null; then
    log "no Python with Wulian at $PY (run make install, or set WULIAN_PYTHON): refusing to start an unauthenticated broker"
    exit 1
  fi
  if [ ! -f "$DYNSEC_PLUGIN" ]; then
    log "no dynamic-security plugin at $DYNSEC_PLUGIN (Debian package mosquitto >= 2.0): refusing to start"
    exit 1
  fi
}

# Service accounts and the dynamic-security config (ingest/broker_accounts.py), then the lines that
# enable them (they come after the template's allow_anonymous, and the last occurrence wins).
mq_auth() {
  (cd "$ROOT_DIR" && "$PY" -m wulian.ingest.broker_accounts bootstrap "$MQ" "$STACK_DIR/secrets.env")
  if [ "$(id -u)" -eq 0 ]; then chown "$STACK_USER" "$MQ/passwd" "$MQ/acl" "$MQ/dynamic-security.json"; fi
  chmod 0600 "$STACK_DIR/secrets.env" "$MQ/passwd" "$MQ/dynamic-security.json"
  printf '\n# broker security (deploy/local/stack.sh)\nallow_anonymous false\nplugin %s\nplugin_opt_config_file %s\n' \
    "$DYNSEC_PLUGIN" "$MQ/dynamic-security.json" >> "$MQ/mosquitto.conf"
  log "mosquitto: authentication on (dynamic security; service accounts in $STACK_DIR/secrets.env, devices: wulian device add)"
}

# The effective allow_anonymous is the last one in the file: anything but false is refused.
mq_check_closed() {
  local last
  last="$(grep -E '^[[:space:]]*allow_anonymous' "$MQ/mosquitto.conf" | tail -n 1 | awk '{print $2}')"
  if [ "$last" != "false" ]; then
    log "$MQ/mosquitto.conf would allow anonymous clients (allow_anonymous $last): refusing to start"
    exit 1
  fi
}

# The broker's config is rendered and checked before anything starts: a refused config starts nothing.
mq_config() {
  if mq_running; then return; fi
  if port_busy "$MQTT_PORT"; then log "port $MQTT_PORT is taken by another process: set WULIAN_STACK__MQTT_PORT"; exit 1; fi
  sed -e "s#@PORT@#$MQTT_PORT#g" -e "s#@DATA@#$MQ/data/#g" -e "s#@PID@#$MQ/mosquitto.pid#g" \
      -e "s#@LOG@#$MQ/mosquitto.log#g" "$HERE/mosquitto.conf" > "$MQ/mosquitto.conf"
  mq_auth
  if [ -f "$MQ/extra.conf" ]; then cat "$MQ/extra.conf" >> "$MQ/mosquitto.conf"; fi
  mq_check_closed
  [ "$(id -u)" -eq 0 ] && chown "$STACK_USER" "$MQ/mosquitto.conf"
}

mq_up() {
  if mq_running; then log "mosquitto already running on $MQTT_PORT"; return; fi
  as_user /usr/sbin/mosquitto -d -c "$MQ/mosquitto.conf"
  for _ in $(seq 1 50); do port_busy "$MQTT_PORT" && break; sleep 0.1; done
  port_busy "$MQTT_PORT" || { log "mosquitto did not start: see $MQ/mosquitto.log"; exit 1; }
  log "mosquitto up on 127.0.0.1:$MQTT_PORT (persistence in $MQ/data)"
}

case "${1:-status}" in
  up)
    bash "$HERE/install.sh"
    mq_running || mq_preflight
    prepare_dirs
    mq_config
    pg_up
    mq_up
    ;;
  down)
    if pg_running; then as_user "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null; log "postgresql stopped"; fi
    if mq_running; then
      p="$(mq_pid)"; kill "$p"
      for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
      log "mosquitto stopped"
    fi
    ;;
  status)
    rc=0
    if pg_running; then echo "postgresql: running on 127.0.0.1:$PG_PORT ($PGDATA)"; else echo "postgresql: stopped"; rc=3; fi
    if mq_running; then echo "mosquitto: running on 127.0.0.1:$MQTT_PORT (pid $(mq_pid))"; else echo "mosquitto: stopped"; rc=3; fi
    exit $rc
    ;;
  *) echo "usage: stack.sh up|down|status" >&2; exit 2 ;;
esac
