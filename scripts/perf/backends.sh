#!/usr/bin/env bash
# Sign throughput per custody backend, in one session (PERFORMANCE.md, "Per
# backend"): the same kms-bench run against sealed-file (the embedded
# default), PKCS#11 on a fresh SoftHSM2 token, and a TPM (a fresh swtpm), for
# ECDSA P-256 (a token / TPM key) and Ed25519 (a token key on PKCS#11, a
# TPM-sealed software key on the TPM). gRPC, closed loop, audit on. No
# yardstick: the bare server has no device, so the figures are absolute and
# compare backends with each other in the same session.
#
#   scripts/perf/backends.sh [SECONDS]        (default 8 s per run)
#
# Needs softhsm2 and swtpm (scripts/install-deps.sh --test installs them).
set -euo pipefail
cd "$(dirname "$0")/../.."
secs="${1:-8}"
cargo build --locked --release --bin kms-bench
bench="$PWD/target/release/kms-bench"
out="target/perf/backends-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
# shellcheck source=../lib/work.sh
. scripts/lib/work.sh

module=""
for m in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so; do
  if [ -e "$m" ]; then module="$m"; break; fi
done
[ -n "$module" ] || { echo "libsofthsm2.so not found (scripts/install-deps.sh --test)"; exit 1; }

# A fresh SoftHSM2 token per run (its own SOFTHSM2_CONF), PIN in a 0600 file.
softhsm() { # softhsm DIR
  mkdir -p "$1/tokens"
  printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$1/tokens" >"$1/softhsm2.conf"
  SOFTHSM2_CONF="$1/softhsm2.conf" softhsm2-util --init-token --free --label bench \
    --pin 4711-bench-pin --so-pin 5678-bench-so >/dev/null
  (umask 077; printf '4711-bench-pin' >"$1/pin")
}

# A fresh swtpm on two free consecutive loopback ports.
swtpm_start() { # swtpm_start DIR -> sets tpm_port, child (the swtpm)
  mkdir -p "$1"
  tpm_port=$(python3 -c 'import socket
for p in range(23000, 24000, 2):
    try:
        a = socket.socket(); a.bind(("127.0.0.1", p)); b = socket.socket(); b.bind(("127.0.0.1", p + 1))
        a.close(); b.close(); print(p); break
    except OSError:
        pass')
  swtpm socket --tpm2 --tpmstate "dir=$1" --server "type=tcp,port=$tpm_port,bindaddr=127.0.0.1" \
    --ctrl "type=tcp,port=$((tpm_port + 1)),bindaddr=127.0.0.1" --flags not-need-init,startup-clear \
    >/dev/null 2>&1 &
  child=$!
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$((tpm_port + 1))") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "swtpm did not start"; exit 1
}

run() { # run NAME CONCURRENCY ARGS...
  local name="$1" conc="$2"; shift 2
  echo "== $name"
  "$bench" run --quiet --transport grpc --op sign --duration "$secs" --warmup 2 \
    --concurrency "$conc" --json "$out/$name.json" "$@"
}

for alg in ecdsa-p256 ed25519; do
  run "sealed-file-$alg" 64 --alg "$alg"
  softhsm "$work/hsm-$alg"
  SOFTHSM2_CONF="$work/hsm-$alg/softhsm2.conf" KMS_BACKEND=pkcs11 KMS_PKCS11_MODULE="$module" \
    KMS_PKCS11_TOKEN_LABEL=bench KMS_PKCS11_PIN_FILE="$work/hsm-$alg/pin" \
    run "pkcs11-softhsm2-$alg" 64 --alg "$alg"
  swtpm_start "$work/tpm-$alg"
  # a TPM serves one command at a time: 16 in flight is plenty
  KMS_BACKEND=tpm KMS_TPM_TCTI="swtpm:host=127.0.0.1,port=$tpm_port" \
    run "tpm-swtpm-$alg" 16 --alg "$alg"
  stop_child "$child"; child=""
done
scripts/perf/table "$out"/*.json
echo "reports in $out"
