"""Checks ron-kms's SignJws tokens outside ron-kms, using only the keys the
JWKS endpoint published, for tests/jose.rs.

    check_jws.py CASES

CASES is JSON: {"jwks": <the JWK set as fetched>, "tokens": [{"jws", "alg",
"kid", "claims"}]}. EdDSA and ES256 tokens are verified as JWTs by jwcrypto
(an independent JOSE library) with a key set built from the JWKS; ML-DSA
tokens (which jwcrypto does not know) by pyca/cryptography's ML-DSA
verifier over the JWS signing input, with the AKP key's `pub`. A tampered
copy of each token must fail. Prints one line per token; exits 1 on the
first mismatch.
"""
import base64
import json
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa
from jwcrypto import jwk, jws, jwt


def unb64url(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


ML_DSA = {
    "ML-DSA-44": mldsa.MLDSA44PublicKey,
    "ML-DSA-65": mldsa.MLDSA65PublicKey,
    "ML-DSA-87": mldsa.MLDSA87PublicKey,
}


def tamper(token):
    h, p, s = token.split(".")
    claims = json.loads(unb64url(p))
    claims["tampered"] = True
    p2 = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return ".".join([h, p2, s])


def check_jose(keyset, t):
    token = jwt.JWT(jwt=t["jws"], key=keyset, algs=[t["alg"]])
    header = json.loads(token.header)
    assert header["alg"] == t["alg"] and header["kid"] == t["kid"], header
    assert json.loads(token.claims) == t["claims"], token.claims
    # the tampered copy, against the very key that verified the original
    try:
        jwt.JWT(jwt=tamper(t["jws"]), key=keyset.get_key(t["kid"]), algs=[t["alg"]])
    except jws.InvalidJWSSignature:
        return
    raise AssertionError("a tampered token verified")


def check_ml_dsa(jwks, t):
    h, p, s = t["jws"].split(".")
    header = json.loads(unb64url(h))
    assert header["alg"] == t["alg"] and header["kid"] == t["kid"], header
    [k] = [k for k in jwks["keys"] if k["kid"] == header["kid"]]
    assert k["kty"] == "AKP" and k["alg"] == t["alg"], k
    pk = ML_DSA[t["alg"]].from_public_bytes(unb64url(k["pub"]))
    pk.verify(unb64url(s), f"{h}.{p}".encode())
    assert json.loads(unb64url(p)) == t["claims"]
    h2, p2, s2 = tamper(t["jws"]).split(".")
    try:
        pk.verify(unb64url(s2), f"{h2}.{p2}".encode())
    except InvalidSignature:
        return
    raise AssertionError("a tampered ML-DSA token verified")


def main():
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    jwks = cases["jwks"]
    # jwcrypto knows OKP and EC; the set it gets is the endpoint's, less AKP
    keyset = jwk.JWKSet()
    for k in jwks["keys"]:
        if k["kty"] in ("OKP", "EC"):
            keyset.add(jwk.JWK(**k))
    for t in cases["tokens"]:
        try:
            if t["alg"] in ML_DSA:
                check_ml_dsa(jwks, t)
            else:
                check_jose(keyset, t)
            print("ok", t["alg"], t["kid"])
        except Exception as e:  # noqa: BLE001 - report which token failed
            print("FAILED", t["alg"], t["kid"], type(e).__name__, e)
            sys.exit(1)
    print(f"verified {len(cases['tokens'])} JWS tokens")


if __name__ == "__main__":
    main()
