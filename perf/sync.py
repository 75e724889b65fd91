#!/usr/bin/env python3
"""Sync on loopback: a real `zippyfs serve` and two peers (A, B), each a
real mount of its own store, against rsync and Syncthing on the same data,
in one run. Writes the machine, date, commit and every figure to
perf/results/<name>-<date>.json and .md, and a chart of the initial sync
and the latency to .svg.

Measured:
  initial   1 GiB in 10,000 files written on A's mount and pushed; then B
            (joined, never mounted) is mounted: time until all of it is
            readable on B's mount, against `rsync -a` of the same tree from
            one ext4 directory to another (a local copy: rsync's best case,
            no network, no ssh), and against Syncthing from A's folder to
            B's (below). Also the time from A's first write until the
            server has all of it.
  latency   a small file written and closed on A, 200 times; time until B
            reads the new content (polled every millisecond): p50, p99.
  big-edit  4 KiB changed in a 1 GiB file on A: time until B reads it, and
            the bytes the server sent (its status.json) against 4 KiB.
  catch-up  B unmounted while A makes 100 versions (4 KiB each in a
            different block, fsync each); B mounted again: time and bytes
            the server sent against the bytes changed.

Syncthing (issue #16), after the zippyfs part is down: two instances A and
B (Debian's syncthing 1.19, installed if missing), each with its own home
and folder, talking TCP on 127.0.0.1 only (discovery, relays, NAT,
reporting and upgrades off), one shared send-receive folder with the
filesystem watcher on and its delay at 1 s (default 10 s). initial: the
same tree written into A's folder; time from its last file closed until
B's folder has all of it (so A's scan is in it). latency: the same small
file written and closed in A's folder 50 times (each takes about a
second); time until B reads it. A Syncthing failure is written into the
results as "syncthing error"; the rest of the run goes on.

Run as root from the repository:
perf/sync.py [--small] [--name NAME] [--work DIR] [--no-build].
Needs rsync and syncthing (installs both if missing); builds the release
binary unless --no-build.
"""

import argparse
import copy
import datetime
import html
import json
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import xml.etree.ElementTree as ET

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


# Syncthing, the peer issue #16 names. Its figures come from its own folders
# on ext4, synced over TCP on 127.0.0.1.
ST_FOLDER = "zippybench"
ST_WATCH_DELAY_S = 1  # Syncthing's default is 10 s: ~7 s an edit (issue #16)
ST_SAMPLES = 50  # not 200: each takes about a second


