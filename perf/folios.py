#!/usr/bin/env python3
"""How the kernel holds a file in its page cache: in large folios (compound
pages, as ext4 does) or one 4 KiB page at a time (order-0, as FUSE does under
Linux 6.18). Warm reads are page-cache hits, and looking a page up costs more
among many small folios (perf/notes/2026-11-26-suite-against-targets.md).

Maps each FILE read-only, touches its first MAX_PAGES pages (reading them into
the cache if they were not there), then looks each page's frame up in
/proc/self/pagemap and its flags in /proc/kpageflags (KPF_COMPOUND_HEAD 15,
KPF_COMPOUND_TAIL 16; Documentation/admin-guide/mm/pagemap.rst). Root only:
without CAP_SYS_ADMIN the kernel hides frame numbers.

usage: perf/folios.py FILE...
"""
import ctypes
import mmap
import os
import struct
import sys

PAGE = 4096
MAX_PAGES = 4096  # 16 MiB is plenty to see the pattern
KPF_COMPOUND_HEAD = 15
KPF_COMPOUND_TAIL = 16
PFN_MASK = (1 << 55) - 1


def folios(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        n = min(os.fstat(fd).st_size // PAGE, MAX_PAGES)
        if n == 0:
            return 0, 0, 0, 0, 0
        # A private writable map: ctypes can take its address, and reading
        # it maps the page-cache pages themselves (copies only on write).
        m = mmap.mmap(fd, n * PAGE, access=mmap.ACCESS_COPY)
    finally:
        os.close(fd)
    view = memoryview(m)
    anchor = (ctypes.c_char * 1).from_buffer(m)
    base = ctypes.addressof(anchor)
    for i in range(n):
        view[i * PAGE]  # fault the page in
    heads = tails = small = absent = 0
    with open("/proc/self/pagemap", "rb") as pm, open("/proc/kpageflags", "rb") as kf:
        for i in range(n):
            pm.seek((base // PAGE + i) * 8)
            entry = struct.unpack("<Q", pm.read(8))[0]
            pfn = entry & PFN_MASK
            if not entry >> 63 or pfn == 0:
                absent += 1
                continue
            kf.seek(pfn * 8)
            flags = struct.unpack("<Q", kf.read(8))[0]
            if flags >> KPF_COMPOUND_HEAD & 1:
                heads += 1
            elif flags >> KPF_COMPOUND_TAIL & 1:
                tails += 1
            else:
                small += 1
    del anchor, view
    m.close()
    return n, heads, tails, small, absent


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    if os.geteuid() != 0:
        sys.exit("run as root (/proc/kpageflags, frame numbers in pagemap)")
    for path in sys.argv[1:]:
        n, heads, tails, small, absent = folios(path)
        print(
            f"{path}: {n} pages; in large folios: {heads + tails} "
            f"({heads} folios); order-0: {small}; not mapped: {absent}"
        )


if __name__ == "__main__":
    main()
