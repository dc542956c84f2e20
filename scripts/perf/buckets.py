#!/usr/bin/env python3
"""Where a server's CPU goes, in buckets: reads two `perf record -g` files
(the service and the bare server under the same load, PERFORMANCE.md "Per
request, service against the bare server") and prints a Markdown table of
µs per operation per bucket, from each sample's self time and the CPU per
operation the load run reported.

    scripts/perf/buckets.py SERVICE.data BARE.data SERVICE_US_PER_OP BARE_US_PER_OP
"""
import re, subprocess, sys
def rows(data):
    out = subprocess.run(["perf","report","-i",data,"--no-children","--sort","dso,sym","-g","none","--stdio"],capture_output=True,text=True).stdout
    for line in out.splitlines():
        m = re.match(r"\s+([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)$", line)
        if m:
            yield float(m.group(1)), m.group(2), m.group(3), m.group(4).strip()
RULES = [
 ("crypto (Ed25519 sign: curve25519, SHA-512)", lambda d,k,s: re.search(r"curve25519|ed25519|sha512|sha2::|Sha512|ring_core.*sha|keccak|ring_core", s)),
 ("kernel: network syscalls, epoll, wake-ups", lambda d,k,s: k=="k" and re.search(r"tcp|sock|epoll|skb|ip_|net_|__sys_|sendmsg|recvmsg|writev|readv|loopback|napi|dev_|inet|nf_|__x64_sys_(write|read|sendto|recvfrom|epoll)", s)),
 ("kernel: scheduling, futex, other", lambda d,k,s: k=="k"),
 ("allocator and memcpy", lambda d,k,s: re.search(r"^mi_|_mi_|mimalloc|malloc|free|memmove|memcpy|memset|realloc|__rust_alloc|__rust_dealloc", s)),
 ("HTTP/2, hyper, tonic, prost (transport and decode)", lambda d,k,s: re.search(r"h2::|hyper|tonic|prost|http::|bytes::|tower|http_body|HeaderMap|hpack", s)),
 ("tokio scheduler and sync", lambda d,k,s: re.search(r"tokio|parking_lot|futex|pthread|syscall|crossbeam|sched_yield", s)),
 ("metrics and tracing", lambda d,k,s: re.search(r"metrics|tracing|sharded_slab|Registry", s)),
 ("ron-kms: auth, admission, keyring, policy, service", lambda d,k,s: re.search(r"ron_kms|governor|arc_swap|imbl|moka|subtle|hashbrown|core::hash|sip|fxhash|ahash", s)),
]
def bucket(data):
    b = {}
    for pct, dso, kind, sym in rows(data):
        name = "other"
        for n, f in RULES:
            if f(dso, kind, sym):
                name = n; break
        b[name] = b.get(name, 0) + pct
    return b
svc, bare = bucket(sys.argv[1]), bucket(sys.argv[2])
cs, cb = float(sys.argv[3]), float(sys.argv[4])  # CPU µs per op
names = [n for n,_ in RULES] + ["other"]
print(f"| where | service µs/op | bare µs/op | difference |")
for n in names:
    s, b = svc.get(n,0)*cs/100, bare.get(n,0)*cb/100
    print(f"| {n} | {s:.1f} | {b:.1f} | {s-b:+.1f} |")
print(f"| total | {cs:.1f} | {cb:.1f} | {cs-cb:+.1f} |")
