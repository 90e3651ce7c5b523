#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for FUZZ_SECONDS (default 30) each with cargo-fuzz (libFuzzer),
# from the committed seeds (fuzz/seeds/<target>) plus what earlier runs found
# (.local/fuzz/corpus/<target>). A crash fails the run; its input is left in
# fuzz/artifacts/<target>/ (replay: `cargo fuzz run <target> <file>` from fuzz/'s parent).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${CONNECT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/connect-chat}
CARGO_FUZZ_VERSION=0.13.2
SECONDS_EACH=${FUZZ_SECONDS:-30}
TARGETS=${FUZZ_TARGETS:-frame token http_api events}
log() { printf '\033[1m[fuzz]\033[0m %s\n' "$*"; }

tools="$CACHE/cargo-fuzz-$CARGO_FUZZ_VERSION"
if ! "$tools/bin/cargo-fuzz" --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION (crates.io, into $tools)"
  cargo install --locked --quiet --root "$tools" cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
export PATH="$tools/bin:$PATH"
# cargo fuzz passes rustc -Z flags: the nightly toolchain when rustup has one, else the stable
# one told to take them.
toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then toolchain=(+nightly); else export RUSTC_BOOTSTRAP=1; fi
cd "$ROOT"
# No sanitizer: the code under test is safe Rust; libFuzzer's coverage and panics are what count.
cargo "${toolchain[@]}" fuzz build --sanitizer none
rc=0
for t in $TARGETS; do
  corpus="$ROOT/.local/fuzz/corpus/$t"
  mkdir -p "$corpus" "$ROOT/fuzz/seeds/$t"
  log "$t: ${SECONDS_EACH} s"
  if ! cargo "${toolchain[@]}" fuzz run --sanitizer none "$t" "$corpus" "$ROOT/fuzz/seeds/$t" -- \
      -max_total_time="$SECONDS_EACH" -max_len=131072 -timeout=10 -print_final_stats=1 2>"$ROOT/.local/fuzz/$t.log"; then
    log "$t: FAILED (input in fuzz/artifacts/$t/); last lines of .local/fuzz/$t.log:"; tail -n 40 "$ROOT/.local/fuzz/$t.log" >&2; rc=1
  else
    grep -E '^stat::(number_of_executed_units|new_units_added)|^Done' "$ROOT/.local/fuzz/$t.log" | sed "s/^/[fuzz] $t: /" || true
  fi
done
exit $rc
