#!/usr/bin/env bash
# A soak run: SOAK_MINUTES (30) of a steady SOAK_RATE msg/s (200) from SOAK_PAIRS pairs (50),
# across both gateways of a release-built stack, after a 30 s warm-up. Every 10 s a row goes to
# .local/soak/soak.csv (throughput, delivery p50/p99, messaging's lag on incoming_messages,
# RSS and CPU of every process); at the end it is drawn into .local/soak/soak.png.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${CONNECT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/connect-chat}
MATPLOTLIB_VERSION=3.11.2
MINUTES=${SOAK_MINUTES:-30}
cd "$ROOT"
[ -x "$CACHE/venv/bin/pip" ] || python3 -m venv "$CACHE/venv"
"$CACHE/venv/bin/python" -c "import matplotlib, sys; sys.exit(matplotlib.__version__ != '$MATPLOTLIB_VERSION')" 2>/dev/null ||
  "$CACHE/venv/bin/pip" install -q "matplotlib==$MATPLOTLIB_VERSION"
cargo build --release --workspace --bins
PROFILE=release scripts/stack.sh up
mkdir -p .local/soak
target/release/connect-loadgen --pairs "${SOAK_PAIRS:-50}" --rate "${SOAK_RATE:-200}" \
  --warmup 30 --duration $((MINUTES * 60)) --drain 5 --sample-secs 10 --csv .local/soak/soak.csv
"$CACHE/venv/bin/python" scripts/plot-soak.py .local/soak/soak.csv .local/soak/soak.png
echo "[soak] .local/soak/soak.csv, .local/soak/soak.png"
