#!/usr/bin/env python3
"""Whole-system benchmarks: the same workloads, in one run, on several
filesystems side by side, rounds interleaved so that the machine's drift
hits every target alike. Writes the machine, date, commit and every figure
(each round, and the median) to perf/results/<name>-<date>.json and .md.

Targets:
  ext4            a plain directory on the ext4 filesystem under --work
  zippy-classic   zippyfs, --transport classic (one thread per CPU)
  zippy-uring     zippyfs, --transport uring (one queue per CPU)
  zippy-classic-s, zippy-uring-s   the same with -s

Workloads (fio: buffered, psync, end_fsync=1 for writes):
  meta            create, stat (after the 1 s attribute validity has run
                  out), unlink 10,000 x 1 KiB files, 100 per directory
                  (perf/meta.py)
  seqwrite        1 GiB written sequentially in 1 MiB requests
  randwrite       256 MiB written in random 4 KiB requests
  randread-warm   random 4 KiB reads of a 256 MiB file already in memory

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
    "zippy-classic": ["--transport", "classic"],
    "zippy-uring": ["--transport", "uring"],
    "zippy-classic-s": ["--transport", "classic", "-s"],
    "zippy-uring-s": ["--transport", "uring", "-s"],
}


def sh(*args, **kw):
    return subprocess.run(args, check=True, text=True, capture_output=True, **kw)


class Target:
    """A directory to benchmark in, set up fresh for every workload."""

    def __init__(self, name, work):
        self.name = name
        self.work = work
        self.store = None
        self.path = None
        self.base = None

    def up(self):
        base = self.base = tempfile.mkdtemp(prefix=self.name + ".", dir=self.work)
        if self.name == "ext4":
            self.path = base
            return
        self.store = os.path.join(base, "store")
        self.path = os.path.join(base, "mnt")
        os.mkdir(self.path)
        sh(BIN, "mount", *ZIPPY[self.name], self.path, self.store)

    def store_bytes(self):
        if not self.store:
            return None
        return sum(
            os.path.getsize(os.path.join(d, f))
            for d, _, fs in os.walk(self.store)
            for f in fs
        )

    def down(self):
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
        shutil.rmtree(self.base)


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


def w_meta(t):
    out = sh(sys.executable, os.path.join(REPO, "perf", "meta.py"), t.path).stdout
    r = json.loads(out)
    return {f"{k} 10k files (s)": v for k, v in r.items()}


def w_seqwrite(t):
    j = fio(t.path, "seq", ["--rw=write", "--bs=1M", "--size=1G", "--end_fsync=1"])
    return {"seq write 1M (MB/s)": j["write"]["bw_bytes"] / 1e6}


def w_randwrite(t):
    j = fio(t.path, "rw", ["--rw=randwrite", "--bs=4k", "--size=256M", "--end_fsync=1"])
    return {"rand write 4K (IOPS)": j["write"]["iops"]}


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
    "randread-warm": w_randread_warm,
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
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--name", default="transport")
    ap.add_argument("--work", default="/var/tmp", help="a directory on ext4")
    a = ap.parse_args()
    targets = a.targets.split(",")
    workloads = a.workloads.split(",")
    if os.geteuid() != 0:
        sys.exit("run as root (mounts, drop_caches)")
    sh("cargo", "build", "--release", cwd=REPO)
    old_uring = None
    if any("uring" in t for t in targets):
        with open(URING_PARAM) as f:
            old_uring = f.read().strip()
        with open(URING_PARAM, "w") as f:
            f.write("Y\n")
    results = {t: {} for t in targets}  # target -> metric -> [values]
    store_sizes = {t: [] for t in targets}
    try:
        for r in range(a.rounds):
            for w in workloads:
                for name in targets:
                    t = Target(name, a.work)
                    drop_caches()
                    t.up()
                    try:
                        got = WORKLOADS[w](t)
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
    write(a.name, machine(), targets, results, store_sizes)


def write(name, m, targets, results, sizes):
    day = m["date"][:10]
    base = os.path.join(REPO, "perf", "results", f"{name}-{day}")
    med = {t: {k: statistics.median(v) for k, v in results[t].items()} for t in targets}
    with open(base + ".json", "w") as f:
        json.dump({"machine": m, "rounds": results, "median": med, "store_bytes": sizes}, f, indent=1)
    metrics = list(dict.fromkeys(k for t in targets for k in results[t]))
    lines = [
        f"# {name}: {m['date']}",
        "",
        f"Machine: {m['cpu']}, {m['cpus']} CPUs, {m['memory_gib']} GiB, Linux {m['kernel']}; "
        f"commit {m['commit']}; {m['fio']}. Median of {len(next(iter(results[targets[0]].values()), []))} "
        "rounds, targets interleaved in each round.",
        "",
        "| workload | " + " | ".join(targets) + " |",
        "|---|" + "---|" * len(targets),
    ]
    for k in metrics:
        row = [k]
        for t in targets:
            v = med[t].get(k)
            row.append("" if v is None else (f"{v:.3f}" if v < 100 else f"{v:,.0f}"))
        lines.append("| " + " | ".join(row) + " |")
    # Ratios: every target against ext4 and, if both ran, uring against classic.
    lines += ["", "Ratios (> 1 is faster):", ""]
    pairs = [(t, "ext4") for t in targets if t != "ext4" and "ext4" in targets]
    for u in [t for t in targets if "uring" in t]:
        c = u.replace("uring", "classic")
        if c in targets:
            pairs.append((u, c))
    lines.append("| workload | " + " | ".join(f"{a} / {b}" for a, b in pairs) + " |")
    lines.append("|---|" + "---|" * len(pairs))
    for k in metrics:
        row = [k]
        for a_, b_ in pairs:
            x, y = med[a_].get(k), med[b_].get(k)
            if not x or not y:
                row.append("")
                continue
            ratio = (y / x) if LOWER_IS_BETTER in k else (x / y)
            row.append(f"{ratio:.2f}x")
        lines.append("| " + " | ".join(row) + " |")
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwritten: {base}.json, {base}.md")


if __name__ == "__main__":
    main()
