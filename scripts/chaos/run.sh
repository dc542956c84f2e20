#!/usr/bin/env bash
# Chaos drills (docs/RUNBOOK.md), one command each:
#
#   scripts/chaos/run.sh                      every drill, long forms (minutes each)
#   scripts/chaos/run.sh --short              every drill, short forms (CI: under 5 minutes in all)
#   scripts/chaos/run.sh hsm-flap kill-9      some drills
#
# Each drill starts its own ron-kms (fault injection on), drives load with
# kms-bench's workers, injects its fault and prints a verdict table in
# Markdown; the exit status is 1 when any drill's verdict is FAILED.
# Drills: hsm-flap (needs softhsm2), burst, rotate-flood, tpm-loss (needs
# swtpm), memory-pressure, hostile-clients, kill-9, network-jitter (needs
# root, iproute2 and iptables: it makes a network namespace). Uses the
# release build unless --debug (CI uses the debug build the tests made).
set -euo pipefail
cd "$(dirname "$0")/../.."
profile=release
args=()
for a in "$@"; do
  case "$a" in
    --debug) profile=debug ;;
    *) args+=("$a") ;;
  esac
done
# KMS_BENCH_BIN: use this kms-bench as built (scripts/test.sh passes the one
# `cargo test --all-targets` made; see scripts/perf/smoke.sh).
if [ -n "${KMS_BENCH_BIN:-}" ]; then
  exec "$KMS_BENCH_BIN" drill "${args[@]}"
fi
if [ "$profile" = release ]; then
  cargo build --locked --release --bin kms-bench
else
  cargo build --locked --bin kms-bench
fi
exec "target/$profile/kms-bench" drill "${args[@]}"
