#!/usr/bin/env python3
"""heap_at_peak.py: what a process's anonymous memory holds at its peak RSS, per tiermalloc
segment and size class (BENCHMARKS.md, session 14, branch `rss4`).

Runs PROG with LIB preloaded ("glibc": nothing preloaded) and polls /proc/PID/statm every
0.5 ms. At each new maximum of the resident set it stops the process (SIGSTOP), reads the
present bit of every page of its anonymous mappings (/proc/PID/pagemap) and, in every 4 MiB
chunk they cover, the segment header (`src/dram/fast/segment.rs`: `page_of_slice` at byte 8,
then `free_slices` and `dirty_slices`) and each slice's head page descriptor (`page.rs`:
`used`, `block_size`, `allocs`, `capacity`, `reserved` from byte 16), then lets it run on
(SIGCONT). Prints the last snapshot (the peak's): the resident KiB of the anonymous memory,
each anonymous mapping, and per segment the resident KiB of small-class pages (blocks up to
8 KiB), big-class pages and free slices (dirty: counted as resident by the heap), then with
`-v` every slice. A chunk-aligned mapping whose header does not read as a segment is skipped
(large blocks). The snapshot is the moment the RSS last grew, to 0.5 ms; programs that run
for under a few milliseconds are missed. Needs the same user as the program (ptrace access).

  python3 benches/tools/heap_at_peak.py [-v] LIB PROG ARGS...
  STDIN=FILE python3 benches/tools/heap_at_peak.py LIB PROG ARGS...   (barnes reads its input)
"""
import os
import signal
import struct
import subprocess
import sys
import time

CHUNK = 4 << 20
SLICE = 64 << 10
BIG = 8 << 10


def present_pages(pagemap, address, pages):
    pagemap.seek((address >> 12) * 8)
    data = pagemap.read(8 * pages)
    return sum(struct.unpack_from("<Q", data, 8 * i)[0] >> 63 for i in range(len(data) // 8))


def snapshot(pid):
    """(anonymous resident pages, [(lo, hi, resident pages)], [segment])."""
    pagemap = open(f"/proc/{pid}/pagemap", "rb")
    mem = open(f"/proc/{pid}/mem", "rb")
    total, mappings, chunks = 0, [], set()
    for line in open(f"/proc/{pid}/maps").read().splitlines():
        f = line.split()
        # Anonymous, unnamed, readable mappings only (a segment's unused slices are PROT_NONE).
        if len(f) >= 6 or f[4] != "0" or "r" not in f[1]:
            continue
        lo, hi = (int(x, 16) for x in f[0].split("-"))
        resident = present_pages(pagemap, lo, (hi - lo) >> 12)
        total += resident
        mappings.append((lo, hi, resident))
        chunks.update(range(lo & ~(CHUNK - 1), hi, CHUNK))
    segments = []
    for chunk in sorted(chunks):
        try:
            mem.seek(chunk)
            header = mem.read(8 + 64 * 8 + 16)
        except OSError:
            continue
        if len(header) < 8 + 64 * 8 + 16:
            continue
        heads = struct.unpack_from("<64Q", header, 8)
        free, dirty = struct.unpack_from("<QQ", header, 8 + 512)
        # A segment's slice 0 is its header: never free; every head lies in the header.
        if free & 1 or not any(chunk <= h < chunk + SLICE for h in heads[1:]):
            continue
        slices = []
        for s in range(1, 64):
            try:
                resident = present_pages(pagemap, chunk + s * SLICE, 16)
            except OSError:
                resident = 0
            head, size, used, capacity, reserved = heads[s], 0, 0, 0, 0
            if chunk <= head < chunk + SLICE and not free >> s & 1:
                mem.seek(head + 16)
                used, size, _, capacity, reserved = struct.unpack("<IIQII", mem.read(24))
                used &= 0x7FFFFFFF
            slices.append((s, size, used, capacity, reserved, resident, free >> s & 1,
                           dirty >> s & 1))
        segments.append((chunk, slices))
    return total, mappings, segments


def main():
    args = sys.argv[1:]
    verbose = args[:1] == ["-v"]
    if verbose:
        args = args[1:]
    if len(args) < 2:
        sys.exit(__doc__)
    lib, argv = args[0], args[1:]
    env = dict(os.environ)
    if lib != "glibc":
        env["LD_PRELOAD"] = lib
    stdin = open(os.environ["STDIN"]) if os.environ.get("STDIN") else None
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stdin=stdin)
    peak, best = 0, None
    while proc.poll() is None:
        try:
            rss = int(open(f"/proc/{proc.pid}/statm").read().split()[1]) * 4
            if rss > peak:
                os.kill(proc.pid, signal.SIGSTOP)
                try:
                    peak = int(open(f"/proc/{proc.pid}/statm").read().split()[1]) * 4
                    best = snapshot(proc.pid)
                finally:
                    os.kill(proc.pid, signal.SIGCONT)
        except (OSError, ValueError):
            break
        time.sleep(0.0005)
    proc.wait()
    if best is None:
        sys.exit("no snapshot (the program ended too soon)")
    total, mappings, segments = best
    print(f"peak RSS {peak} KiB, anonymous resident {total * 4} KiB")
    for lo, hi, resident in mappings:
        if resident:
            print(f"  mapping {lo:#x}-{hi:#x} {(hi - lo) >> 10} KiB, resident {resident * 4} KiB")
    for chunk, slices in segments:
        small = sum(r for _, size, _, _, _, r, f, _ in slices if not f and 0 < size <= BIG)
        big = sum(r for _, size, _, _, _, r, f, _ in slices if not f and size > BIG)
        dirty = sum(r for *_, r, f, d in slices if f and d)
        clean = sum(r for *_, r, f, d in slices if f and not d)
        print(f"segment {chunk:#x}: small pages {small * 4} KiB, big pages {big * 4} KiB, "
              f"free dirty slices {dirty * 4} KiB, free clean {clean * 4} KiB")
        if verbose:
            for s, size, used, capacity, reserved, resident, f, d in slices:
                if size or resident:
                    state = ("free dirty" if d else "free") if f else ""
                    print(f"  slice {s:2d} block {size:6d} used {used:4d} carved "
                          f"{capacity:4d}/{reserved:4d} resident {resident * 4:3d} KiB {state}")


if __name__ == "__main__":
    main()
