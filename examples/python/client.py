#!/usr/bin/env python3
"""A Python client of ron-kms over gRPC.

Stubs are generated from proto/ at run time with grpcio-tools, so nothing
generated is checked in. Run against a live server:

    pip install -r examples/python/requirements.txt
    KMS_ADDR=127.0.0.1:9445 KMS_TOKEN=rkms_... python3 examples/python/client.py

It creates an Ed25519 and an ECDSA P-256 key, signs, verifies each signature
locally with pyca/cryptography from the DER public key that GetKey returns,
then wraps and unwraps with an ML-KEM-768 key.
"""
import importlib
import os
import pathlib
import sys
import tempfile
import time

import grpc
from grpc_tools import protoc
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

ROOT = pathlib.Path(__file__).resolve().parents[2]


def load_stubs():
    out = tempfile.mkdtemp(prefix="ron-kms-stubs-")
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    rc = protoc.main([
        "grpc_tools.protoc",
        f"-I{ROOT / 'proto'}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        "ron/kms/v1/kms.proto",
    ])
    if rc != 0:
        sys.exit(f"protoc failed with {rc}")
    sys.path.insert(0, out)
    return (importlib.import_module("ron.kms.v1.kms_pb2"),
            importlib.import_module("ron.kms.v1.kms_pb2_grpc"))


def main():
    pb, rpc = load_stubs()
    addr = os.environ.get("KMS_ADDR", "127.0.0.1:9445").removeprefix("http://")
    token = os.environ["KMS_TOKEN"]
    md = [("authorization", f"Bearer {token}")]
    kms = rpc.KmsStub(grpc.insecure_channel(addr))
    suffix = str(int(time.time() * 1000))
    message = b"release v1.2.3"

    for alg in ("ed25519", "ecdsa-p256"):
        name = f"py-{alg}-{suffix}"
        kms.CreateKey(pb.CreateKeyRequest(name=name, algorithm=alg), metadata=md)
        sig = kms.Sign(pb.SignRequest(key=name, message=message), metadata=md)
        key = kms.GetKey(pb.GetKeyRequest(name=name), metadata=md).key
        der = key.versions[0].public_key_der
        public = serialization.load_der_public_key(der)
        # raises InvalidSignature if the service signed something else
        if alg == "ed25519":
            assert isinstance(public, ed25519.Ed25519PublicKey)
            public.verify(sig.signature, message)
        else:
            assert isinstance(public, ec.EllipticCurvePublicKey)
            public.verify(sig.signature, message, ec.ECDSA(hashes.SHA256()))
        try:
            public.verify(sig.signature, message + b"!") if alg == "ed25519" else \
                public.verify(sig.signature, message + b"!", ec.ECDSA(hashes.SHA256()))
            sys.exit(f"{alg}: a tampered message verified")
        except Exception:
            pass
        print(f"{sig.kid}: signed by ron-kms, verified locally with pyca/cryptography")

    wrap_key = f"py-kem-{suffix}"
    kms.CreateKey(pb.CreateKeyRequest(name=wrap_key, algorithm="ml-kem-768"), metadata=md)
    wrapped = kms.Wrap(pb.WrapRequest(key=wrap_key, plaintext=b"a data key", aad=b"ctx"), metadata=md)
    back = kms.Unwrap(pb.UnwrapRequest(ciphertext=wrapped.ciphertext, aad=b"ctx"), metadata=md)
    assert back.plaintext == b"a data key", back
    try:
        kms.Unwrap(pb.UnwrapRequest(ciphertext=wrapped.ciphertext, aad=b"other"), metadata=md)
        sys.exit("unwrap with the wrong aad succeeded")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
    print(f"{wrapped.kid}: wrapped and unwrapped {len(wrapped.ciphertext)}-byte envelope")
    print("python example: all steps passed")


if __name__ == "__main__":
    main()
