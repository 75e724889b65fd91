#!/bin/bash
# perf/keep_log.sh N: the sync server's store after one peer pushes a 256 KiB
# file of new bytes 600 times, with `serve --keep-log N` (0: every change-set
# kept). Run as root from anywhere; needs the release build. Prints the
# server's status, its store's size on disk, and `zippyfs info` of it.
set -e
BIN="$(cd "$(dirname "$0")/.." && pwd)/target/release/zippyfs"
KEEP=$1
W=$(mktemp -d /var/tmp/keeplog.XXXX)
mkdir -p $W/srv $W/mnt
$BIN serve $W/srv --listen 127.0.0.1:0 --keep-log $KEEP > $W/srv.out 2>$W/srv.log &
SP=$!
# Whatever happens: the mount down, the server stopped, the directory gone.
# (The daemon may still write its sync state for a moment after umount.)
trap 'set +e; umount $W/mnt 2>/dev/null; kill $SP 2>/dev/null; for i in 1 2 3 4 5; do rm -rf $W 2>/dev/null && break; sleep 0.5; done' EXIT
for i in $(seq 50); do grep -q fingerprint $W/srv.out 2>/dev/null && break; sleep 0.1; done
PORT=$(grep "listening on" $W/srv.out | sed 's/.*://')
FP=$(grep fingerprint $W/srv.out | cut -d' ' -f2)
$BIN serve $W/srv add-peer p --volume v | grep zpc1- > $W/cred
$BIN join $W/store quic://127.0.0.1:$PORT/v --fingerprint $FP --credential $W/cred >/dev/null
$BIN mount $W/mnt $W/store
python3 - "$W/mnt" <<'PY'
import os, sys, time
m = sys.argv[1]
for i in range(600):
    with open(os.path.join(m, "f"), "wb") as f:
        f.write(os.urandom(256 * 1024)); f.flush(); os.fsync(f.fileno())
    time.sleep(0.03)
PY
sleep 2
$BIN umount $W/mnt
kill $SP; wait $SP 2>/dev/null || true
python3 -c "import json;d=json.load(open('$W/srv/status.json'));print('pushes',d['pushes'],'cuts',d.get('cuts'),'blocks_deleted',d.get('blocks_deleted'),'heads',d['heads'])"
echo "keep-log $KEEP: server store $(du -sm $W/srv/store | cut -f1) MiB on disk"
$BIN info $W/srv/store 2>&1 | grep -v INFO | head -3
