"""Checks ron-kms's digest signatures outside ron-kms, with pyca/cryptography
(OpenSSL underneath), for tests/digest.rs.

    verify_digests.py MANIFEST MESSAGE

MANIFEST is JSON: a list of {"algorithm", "spki" (base64 DER), "digest"
(base64, what was sent to ron-kms), "signature" (base64)}. MESSAGE is the
file the digests were computed from. For each entry:
- ecdsa-p256: the digest is the message's SHA-256; the signature verifies
  over the digest (`Prehashed(SHA256())`) and over the message;
- ml-dsa-*: the digest is the message's external mu as pyca's MLDSAMuHasher
  computes it; the signature verifies with `verify_mu` and, as an ordinary
  ML-DSA signature, over the message itself.
Prints one line per entry; exits 1 on the first mismatch.
"""
import base64
import hashlib
import json
import sys

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, mldsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed


def check(entry, message):
    alg = entry["algorithm"]
    pk = serialization.load_der_public_key(base64.b64decode(entry["spki"]))
    digest = base64.b64decode(entry["digest"])
    sig = base64.b64decode(entry["signature"])
    if alg == "ecdsa-p256":
        assert digest == hashlib.sha256(message).digest(), "digest is not SHA-256(message)"
        pk.verify(sig, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        pk.verify(sig, message, ec.ECDSA(hashes.SHA256()))
    elif alg.startswith("ml-dsa-"):
        h = mldsa.MLDSAMuHasher(pk)
        h.update(message)
        assert digest == h.finalize(), "digest is not the message's mu"
        pk.verify_mu(sig, digest)
        pk.verify(sig, message)
    else:
        raise AssertionError(f"no outside check for {alg}")
    return alg


def main():
    manifest, message_path = sys.argv[1], sys.argv[2]
    with open(message_path, "rb") as f:
        message = f.read()
    with open(manifest) as f:
        entries = json.load(f)
    for e in entries:
        try:
            print("ok", check(e, message))
        except Exception as ex:  # noqa: BLE001 - report which entry failed
            print("FAILED", e["algorithm"], type(ex).__name__, ex)
            sys.exit(1)
    print(f"verified {len(entries)} digest signatures")


if __name__ == "__main__":
    main()
