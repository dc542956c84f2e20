"""Drives ron-kms's transit front with hvac, the Python Vault client, as a
team moving from Vault transit would: hvac's own methods only, no raw
requests. Signatures are checked outside ron-kms with pyca/cryptography
under the public keys the transit read returns; HMACs with Python's hmac.

    VAULT_ADDR=http://127.0.0.1:PORT VAULT_TOKEN=... OTHER_TOKEN=... \
        transit_hvac.py

OTHER_TOKEN is another tenant's token (admin and read): that tenant must
see none of the first one's keys. Prints one line per check; exits 1 on the
first failure (a traceback names it).
"""
import base64
import hashlib
import hmac as pyhmac
import os
import sys

import hvac
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

MOUNT = "transit"


def b64(b):
    return base64.b64encode(b).decode()


def unb64(s):
    return base64.b64decode(s)


def payload(vault_string):
    """The bytes after vault:vN: (standard base64)."""
    assert vault_string.startswith("vault:v"), vault_string
    return unb64(vault_string.split(":", 2)[2])


def version(vault_string):
    return int(vault_string.split(":", 2)[1][1:])


def ok(what):
    print("ok", what, flush=True)


def refused(exc_type, fn, *args, **kwargs):
    """fn must raise exc_type (hvac's exception for the status); returns
    the error messages."""
    try:
        fn(*args, **kwargs)
    except exc_type as e:
        return e.errors
    raise AssertionError(f"{fn.__name__} was not refused")


