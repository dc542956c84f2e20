#!/usr/bin/env bash
# Starts ron-kms in amnesia mode on free loopback ports and runs, against
# that live server: the Rust client example, the Python client example
# (grpcio, stubs generated at run time, local verification with
# pyca/cryptography), Python's grpcio-reflection (v1alpha) listing the
# service, grpcurl driven by reflection alone, the curl walkthrough, and schemathesis over the
# OpenAPI document. SCHEMATHESIS_MAX_EXAMPLES sets the run's length
# (default 25 per operation; scripts/schemathesis-long.sh runs a long one).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-25}"
VENV=target/py
scripts/py-venv.sh

cargo build --locked --bin ron-kms --example rust_client

# shellcheck source=lib/work.sh
. scripts/lib/work.sh

# schemathesis's ignored_auth check sends many bad tokens from 127.0.0.1;
# the default pre-authentication limit (10/s, burst 50) would shed them and
# most operations after them with 429, so this server allows more.
KMS_AUTH_FAILURES_PER_SEC=100000 KMS_AUTH_FAILURE_BURST=1000000 \
./target/debug/ron-kms serve --amnesia --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
    >"$work/out" 2>"$work/err" &
child=$!
for _ in $(seq 1 100); do
    grep -q " serving gRPC on " "$work/out" 2>/dev/null && break
    sleep 0.1
done
line="$(grep " serving gRPC on " "$work/out")" || { cat "$work/err"; exit 1; }
GRPC="$(echo "$line" | sed -E 's/.* serving gRPC on ([^ ]+) and HTTP on ([^ ]+) .*/\1/')"
HTTP="$(echo "$line" | sed -E 's/.* serving gRPC on ([^ ]+) and HTTP on ([^ ]+) .*/\2/')"
TOKEN="$(sed -n 2p "$work/out")"
export KMS_TOKEN="$TOKEN"

passed=0
failed=0
run() { # run NAME COMMAND...
    echo "== example: $1"
    shift
    if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAILED: $*"; fi
}

run rust env KMS_ADDR="http://$GRPC" ./target/debug/examples/rust_client
run python env KMS_ADDR="$GRPC" "$VENV/bin/python" examples/python/client.py
run python-reflection env KMS_ADDR="$GRPC" "$VENV/bin/python" examples/python/reflect.py
run grpcurl env KMS_ADDR="$GRPC" examples/grpcurl.sh "$VENV/bin/grpcurl"
run curl env KMS_HTTP="http://$HTTP" examples/curl.sh
# Revoking a token: schemathesis's stateful phase lists the tokens and
# revokes one, which is its own, and every request after that is 401. So the
# revoke endpoint gets a pass of its own, last.
st() { # st NAME FILTER...
    run "$1" "$VENV/bin/schemathesis" run "http://$HTTP/v1/kms/openapi.json" \
        --url "http://$HTTP" \
        --header "Authorization: Bearer $TOKEN" \
        --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance,ignored_auth \
        --max-examples "$MAX_EXAMPLES" \
        --seed 1 \
        --no-color \
        "${@:2}"
}
st schemathesis --exclude-path-regex '/revoke$'
st schemathesis-revoke --include-path-regex '/revoke$'

echo "examples: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
