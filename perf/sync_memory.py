#!/usr/bin/env python3
"""What sync costs a mount daemon in memory, by files: a plain mount (no
sync) is given FILES files of 1 KiB (100 a directory); then peer A of a
real `zippyfs serve` on 127.0.0.1 is given the same and pushes them, and
peer B joins and takes them. Then the server stops, A makes FILES more
files offline, and the server starts again: A pushes its backlog. Prints
each daemon's heap in use (what its allocator handed out and did not
have back, `heap_bytes` in daemon.json) and its resident and peak memory
from /proc (VmRSS, VmHWM, and VmRSS split into RssAnon and RssFile: the
store's mapped pages are RssFile, page cache the kernel takes back), all
in MiB; and A's largest heap while it writes and pushes ("heap peak",
read every 0.2 s).

Run as root from the repository, after `cargo build --release`:
perf/sync_memory.py [BINARY] [FILES]   (default target/release/zippyfs, 100000)
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sync as S  # noqa: E402

BIN = sys.argv[1] if len(sys.argv) > 1 else S.BIN
FILES = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
S.BIN = BIN

def mem(mnt):
    with open(os.path.join(mnt, ".zippy", "daemon.json")) as f:
        st = json.load(f)
    pid = st["pid"]
    out = {"heap": (st.get("heap_bytes") or 0) >> 20}
    with open(f"/proc/{pid}/status") as f:
        for l in f:
            if l.startswith(("VmRSS", "VmHWM", "RssAnon", "RssFile")):
                k, v = l.split(":")
                out[k] = int(v.split()[0]) // 1024
    return out

class Peak:
    """The largest heap `mnt`'s daemon reports while it runs."""

    def __init__(self, mnt):
        self.mnt, self.peak, self.done = mnt, 0, False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.done:
            try:
                self.peak = max(self.peak, mem(self.mnt)["heap"])
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.2)

    def stop(self):
        self.done = True
        self.t.join()
        return self.peak


def pushed(mnt, limit=600):
    """Seconds until `mnt`'s daemon has nothing queued or in flight."""
    t = time.time()
    while time.time() < t + limit:
        with open(os.path.join(mnt, ".zippy", "daemon.json")) as f:
            sync = json.load(f).get("sync", {})
        if sync.get("queued_versions") == 0 and not sync.get("in_flight") \
                and sync.get("connected"):
            break
        time.sleep(0.5)
    return time.time() - t


def write(root, first=0):
    t = time.time()
    data = b"x" * 1024
    for d in range(first, first + FILES // 100):
        os.mkdir(os.path.join(root, f"d{d:05}"))
        for i in range(100):
            with open(os.path.join(root, f"d{d:05}", f"f{i:03}"), "wb") as f:
                f.write(data)
    return time.time() - t

def count(root):
    return sum(len(fs) for _, _, fs in os.walk(root))

work = tempfile.mkdtemp(prefix="zmem-", dir="/var/tmp")
mounted = []
server = None
try:
    plain_store, plain_mnt = os.path.join(work, "p-store"), os.path.join(work, "p-mnt")
    os.mkdir(plain_mnt)
    S.sh(BIN, "mount", plain_mnt, plain_store)
    mounted.append(plain_mnt)
    write(plain_mnt)
    time.sleep(3)
    print("plain", mem(plain_mnt), flush=True)
    server = S.Server(work)
    a = S.Peer(server, "a", work)
    a.mount()
    mounted.append(a.mnt)
    peak = Peak(a.mnt)
    w = write(a.mnt)
    # Until the server has all of it (pushes go one at a time).
    p = pushed(a.mnt)
    server.settled()
    print("A (pushed)", mem(a.mnt), f"heap peak {peak.stop()}",
          f"write {w:.1f}s, pushed {p:.1f}s after", flush=True)
    b = S.Peer(server, "b", work)
    t = time.time()
    b.mount()
    mounted.append(b.mnt)
    deadline = time.time() + 300
    while time.time() < deadline and count(b.mnt) < FILES:
        time.sleep(0.5)
    print("B (received)", mem(b.mnt), f"{count(b.mnt)} files in {time.time()-t:.1f}s", flush=True)
    time.sleep(2)
    print("A (after)", mem(a.mnt), "B (after)", mem(b.mnt), flush=True)
    # B again: the mount reads its local tree whole, against its synced
    # tree in the tree store.
    b.umount()
    mounted.remove(b.mnt)
    t = time.time()
    b.mount()
    mounted.append(b.mnt)
    deadline = time.time() + 300
    while time.time() < deadline:
        with open(os.path.join(b.mnt, ".zippy", "daemon.json")) as f:
            sync = json.load(f).get("sync", {})
        if sync.get("connected") and sync.get("queued_unchecked") is False:
            break
        time.sleep(0.2)
    print("B (mounted again)", mem(b.mnt), f"read and checked in {time.time()-t:.1f}s", flush=True)
    # A offline: the server stops, A makes as many files again, and the
    # server comes back on the same port; A pushes its backlog.
    port = server.port
    server.stop()
    peak = Peak(a.mnt)
    w = write(a.mnt, FILES // 100)
    server.proc = subprocess.Popen(
        [BIN, "serve", server.dir, "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    p = pushed(a.mnt)
    print("A (offline, then pushed)", mem(a.mnt), f"heap peak {peak.stop()}",
          f"write {w:.1f}s, pushed {p:.1f}s after", flush=True)
finally:
    for m in reversed(mounted):
        try:
            with open(os.path.join(m, ".zippy", "daemon.json")) as f:
                pid = json.load(f)["pid"]
            subprocess.run([BIN, "umount", m], capture_output=True)
            for _ in range(300):
                if not os.path.exists(f"/proc/{pid}"):
                    break
                time.sleep(0.1)
        except OSError as e:
            print("umount", m, e)
    if server:
        server.stop()
    shutil.rmtree(work, ignore_errors=True)
