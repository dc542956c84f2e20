#!/usr/bin/env bash
# The full performance suite, for a quiet machine (~20 minutes after the
# release build): every single operation with its yardstick at 64 in flight,
# a concurrency sweep for Ed25519 sign, batches with their yardstick, the
# four load mixes, 10,000 keys under load, audit on vs off in alternating
# pairs, then the drift
# gate against the release baselines. Reports go to target/perf/<UTC date>/.
#
#   scripts/perf/full.sh [--rebaseline]
set -euo pipefail
cd "$(dirname "$0")/../.."
rebase=0
if [ "${1:-}" = "--rebaseline" ]; then rebase=1; fi
cargo build --locked --release --bin kms-bench
bench=target/release/kms-bench
out="target/perf/$(date -u +%Y%m%dT%H%M%SZ)"
base=testing/performance/baselines/ron-kms/release
mkdir -p "$out"
run() {
  local name="$1"; shift
  echo "== $name"
  "$bench" run --yardstick --quiet --duration 10 --warmup 2 --json "$out/$name.json" "$@"
}
for t in grpc http; do
  run "$t-sign-ed25519" --transport "$t" --op sign --alg ed25519
done
run grpc-sign-ecdsa-p256 --transport grpc --op sign --alg ecdsa-p256
run grpc-sign-ml-dsa-65 --transport grpc --op sign --alg ml-dsa-65
run grpc-verify-ed25519 --transport grpc --op verify --alg ed25519
run grpc-verify-ml-dsa-65 --transport grpc --op verify --alg ml-dsa-65
run grpc-wrap-ml-kem-768 --transport grpc --op wrap --alg ml-kem-768
run grpc-unwrap-ml-kem-768 --transport grpc --op unwrap --alg ml-kem-768
run grpc-sign-ed25519-sweep --transport grpc --op sign --alg ed25519 --concurrency 1,8,32,64,256
# batches of 64 (ops/s counts items)
run grpc-signbatch64-ed25519 --transport grpc --op sign --alg ed25519 --batch 64 --concurrency 4,16
run grpc-verifybatch64-ed25519 --transport grpc --op verify --alg ed25519 --batch 64 --concurrency 4
run grpc-wrapbatch64-ml-kem-768 --transport grpc --op wrap --alg ml-kem-768 --batch 64 --concurrency 4
run http-signbatch64-ed25519 --transport http --op sign --alg ed25519 --batch 64 --concurrency 4
# the mixes have no yardstick (absolute figures)
mix() {
  local name="$1"; shift
  echo "== $name"
  "$bench" run --quiet --duration 10 --warmup 2 --json "$out/$name.json" "$@"
}
mix grpc-mix-steady --mix steady --concurrency 64
mix grpc-mix-burst --mix burst --rate 2000 --concurrency 256
mix grpc-mix-rotate-flood --mix rotate-flood --concurrency 64
mix grpc-mix-tenant-isolation --mix tenant-isolation --concurrency 64
# memory: 10,000 keys, the load spread over all of them
mix grpc-sign-ed25519-10k-keys --op sign --alg ed25519 --keys 10000 --concurrency 64
# audit on vs off: alternating pairs in one run, so a drifting host favours
# neither side (not gated: its runs mix the two)
echo "== audit on vs off (grpc-sign-ed25519-audit-pairs)"
"$bench" run --quiet --duration 10 --warmup 2 --audit-pairs 3 --transport grpc --op sign --alg ed25519 \
  --concurrency 64,256,1024 --json "$out/grpc-sign-ed25519-audit-pairs.json"
if [ "$rebase" = 1 ]; then
  rm -f "$base"/*.json
  cp "$out"/*.json "$base"/
  rm -f "$base"/grpc-sign-ed25519-audit-pairs.json
  echo "baselines written to $base"
fi
scripts/perf/check_drift "$base" $(ls "$out"/*.json | grep -v audit-pairs)
