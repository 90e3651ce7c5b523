#!/usr/bin/env bash
# Instructions per message over the memory ports, under callgrind: a figure that does not move
# with the machine's noise (issue 23). Two runs of each harness, of SMALL and LARGE messages;
# their difference over (LARGE − SMALL) leaves the start-up out:
#   - messaging's step alone (`connect-bench step`: dedupe, authorize, sequence, store, log, route);
#   - the gateway (`connect-bench gateway`: a send read from its socket, published, its
#     `accepted` and the peer's `message` handed over from records and written, the peer's ack
#     read and its cursor moved), less the inclusive cost of the harness's messaging (the step
#     between them); then where the gateway's instructions go (inclusive, per message).
#   scripts/bench-instructions.sh [LABEL]   → .local/bench/instructions-LABEL.txt
# BENCH_BIN picks the binary (default target/release/connect-bench, built with
# `cargo build --release -p connect-bench`).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
label=${1:-run}
bin=${BENCH_BIN:-target/release/connect-bench}
small=${SMALL:-2000}
large=${LARGE:-12000}
dir=.local/bench/callgrind-$label
out=.local/bench/instructions-$label.txt
mkdir -p "$dir"
: >"$out"
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }

# The program's total instructions (Ir) in a callgrind file.
total() { grep -E '^(summary|totals):' "$1" | head -1 | awk '{print $2}'; }
# The inclusive instructions of the functions whose names contain $2 (the first listed).
inclusive() {
  callgrind_annotate --inclusive=yes --threshold=100 "$1" 2>/dev/null |
    grep -F -- "$2" | head -1 | awk '{gsub(",", "", $1); print $1}'
}
per() { awk -v a="${1:-0}" -v b="${2:-0}" -v n=$((large - small)) 'BEGIN { printf "%.0f", (b - a) / n }'; }

run() { # name, messages, args...
  local name=$1 n=$2
  shift 2
  valgrind --tool=callgrind --callgrind-out-file="$dir/$name-$n.out" "$bin" "$@" --messages "$n" \
    >>"$dir/runs.log" 2>&1
}

echo "# $label $(date -u +%FT%TZ) $(git rev-parse --short HEAD) $bin: instructions per message (callgrind, $large − $small messages)" >>"$out"
# A binary from before `connect-bench gateway` existed measures the step only.
gateway=yes
"$bin" gateway --help >/dev/null 2>&1 || gateway=
for n in "$small" "$large"; do
  run step "$n" step
  [ -z "$gateway" ] || run gateway "$n" gateway
done
step=$(per "$(total "$dir/step-$small.out")" "$(total "$dir/step-$large.out")")
if [ -z "$gateway" ]; then
  echo "messaging step (connect-bench step, batches of 4): $step" >>"$out"
  cat "$out"
  exit 0
fi
all=$(per "$(total "$dir/gateway-$small.out")" "$(total "$dir/gateway-$large.out")")
harness='connect_bench::gateway::messaging::{{closure}}'
within=$(per "$(inclusive "$dir/gateway-$small.out" "$harness")" "$(inclusive "$dir/gateway-$large.out" "$harness")")
{
  echo "messaging step (connect-bench step, batches of 4): $step"
  echo "gateway process (connect-bench gateway): $all, of which the harness's messaging $within"
  echo "gateway: $((all - within))"
  echo "  where (inclusive, per message):"
  for f in 'Connection<S>::on_text::{{closure}}' 'connect_gateway::delivery::hand_over' \
    'Connection<S>::write_frames::{{closure}}' 'Connection<S>::serve::{{closure}}' \
    'tungstenite::protocol::WebSocketContext::read' 'connect_kafka::codec::encode_submission' \
    'malloc' 'free'; do
    printf '    %-60s %s\n' "$f" "$(per "$(inclusive "$dir/gateway-$small.out" "$f")" "$(inclusive "$dir/gateway-$large.out" "$f")")"
  done
} >>"$out"
cat "$out"
