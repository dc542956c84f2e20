#!/usr/bin/env bash
# Makes (or refreshes) the Python virtualenv the suite's outside checks run
# in, target/py, from examples/python/requirements.txt: grpcio for the
# client example, pyca/cryptography (51 or later: ML-DSA with external mu)
# as the independent verifier tests/digest.rs calls, and schemathesis.
# Idempotent; pip skips what is installed already.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=target/py
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV" || { scripts/install-deps.sh; apt-get install -y -qq python3-venv >/dev/null; python3 -m venv "$VENV"; }
fi
"$VENV/bin/pip" install -q --disable-pip-version-check -r examples/python/requirements.txt "schemathesis==4.32.5"
