"""Check HMAC tags made by ron-kms with Python's own hmac module.

Usage: check_hmac.py MANIFEST.json

The manifest is a JSON list of {"algorithm": "hmac-sha256"|"hmac-sha512",
"key", "message", "mac"} with the bytes in standard base64. Every tag must
equal hmac.new(key, message, sha256|sha512).digest() (compared with
hmac.compare_digest); the script prints "checked N tags" and exits 0, or
names the first mismatch and exits 1.
"""
import base64
import hashlib
import hmac
import json
import sys

HASHES = {"hmac-sha256": hashlib.sha256, "hmac-sha512": hashlib.sha512}


def main(path):
    with open(path) as f:
        items = json.load(f)
    for i, item in enumerate(items):
        key, message, mac = (
            base64.b64decode(item[k]) for k in ("key", "message", "mac")
        )
        want = hmac.new(key, message, HASHES[item["algorithm"]]).digest()
        if not hmac.compare_digest(want, mac):
            print(f"item {i} ({item['algorithm']}): tag does not match Python's hmac")
            return 1
    print(f"checked {len(items)} tags")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
