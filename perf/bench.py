#!/usr/bin/env python3
"""Whole-system benchmarks: the same workloads, in one run, on several
filesystems side by side, rounds interleaved so that the machine's drift
hits every target alike. Writes the machine, date, commit and every figure
(each round, and the median) to perf/results/<name>-<date>.json and .md
(<name>-<date>-<commit>.* when that day's file exists).

Targets:
  ext4            a plain directory on the ext4 filesystem under --work
  zippy-classic   zippyfs, --transport classic (one thread per CPU)
  zippy-uring     zippyfs, --transport uring (one queue per CPU)
  zippy-classic-s, zippy-uring-s   the same with -s
  zippy, zippy-s  zippyfs with the default transport (auto), and with -s
  zippy-sync      zippyfs joined to a volume of a `zippyfs serve` of its own
                  on 127.0.0.1 (every commit pushed), to compare with zippy;
                  the server's directory is on /dev/shm, as a server's disk
                  is not the peer's (its CPU is still this machine's)
  zippy-o:OPTION  zippyfs with -o OPTION (e.g. zippy-o:block_size=4K)
  zippy-args:A,B  zippyfs with arguments A B (e.g. zippy-args:--cache-size=64M)
  zippy-bin:PATH  another zippyfs binary (an earlier build) with the default
                  arguments, to compare two builds in one run
  mergerfs, bindfs, passthrough_ll, passthrough_ll-wb
                  passthrough FUSE filesystems over an ext4 directory

Workloads (fio: buffered, psync, end_fsync=1 for writes):
  meta            create, stat, list and unlink 10,000 x 1 KiB files, 100
                  per directory (perf/meta.py; by default each phase after
                  stat waits out a 1 s attribute cache, --meta-ttl 0 not)
  seqwrite        1 GiB written sequentially in 1 MiB requests
  randwrite       256 MiB written in random 4 KiB requests
  randread-cold   random 4 KiB reads of a 256 MiB file, caches dropped
  randread-warm   random 4 KiB reads of a 256 MiB file already in memory
  mix             70/30 random 4 KiB reads/writes, 8 s, cold start
  fsync           4 KiB random writes, each followed by fsync, 6 s
  fsync8          the same from 8 jobs at once, each on its own 16 MiB file
  threads         4 threads, each random 4 KiB writes to its own 64 MiB file
  onedir          a shell loop creating 10,000 files in one directory
  untar           extracting a tree of real source (the cargo registry's
                  crate sources, ~7,000 files) and rm -rf of it

Run as root from the repository: perf/bench.py [--rounds 3] [--targets ...]
[--workloads ...] [--name NAME]. Needs fio; builds the release binary.
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
URING_PARAM = "/sys/module/fuse/parameters/enable_uring"

ZIPPY = {
    "zippy": [],
    "zippy-s": ["-s"],
    "zippy-classic": ["--transport", "classic"],
    "zippy-uring": ["--transport", "uring"],
    "zippy-classic-s": ["--transport", "classic", "-s"],
    "zippy-uring-s": ["--transport", "uring", "-s"],
    "zippy-sync": [],
}


def sh(*args, **kw):
    return subprocess.run(args, check=True, text=True, capture_output=True, **kw)


def zippy_args(name):
    """Mount arguments of a zippyfs target: one of ZIPPY, or
    `zippy-o:OPTION` (e.g. `zippy-o:block_size=4K`) for a knob."""
    if name.startswith("zippy-o:"):
        return ["-o", name.split(":", 1)[1]]
    if name.startswith("zippy-args:"):
        return name.split(":", 1)[1].split(",")
    if name.startswith("zippy-bin:"):
        return []
    return ZIPPY[name]


def zippy_bin(name):
    """The binary a zippyfs target mounts with."""
    if name.startswith("zippy-bin:"):
        return name.split(":", 1)[1]
    return BIN


PTLL = os.path.join(REPO, "target", "perf", "passthrough_ll")
PTLL_SRC = "/usr/share/doc/libfuse3-dev/examples/passthrough_ll.c"

# Passthrough FUSE filesystems over an ext4 directory: command to mount
# SRC on MNT (each daemonizes and returns once mounted).
PEERS = {
    "mergerfs": lambda src, mnt: ["mergerfs", src, mnt],
    "bindfs": lambda src, mnt: ["bindfs", src, mnt],
    "passthrough_ll": lambda src, mnt: [PTLL, "-o", f"source={src}", mnt],
    "passthrough_ll-wb": lambda src, mnt: [PTLL, "-o", f"source={src},writeback", mnt],
}


def build_peers():
    if not os.path.exists(PTLL):
        os.makedirs(os.path.dirname(PTLL), exist_ok=True)
        flags = sh("pkg-config", "fuse3", "--cflags", "--libs").stdout.split()
        sh("gcc", "-O2", "-o", PTLL, PTLL_SRC, *flags)


def is_mount(path):
    try:
        return os.stat(path).st_dev != os.stat(os.path.dirname(path)).st_dev
    except OSError:
        return False


class Target:
    """A directory to benchmark in, set up fresh for every workload."""

    def __init__(self, name, work):
        self.name = name
        self.work = work
        self.store = None
        self.path = None
        self.base = None
        self.server = None

    def up(self):
        # fio splits --directory at ':'.
        prefix = "".join(c if c.isalnum() or c in "-_" else "_" for c in self.name)
        base = self.base = tempfile.mkdtemp(prefix=prefix + ".", dir=self.work)
        if self.name == "ext4":
            self.path = base
            return
        if self.name in PEERS:
            src = os.path.join(base, "src")
            self.path = os.path.join(base, "mnt")
            os.mkdir(src)
            os.mkdir(self.path)
            sh(*PEERS[self.name](src, self.path))
            deadline = time.time() + 10
            while not is_mount(self.path) and time.time() < deadline:
                time.sleep(0.02)
            return
        self.store = os.path.join(base, "store")
        self.path = os.path.join(base, "mnt")
        os.mkdir(self.path)
        if self.name == "zippy-sync":
            self.join_a_server(base)
        sh(zippy_bin(self.name), "mount", *zippy_args(self.name), self.path, self.store)

    def join_a_server(self, base):
        """Starts a sync server of this target's own and joins the store to it."""
        srv = tempfile.mkdtemp(prefix="zippy-server.", dir="/dev/shm")
        self.server_dir = srv
        nice = ["nice", "-n", str(SERVER_NICE)] if SERVER_NICE else []
        self.server = subprocess.Popen(
            nice + [BIN, "serve", srv, "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        if SERVER_CPU:
            cap_cpu(self.server.pid, SERVER_CPU)
        port = fingerprint = None
        for _ in range(2):
            line = self.server.stdout.readline().strip()
            if line.startswith("listening on "):
                port = line.rsplit(":", 1)[1]
            if line.startswith("fingerprint "):
                fingerprint = line.split(" ", 1)[1]
        out = sh(BIN, "serve", srv, "add-peer", "bench", "--volume", "v").stdout
        cred = os.path.join(base, "credential")
        with open(cred, "w") as f:
            f.write(next(l for l in out.splitlines() if l.startswith("zpc1-")))
        sh(BIN, "join", self.store, f"quic://127.0.0.1:{port}/v",
           "--fingerprint", fingerprint, "--credential", cred)

    def store_bytes(self):
        if not self.store:
            return None
        return sum(
            os.path.getsize(os.path.join(d, f))
            for d, _, fs in os.walk(self.store)
            for f in fs
        )

    def down(self):
        if self.name in PEERS:
            for _ in range(50):
                if subprocess.run(["umount", self.path], capture_output=True).returncode == 0:
                    break
                time.sleep(0.1)
        if self.store:
            with open(os.path.join(self.path, ".zippy", "daemon.json")) as f:
                pid = json.load(f)["pid"]
            sh("umount", self.path)
            deadline = time.time() + 30
            while os.path.exists(f"/proc/{pid}") and time.time() < deadline:
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        if f.read().split()[2] == "Z":
                            break  # exited; the sandbox's init does not reap
                except FileNotFoundError:
                    break
                time.sleep(0.05)
        if self.server:
            self.server.kill()
            self.server.wait()
            self.server = None
            shutil.rmtree(self.server_dir, ignore_errors=True)
        shutil.rmtree(self.base)


CGROUP = "zippy-bench-server"


def cap_cpu(pid, pct):
    """Moves process `pid` (with every thread it has and makes) into a
    cgroup of its own allowed `pct` percent of one CPU: cgroup v2's cpu.max
    where /sys/fs/cgroup is v2, v1's CFS quota otherwise."""
    def put(path, value):
        with open(path, "w") as f:
            f.write(str(value))
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        put("/sys/fs/cgroup/cgroup.subtree_control", "+cpu")
        d = os.path.join("/sys/fs/cgroup", CGROUP)
        os.makedirs(d, exist_ok=True)
        put(os.path.join(d, "cpu.max"), f"{pct * 1000} 100000")
    else:
        d = os.path.join("/sys/fs/cgroup/cpu", CGROUP)
        os.makedirs(d, exist_ok=True)
        put(os.path.join(d, "cpu.cfs_period_us"), 100000)
        put(os.path.join(d, "cpu.cfs_quota_us"), pct * 1000)
    put(os.path.join(d, "cgroup.procs"), pid)


def process_cpu(pid):
    """CPU seconds process `pid` has used (user and system)."""
    with open(f"/proc/{pid}/stat") as f:
        st = f.read().rsplit(")", 1)[1].split()
    return (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK")


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def fio(path, name, extra):
    out = sh(
        "fio",
        "--output-format=json",
        f"--directory={path}",
        f"--name={name}",
        "--ioengine=psync",
        "--group_reporting",
        *extra,
    ).stdout
    job = json.loads(out[out.index("{"):])["jobs"][0]
    return job


META_ARGS = []


def w_meta(t):
    out = sh(sys.executable, os.path.join(REPO, "perf", "meta.py"), t.path, *META_ARGS).stdout
    r = json.loads(out)
    return {f"{k} 10k files (s)": v for k, v in r.items()}


def w_seqwrite(t):
    j = fio(t.path, "seq", ["--rw=write", "--bs=1M", "--size=1G", "--end_fsync=1"])
    return {"seq write 1M (MB/s)": j["write"]["bw_bytes"] / 1e6}


def w_randwrite(t):
    j = fio(t.path, "rw", ["--rw=randwrite", "--bs=4k", "--size=256M", "--end_fsync=1"])
    return {"rand write 4K (IOPS)": j["write"]["iops"]}


def layout(t, name, size="256M"):
    fio(t.path, name, ["--rw=write", "--bs=1M", f"--size={size}", "--end_fsync=1"])


def w_randread_cold(t):
    layout(t, "rc")
    drop_caches()
    j = fio(t.path, "rc", ["--rw=randread", "--bs=4k", "--size=256M", "--time_based", "--runtime=8"])
    return {"rand read 4K cold (IOPS)": j["read"]["iops"]}


def w_mix(t):
    layout(t, "mx")
    drop_caches()
    j = fio(
        t.path,
        "mx",
        ["--rw=randrw", "--rwmixread=70", "--bs=4k", "--size=256M", "--time_based",
         "--runtime=8", "--end_fsync=1"],
    )
    return {"mix 70/30 4K (IOPS)": j["read"]["iops"] + j["write"]["iops"]}


def w_fsync(t):
    j = fio(t.path, "fs", ["--rw=randwrite", "--bs=4k", "--size=64M", "--fsync=1",
                           "--time_based", "--runtime=6"])
    return {"4K write+fsync (IOPS)": j["write"]["iops"]}


def w_fsync8(t):
    j = fio(t.path, "fs8", ["--rw=randwrite", "--bs=4k", "--size=16M", "--fsync=1",
                            "--numjobs=8", "--time_based", "--runtime=6"])
    return {"8 jobs 4K write+fsync (IOPS)": j["write"]["iops"]}


def w_threads(t):
    j = fio(t.path, "th", ["--rw=randwrite", "--bs=4k", "--size=64M", "--numjobs=4",
                           "--end_fsync=1"])
    return {"4 threads rand write 4K (IOPS)": j["write"]["iops"]}


def w_onedir(t):
    d = os.path.join(t.path, "one")
    os.mkdir(d)
    start = time.perf_counter()
    sh("bash", "-c", 'cd "$1" && for i in $(seq 10000); do echo x > f$i; done', "-", d)
    return {"10k files in one dir, shell loop (s)": time.perf_counter() - start}


TREE = None
SERVER_NICE = 0
SERVER_CPU = None
PIN_WORKLOAD = False
# (round, workload, CPU seconds) of zippy-sync's server during each workload.
SERVER_CPU_USED = []


def source_tree(work):
    """A tar of real source: the cargo registry's crate sources, files under
    256 KiB (about 7,000 files, 60 MiB here)."""
    global TREE
    if TREE:
        return TREE
    reg = os.path.expanduser("~/.cargo/registry/src")
    TREE = os.path.join(work, "zippy-perf-tree.tar")
    sh("bash", "-c", f'cd "{reg}" && find . -type f -size -256k | sort | tar cf "{TREE}" -T -')
    return TREE


def w_untar(t):
    tree = source_tree(os.path.dirname(t.base))
    start = time.perf_counter()
    sh("tar", "xf", tree, "-C", t.path)
    sh("sync", "-f", t.path)
    untar = time.perf_counter() - start
    start = time.perf_counter()
    for e in os.listdir(t.path):
        sh("rm", "-rf", os.path.join(t.path, e))
    return {"untar source tree (s)": untar, "rm -rf source tree (s)": time.perf_counter() - start}


def w_randread_warm(t):
    # Lay the file out, read it once into memory, then measure.
    fio(t.path, "rr", ["--rw=write", "--bs=1M", "--size=256M", "--end_fsync=1"])
    with open(os.path.join(t.path, "rr.0.0"), "rb") as f:
        while f.read(1 << 20):
            pass
    j = fio(
        t.path,
        "rr",
        [
            "--rw=randread",
            "--bs=4k",
            "--size=256M",
            "--time_based",
            "--runtime=8",
            "--invalidate=0",  # fio drops the file's cached pages otherwise
        ],
    )
    return {"rand read 4K warm (IOPS)": j["read"]["iops"]}


WORKLOADS = {
    "meta": w_meta,
    "seqwrite": w_seqwrite,
    "randwrite": w_randwrite,
    "randread-cold": w_randread_cold,
    "randread-warm": w_randread_warm,
    "mix": w_mix,
    "fsync": w_fsync,
    "fsync8": w_fsync8,
    "threads": w_threads,
    "onedir": w_onedir,
    "untar": w_untar,
}

LOWER_IS_BETTER = "(s)"


def machine():
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    commit = sh("git", "-C", REPO, "rev-parse", "--short", "HEAD").stdout.strip()
    dirty = sh("git", "-C", REPO, "status", "--porcelain", "--untracked-files=no").stdout
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "kernel": platform.release(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": round(mem / 2**30, 1),
        "commit": commit + ("+dirty" if dirty.strip() else ""),
        "fio": sh("fio", "--version").stdout.strip(),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--targets", default="ext4,zippy-classic,zippy-uring")
    ap.add_argument("--meta-ttl", default=None, help="meta.py --ttl (seconds to wait before stat and readdir)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--name", default="transport")
    ap.add_argument("--work", default="/var/tmp", help="a directory on ext4")
    ap.add_argument("--server-nice", type=int, default=0,
                    help="run zippy-sync's server at this nice value: it stands in for a server "
                         "on another machine, whose CPU the peer does not share (said in the results)")
    ap.add_argument("--server-cpu", type=int, default=None, metavar="PCT",
                    help="cap zippy-sync's server at PCT percent of one CPU (a cgroup of its own): "
                         "with --server-nice, a stand-in for a server on another machine that "
                         "still costs this one at most PCT%% (said in the results)")
    ap.add_argument("--pin-workload", action="store_true",
                    help="run each round's workload processes (tar, fio, the shell loop) on one "
                         "CPU, round r on CPU r mod N, every target alike; the filesystems' own "
                         "threads are not pinned. On a machine whose disk interrupts all go to "
                         "one CPU, where the workload lands otherwise decides much of its time "
                         "(said in the results)")
    a = ap.parse_args()
    global SERVER_NICE, SERVER_CPU, PIN_WORKLOAD
    SERVER_NICE = a.server_nice
    PIN_WORKLOAD = a.pin_workload
    SERVER_CPU = a.server_cpu
    targets = a.targets.split(",")
    if a.meta_ttl is not None:
        META_ARGS.append(f"--ttl={a.meta_ttl}")
    workloads = a.workloads.split(",")
    if os.geteuid() != 0:
        sys.exit("run as root (mounts, drop_caches)")
    sh("cargo", "build", "--release", cwd=REPO)
    if any(t in PEERS for t in targets):
        build_peers()
    old_uring = None
    # zippyfs's default transport (auto) is io_uring where the kernel's
    # switch is on: turn it on for the run (and back after), as .ci/run does.
    if any(t.startswith("zippy") and "classic" not in t for t in targets):
        with open(URING_PARAM) as f:
            old_uring = f.read().strip()
        with open(URING_PARAM, "w") as f:
            f.write("Y\n")
    # The commit the binary was just built from: taken now, not at the end,
    # when the working tree may have moved on.
    info = machine()
    results = {t: {} for t in targets}  # target -> metric -> [values]
    store_sizes = {t: [] for t in targets}
    try:
        for r in range(a.rounds):
            for w in workloads:
                # Every other round the other way round: a target that
                # always ran second would always meet what the first left
                # (its store being deleted, writeback) and be measured so.
                order = targets if r % 2 == 0 else targets[::-1]
                for name in order:
                    t = Target(name, a.work)
                    drop_caches()
                    t.up()
                    every_cpu = os.sched_getaffinity(0)
                    try:
                        cpu0 = process_cpu(t.server.pid) if t.server else None
                        # After up(): the daemon and the server must not
                        # inherit the pin.
                        if PIN_WORKLOAD:
                            os.sched_setaffinity(0, {sorted(every_cpu)[r % len(every_cpu)]})
                        try:
                            got = WORKLOADS[w](t)
                        finally:
                            os.sched_setaffinity(0, every_cpu)
                        if t.server:
                            SERVER_CPU_USED.append((r + 1, w, process_cpu(t.server.pid) - cpu0))
                        size = t.store_bytes()
                    finally:
                        t.down()
                    for k, v in got.items():
                        results[name].setdefault(k, []).append(v)
                    if size is not None:
                        store_sizes[name].append((w, size))
                    print(f"round {r + 1} {w:14} {name:16} {got}", flush=True)
    finally:
        if old_uring is not None:
            with open(URING_PARAM, "w") as f:
                f.write(old_uring + "\n")
    write(a.name, info, targets, results, store_sizes)


def fmt(v):
    return f"{v:.3f}" if v < 100 else f"{v:,.0f}"


def better(k, x, y):
    """How many times x is better than y for metric k."""
    return (y / x) if LOWER_IS_BETTER in k else (x / y)


def write(name, m, targets, results, sizes):
    day = m["date"][:10]
    base = os.path.join(REPO, "perf", "results", f"{name}-{day}")
    # A second run on the same day keeps the first: its figures may be
    # quoted (tuning.md); this one is named by its commit too.
    if os.path.exists(base + ".json"):
        base += "-" + m["commit"].replace("+", "-")
    med = {t: {k: statistics.median(v) for k, v in results[t].items()} for t in targets}
    store = {
        t: {w: statistics.median([b for w2, b in sizes[t] if w2 == w]) for w, _ in sizes[t]}
        for t in targets
        if sizes[t]
    }
    with open(base + ".json", "w") as f:
        json.dump(
            {"machine": m, "rounds": results, "median": med, "store_bytes": sizes,
             "server_cpu_seconds": SERVER_CPU_USED,
             "store_bytes_median": store},
            f,
            indent=1,
        )
    metrics = list(dict.fromkeys(k for t in targets for k in results[t]))
    rounds = max((len(v) for t in targets for v in results[t].values()), default=0)
    lines = [
        f"# {name}: {m['date']}",
        "",
        f"Machine: {m['cpu']}, {m['cpus']} CPUs, {m['memory_gib']} GiB, Linux {m['kernel']}; "
        f"commit {m['commit']}; {m['fio']}. Median of {rounds} rounds, targets interleaved "
        "in each round, the order reversed every other round. Seconds: lower is better; MB/s and IOPS: higher is better."
        + (f" zippy-sync's server ran at nice {SERVER_NICE}, standing in for a server on "
           "another machine (it still shares these CPUs)." if SERVER_NICE and "zippy-sync" in targets else "")
        + (f" Its CPU was capped at {SERVER_CPU}% of one CPU (a cgroup of its own)."
           if SERVER_CPU and "zippy-sync" in targets else "")
        + (" Each round's workload processes ran on one CPU (round r on CPU r mod "
           f"{m['cpus']}), every target alike; the filesystems' threads were not pinned."
           if PIN_WORKLOAD else ""),
        "",
        "| workload | " + " | ".join(targets) + " |",
        "|---|" + "---|" * len(targets),
    ]
    for k in metrics:
        row = [k] + ["" if med[t].get(k) is None else fmt(med[t][k]) for t in targets]
        lines.append("| " + " | ".join(row) + " |")

    peers = [t for t in targets if t in PEERS]
    zippies = [t for t in targets if t in ZIPPY or t.startswith("zippy-")]
    cols = []
    for z in zippies:
        if "ext4" in targets:
            cols.append((z, "ext4"))
        if peers:
            cols.append((z, "best peer"))
    for u in [t for t in zippies if "uring" in t]:
        c = u.replace("uring", "classic")
        if c in targets:
            cols.append((u, c))
    if "zippy" in targets and "zippy-s" in targets:
        cols.append(("zippy", "zippy-s"))
    if cols:
        lines += ["", "Ratios (> 1 means zippyfs is faster):", ""]
        lines.append("| workload | " + " | ".join(f"{a} / {b}" for a, b in cols) + " |")
        lines.append("|---|" + "---|" * len(cols))
    for k in metrics if cols else []:
        row = [k]
        for a_, b_ in cols:
            x = med[a_].get(k)
            if b_ == "best peer":
                vals = [(med[p][k], p) for p in peers if med[p].get(k)]
                if not vals:
                    row.append("")
                    continue
                y, who = (min if LOWER_IS_BETTER in k else max)(vals)
                row.append(f"{better(k, x, y):.2f}x ({who})" if x else "")
                continue
            y = med[b_].get(k)
            row.append(f"{better(k, x, y):.2f}x" if x and y else "")
        lines.append("| " + " | ".join(row) + " |")
    if "zippy-sync" in targets and "zippy" in targets:
        # Each round's pair ran back to back on the same CPU conditions:
        # the ratio within a round removes the drift between rounds.
        lines += ["", "zippy-sync against zippy, the ratio within each round (> 1: sync on is "
                  "faster): median, lowest, highest:", ""]
        lines.append("| workload | median | lowest | highest |")
        lines.append("|---|---|---|---|")
        for k in metrics:
            pairs = list(zip(results["zippy-sync"].get(k, []), results["zippy"].get(k, [])))
            rs = sorted(better(k, x, y) for x, y in pairs if x and y)
            if rs:
                lines.append(f"| {k} | {statistics.median(rs):.2f} | {rs[0]:.2f} | {rs[-1]:.2f} |")
    if store:
        lines += ["", "Store size after each workload (versioning on, default retention), MiB:", ""]
        ws = list(dict.fromkeys(w for t in store for w in store[t]))
        lines.append("| target | " + " | ".join(ws) + " |")
        lines.append("|---|" + "---|" * len(ws))
        for t in store:
            lines.append(
                f"| {t} | " + " | ".join(f"{store[t].get(w, 0) / 2**20:.1f}" for w in ws) + " |"
            )
    if SERVER_CPU_USED:
        ws = list(dict.fromkeys(w for _, w, _ in SERVER_CPU_USED))
        lines += ["", "zippy-sync's server: CPU seconds during each workload (median of rounds):", ""]
        lines.append("| " + " | ".join(ws) + " |")
        lines.append("|" + "---|" * len(ws))
        lines.append("| " + " | ".join(
            f"{statistics.median([c for _, w2, c in SERVER_CPU_USED if w2 == w]):.2f}" for w in ws
        ) + " |")
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    drawn = chart(base + ".png", name, m, targets, metrics, med)
    print(f"\nwritten: {base}.json, {base}.md" + (f", {base}.png" if drawn else ""))


def chart(path, name, m, targets, metrics, med):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no chart (apt-get install python3-matplotlib)")
        return False
    cols = 3
    rows = (len(metrics) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
    colors = {t: ("tab:red" if t.startswith("zippy") else "tab:gray") for t in targets}
    colors["ext4"] = "tab:blue"
    for ax, k in zip(axes.flat, metrics):
        ts = [t for t in targets if med[t].get(k) is not None]
        ax.bar(range(len(ts)), [med[t][k] for t in ts], color=[colors[t] for t in ts])
        ax.set_xticks(range(len(ts)))
        ax.set_xticklabels(ts, rotation=35, ha="right", fontsize=7)
        ax.set_title(k, fontsize=9)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.suptitle(f"{name}, {m['date'][:10]}, {m['cpus']} CPUs, commit {m['commit']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return True


if __name__ == "__main__":
    main()