def main():
    c = hvac.Client(url=os.environ["VAULT_ADDR"], token=os.environ["VAULT_TOKEN"])
    t = c.secrets.transit

    # ---- keys of each supported type ---------------------------------
    t.create_key(name="aes", key_type="aes256-gcm96", mount_point=MOUNT)
    t.create_key(name="ed", key_type="ed25519", mount_point=MOUNT)
    t.create_key(name="p256", key_type="ecdsa-p256", mount_point=MOUNT)
    # hvac's create_key checks key_type against its own list, which has no
    # ML-DSA or HMAC type: hvac's generic write sends what transit takes
    c.write_data(f"{MOUNT}/keys/pq", data={"type": "ml-dsa", "parameter_set": "65"})
    c.write_data(f"{MOUNT}/keys/mac", data={"type": "hmac"})
    c.write_data(f"{MOUNT}/keys/kem", data={"type": "ml-kem-768"})
    names = t.list_keys(mount_point=MOUNT)["data"]["keys"]
    assert sorted(names) == ["aes", "ed", "kem", "mac", "p256", "pq"], names
    for name, ty in [("aes", "aes256-gcm96"), ("ed", "ed25519"), ("p256", "ecdsa-p256"),
                     ("pq", "ml-dsa"), ("mac", "hmac"), ("kem", "ml-kem-768")]:
        d = t.read_key(name=name, mount_point=MOUNT)["data"]
        assert d["type"] == ty and d["latest_version"] == 1, d
        assert d["exportable"] is False and d["deletion_allowed"] is False, d
    assert t.read_key(name="pq", mount_point=MOUNT)["data"]["parameter_set"] == "65"
    ok("create, list and read keys of 6 types")

    # ---- refused, clearly --------------------------------------------
    errs = refused(hvac.exceptions.InvalidRequest, t.create_key, name="x",
                   key_type="aes256-gcm96", exportable=True, mount_point=MOUNT)
    assert "exportable" in errs[0], errs
    errs = refused(hvac.exceptions.InvalidRequest, t.create_key, name="x",
                   key_type="rsa-2048", mount_point=MOUNT)
    assert "rsa-2048" in errs[0], errs
    refused(hvac.exceptions.InvalidPath, t.read_key, name="missing", mount_point=MOUNT)
    ok("exportable keys, RSA and missing keys are refused with transit errors")

    # ---- encrypt / decrypt, context, batch ---------------------------
    secret = b"attack at dawn"
    ctx = b64(b"tenant-42")
    ct = t.encrypt_data(name="aes", plaintext=b64(secret), context=ctx,
                        mount_point=MOUNT)["data"]["ciphertext"]
    assert ct.startswith("vault:v1:"), ct
    pt = t.decrypt_data(name="aes", ciphertext=ct, context=ctx, mount_point=MOUNT)
    assert unb64(pt["data"]["plaintext"]) == secret
    refused(hvac.exceptions.InvalidRequest, t.decrypt_data, name="aes", ciphertext=ct,
            context=b64(b"tenant-43"), mount_point=MOUNT)
    batch = [{"plaintext": b64(b"item %d" % i), "context": b64(b"ctx %d" % i)} for i in range(3)]
    enc = t.encrypt_data(name="aes", batch_input=batch, mount_point=MOUNT)["data"]["batch_results"]
    assert len(enc) == 3 and all(r["ciphertext"].startswith("vault:v1:") for r in enc), enc
    dec = t.decrypt_data(
        name="aes",
        batch_input=[{"ciphertext": r["ciphertext"], "context": b["context"]} for r, b in zip(enc, batch)],
        mount_point=MOUNT,
    )["data"]["batch_results"]
    assert [unb64(r["plaintext"]) for r in dec] == [b"item %d" % i for i in range(3)], dec
    # an ML-KEM key encrypts through the same route
    kct = t.encrypt_data(name="kem", plaintext=b64(secret), mount_point=MOUNT)["data"]["ciphertext"]
    assert unb64(t.decrypt_data(name="kem", ciphertext=kct, mount_point=MOUNT)["data"]["plaintext"]) == secret
    ok("encrypt/decrypt single and batch, context bound, ML-KEM key")

    # ---- rotate, rewrap, min_decryption_version ----------------------
    t.rotate_key(name="aes", mount_point=MOUNT)
    assert t.read_key(name="aes", mount_point=MOUNT)["data"]["latest_version"] == 2
    ct2 = t.encrypt_data(name="aes", plaintext=b64(secret), context=ctx,
                         mount_point=MOUNT)["data"]["ciphertext"]
    assert ct2.startswith("vault:v2:"), ct2
    re = t.rewrap_data(name="aes", ciphertext=ct, context=ctx, mount_point=MOUNT)["data"]["ciphertext"]
    assert re.startswith("vault:v2:"), re
    rb = t.rewrap_data(name="aes", ciphertext=None, batch_input=[{"ciphertext": r["ciphertext"], "context": b["context"]}
                                                for r, b in zip(enc, batch)],
                       mount_point=MOUNT)["data"]["batch_results"]
    assert all(r["ciphertext"].startswith("vault:v2:") for r in rb), rb
    # the old ciphertext still opens until the floor moves
    assert unb64(t.decrypt_data(name="aes", ciphertext=ct, context=ctx,
                                mount_point=MOUNT)["data"]["plaintext"]) == secret
    t.update_key_configuration(name="aes", min_decryption_version=2, mount_point=MOUNT)
    d = t.read_key(name="aes", mount_point=MOUNT)["data"]
    assert d["min_decryption_version"] == 2, d
    errs = refused(hvac.exceptions.InvalidRequest, t.decrypt_data, name="aes", ciphertext=ct,
                   context=ctx, mount_point=MOUNT)
    assert "min_decryption_version" in errs[0], errs
    for c_ in (ct2, re):
        assert unb64(t.decrypt_data(name="aes", ciphertext=c_, context=ctx,
                                    mount_point=MOUNT)["data"]["plaintext"]) == secret
    ok("rotate, rewrap (single and batch), min_decryption_version refuses v1 ciphertexts")

    # ---- datakey -------------------------------------------------------
    dk = t.generate_data_key(name="aes", key_type="plaintext", mount_point=MOUNT)["data"]
    assert len(unb64(dk["plaintext"])) == 32 and dk["ciphertext"].startswith("vault:v2:"), dk
    opened = t.decrypt_data(name="aes", ciphertext=dk["ciphertext"], mount_point=MOUNT)["data"]
    assert opened["plaintext"] == dk["plaintext"]
    wk = t.generate_data_key(name="aes", key_type="wrapped", bits=512, mount_point=MOUNT)["data"]
    assert "plaintext" not in wk, wk
    assert len(unb64(t.decrypt_data(name="aes", ciphertext=wk["ciphertext"],
                                    mount_point=MOUNT)["data"]["plaintext"])) == 64
    ok("datakey plaintext (256 bits) and wrapped (512 bits)")

    # ---- sign / verify, checked outside --------------------------------
    msg = b"release v1.2.3 checksum list"
    pub = lambda name: t.read_key(name=name, mount_point=MOUNT)["data"]["keys"]["1"]["public_key"]

    sig = t.sign_data(name="ed", hash_input=b64(msg), mount_point=MOUNT)["data"]["signature"]
    assert t.verify_signed_data(name="ed", hash_input=b64(msg), signature=sig,
                                mount_point=MOUNT)["data"]["valid"] is True
    assert t.verify_signed_data(name="ed", hash_input=b64(msg + b"!"), signature=sig,
                                mount_point=MOUNT)["data"]["valid"] is False
    ed25519.Ed25519PublicKey.from_public_bytes(unb64(pub("ed"))).verify(payload(sig), msg)
    jsig = t.sign_data(name="ed", hash_input=b64(msg), marshaling_algorithm="jws",
                       mount_point=MOUNT)["data"]["signature"]
    raw = base64.urlsafe_b64decode(jsig.split(":", 2)[2] + "==")
    assert raw == payload(sig), "Ed25519 is deterministic: jws carries the same 64 bytes"
    assert t.verify_signed_data(name="ed", hash_input=b64(msg), signature=jsig,
                                marshaling_algorithm="jws", mount_point=MOUNT)["data"]["valid"] is True
    ok("ed25519 signature (asn1 and jws) verifies in transit and in pyca/cryptography")

    p256 = serialization.load_pem_public_key(pub("p256").encode())
    sig = t.sign_data(name="p256", hash_input=b64(msg), mount_point=MOUNT)["data"]["signature"]
    p256.verify(payload(sig), msg, ec.ECDSA(hashes.SHA256()))
    digest = hashlib.sha256(msg).digest()
    psig = t.sign_data(name="p256", hash_input=b64(digest), prehashed=True,
                       hash_algorithm="sha2-256", mount_point=MOUNT)["data"]["signature"]
    p256.verify(payload(psig), digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    assert t.verify_signed_data(name="p256", hash_input=b64(digest), signature=psig, prehashed=True,
                                mount_point=MOUNT)["data"]["valid"] is True
    jsig = t.sign_data(name="p256", hash_input=b64(msg), marshaling_algorithm="jws",
                       mount_point=MOUNT)["data"]["signature"]
    raw = base64.urlsafe_b64decode(jsig.split(":", 2)[2] + "==")
    assert len(raw) == 64, len(raw)
    p256.verify(encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")),
                msg, ec.ECDSA(hashes.SHA256()))
    assert t.verify_signed_data(name="p256", hash_input=b64(msg), signature=jsig,
                                marshaling_algorithm="jws", mount_point=MOUNT)["data"]["valid"] is True
    assert t.verify_signed_data(name="p256", hash_input=b64(msg), signature=sig,
                                mount_point=MOUNT)["data"]["valid"] is True
    refused(hvac.exceptions.InvalidRequest, t.sign_data, name="p256", hash_input=b64(msg),
            hash_algorithm="sha2-512", mount_point=MOUNT)
    ok("ecdsa-p256 asn1, prehashed and jws signatures verify in transit and in pyca/cryptography")

    from cryptography.hazmat.primitives.asymmetric import mldsa  # noqa: F401  (pyca >= 51)
    pq = serialization.load_pem_public_key(pub("pq").encode())
    sig = t.sign_data(name="pq", hash_input=b64(msg), mount_point=MOUNT)["data"]["signature"]
    pq.verify(payload(sig), msg)
    assert t.verify_signed_data(name="pq", hash_input=b64(msg), signature=sig,
                                mount_point=MOUNT)["data"]["valid"] is True
    ok("ml-dsa-65 signature verifies in transit and in pyca/cryptography")

    items = [{"input": b64(b"doc %d" % i)} for i in range(4)]
    res = t.sign_data(name="ed", batch_input=items, mount_point=MOUNT)["data"]["batch_results"]
    edpk = ed25519.Ed25519PublicKey.from_public_bytes(unb64(pub("ed")))
    for i, r in enumerate(res):
        edpk.verify(payload(r["signature"]), b"doc %d" % i)
    # hvac's verify_signed_data has no batch_input (tests/transit.rs sends
    # a verify batch itself): each signature is verified on its own
    for it, r in zip(items, res):
        assert t.verify_signed_data(name="ed", hash_input=it["input"], signature=r["signature"],
                                    mount_point=MOUNT)["data"]["valid"] is True
    ok("batch sign (4 items), each verified")

    # ---- hmac -----------------------------------------------------------
    tag = t.generate_hmac(name="mac", hash_input=b64(msg), mount_point=MOUNT)["data"]["hmac"]
    assert tag.startswith("vault:v1:") and len(payload(tag)) == 32, tag
    assert t.verify_signed_data(name="mac", hash_input=b64(msg), hmac=tag,
                                mount_point=MOUNT)["data"]["valid"] is True
    assert t.verify_signed_data(name="mac", hash_input=b64(msg + b"!"), hmac=tag,
                                mount_point=MOUNT)["data"]["valid"] is False
    again = t.generate_hmac(name="mac", hash_input=b64(msg), mount_point=MOUNT)["data"]["hmac"]
    assert pyhmac.compare_digest(tag, again)
    c.write_data(f"{MOUNT}/keys/mac512", data={"type": "hmac-sha512"})
    tag512 = t.generate_hmac(name="mac512", hash_input=b64(msg), algorithm="sha2-512",
                             mount_point=MOUNT)["data"]["hmac"]
    assert len(payload(tag512)) == 64, tag512
    assert t.verify_signed_data(name="mac512", hash_input=b64(msg), hmac=tag512,
                                hash_algorithm="sha2-512", mount_point=MOUNT)["data"]["valid"] is True
    errs = refused(hvac.exceptions.InvalidRequest, t.generate_hmac, name="mac512",
                   hash_input=b64(msg), mount_point=MOUNT)
    assert "sha2-512" in errs[0], errs
    ok("hmac, and its verify (right and wrong input); a SHA-512 key asks for sha2-512")

    # ---- another tenant sees nothing -------------------------------------
    other = hvac.Client(url=os.environ["VAULT_ADDR"], token=os.environ["OTHER_TOKEN"]).secrets.transit
    refused(hvac.exceptions.InvalidPath, other.read_key, name="aes", mount_point=MOUNT)
    refused(hvac.exceptions.InvalidPath, other.list_keys, mount_point=MOUNT)
    errs = refused(hvac.exceptions.InvalidPath, other.encrypt_data, name="aes",
                   plaintext=b64(secret), mount_point=MOUNT)
    assert "aes" in errs[0], errs
    ok("another tenant's keys look missing")

    # ---- delete --------------------------------------------------------
    refused(hvac.exceptions.InvalidRequest, t.delete_key, name="ed", mount_point=MOUNT)
    t.update_key_configuration(name="ed", deletion_allowed=True, mount_point=MOUNT)
    t.delete_key(name="ed", mount_point=MOUNT)
    refused(hvac.exceptions.InvalidPath, t.read_key, name="ed", mount_point=MOUNT)
    ok("delete needs deletion_allowed, then the key is gone")
    print("transit: all hvac checks passed")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - the traceback names the check
        import traceback
        traceback.print_exc()
        print("FAILED", type(e).__name__, e)
        sys.exit(1)
