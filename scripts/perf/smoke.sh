#!/usr/bin/env bash
# CI smoke of the performance harness (under 3 minutes): kms-bench with its
# yardstick for five single operations and a SignBatch of 64, 3-second rounds, then the drift gate
# on the yardstick ratios against the debug-build baselines.
#
#   scripts/perf/smoke.sh [OUT_DIR]           run and gate
#   scripts/perf/smoke.sh --rebaseline        run and store as the baselines
#
# The smoke uses the debug build the test suite has just made (no release
# build in CI), so its baselines are of the debug build too
# (testing/performance/baselines/ron-kms/smoke-debug). The gates are scaled
# 4x (--scale 4): a shared 2-core host cannot hold +-10% on 3-second rounds (two runs back to back differed by up to 25%)
# (PERFORMANCE.md has the run-to-run spread). The full suite on a quiet
# machine is scripts/perf/full.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
rebase=0
if [ "${1:-}" = "--rebaseline" ]; then rebase=1; shift; fi
out="${1:-target/perf/smoke}"
base=testing/performance/baselines/ron-kms/smoke-debug
# KMS_BENCH_BIN: a kms-bench binary already built (scripts/test.sh passes
# the one `cargo test --all-targets` just made: a plain `cargo build` of it
# resolves features without the dev-dependencies and recompiles most of the
# tree, about 4 minutes in CI).
if [ -n "${KMS_BENCH_BIN:-}" ]; then
  bench="$KMS_BENCH_BIN"
else
  cargo build --locked --bin kms-bench
  bench=target/debug/kms-bench
fi
mkdir -p "$out"
rm -f "$out"/*.json
run() {
  local name="$1"; shift
  "$bench" run --yardstick --quiet --duration 3 --warmup 1 --json "$out/$name.json" "$@"
}
run grpc-sign-ed25519 --concurrency 32 --transport grpc --op sign --alg ed25519
run grpc-verify-ed25519 --concurrency 32 --transport grpc --op verify --alg ed25519
run grpc-sign-ml-dsa-65 --concurrency 32 --transport grpc --op sign --alg ml-dsa-65
run grpc-wrap-ml-kem-768 --concurrency 32 --transport grpc --op wrap --alg ml-kem-768
run http-sign-ed25519 --concurrency 32 --transport http --op sign --alg ed25519
run grpc-signbatch64-ed25519 --transport grpc --op sign --alg ed25519 --batch 64 --concurrency 4
# --audit-pairs works end to end: one short pair, the log on and off, and
# its ratio in the report (not gated: 1-second rounds say nothing about it)
mkdir -p "$out/pairs"
"$bench" run --quiet --duration 1 --warmup 0.5 --audit-pairs 1 --concurrency 16 \
  --transport grpc --op sign --alg ed25519 --json "$out/pairs/audit-pairs.json"
python3 - "$out/pairs/audit-pairs.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
[p] = r["audit_pairs"]
assert p["on_ops_per_sec"] > 0 and p["off_ops_per_sec"] > 0, p
assert abs(p["ratio"] - p["on_ops_per_sec"] / p["off_ops_per_sec"]) < 1e-9, p
assert [x["audit"] for x in r["runs"]] == [True, False], r["runs"]
assert r["audit_summary"][0]["median_ratio"] == p["ratio"]
print(f"audit pairs smoke: on/off {p['ratio']:.3f} (one 1-second pair)")
PY
if [ "$rebase" = 1 ]; then
  cp "$out"/*.json "$base"/
  echo "baselines written to $base"
fi
scripts/perf/check_drift "$base" "$out"/*.json --scale 4
