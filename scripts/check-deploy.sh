#!/usr/bin/env bash
# Checks the deploy artifacts: Prometheus alert rules (promtool check + unit
# tests of the rules) and the Grafana dashboard's JSON. Installs promtool
# (Debian package prometheus) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v promtool >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
promtool check rules deploy/prometheus/ron-kms-alerts.yml
(cd deploy/prometheus && promtool test rules ron-kms-alerts.test.yml)
python3 -c "import json,sys; d=json.load(open(sys.argv[1])); assert d['panels'], 'no panels'; print('dashboard ok:', len(d['panels']), 'panels')" deploy/grafana/ron-kms-dashboard.json
