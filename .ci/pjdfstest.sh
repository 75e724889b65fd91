#!/usr/bin/env bash
# The POSIX suite pjdfstest against a zippyfs mount, with each transport
# (classic /dev/fuse, and io_uring where the kernel has it turned on) in
# each daemon mode (one shard per core, and -s), and once without the
# kernel's writeback cache (-o writeback_cache=off). Fails on any failed test, and on any skipped
# test that ext4 on this machine does not skip with the same configuration,
# with one exception no FUSE filesystem can avoid: link::link_count_max skips
# because glibc's pathconf(_PC_LINK_MAX) answers 127, "unknown", for every
# filesystem type it has no table entry for, FUSE included.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$PWD/target/debug/zippyfs"
CONF="$(cd .. && pwd)/shared/pjdfstest.toml"
# What ext4 skips here (no read-only filesystem, no second filesystem), and
# the one FUSE-wide exception above.
ALLOWED_SKIPS="chmod::erofs_named chown::erofs_named chown::lchown::erofs_named link::erofs_named
link::exdev_target mkdir::erofs_new_file mkfifo::erofs_new_file open::erofs_named
open::erofs_new_file rename::erofs_named rename::exdev_target rmdir::erofs_named
symlink::erofs_new_file truncate::erofs_named unlink::erofs_named link::link_count_max"
MODES=("--transport classic" "--transport classic -s" "--transport classic -o writeback_cache=off")
if [ "$(cat /sys/module/fuse/parameters/enable_uring 2>/dev/null)" = "Y" ]; then
    MODES+=("--transport uring" "--transport uring -s")
else
    echo "SKIPPED: pjdfstest with --transport uring (enable_uring is not Y)"
    mkdir -p target/tmp && echo "pjdfstest: --transport uring modes (enable_uring is not Y)" >> target/tmp/skipped-tests
fi
status=0
for mode in "${MODES[@]}"; do
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
    unexpected=""
    for t in $(grep -E "^[a-z_:]+ +skipped$" "$out" | awk '{print $1}'); do
        case " $(echo $ALLOWED_SKIPS) " in
            *" $t "*) ;;
            *) unexpected="$unexpected $t" ;;
        esac
    done
    if [ -n "$unexpected" ]; then echo "skipped where ext4 is not:$unexpected"; fi
    if [ -z "$summary" ] || [ "$failed" != "0" ] || [ -n "$unexpected" ]; then
        echo "pjdfstest failed in mode '${mode:-default}':"
        grep -iE "fail|error|panic" "$out" | head -60 || true
        echo "daemon log:"; tail -20 "$log"
        status=1
    fi
    rm -rf "$store" "$out" "$log"
    rmdir "$mnt" 2>/dev/null || true
done
exit $status