def free_ports(n):
    """n distinct free TCP ports on 127.0.0.1 (all held open until all are
    picked, so none is handed out twice)."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def set_text(parent, tag, text):
    el = parent.find(tag)
    if el is None:
        el = ET.SubElement(parent, tag)
    el.text = str(text)


class Syncthing:
    """One Syncthing instance: its own home (config, keys, database) and
    folder under work, its GUI/REST API and sync port on 127.0.0.1."""

    def __init__(self, name, work, gui_port, port):
        self.name = name
        self.home = os.path.join(work, f"st-{name}-home")
        self.folder = os.path.join(work, f"st-{name}-folder")
        self.log = os.path.join(work, f"st-{name}.log")
        self.gui_port, self.port = gui_port, port
        self.apikey = secrets.token_hex(16)
        self.proc = None
        sh("syncthing", "generate", f"--home={self.home}", "--no-default-folder")
        self.id = sh("syncthing", "serve", f"--home={self.home}", "--device-id").stdout.strip()

    def configure(self, other):
        """Edit the generated config.xml: loopback only, nothing that talks
        to the internet, the other instance at its explicit address, and the
        shared folder."""
        path = os.path.join(self.home, "config.xml")
        tree = ET.parse(path)
        root = tree.getroot()
        # its own name, so the logs say which is which (the default is the
        # host name, the same for both).
        for dev in root.findall("device"):
            if dev.get("id") == self.id:
                dev.set("name", self.name)
        gui = root.find("gui")
        gui.set("tls", "false")
        set_text(gui, "address", f"127.0.0.1:{self.gui_port}")
        set_text(gui, "apikey", self.apikey)
        opts = root.find("options")
        for el in opts.findall("listenAddress"):
            opts.remove(el)
        ET.SubElement(opts, "listenAddress").text = f"tcp://127.0.0.1:{self.port}"
        for tag, value in {
            "globalAnnounceEnabled": "false",
            "localAnnounceEnabled": "false",
            "relaysEnabled": "false",
            "natEnabled": "false",  # also turns STUN off
            "urAccepted": "-1",
            "crashReportingEnabled": "false",
            "autoUpgradeIntervalH": "0",
            "startBrowser": "false",
            # Syncthing nices itself by default; zippyfs does not, and the
            # comparison should not hand it that handicap.
            "setLowPriority": "false",
            # the first dial to a peer not listening yet is retried after
            # this (default 60 s).
            "reconnectionIntervalS": "5",
        }.items():
            set_text(opts, tag, value)
        # The other device, from the generated defaults for a new device.
        template = root.find("defaults/device")
        if template is None:
            raise RuntimeError(f"{path}: no <defaults><device> to copy")
        dev = copy.deepcopy(template)
        dev.set("id", other.id)
        dev.set("name", other.name)
        for el in dev.findall("address"):
            dev.remove(el)
        ET.SubElement(dev, "address").text = f"tcp://127.0.0.1:{other.port}"
        root.append(dev)
        # The folder, likewise from the defaults, shared by both devices.
        template = root.find("defaults/folder")
        if template is None:
            raise RuntimeError(f"{path}: no <defaults><folder> to copy")
        folder = copy.deepcopy(template)
        for key, value in {
            "id": ST_FOLDER,
            "label": ST_FOLDER,
            "path": self.folder,
            "type": "sendreceive",
            "fsWatcherEnabled": "true",
            "fsWatcherDelayS": str(ST_WATCH_DELAY_S),
            # only the watcher starts scans, no periodic full rescan.
            "rescanIntervalS": "86400",
        }.items():
            folder.set(key, value)
        for el in folder.findall("device"):
            folder.remove(el)
        for dev_id in (self.id, other.id):
            ET.SubElement(folder, "device", id=dev_id, introducedBy="")
        root.append(folder)
        tree.write(path)
        # Syncthing refuses a folder without its marker; make it here rather
        # than rely on the first start doing so.
        os.makedirs(os.path.join(self.folder, ".stfolder"))

    def start(self):
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                ["syncthing", "serve", f"--home={self.home}", "--no-browser",
                 "--no-restart", "--no-upgrade", "--no-default-folder"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()

    def log_tail(self, n=400):
        try:
            with open(self.log) as f:
                return " ".join(f.read()[-n:].split())
        except OSError:
            return ""

    def api(self, path):
        req = urllib.request.Request(f"http://127.0.0.1:{self.gui_port}{path}",
                                     headers={"X-API-Key": self.apikey})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.load(r)

    def check(self, path, test):
        """test(answer of the REST API) for wait_for: False while the API
        does not answer, an error if the process is gone."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"syncthing {self.name} exited with {self.proc.returncode}: "
                               f"{self.log_tail()}")
        try:
            return test(self.api(path))
        except (OSError, ValueError):
            return False


def st_wait(what, check, limit, poll):
    """wait_for, with the thing waited for in its error."""
    try:
        return wait_for(check, limit, poll)
    except TimeoutError:
        raise TimeoutError(f"{what}: not within {limit} s") from None


def st_tree_complete(root, files, size):
    # tree_complete counts every file, and while B pulls, its
    # .syncthing.*.tmp files would count too: count the tree's own files.
    return tree_complete(root, files, size) and sum(
        1 for _, _, fs in os.walk(root) for n in fs if not n.startswith(".")) >= files


