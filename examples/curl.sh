#!/usr/bin/env bash
# A curl walkthrough of the HTTP API. Every step checks its answer, so this
# doubles as a smoke test:  KMS_HTTP=http://127.0.0.1:9446 KMS_TOKEN=rkms_… examples/curl.sh
set -euo pipefail
: "${KMS_TOKEN:?set KMS_TOKEN}"
H="${KMS_HTTP:-http://127.0.0.1:9446}"
S="$(date +%s%N)"
kms() { # kms METHOD PATH [JSON]
    curl -sS --fail-with-body -X "$1" -H "Authorization: Bearer $KMS_TOKEN" \
         -H 'Content-Type: application/json' ${3:+-d "$3"} "$H$2"
}
field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
b64() { printf '%s' "$1" | base64 -w0; }

echo "1. create a signing key (ML-DSA-65)"
kms POST /v1/kms/keys "{\"name\":\"curl-$S\",\"algorithm\":\"ml-dsa-65\"}" | field '["key"]["versions"][0]["kid"]'

echo "2. sign a message"
SIG=$(kms POST /v1/kms/sign "{\"key\":\"curl-$S\",\"message\":\"$(b64 'release v1.2.3')\"}")
KID=$(echo "$SIG" | field '["kid"]')
SIGNATURE=$(echo "$SIG" | field '["signature"]')
echo "   kid=$KID signature=${SIGNATURE:0:24}… (${#SIGNATURE} base64 chars)"

echo "3. verify it, then a tampered message (valid=false is an answer, not an error)"
V=$(kms POST /v1/kms/verify "{\"key\":\"$KID\",\"message\":\"$(b64 'release v1.2.3')\",\"signature\":\"$SIGNATURE\"}" | field '["valid"]')
T=$(kms POST /v1/kms/verify "{\"key\":\"$KID\",\"message\":\"$(b64 'release v6.6.6')\",\"signature\":\"$SIGNATURE\"}" | field '["valid"]')
echo "   genuine=$V tampered=$T"
[ "$V" = True ] && [ "$T" = False ]

echo "4. fetch the public key as PEM (verify anywhere without ron-kms)"
PEM=$(kms GET "/v1/kms/keys/curl-$S?pem=true" | field '["key"]["versions"][0]["public_key_pem"]')
sed -n 1,2p <<< "$PEM"
[[ "$PEM" == "-----BEGIN PUBLIC KEY-----"* ]]

echo "5. wrap and unwrap with AES-256-GCM"
kms POST /v1/kms/keys "{\"name\":\"curl-aes-$S\",\"algorithm\":\"aes-256-gcm\"}" > /dev/null
CT=$(kms POST /v1/kms/wrap "{\"key\":\"curl-aes-$S\",\"plaintext\":\"$(b64 'db password')\",\"aad\":\"$(b64 'svc=billing')\"}" | field '["ciphertext"]')
PT=$(kms POST /v1/kms/unwrap "{\"ciphertext\":\"$CT\",\"aad\":\"$(b64 'svc=billing')\"}" | field '["plaintext"]' | base64 -d)
echo "   unwrapped: $PT"
[ "$PT" = "db password" ]

echo "6. rotate, then disable v1: its signatures stop verifying at once"
kms POST "/v1/kms/keys/curl-$S/rotate" '{}' | field '["kid"]'
kms POST "/v1/kms/keys/curl-$S/versions/1/state" '{"state":"disabled"}' > /dev/null
CODE=$(curl -sS -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $KMS_TOKEN" \
    -d "{\"key\":\"$KID\",\"message\":\"$(b64 'release v1.2.3')\",\"signature\":\"$SIGNATURE\"}" "$H/v1/kms/verify")
echo "   verify with the disabled v1 -> HTTP $CODE"
[ "$CODE" = 409 ]

echo "7. errors share one envelope"
curl -sS -X POST -H "Authorization: Bearer $KMS_TOKEN" -d '{"key":"curl-nope","message":"aGk="}' "$H/v1/kms/sign"; echo
echo "curl walkthrough: all steps passed"
