#!/usr/bin/env bash
# Run every fuzz target for SECONDS (default 600) each, two at a time (this
# machine has 2 cores). Needs the nightly toolchain and cargo-fuzz. New
# corpus entries go to target/fuzz-corpus/<target>; the checked-in seeds in
# fuzz/corpus/<target> are read, never written. Exits non-zero if any target
# found a crash (its input is under fuzz/artifacts/<target>/).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-600}"
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
targets=(envelope bundle json_requests proto_service audit_chain config)
cargo +nightly fuzz build -O
mkdir -p target/fuzz-logs
run() {
  local t="$1"
  mkdir -p "target/fuzz-corpus/$t"
  cargo +nightly fuzz run -O "$t" "target/fuzz-corpus/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -print_final_stats=1 >"target/fuzz-logs/$t.log" 2>&1
}
report() {
  local t="$1" rc="$2"
  local stats
  stats=$(grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)|^#[0-9]+.*DONE' \
    "target/fuzz-logs/$t.log" | tr -s ' ' | tr '\n' ' ' || true)
  echo "$t: exit $rc; $stats"
}
failed=0
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
