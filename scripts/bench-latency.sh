#!/usr/bin/env bash
# The hot path's latency runs of issue 23, reproducibly: restarts the release stack (binaries
# already built: `cargo build --release --bins --workspace`), warms it (60 s at 1,000 msg/s: the
# JVMs' JIT compilers take a quarter of the machine for the first minute), then runs
# connect-loadgen at 100, 500, 1,000, 2,000 (50 pairs) and 3,000 msg/s (100 pairs), prints
# messaging's mean phase times, and DynamoDB Local's own floor and ceiling (connect-bench dynamo).
#   scripts/bench-latency.sh [LABEL]        → .local/bench/latency-LABEL.txt
# Settings to compare go in the environment (e.g. KAFKA_LINGER_MS=5 scripts/bench-latency.sh old);
# PROFILE=before runs the services from binaries copied into target/before (an older build);
# the Lambdas then run cargo lambda watch's debug build (it takes --release only with
# PROFILE=release): fine for the 1:1 path they are not on, not for offline delivery or storms.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
label=${1:-run}
mkdir -p .local/bench
out=".local/bench/latency-$label.txt"
: >"$out"
scripts/stack.sh down >/dev/null 2>&1 || true
PROFILE=${PROFILE:-release} STACK_BUILD=0 scripts/stack.sh up >".local/bench/up-$label.log" 2>&1
export CONNECT_JWT_SECRET=${CONNECT_JWT_SECRET:-connect-dev-secret} CONNECT_ENV=local
export DYNAMODB_ENDPOINT=${DYNAMODB_ENDPOINT:-http://127.0.0.1:8000} AWS_REGION=${AWS_REGION:-us-east-1}
echo "# $label $(date -u +%FT%TZ) $(git rev-parse --short HEAD), binaries of target/${PROFILE:-release}" >>"$out"
target/release/connect-loadgen --pairs 50 --rate 1000 --duration 50 --warmup 10 >/dev/null 2>&1
for spec in "50 100" "50 500" "50 1000" "50 2000" "100 3000"; do
  set -- $spec
  echo "== pairs $1 rate $2" >>"$out"
  target/release/connect-loadgen --pairs "$1" --rate "$2" --duration 20 --warmup 5 2>&1 |
    grep -E "^(accepted|delivered|lost)|BatchWrite|  (dynamodb|kafka|gateway-[0-9]+|messaging-[0-9]+|redis) +[0-9]|per delivered" >>"$out"
done
# Messaging's mean time per batch in each phase, over the whole run (both processes).
for port in 8070 8071; do curl -s "127.0.0.1:$port/metrics"; done | awk '
  /^connect_messaging_(phase|prepare)_seconds_(sum|count)/ {
    k = $1; sub(/_(sum|count)(\{.*\})?$/, "", k)
    if (match($1, /phase="[a-z]+"/)) k = k " " substr($1, RSTART, RLENGTH)
    if ($1 ~ /_sum/) s[k] += $2; else c[k] += $2 }
  END { for (k in s) if (c[k] > 0) printf "%-50s mean %.2f ms per batch\n", k, 1000 * s[k] / c[k] }' | sort >>"$out"
target/release/connect-bench dynamo --items 1 --batches 500 --seconds 8 2>&1 | grep -E "latency|ceiling|  dynamodb" >>"$out"
cat "$out"
