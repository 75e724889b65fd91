#!/usr/bin/env python3
"""Metadata workload: create, stat, list and unlink N files of 1 KiB, 100 per
directory, under DIR. Prints one JSON object of seconds per phase.

Between create and stat the script waits out FUSE's attribute and entry
validity (zippyfs's is 1 s; pass another with --ttl), so every stat asks the
filesystem again: for a FUSE filesystem, one LOOKUP per file. On ext4 the
wait changes nothing.

usage: meta.py DIR [N] [--ttl SECS]
"""
import json
import os
import sys
import time

args = [a for a in sys.argv[1:] if not a.startswith("--ttl")]
ttl = 1.0
for a in sys.argv[1:]:
    if a.startswith("--ttl="):
        ttl = float(a.split("=", 1)[1])
root = args[0]
n = int(args[1]) if len(args) > 1 else 10000
per = 100
data = b"z" * 1024
dirs = [os.path.join(root, f"d{d}") for d in range(n // per)]
paths = [os.path.join(d, f"f{i}") for d in dirs for i in range(per)]


out = {}
t = time.perf_counter()
for d in dirs:
    os.mkdir(d)
for p in paths:
    fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
    os.write(fd, data)
    os.close(fd)
out["create"] = time.perf_counter() - t

time.sleep(ttl + 0.1)
t = time.perf_counter()
for p in paths:
    os.stat(p)
out["stat"] = time.perf_counter() - t

time.sleep(ttl + 0.1)
t = time.perf_counter()
entries = 0
for d in dirs:
    entries += len(os.listdir(d))
out["readdir"] = time.perf_counter() - t
assert entries == n, entries

t = time.perf_counter()
for p in paths:
    os.unlink(p)
for d in dirs:
    os.rmdir(d)
out["unlink"] = time.perf_counter() - t
print(json.dumps(out))
