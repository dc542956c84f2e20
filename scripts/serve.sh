#!/usr/bin/env bash
# Runs ron-kms on its embedded default: sealed-file custody with a master key
# file generated on first start, SQLite under ./ron-kms-data, gRPC on
# 127.0.0.1:9445 and HTTP on 127.0.0.1:9446. Extra arguments go to `serve`
# (e.g. --data-dir, --grpc-addr, --http-addr, --config).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
exec cargo run --release --locked --bin ron-kms -- serve "$@"
