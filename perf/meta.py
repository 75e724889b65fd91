#!/usr/bin/env python3
"""Metadata workload: create, stat and unlink N files of 1 KiB, 100 per
directory, under DIR. Prints one JSON object of seconds per phase.

Between create and stat the kernel's dentry and inode caches are dropped
(and the filesystem synced), so every stat reaches the filesystem: for a
FUSE filesystem, a LOOKUP per file. Run as root (drop_caches needs it).

usage: meta.py DIR [N]
"""
import json
import os
import sys
import time

root = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
per = 100
data = b"z" * 1024
dirs = [os.path.join(root, f"d{d}") for d in range(n // per)]
paths = [os.path.join(d, f"f{i}") for d in dirs for i in range(per)]


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")


out = {}
t = time.perf_counter()
for d in dirs:
    os.mkdir(d)
for p in paths:
    fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
    os.write(fd, data)
    os.close(fd)
out["create"] = time.perf_counter() - t

drop_caches()
t = time.perf_counter()
for p in paths:
    os.stat(p)
out["stat"] = time.perf_counter() - t

t = time.perf_counter()
for p in paths:
    os.unlink(p)
for d in dirs:
    os.rmdir(d)
out["unlink"] = time.perf_counter() - t
print(json.dumps(out))
