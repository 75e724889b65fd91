#!/usr/bin/env python3
"""Where sync's CPU goes under a write load: a store joined to a `zippyfs
serve` of its own (its directory on /dev/shm) or not joined, one fio job,
then the CPU seconds of the server and of each of the mount's threads
(from /proc), the pushes and bytes the server took.

Run as root from the repository, with the release binary built:
  perf/sync_cpu.py sync|nosync fsync|seq|onedir [SIZE]
(onedir: the suite's shell loop making 10,000 files in one directory;
its "iops" is files a second). With SIZE (fsync only, e.g. 4G) the file
is first written whole and pushed, and the 6 s of 4 KiB writes with an
fsync each then go to that file (what a push costs as the file grows);
without, fio lays out 64 MiB as it goes.
"""
import json, os, subprocess, sys, tempfile, time

BIN=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "target", "release", "zippyfs")
def sh(*a, **k): return subprocess.run(a, check=True, text=True, capture_output=True, **k)
base=tempfile.mkdtemp(prefix="zf.", dir="/var/tmp")
srv=tempfile.mkdtemp(prefix="zs.", dir="/dev/shm")
server=subprocess.Popen([BIN,"serve",srv,"--listen","127.0.0.1:0"],stdout=subprocess.PIPE,stderr=subprocess.DEVNULL,text=True)
port=fp=None
for _ in range(2):
    l=server.stdout.readline().strip()
    if l.startswith("listening on "): port=l.rsplit(":",1)[1]
    if l.startswith("fingerprint "): fp=l.split(" ",1)[1]
out=sh(BIN,"serve",srv,"add-peer","bench","--volume","v").stdout
cred=os.path.join(base,"cred"); open(cred,"w").write(next(l for l in out.splitlines() if l.startswith("zpc1-")))
store=os.path.join(base,"store"); mnt=os.path.join(base,"mnt"); os.mkdir(mnt)
if sys.argv[1]=="sync":
    sh(BIN,"join",store,f"quic://127.0.0.1:{port}/v","--fingerprint",fp,"--credential",cred)
sh(BIN,"mount",mnt,store)
try:
    pid=json.load(open(os.path.join(mnt,".zippy","daemon.json")))["pid"]
    def cpu(p):
        f=open(f"/proc/{p}/stat").read().rsplit(")",1)[1].split()
        return (int(f[11])+int(f[12]))/os.sysconf("SC_CLK_TCK")
    def threads(p):
        r={}
        for t in os.listdir(f"/proc/{p}/task"):
            name=open(f"/proc/{p}/task/{t}/comm").read().strip()
            f=open(f"/proc/{p}/task/{t}/stat").read().rsplit(")",1)[1].split()
            r[name]=r.get(name,0)+(int(f[11])+int(f[12]))/os.sysconf("SC_CLK_TCK")
        return r
    size=sys.argv[3] if len(sys.argv)>3 else None
    s0={}
    if size:
        sh("fio",f"--directory={mnt}","--name=x","--ioengine=psync","--rw=write","--bs=1M",f"--size={size}","--end_fsync=1")
        last=None
        for _ in range(150):
            time.sleep(4)
            now=(json.load(open(os.path.join(srv,"status.json"))) if sys.argv[1]=="sync" else {},
                 json.load(open(os.path.join(mnt,".zippy","daemon.json"))).get("sync",{}))
            if now==last and not now[1].get("in_flight"): break
            last=now
        s0=now[0]
    c0=cpu(server.pid); t0=threads(pid)
    w=sys.argv[2]
    args={"fsync":["--rw=randwrite","--bs=4k",f"--size={size or '64M'}","--fsync=1","--time_based","--runtime=6"],
          "seq":["--rw=write","--bs=1M","--size=1G","--end_fsync=1"],"onedir":[]}[w]
    st=time.time()
    if w=="onedir":
        sh("bash","-c",'mkdir "$1/one" && cd "$1/one" && for i in $(seq 10000); do echo x > f$i; done',"-",mnt)
        j={"iops":10000/(time.time()-st),"bw_bytes":0}
    else:
        o=sh("fio","--output-format=json",f"--directory={mnt}","--name=x","--ioengine=psync","--group_reporting",*args).stdout
        j=json.loads(o[o.index("{"):])["jobs"][0]["write"]
    el=time.time()-st
    time.sleep(1)
    t1=threads(pid)
    st_=json.load(open(os.path.join(srv,"status.json"))) if os.path.exists(os.path.join(srv,"status.json")) else {}
    print("pushes", (st_.get("pushes") or 0)-(s0.get("pushes") or 0), "bytes_in", (st_.get("bytes_in") or 0)-(s0.get("bytes_in") or 0))
    print(sys.argv[1], w, "iops", round(j["iops"]), "MB/s", round(j["bw_bytes"]/1e6), "wall", round(el,2), "server cpu", round(cpu(server.pid)-c0,2))
    print({k: round(t1[k]-t0.get(k,0),2) for k in t1 if t1[k]-t0.get(k,0)>0.01})
finally:
    sh(BIN,"umount",mnt); time.sleep(1)
    server.kill(); server.wait()
    subprocess.run(["rm","-rf",base,srv])
