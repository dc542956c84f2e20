#!/usr/bin/env bash
# The whole test suite, as CI runs it: system packages, format check, clippy
# with warnings as errors, then every unit and integration test (real server
# on loopback, both fronts, every algorithm).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --test

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "== Python virtualenv for the outside checks (scripts/py-venv.sh)"
scripts/py-venv.sh
echo "== cargo test"
cargo test --locked --all-targets --no-run
# The build leaves gigabytes of dirty pages behind; write them out now, so
# that the tests' own fsyncs do not queue behind the build's writeback.
sync
cargo test --locked --all-targets
cargo test --locked --doc
echo "== client examples and schemathesis against a live server"
scripts/examples.sh
echo "== performance smoke: kms-bench with its yardstick, drift gate on the ratios (scripts/perf/smoke.sh)"
KMS_BENCH_BIN=target/debug/kms-bench scripts/perf/smoke.sh
echo "== chaos drills, short forms (scripts/chaos/run.sh --short; verdict tables in the log)"
KMS_BENCH_BIN=target/debug/kms-bench scripts/chaos/run.sh --short
echo "== deploy artifacts: alerts, dashboard, Kubernetes manifests, Dockerfile, compose file, systemd unit (scripts/check-deploy.sh)"
scripts/check-deploy.sh
echo "== tokio-console build (feature console, --cfg tokio_unstable): the endpoint serves tasks"
# A separate target dir: different RUSTFLAGS would otherwise rebuild the
# main one from scratch on the next run. -D warnings: the console-only code
# gets no clippy pass of its own, but it must compile clean.
# Profile console-ci: dependencies unoptimised, which compiles faster; the
# test only checks that the endpoint serves tasks.
RUSTFLAGS="--cfg tokio_unstable -D warnings" cargo test --locked -p ron-kms --features console \
  --profile console-ci --target-dir target/console --test console
echo "== fuzz smoke: every cargo-fuzz target for 10 s (scripts/fuzz.sh --smoke)"
scripts/fuzz.sh --smoke 10
