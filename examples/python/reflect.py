"""gRPC reflection from Python's grpcio-reflection, which speaks the
`grpc.reflection.v1alpha` protocol: list the server's services and read the
`ron.kms.v1.Kms` service's methods from the descriptors it serves, with no
.proto file at hand.

    KMS_ADDR=127.0.0.1:50051 python examples/python/reflect.py
"""
import os
import sys

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main() -> int:
    addr = os.environ.get("KMS_ADDR", "127.0.0.1:50051")
    with grpc.insecure_channel(addr) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = db.get_services()
        print("services:", ", ".join(services))
        if "ron.kms.v1.Kms" not in services:
            print("ron.kms.v1.Kms is not listed", file=sys.stderr)
            return 1
        kms = DescriptorPool(db).FindServiceByName("ron.kms.v1.Kms")
        methods = [m.name for m in kms.methods]
        print("ron.kms.v1.Kms methods:", ", ".join(methods))
        if "Sign" not in methods or "Verify" not in methods:
            print("Sign and Verify are missing", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
