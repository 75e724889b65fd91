#!/usr/bin/env bash
# A flamegraph of the whole machine (perf record -a -g) while one workload
# runs on a fresh zippyfs mount: perf/flame.sh <name> <command...>, where the
# command runs inside the mount (its path is $MNT). Writes
# perf/results/flame-<name>-<date>.svg. Needs perf and inferno
# (`cargo install inferno`); run as root.
#   perf/flame.sh create python3 perf/meta.py '$MNT'
#   perf/flame.sh randwrite fio --name=rw --directory='$MNT' --rw=randwrite --bs=4k --size=256M --end_fsync=1
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1; shift
cargo build --release -q
work=$(mktemp -d /var/tmp/zippy-flame.XXXXXX)
mkdir "$work/mnt"
./target/release/zippyfs mount "$work/mnt" "$work/store"
export MNT="$work/mnt"
cmd=$(printf '%s ' "$@" | sed "s|\$MNT|$MNT|g")
perf record -a -g -o "$work/perf.data" -- bash -c "$cmd" > /dev/null 2>&1
umount "$MNT"
out="perf/results/flame-$name-$(date -u +%F).svg"
perf script -i "$work/perf.data" 2>/dev/null | inferno-collapse-perf | inferno-flamegraph --title "zippyfs $name, $(date -u +%F), $(git rev-parse --short HEAD)" > "$out"
rm -rf "$work"
echo "written: $out"
