#!/usr/bin/env python3
"""Issue 12's fault goal, paired: the whole process's minor faults, CPU time (user + system,
the pre-fault thread included) and wall time of `tests/programs/grow.c` growing to 300 MiB,
run under LD_PRELOAD of the library in three ways, interleaved round by round:
  plain    no profile;
  default  TIERMALLOC_PROFILE: the reserve on huge pages while they cost the pre-fault thread
           no more CPU per byte than a measured small-page step, small pages after;
  small    TIERMALLOC_PROFILE with TIERMALLOC_PROFILE_HUGE=0 (small pages only);
  huge     TIERMALLOC_PROFILE with TIERMALLOC_PROFILE_HUGE=1 (huge pages throughout).
Each profiled kind has its own profile directory, primed by one run first (so every measured
run reserves). Prints a table of medians and each run's figures.
Usage: benches/lend/fault_default.py LIB GROW_EXE [ROUNDS]"""
import os, resource, statistics, subprocess, sys, tempfile, time

lib, exe = sys.argv[1], sys.argv[2]
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 7
tmp = tempfile.mkdtemp(prefix="tm-lend-faults-")
kinds = {
    "plain": {},
    "default": {"TIERMALLOC_PROFILE": "g", "TIERMALLOC_PROFILE_DIR": tmp + "/default"},
    "small": {"TIERMALLOC_PROFILE": "g", "TIERMALLOC_PROFILE_DIR": tmp + "/small",
              "TIERMALLOC_PROFILE_HUGE": "0"},
    "huge": {"TIERMALLOC_PROFILE": "g", "TIERMALLOC_PROFILE_DIR": tmp + "/huge",
             "TIERMALLOC_PROFILE_HUGE": "1"},
}

def run(kind):
    env = dict(os.environ, LD_PRELOAD=lib, TIERMALLOC_SHOW_STATS="1", **kinds[kind])
    t0 = time.monotonic()
    errf = tempfile.TemporaryFile()
    p = subprocess.Popen([exe, "300"], env=env, stdout=subprocess.PIPE, stderr=errf)
    out = p.stdout.read().decode()
    _, status, ru = os.wait4(p.pid, 0)
    errf.seek(0)
    err = errf.read().decode()
    wall = time.monotonic() - t0
    assert status == 0, out
    thread = int(out.split("thread_minflt ")[1].split()[0])
    huge = "-"
    if "advice" in err:
        huge = err.split(" B of it with the huge-page advice")[0].rsplit(" ", 1)[-1]
    return {"huge": huge, "minflt": ru.ru_minflt, "thread": thread,
            "cpu": ru.ru_utime + ru.ru_stime, "sys": ru.ru_stime, "wall": wall}

for k in ("default", "small", "huge"):
    run(k)  # prime: record the first run's peak
res = {k: [] for k in kinds}
for _ in range(rounds):
    for k in kinds:
        res[k].append(run(k))
med = lambda k, f: statistics.median(r[f] for r in res[k])
print("| run | process minor faults | thread minor faults | CPU s (user+sys) | sys s | wall s |")
print("|---|---:|---:|---:|---:|---:|")
for k in kinds:
    print(f"| {k} | {med(k,'minflt'):.0f} | {med(k,'thread'):.0f} | {med(k,'cpu'):.3f} | "
          f"{med(k,'sys'):.3f} | {med(k,'wall'):.3f} |")
for k in ("default", "small", "huge"):
    print(f"{k}/plain: faults {med(k,'minflt')/med('plain','minflt'):.4f}, "
          f"CPU {med(k,'cpu')/med('plain','cpu'):.2f}, "
          f"wall {med(k,'wall')/med('plain','wall'):.2f}")
for k in kinds:
    print(k, "cpu", [round(r["cpu"], 3) for r in res[k]],
          "wall", [round(r["wall"], 3) for r in res[k]],
          "faults", [r["minflt"] for r in res[k]], "huge B", [r["huge"] for r in res[k]])
