#!/usr/bin/env bash
# Installs the system packages ron-kms needs to build and test, when they
# are missing:
#   cmake, libclang-dev, pkg-config — liboqs is built from source by the
#   `oqs` crate (cmake) and its bindings are generated with bindgen (libclang);
#   libtss2-dev — the TPM software stack the `tss-esapi` crate links (the
#   tpm backend);
# and, with --test (scripts/test.sh passes it; running the service does not
# need them):
#   softhsm2 — the PKCS#11 token the pkcs11 backend is tested on;
#   opensc — pkcs11-tool, the tests' independent look into that token;
#   libp11-kit-dev — pkcs11.h, for the session-limited test module
#   (tests/fixtures/p11_session_limit.c, tests/pkcs11_sessions.rs);
#   swtpm, swtpm-tools — the TPM 2.0 simulator the tpm backend is tested on;
#   postgresql — the server the PostgreSQL store and the scale-out tests run
#   on (each test binary starts a throw-away cluster of its own,
#   tests/common/pg.rs; the package's own cluster is not used);
#   iproute2, iptables — the network-jitter drill's namespace, veth pair and
#   NFQUEUE rules (iptables-legacy; drill/network.rs in kms-bench).
# Idempotent and quiet when everything is present. Debian/Ubuntu (apt-get);
# uses sudo when not root.
set -euo pipefail

missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
# libclang itself (libclang.so or libclang-N.so), not libclang-cpp, which
# some images ship alone and bindgen cannot use
if ! ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 \
    && ! ls /usr/lib/*/libclang-[0-9]*.so* >/dev/null 2>&1; then
    missing+=(libclang-dev)
fi
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
pkg-config --exists tss2-esys 2>/dev/null || missing+=(libtss2-dev)
if [ "${1:-}" = "--test" ]; then
    command -v softhsm2-util >/dev/null 2>&1 || missing+=(softhsm2)
    command -v pkcs11-tool >/dev/null 2>&1 || missing+=(opensc)
    [ -e /usr/include/p11-kit-1/p11-kit/pkcs11.h ] || missing+=(libp11-kit-dev)
    command -v swtpm >/dev/null 2>&1 || missing+=(swtpm swtpm-tools)
    # swtpm_setup and swtpm_localca make the EK certificates tests/tpm_trust.rs checks
    command -v swtpm_setup >/dev/null 2>&1 || missing+=(swtpm-tools)
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
    command -v ip >/dev/null 2>&1 || missing+=(iproute2)
    command -v iptables-legacy >/dev/null 2>&1 || missing+=(iptables)
fi

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-deps: missing ${missing[*]}; install them with your package manager" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
