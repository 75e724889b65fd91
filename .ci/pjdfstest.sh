#!/usr/bin/env bash
# The POSIX suite pjdfstest against a zippyfs mount, in each daemon mode
# (one shard per core, and -s). Fails on any failed test, or on more skipped
# tests than ext4 gives on this machine (15, with the same configuration).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$PWD/target/debug/zippyfs"
CONF="$(cd .. && pwd)/shared/pjdfstest.toml"
MAX_SKIPPED=15
status=0
for mode in "" "-s"; do
    store=$(mktemp -d)
    mnt=$(mktemp -d)
    log=$(mktemp)
    "$BIN" mount -f $mode "$mnt" "$store" 2>"$log" &
    pid=$!
    for _ in $(seq 1 200); do
        if [ "$(stat -c %d "$mnt")" != "$(stat -c %d "$(dirname "$mnt")")" ]; then break; fi
        sleep 0.05
    done
    out=$(mktemp)
    (cd "$mnt" && pjdfstest -c "$CONF" -p "$mnt") >"$out" 2>&1 || true
    umount "$mnt" || umount -l "$mnt"
    for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    summary=$(grep -E "[0-9]+ passed" "$out" | tail -1)
    echo "pjdfstest mode '${mode:-default}': $summary"
    failed=$(echo "$summary" | grep -oE "[0-9]+ failed" | grep -oE "[0-9]+" || echo 0)
    skipped=$(echo "$summary" | grep -oE "[0-9]+ skipped" | grep -oE "[0-9]+" || echo 0)
    if [ -z "$summary" ] || [ "$failed" != "0" ] || [ "$skipped" -gt "$MAX_SKIPPED" ]; then
        echo "pjdfstest failed in mode '${mode:-default}':"
        grep -iE "fail|error|panic" "$out" | head -60 || true
        echo "daemon log:"; tail -20 "$log"
        status=1
    fi
    rm -rf "$store" "$out" "$log"
    rmdir "$mnt" 2>/dev/null || true
done
exit $status
