#!/usr/bin/env bash
# The benchmark suite (issue #4): every workload, side by side in one run,
# on ext4, zippyfs (default and -s) and the passthrough FUSE filesystems
# users would pick (mergerfs, bindfs, libfuse's passthrough_ll with and
# without -o writeback). Results: perf/results/suite-<date>.{json,md,png}.
#
# Run as root from anywhere: perf/run.sh [--rounds N]. Installs what it
# needs from Debian (fio, mergerfs, bindfs, libfuse3-dev, gcc,
# python3-matplotlib) if missing. The metadata phases run back to back
# (no waiting out attribute caches): what a user's script would see.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for t in fio mergerfs bindfs gcc pkg-config; do command -v "$t" >/dev/null || need+=("$t"); done
[ -e /usr/share/doc/libfuse3-dev/examples/passthrough_ll.c ] || need+=(libfuse3-dev)
/usr/bin/python3 -c "import matplotlib" 2>/dev/null || need+=(python3-matplotlib)
if [ ${#need[@]} -gt 0 ]; then
    pkgs=$(printf '%s\n' "${need[@]}" | sed 's/^pkg-config$/pkg-config/' | sort -u | tr '\n' ' ')
    apt-get install -y -qq $pkgs || (apt-get update -qq && apt-get install -y -qq $pkgs)
fi
exec /usr/bin/python3 perf/bench.py --name suite \
    --targets ext4,mergerfs,bindfs,passthrough_ll,passthrough_ll-wb,zippy,zippy-s \
    --meta-ttl 0 "$@"