def measure_syncthing(work, logs, files, size, res):
    """The Syncthing figures into res; raises on any failure (the caller
    records it). Both processes are killed before it returns."""
    if shutil.which("syncthing") is None:
        sh("apt-get", "install", "-y", "syncthing",
           env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    res["syncthing version"] = sh("syncthing", "--version").stdout.split()[1]
    ports = free_ports(4)
    sa = Syncthing("a", work, ports[0], ports[1])
    sb = Syncthing("b", work, ports[2], ports[3])
    sa.configure(sb)
    sb.configure(sa)
    try:
        sa.start()
        sb.start()
        for st, other in ((sa, sb), (sb, sa)):
            st_wait(f"syncthing {st.name} REST API", lambda: st.check(
                "/rest/system/ping", lambda r: r.get("ping") == "pong"), 60, 0.2)
        for st, other in ((sa, sb), (sb, sa)):
            st_wait(f"syncthing {st.name} connected to {other.name}", lambda: st.check(
                "/rest/system/connections",
                lambda r: r["connections"].get(other.id, {}).get("connected")), 60, 0.2)
        for st in (sa, sb):
            st_wait(f"syncthing {st.name} folder idle", lambda: st.check(
                f"/rest/db/status?folder={ST_FOLDER}",
                lambda r: r.get("state") == "idle"), 60, 0.2)
        res["syncthing fsWatcherDelayS"] = ST_WATCH_DELAY_S
        # initial: the clock starts once A's tree is written and closed;
        # Syncthing still has to scan and hash it on A.
        t0 = time.perf_counter()
        write_tree(sa.folder, files, size)
        written = time.perf_counter()
        res["initial syncthing: writing A's tree (s)"] = written - t0
        # polled every 200 ms: a walk of the tree every 50 ms would take a
        # good part of a CPU from Syncthing.
        st_wait("syncthing initial tree on B",
                lambda: st_tree_complete(sb.folder, files, size), 1800, 0.2)
        res["initial syncthing to B (s)"] = time.perf_counter() - written
        # B rescans what it pulled (its watcher saw it): let both settle so
        # that is not in the first latencies.
        for st in (sa, sb):
            st_wait(f"syncthing {st.name} folder idle after the tree", lambda: st.check(
                f"/rest/db/status?folder={ST_FOLDER}",
                lambda r: r.get("state") == "idle"), 300, 0.2)
        # latency: small file written and closed in A's folder until B
        # reads it.
        lat = []
        for i in range(ST_SAMPLES):
            data = payload(1_000_000 + i, 4000)
            with open(os.path.join(sa.folder, "note.txt"), "wb") as f:
                f.write(data)
            lat.append(st_wait(f"syncthing note.txt #{i} on B",
                               lambda: reads(os.path.join(sb.folder, "note.txt"), data), 30, 0.001))
        lat.sort()
        res["latency syncthing samples"] = ST_SAMPLES
        res["latency syncthing p50 (ms)"] = statistics.median(lat) * 1000
        res["latency syncthing p99 (ms)"] = lat[int(len(lat) * 0.99) - 1] * 1000
    finally:
        for st in (sa, sb):
            st.stop()
            if os.path.exists(st.log):
                shutil.copy(st.log, os.path.join(logs, f"zippy-sync-syncthing-{st.name}.log"))


def describe(e):
    """One line for the results: the error, and what a failed command said."""
    text = f"{type(e).__name__}: {e}"
    if isinstance(e, subprocess.CalledProcessError):
        text += " " + ((e.stderr or "") + (e.stdout or ""))[-500:]
    return " ".join(text.split())


def write_chart(path, res, files):
    """Horizontal bars, one panel for the initial sync and one for the
    latency, as SVG written by hand (no matplotlib on these machines)."""
    panels = [
        (f"Initial sync, {files:,} files of 100 KiB (s, lower is better)", "s", [
            ("zippyfs (B mount, after A pushed)", res.get("initial zippyfs to B (s)")),
            ("rsync -a (local copy)", res.get("initial rsync (s)")),
            ("Syncthing (from A's tree written)", res.get("initial syncthing to B (s)")),
        ]),
        ("Small file written on A until B reads it, p50 (ms, lower is better)", "ms", [
            ("zippyfs", res.get("latency p50 (ms)")),
            (f"Syncthing (watcher delay {ST_WATCH_DELAY_S} s)", res.get("latency syncthing p50 (ms)")),
        ]),
    ]
    colors = {"zippyfs": "#4c72b0", "rsync": "#8c8c8c", "Syncthing": "#dd8452"}
    width, left, span, bar_h, gap = 820, 260, 440, 22, 8
    body, y = [], 28
    body.append(f'<text x="10" y="{y}" font-size="16" font-weight="bold">'
                f'Sync on loopback: zippyfs, rsync, Syncthing</text>')
    y += 22
    for title, unit, bars in panels:
        y += 14
        body.append(f'<text x="10" y="{y}" font-size="13" font-weight="bold">{html.escape(title)}</text>')
        y += 10
        values = [v for _, v in bars if isinstance(v, (int, float))]
        top = max(values, default=0) or 1
        for label, v in bars:
            body.append(f'<text x="{left - 8}" y="{y + 16}" font-size="12" '
                        f'text-anchor="end">{html.escape(label)}</text>')
            if isinstance(v, (int, float)):
                w = max(1.0, v / top * span)
                color = colors[label.split()[0]]
                body.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{color}"/>')
                body.append(f'<text x="{left + w + 6:.1f}" y="{y + 16}" font-size="12">'
                            f'{v:,.1f} {unit}</text>')
            else:
                body.append(f'<text x="{left + 6}" y="{y + 16}" font-size="12" fill="#b00">'
                            f'not measured (see the results)</text>')
            y += bar_h + gap
    y += 12
    for note in (
        "zippyfs initial: from B's mount, A's tree already on the server.",
        "Syncthing initial: from A's last file closed (A's scan and hashing included).",
        "rsync: one ext4 directory to another, no network. One run, all on this machine.",
    ):
        y += 16
        body.append(f'<text x="10" y="{y}" font-size="11" fill="#444">{html.escape(note)}</text>')
    height = y + 14
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif">\n'
           f'<rect width="{width}" height="{height}" fill="white"/>\n'
           + "\n".join(body) + "\n</svg>\n")
    with open(path, "w") as f:
        f.write(svg)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true", help="1,000 files of 100 KiB, a 64 MiB file")
    ap.add_argument("--name", default="sync")
    ap.add_argument("--work", default="/var/tmp")
    ap.add_argument("--no-build", action="store_true",
                    help="use target/release/zippyfs as it is, no cargo build")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")
    if shutil.which("rsync") is None:
        sh("apt-get", "install", "-y", "rsync")
    if not a.no_build:
        sh("cargo", "build", "--release", cwd=REPO)
    elif not os.path.exists(BIN):
        sys.exit(f"--no-build, and there is no {BIN}")
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
        res["big-edit blocks sent (as patches)"] = (
            f'{after.get("blocks_out", 0) - before.get("blocks_out", 0)} '
            f'({after.get("patches_out", 0) - before.get("patches_out", 0)})')
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
        res["catch-up blocks sent (as patches)"] = (
            f'{after.get("blocks_out", 0) - before.get("blocks_out", 0)} '
            f'({after.get("patches_out", 0) - before.get("patches_out", 0)})')
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
    # Syncthing once zippyfs is down, so neither takes CPU from the other;
    # in a work directory of its own beside the one just removed.
    st_work = tempfile.mkdtemp(prefix="zippy-sync-syncthing.", dir=a.work)
    try:
        measure_syncthing(st_work, a.work, files, size, res)
    except Exception as e:
        res["syncthing error"] = describe(e)
        print(f"syncthing: {res['syncthing error']}", file=sys.stderr)
    finally:
        shutil.rmtree(st_work, ignore_errors=True)
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
        if isinstance(v, float):
            lines.append(f"| {k} | {v:,.1f} |")
        elif isinstance(v, int):
            lines.append(f"| {k} | {v:,} |")
        else:
            lines.append(f"| {k} | {str(v).replace('|', '/')} |")
    chart = os.path.basename(base) + ".svg"
    write_chart(base + ".svg", res, files)
    lines += [
        "",
        f"![initial sync and latency]({chart})",
        "",
        "Where each clock starts and stops:",
        "",
        "- initial push from A: from A's first write of the tree on its mount"
        " until the server's status.json stops moving (less the 0.7 s it is"
        " watched for).",
        "- initial zippyfs to B: from the mount of B, once A's tree is on the"
        " server, until B's mount has every file at its size (polled every"
        " 50 ms).",
        "- initial rsync: `rsync -a` of the tree, written and `sync`ed"
        " beforehand, from one ext4 directory to another.",
        "- initial syncthing to B: from the moment the last file of the tree"
        " is written and closed in A's folder (the writing is the line"
        " \"writing A's tree\", not in the figure; Syncthing's watcher may"
        " have seen the first files while the rest were written) until B's"
        " folder has every file at its size, Syncthing's temporary"
        " `.syncthing.*.tmp` files not counted (polled every 200 ms). It"
        " holds A's scan and hashing, the index exchange and B's pull.",
        f"- latency: from the close of the file on A until B reads the new"
        f" content (polled every millisecond); zippyfs 200 samples, Syncthing"
        f" {ST_SAMPLES} (each takes about a second; its p99 is the"
        f" second-largest).",
        "",
        f"Syncthing ({res.get('syncthing version', 'not run')}, Debian's"
        f" package): two instances on this machine over TCP on 127.0.0.1,"
        f" global and local discovery, relays, NAT traversal, usage and crash"
        f" reporting and upgrades off, not niced; one send-receive folder on"
        f" ext4 with the filesystem watcher on and its delay at"
        f" {ST_WATCH_DELAY_S} s (fsWatcherDelayS; Syncthing's default is"
        f" 10 s, with which issue #16 quotes about 7 s an edit, and about"
        f" 1.06 s with 1 s), no periodic rescan. Its logs: {a.work}/zippy-sync-syncthing-{{a,b}}.log.",
    ]
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwritten: {base}.json, {base}.md, {base}.svg")


if __name__ == "__main__":
    main()
