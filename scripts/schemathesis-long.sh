#!/usr/bin/env bash
# A long schemathesis run (500 examples per operation, all phases) against a
# live amnesia-mode server, with the examples. CI runs the short form.
set -euo pipefail
cd "$(dirname "$0")/.."
SCHEMATHESIS_MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-500}" exec scripts/examples.sh
