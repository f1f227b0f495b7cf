#!/usr/bin/env python3
"""Issue 12, private device tiers: the whole process's minor faults, CPU time and wall time of
`tests/programs/grow.c` growing to MIB MiB on a private device tier (its only tier, so every
block is there: `cxl:path=/dev/shm/...,size=1G,create`), run under LD_PRELOAD of the library in
two ways, interleaved round by round, each on its own file and profile directory:
  plain     TIERMALLOC_PROFILE with TIERMALLOC_PROFILE_MAX=0: recorded, nothing reserved;
  reserved  TIERMALLOC_PROFILE: the recorded peak made present at start (the constructor).
Both are primed by one run (so every measured `reserved` run reserves). "grown" is the
process's faults while the workload grows (grow.c's own RUSAGE_SELF figure), "process" the
whole process's from exec to exit (os.wait4), the fill included. Prints medians and each run.
With FRESH=1 each run's file is removed before it starts (its pages are new: zeroed by the
kernel, by userfaultfd's copy), else the file stays from run to run (its pages are in the page
cache: mapped by userfaultfd's continue, or by the faults).
"start ms" is the time from spawning the program to its main's first line (grow.c's
GROW_START_SHMEM line), "at main MiB" the shared memory mapped then (the part of the reserve
made present before main). With BEFORE=LIB2, a third kind, "reserved-before", runs the same as
"reserved" with LIB2 (e.g. the parent commit's library), interleaved with the others.
Usage: [FRESH=1] [BEFORE=LIB2] benches/lend/device_faults.py LIB GROW_EXE [ROUNDS] [MIB]"""
import os, statistics, subprocess, sys, tempfile, time

lib, exe = sys.argv[1], sys.argv[2]
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 7
mib = sys.argv[4] if len(sys.argv) > 4 else "300"
tmp = tempfile.mkdtemp(prefix="tm-lend-device-")
kinds = {"plain": {"TIERMALLOC_PROFILE_MAX": "0"}, "reserved": {}}
before = os.environ.get("BEFORE")
if before:
    kinds["reserved-before"] = {}

fresh = os.environ.get("FRESH") == "1"

def run(kind):
    if fresh:
        try:
            os.unlink(f"/dev/shm/tm-lend-bench-{os.getpid()}-{kind}")
        except FileNotFoundError:
            pass
    env = dict(os.environ, LD_PRELOAD=before if kind == "reserved-before" else lib,
               TIERMALLOC_SHOW_STATS="1", TIERMALLOC_PROFILE="g", GROW_START_SHMEM="1",
               TIERMALLOC_PROFILE_DIR=f"{tmp}/{kind}",
               TIERMALLOC_TIERS=f"cxl:path=/dev/shm/tm-lend-bench-{os.getpid()}-{kind},"
                                "size=1G,create",
               **kinds[kind])
    t0 = time.monotonic()
    errf = tempfile.TemporaryFile()
    p = subprocess.Popen([exe, mib], env=env, stdout=subprocess.PIPE, stderr=errf)
    first = p.stdout.readline().decode()
    start_ms = (time.monotonic() - t0) * 1e3
    out = first + p.stdout.read().decode()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    errf.seek(0)
    err = errf.read().decode()
    assert status == 0, out + err
    line = [l for l in err.splitlines() if l.startswith("tiermalloc: cxl   profile")][-1]
    fill_ms = int(line.split("made present in ")[1].split(" ms")[0])
    return {"grown": int(out.split("grown minflt ")[1].split()[0]), "process": ru.ru_minflt,
            "cpu": ru.ru_utime + ru.ru_stime, "wall": wall, "fill_ms": fill_ms,
            "reserved": int(line.split("reserved ")[1].split(" B")[0]),
            "grow_ms": float(out.split(" ms ")[1]), "start_ms": start_ms,
            "at_main_mib": int(first.split("shmem_kb ")[1]) / 1024}

try:
    for k in kinds:
        run(k)
    res = {k: [] for k in kinds}
    for _ in range(rounds):
        for k in kinds:
            res[k].append(run(k))
finally:
    for k in kinds:
        try:
            os.unlink(f"/dev/shm/tm-lend-bench-{os.getpid()}-{k}")
        except FileNotFoundError:
            pass
med = lambda k, f: statistics.median(r[f] for r in res[k])
print("| run | reserved B | at main MiB | start ms | faults while growing | process faults "
      "| fill ms | growth ms | CPU s | wall s |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for k in kinds:
    print(f"| {k} | {med(k,'reserved'):.0f} | {med(k,'at_main_mib'):.1f} | "
          f"{med(k,'start_ms'):.1f} | {med(k,'grown'):.0f} | {med(k,'process'):.0f} | "
          f"{med(k,'fill_ms'):.0f} | {med(k,'grow_ms'):.1f} | {med(k,'cpu'):.3f} | "
          f"{med(k,'wall'):.3f} |")
print(f"reserved/plain: process faults {med('reserved','process')/med('plain','process'):.4f}, "
      f"CPU {med('reserved','cpu')/med('plain','cpu'):.2f}, "
      f"wall {med('reserved','wall')/med('plain','wall'):.2f}")
for k in kinds:
    print(k, {f: [round(r[f], 3) for r in res[k]]
              for f in ("process", "cpu", "wall", "fill_ms", "grow_ms", "start_ms")})
if before:
    b = "reserved-before"
    print(f"reserved/reserved-before: start {med('reserved','start_ms')/med(b,'start_ms'):.3f}, "
          f"process faults {med('reserved','process')/med(b,'process'):.3f}, "
          f"CPU {med('reserved','cpu')/med(b,'cpu'):.2f}, "
          f"wall {med('reserved','wall')/med(b,'wall'):.2f}")
