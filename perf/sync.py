#!/usr/bin/env python3
"""Sync on loopback: a real `zippyfs serve` and two peers (A, B), each a
real mount of its own store, against rsync on the same data, in one run.
Writes the machine, date, commit and every figure to
perf/results/sync-<date>.json and .md.

Measured:
  initial   1 GiB in 10,000 files written on A's mount and pushed; then B
            (joined, never mounted) is mounted: time until all of it is
            readable on B's mount, against `rsync -a` of the same tree from
            one ext4 directory to another (a local copy: rsync's best case,
            no network, no ssh). Also the time from A's first write until
            the server has all of it.
  latency   a small file written and closed on A, 200 times; time until B
            reads the new content (polled every millisecond): p50, p99.
  big-edit  4 KiB changed in a 1 GiB file on A: time until B reads it, and
            the bytes the server sent (its status.json) against 4 KiB.
  catch-up  B unmounted while A makes 100 versions (4 KiB each in a
            different block, fsync each); B mounted again: time and bytes
            the server sent against the bytes changed.

Syncthing is not measured here yet (issue #16 names it; its setup needs
device ids and an API key per peer).

Run as root from the repository: perf/sync.py [--small] [--name NAME].
Needs rsync; builds the release binary.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(REPO, "target", "release", "zippyfs")


def sh(*args, **kw):
    return subprocess.run(args, check=True, text=True, capture_output=True, **kw)


def is_mount(path):
    try:
        return os.stat(path).st_dev != os.stat(os.path.dirname(path)).st_dev
    except OSError:
        return False


class Server:
    def __init__(self, work):
        self.dir = os.path.join(work, "server")
        self.proc = subprocess.Popen(
            [BIN, "serve", self.dir, "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.port = self.fingerprint = None
        for _ in range(2):
            line = self.proc.stdout.readline().strip()
            if line.startswith("listening on "):
                self.port = line.rsplit(":", 1)[1]
            if line.startswith("fingerprint "):
                self.fingerprint = line.split(" ", 1)[1]

    def status(self):
        try:
            with open(os.path.join(self.dir, "status.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def settled(self):
        """status.json once it stops moving (written twice a second)."""
        last = self.status()
        while True:
            time.sleep(0.7)
            now = self.status()
            if now == last:
                return now
            last = now

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class Peer:
    def __init__(self, server, name, work):
        self.store = os.path.join(work, f"{name}-store")
        self.mnt = os.path.join(work, f"{name}-mnt")
        os.mkdir(self.mnt)
        out = sh(BIN, "serve", server.dir, "add-peer", name, "--volume", "v").stdout
        cred = os.path.join(work, f"{name}.credential")
        with open(cred, "w") as f:
            f.write(next(l for l in out.splitlines() if l.startswith("zpc1-")))
        sh(BIN, "join", self.store, f"quic://127.0.0.1:{server.port}/v",
           "--fingerprint", server.fingerprint, "--credential", cred)

    def mount(self):
        sh(BIN, "mount", self.mnt, self.store)

    def umount(self):
        with open(os.path.join(self.mnt, ".zippy", "daemon.json")) as f:
            pid = json.load(f)["pid"]
        sh(BIN, "umount", self.mnt)
        deadline = time.time() + 30
        while os.path.exists(f"/proc/{pid}") and time.time() < deadline:
            time.sleep(0.05)


def payload(seed, n):
    return (seed.to_bytes(8, "little") * (n // 8 + 1))[:n]


def wait_for(check, limit, poll=0.001):
    start = time.perf_counter()
    while not check():
        if time.perf_counter() - start > limit:
            raise TimeoutError(f"not within {limit} s")
        time.sleep(poll)
    return time.perf_counter() - start


def write_tree(root, files, size):
    for i in range(files):
        d = os.path.join(root, f"d{i // 100:03}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:05}"), "wb") as f:
            f.write(payload(i, size))


def tree_complete(root, files, size):
    try:
        last = os.path.join(root, f"d{(files - 1) // 100:03}", f"f{files - 1:05}")
        if os.path.getsize(last) != size:
            return False
        return sum(len(fs) for _, _, fs in os.walk(root)) >= files
    except OSError:
        return False


def reads(path, want):
    try:
        with open(path, "rb") as f:
            return f.read() == want
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true", help="1,000 files of 100 KiB, a 64 MiB file")
    ap.add_argument("--name", default="sync")
    ap.add_argument("--work", default="/var/tmp")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")
    if shutil.which("rsync") is None:
        sh("apt-get", "install", "-y", "rsync")
    sh("cargo", "build", "--release", cwd=REPO)
    files, size = (1000, 100 << 10) if a.small else (10_000, 100 << 10)
    big = (64 << 20) if a.small else (1 << 30)
    work = tempfile.mkdtemp(prefix="zippy-sync.", dir=a.work)
    res = {}
    server = Server(work)
    pa, pb = Peer(server, "a", work), Peer(server, "b", work)
    try:
        pa.mount()
        # initial: A writes the tree and pushes it; then B mounts and reads
        # it complete.
        t0 = time.perf_counter()
        write_tree(pa.mnt, files, size)
        server.settled()
        res["initial push from A (s)"] = time.perf_counter() - t0 - 0.7
        t0 = time.perf_counter()
        pb.mount()
        wait_for(lambda: tree_complete(pb.mnt, files, size), 3600, poll=0.05)
        res["initial zippyfs to B (s)"] = time.perf_counter() - t0
        src, dst = os.path.join(work, "rsync-src"), os.path.join(work, "rsync-dst")
        os.mkdir(src)
        write_tree(src, files, size)
        subprocess.run(["sync"])
        t0 = time.perf_counter()
        sh("rsync", "-a", src + "/", dst + "/")
        res["initial rsync (s)"] = time.perf_counter() - t0
        res["initial files"] = files
        res["initial bytes"] = files * size
        # latency: small file written and closed on A until B reads it.
        lat = []
        for i in range(200):
            data = payload(1_000_000 + i, 4000)
            with open(os.path.join(pa.mnt, "note.txt"), "wb") as f:
                f.write(data)
            lat.append(wait_for(lambda: reads(os.path.join(pb.mnt, "note.txt"), data), 30))
        lat.sort()
        res["latency p50 (ms)"] = statistics.median(lat) * 1000
        res["latency p99 (ms)"] = lat[int(len(lat) * 0.99) - 1] * 1000
        # big-edit: 4 KiB in a big file.
        with open(os.path.join(pa.mnt, "big"), "wb") as f:
            for i in range(big >> 20):
                f.write(payload(5_000_000 + i, 1 << 20))
        wait_for(lambda: os.path.exists(os.path.join(pb.mnt, "big"))
                 and os.path.getsize(os.path.join(pb.mnt, "big")) == big, 3600, poll=0.05)
        before = server.settled()
        patch = payload(777, 4096)
        off = big // 2 + 12345
        t0 = time.perf_counter()
        with open(os.path.join(pa.mnt, "big"), "r+b") as f:
            f.seek(off)
            f.write(patch)

        def patched():
            try:
                with open(os.path.join(pb.mnt, "big"), "rb") as f:
                    f.seek(off)
                    return f.read(4096) == patch
            except OSError:
                return False

        wait_for(patched, 60)
        res["big-edit until readable (ms)"] = (time.perf_counter() - t0) * 1000
        after = server.settled()
        res["big-edit bytes sent"] = after.get("bytes_out", 0) - before.get("bytes_out", 0)
        res["big-edit file (bytes)"] = big
        # catch-up of 100 versions.
        pb.umount()
        with open(os.path.join(pa.mnt, "big"), "r+b") as f:
            for i in range(100):
                f.seek(i * 65536 + 100)
                f.write(payload(9_000 + i, 4096))
                f.flush()
                os.fsync(f.fileno())
        before = server.settled()
        t0 = time.perf_counter()
        pb.mount()
        want = payload(9_099, 4096)

        def caught_up():
            try:
                with open(os.path.join(pb.mnt, "big"), "rb") as f:
                    f.seek(99 * 65536 + 100)
                    return f.read(4096) == want
            except OSError:
                return False

        wait_for(caught_up, 120, poll=0.01)
        res["catch-up 100 versions (s)"] = time.perf_counter() - t0
        after = server.settled()
        res["catch-up bytes sent"] = after.get("bytes_out", 0) - before.get("bytes_out", 0)
        res["catch-up bytes changed"] = 100 * 4096
    finally:
        for p in (pa, pb):
            if is_mount(p.mnt):
                try:
                    p.umount()
                except Exception:
                    subprocess.run(["umount", "-l", p.mnt])
        server.stop()
        for p in (pa, pb):
            log = os.path.join(p.store, "zippyfs.log")
            if os.path.exists(log):
                shutil.copy(log, os.path.join(a.work, f"zippy-sync-{os.path.basename(p.store)}.log"))
        shutil.rmtree(work, ignore_errors=True)
    commit = sh("git", "rev-parse", "--short", "HEAD", cwd=REPO).stdout.strip()
    if sh("git", "status", "--porcelain", "--untracked-files=no", cwd=REPO).stdout.strip():
        commit += "+dirty"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    machine = f"{cpu}, {os.cpu_count()} CPUs, {mem:.1f} GiB, Linux {platform.release()}"
    date = datetime.date.today().isoformat()
    base = os.path.join(REPO, "perf", "results", f"{a.name}-{date}")
    with open(base + ".json", "w") as f:
        json.dump({"date": date, "commit": commit, "machine": machine, "results": res}, f, indent=1)
    lines = [
        f"# {a.name}: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        "",
        f"Machine: {machine}; commit {commit}. One run, loopback, server and both peers on this machine.",
        "",
        "| measure | value |",
        "|---|---|",
    ]
    for k, v in res.items():
        lines.append(f"| {k} | {v:,.1f} |" if isinstance(v, float) else f"| {k} | {v:,} |")
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwritten: {base}.json, {base}.md")


if __name__ == "__main__":
    main()
