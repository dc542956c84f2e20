#!/usr/bin/env bash
# Run every fuzz target (fuzz/, cargo-fuzz + libFuzzer).
#
#   scripts/fuzz.sh [SECONDS]          long runs: release build, SECONDS (default
#                                      600) per target, two at a time (2 cores)
#   scripts/fuzz.sh --smoke [SECONDS]  CI smoke: debug build (quicker to
#                                      compile), SECONDS (default 10) per target,
#                                      two at a time
#
# Installs cargo-fuzz from crates.io when missing. Uses the nightly toolchain
# when there is one; otherwise the stable one with RUSTC_BOOTSTRAP=1 (libFuzzer
# and the sanitizer flags need nightly features; the stable toolchain ships the
# sanitizer runtimes). New corpus entries go to target/fuzz-corpus/<target>; the
# checked-in seeds in fuzz/corpus/<target> are read, never written. Exits
# non-zero if any target crashed (its input is under fuzz/artifacts/<target>/).
set -euo pipefail
cd "$(dirname "$0")/.."
smoke=0
if [ "${1:-}" = "--smoke" ]; then smoke=1; shift; fi
secs="${1:-$([ "$smoke" = 1 ] && echo 10 || echo 600)}"
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  export RUSTC_BOOTSTRAP=1
fi
profile=(-O)
if [ "$smoke" = 1 ]; then profile=(--dev); fi
targets=(envelope bundle hybrid_check json_requests proto_service audit_chain config)
cargo "${toolchain[@]}" fuzz build "${profile[@]}"
mkdir -p target/fuzz-logs
run() {
  local t="$1"
  mkdir -p "target/fuzz-corpus/$t"
  cargo "${toolchain[@]}" fuzz run "${profile[@]}" "$t" "target/fuzz-corpus/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 >"target/fuzz-logs/$t.log" 2>&1
}
report() {
  local t="$1" rc="$2"
  local stats
  stats=$(grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)|^#[0-9]+.*DONE' \
    "target/fuzz-logs/$t.log" | tr -s ' ' | tr '\n' ' ' || true)
  echo "$t: exit $rc; $stats"
  if [ "$rc" != 0 ]; then tail -40 "target/fuzz-logs/$t.log"; fi
}
failed=0
# two targets at a time (2 cores), in both modes
for ((i = 0; i < ${#targets[@]}; i += 2)); do
  a="${targets[i]}"
  run "$a" & pa=$!
  b=""
  if ((i + 1 < ${#targets[@]})); then
    b="${targets[i + 1]}"
    run "$b" & pb=$!
  fi
  rc=0; wait "$pa" || rc=$?; report "$a" "$rc"; ((rc == 0)) || failed=1
  if [ -n "$b" ]; then
    rc=0; wait "$pb" || rc=$?; report "$b" "$rc"; ((rc == 0)) || failed=1
  fi
done
exit "$failed"
