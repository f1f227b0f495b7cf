#!/usr/bin/env python3
"""Runs programs under several allocators (LD_PRELOAD), interleaved, and prints each one's
median CPU time (user + sys), peak RSS and minor page faults from wait4, with the ratio to the
first allocator: a change against main's library in one run, on a loaded machine.

    preload_pairs.py --reps 12 --lib before=/tmp/main/libtiermalloc.so.0 \\
        --lib ours=target/release/libtiermalloc.so --lib glibc= \\
        --prog 'lua=LUA benches/real/lua_alloc.lua 2' --prog 'grow=/tmp/grow 300'

An empty library path runs the program on glibc's malloc. The program's stdout is discarded.

With --threads (for programs that start and end many threads), each line also gives the wall
time with its spread across reps ((max - min) / median), voluntary context switches (all
threads', from wait4) and the rescheduling and TLB-shootdown interrupts taken during the run
(RES and TLB in /proc/interrupts, summed over CPUs: the whole machine's, so run it where
little else does, or with `chrt -r 10`).
"""
import argparse
import os
import shlex
import statistics
import time


def interrupts():
    """{RES, TLB}: the machine's interrupt counts so far, summed over CPUs (either missing
    where the kernel has no such line)."""
    got = {}
    with open("/proc/interrupts") as f:
        for line in f:
            parts = line.split()
            if parts and parts[0] in ("RES:", "TLB:"):
                got[parts[0][:-1]] = sum(int(p) for p in parts[1:] if p.isdigit())
    return got


def run(argv, lib):
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    if lib:
        env["LD_PRELOAD"] = lib
    irq_before, start = interrupts(), time.monotonic()
    pid = os.fork()
    if pid == 0:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.execvpe(argv[0], argv, env)
    _, status, usage = os.wait4(pid, 0)
    wall, irq_after = time.monotonic() - start, interrupts()
    if status != 0:
        raise SystemExit(f"{argv[0]} under {lib or 'glibc'}: exit status {status:#x}")
    return (usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, usage.ru_minflt, wall,
            usage.ru_nvcsw, irq_after.get("RES", 0) - irq_before.get("RES", 0),
            irq_after.get("TLB", 0) - irq_before.get("TLB", 0))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--lib", action="append", required=True, help="NAME=PATH (first: the base)")
    ap.add_argument("--prog", action="append", required=True, help="NAME=COMMAND LINE")
    ap.add_argument("--threads", action="store_true",
                    help="also wall time, context switches and RES/TLB interrupts")
    a = ap.parse_args()
    libs = [l.split("=", 1) for l in a.lib]
    progs = [(n, shlex.split(c)) for n, c in (p.split("=", 1) for p in a.prog)]
    got = {}
    for _ in range(a.reps):
        for pname, argv in progs:
            for lname, lib in libs:
                got.setdefault((pname, lname), []).append(run(argv, lib))
    for pname, _ in progs:
        base = None
        for lname, _ in libs:
            runs = got[(pname, lname)]
            med = [statistics.median(r[i] for r in runs) for i in range(7)]
            base = base or med
            line = (f"{pname:8} {lname:10} cpu {med[0]:.3f} s ({med[0] / base[0]:.3f})  "
                    f"peak RSS {med[1]:.1f} MiB ({med[1] / base[1]:.3f})  "
                    f"minflt {med[2]:.0f} ({med[2] / base[2]:.3f})")
            if a.threads:
                walls = [r[3] for r in runs]
                spread = (max(walls) - min(walls)) / med[3]
                line += (f"  wall {med[3]:.3f} s ({med[3] / base[3]:.3f}, spread {spread:.0%})"
                         f"  vcsw {med[4]:.0f} ({med[4] / max(base[4], 1):.3f})"
                         f"  RES {med[5]:.0f} ({med[5] / max(base[5], 1):.3f})"
                         f"  TLB {med[6]:.0f} ({med[6] / max(base[6], 1):.3f})")
            print(line)


if __name__ == "__main__":
    main()
