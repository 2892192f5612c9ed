#!/usr/bin/env python3
"""Attributes each sampled stack (inferno folded format) to one category:
the first rule, in order, that matches any frame of the stack."""
import sys, collections
RULES = [
    ("signature checks (ed25519)", ["ed25519", "curve25519", "verify_batch"]),
    ("Merkle state tree", ["merkle"]),
    ("sled (storage)", ["sled::"]),
    ("JSON (serde_json)", ["serde_json"]),
    ("Noise encryption", ["snow::", "chacha20", "ChaCha", "poly1305", "x25519"]),
    ("binary codec (bincode)", ["bincode"]),
    ("SHA-256 hashing", ["sha2::", "Sha256", "sha256"]),
    ("execution", ["executor", "cairn_core::state"]),
    ("mempool", ["mempool"]),
    ("HTTP (hyper/warp)", ["hyper::", "warp::"]),
    ("allocation / copy", ["malloc", "free", "memcpy", "memmove", "realloc", "_int_"]),
    ("kernel (syscalls, TCP, futex)", ["[k]"]),
    ("tokio runtime", ["tokio::"]),
]
totals = collections.Counter(); total = 0
for line in open(sys.argv[1]):
    stack, _, n = line.rstrip().rpartition(" ")
    n = int(n); total += n
    frames = stack.split(";")
    for name, pats in RULES:
        if any(p in f for f in frames for p in pats):
            totals[name] += n; break
    else:
        totals["other"] += n
for name, n in totals.most_common():
    print(f"{100*n/total:5.1f} %  {name}")
print(f"{total} samples")
