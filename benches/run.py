#!/usr/bin/env python3
"""Whole-program allocator benchmarks: tiermalloc against its peers, in the same run.

Builds the C workloads in benches/workloads/ (cc -O2 -pthread) and the tiermalloc cdylib
(cargo build --release), then runs every workload under every allocator found, via LD_PRELOAD:

    ours      target/release/libtiermalloc.so (or --lib PATH)
    glibc     no preload
    mimalloc  /usr/lib/x86_64-linux-gnu/libmimalloc.so.2        (Debian libmimalloc2.0)
    jemalloc  /usr/lib/x86_64-linux-gnu/libjemalloc.so.2        (Debian libjemalloc2)
    tcmalloc  /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 (Debian libtcmalloc-minimal4)
    mimalloc3 mimalloc v3, built from the crate libmimalloc-sys's sources (benches/peers.py)
    snmalloc  snmalloc, built from the crate snmalloc-sys's sources (benches/peers.py)

Runs are interleaved: repetition r runs every workload under every allocator (in an order
rotated by r) before repetition r+1 starts, so drift on a shared machine hits every allocator
alike. Reported: median wall time and median peak RSS (ru_maxrss of the workload process, from
wait4 in benches/tools/spawn.c), ratios ours/X per workload and their geometric means. Every
workload prints a deterministic checksum line; it must be identical under every allocator.

--callgrind WORKLOAD runs a smaller instance under valgrind --tool=callgrind per allocator and
reports instruction counts, the figure that does not drift with machine load. --real times
real programs (python3, perl, sqlite3, gcc; REAL_PROGRAMS) instead of the workloads.

Standard library only. Exit status: 0 ok, 1 a run failed or a checksum differed, 2 usage/setup.
"""

import argparse
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402  (benches/peers.py)

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
WORKLOAD_DIR = os.path.join(BENCH_DIR, "workloads")
TOOLS_DIR = os.path.join(BENCH_DIR, "tools")
SYSLIB = "/usr/lib/x86_64-linux-gnu"

# Peers, in table order. "ours" is filled in from the build or --lib.
PEERS = [
    ("glibc", None),
    ("mimalloc", os.path.join(SYSLIB, "libmimalloc.so.2")),
    ("jemalloc", os.path.join(SYSLIB, "libjemalloc.so.2")),
    ("tcmalloc", os.path.join(SYSLIB, "libtcmalloc_minimal.so.4")),
]
# Peers built at benchmark time from their crates' sources (benches/peers.py), after Debian's.
BUILT_PEERS = ("mimalloc3", "snmalloc")

# The workload whose instruction count issue 3 compares (`--targets`).
TARGET_CALLGRIND = "sliding_window"

# Arguments per workload: `full` is the default run (about 0.3-2 s each under glibc on a
# 2-core machine), `quick` the CI smoke run, `callgrind` the instance run under valgrind.
# The meaning of each position is documented at the top of each workload's .c file.
WORKLOADS = {
    "cfrac_like": {
        "full": ["8", "16", "60000"],       # limbs numbers steps
        "quick": ["8", "2", "3000"],
        "callgrind": ["8", "2", "4000"],
    },
    "larson_like": {
        "full": ["2", "4000", "8000000", "8"],  # threads slots ops_per_thread handoff
        "quick": ["2", "1000", "200000", "8"],
        "callgrind": ["2", "4000", "500000", "8"],
    },
    "prodcons": {
        "full": ["1", "4000000", "256"],    # pairs items_per_pair batch
        "quick": ["1", "200000", "256"],
        "callgrind": ["1", "500000", "256"],
    },
    "false_share": {
        "full": ["2", "80000", "800", "8"],  # threads iterations writes objsize
        "quick": ["2", "4000", "800", "8"],
        "callgrind": ["2", "4000", "100", "8"],
    },
    "large": {
        "full": ["1000", "4", "12", "32"],  # steps slots rounds max_mib
        "quick": ["60", "4", "2", "32"],
        "callgrind": ["200", "4", "4", "32"],
    },
    "leak_steady": {
        "full": ["2", "6000000", "20000", "500"],  # threads ops_per_thread window leak_every
        "quick": ["2", "300000", "20000", "500"],
        "callgrind": ["2", "600000", "20000", "500"],
    },
    "sliding_window": {
        "full": ["30000000", "10000"],      # ops window
        "quick": ["1000000", "10000"],
        "callgrind": ["10000000", "10000"],
    },
    "medium_churn": {
        "full": ["1", "4000000", "10000", "65535"],  # threads ops_per_thread window max
        "quick": ["1", "200000", "10000", "65535"],
        "callgrind": ["1", "1000000", "10000", "65535"],
    },
}


# Real programs (`--real`): programs we did not write, installed on the machine, on inputs in
# benches/real/ (the same ones tests/real_programs.rs checks for identical output). A run is the
# whole command; `gcc` compiles this suite's own C sources, one `cc -O2 -S` per file, from a
# shell (LD_PRELOAD reaches every cc1 it starts). "{real}", "{bench}" are directories.
REAL_DIR = os.path.join(BENCH_DIR, "real")
REAL_PROGRAMS = {
    "python3": {"cmd": ["python3", "{real}/workload.py"]},
    "perl": {"cmd": ["perl", "{real}/workload.pl"]},
    "sqlite3": {"cmd": ["sqlite3", "-batch", "-bail", ":memory:"], "stdin": "{real}/workload.sql"},
    "gcc": {"cmd": ["sh", "-c", "for f in {bench}/workloads/*.c {bench}/tools/*.c "
                    "{bench}/device/*.c; do cc -O2 -S -I{bench}/workloads -I{bench}/../include "
                    "-o /dev/null \"$f\" || exit 1; done"]},
}
# Set for every run of `--real` (and harmless to the others): Python allocates through
# malloc, and the hash orders of Python and Perl are fixed, so outputs compare exactly.
REAL_ENV = {"PYTHONMALLOC": "malloc", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1",
            "PERL_HASH_SEED": "0", "PERL_PERTURB_KEYS": "0"}


def real_command(name):
    """(argv with its program resolved, stdin path or None) for a real program, or None."""
    spec = REAL_PROGRAMS[name]
    fill = lambda x: x.replace("{real}", REAL_DIR).replace("{bench}", BENCH_DIR)
    argv = [fill(a) for a in spec["cmd"]]
    # python3 on PATH may be a version manager's shell shim: prefer the real interpreter.
    exe = "/usr/bin/python3" if argv[0] == "python3" and os.path.exists("/usr/bin/python3") \
        else shutil.which(argv[0])
    if exe is None:
        return None
    stdin = fill(spec["stdin"]) if "stdin" in spec else None
    return [exe] + argv[1:], stdin


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------
# building


def target_dir():
    return os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")


def needs_build(out, sources):
    if not os.path.exists(out):
        return True
    t = os.path.getmtime(out)
    return any(os.path.getmtime(s) > t for s in sources)


def compile_if_needed(cmd, out, deps):
    """Run the compiler command cmd unless out is newer than every file in deps; True if ok."""
    if not needs_build(out, deps):
        return True
    log("+ " + " ".join(cmd))
    return subprocess.run(cmd).returncode == 0


def build_tools(build_dir, cc):
    """Compile the helper tools; returns the paths of spawn and whichmalloc."""
    os.makedirs(build_dir, exist_ok=True)
    tools = []
    for tool in ("spawn", "whichmalloc"):
        src, out = os.path.join(TOOLS_DIR, tool + ".c"), os.path.join(build_dir, tool)
        if not compile_if_needed([cc, "-O2", "-pthread", "-Wall", "-o", out, src], out, [src]):
            log("error: compiling %s failed" % src)
            sys.exit(2)
        tools.append(out)
    return tools


def build_c(build_dir, cc):
    """Compile the workloads and the helper tools; returns {name: path} for workloads."""
    os.makedirs(build_dir, exist_ok=True)
    common = [os.path.join(WORKLOAD_DIR, "common.h")]
    workloads = {}
    extra = sorted(f for f in os.listdir(WORKLOAD_DIR) if f.endswith(".c"))
    unknown = [f for f in extra if f[:-2] not in WORKLOADS]
    if unknown:
        log("note: workloads without a parameter entry in run.py are not run: %s" % unknown)
    for name in sorted(WORKLOADS):
        src = os.path.join(WORKLOAD_DIR, name + ".c")
        out = os.path.join(build_dir, name)
        workloads[name] = out
        if not compile_if_needed([cc, "-O2", "-pthread", "-Wall", "-o", out, src], out,
                                 [src] + common):
            log("error: compiling %s failed" % src)
            sys.exit(2)
    build_tools(build_dir, cc)
    return workloads


def build_ours():
    """cargo build --release in the repository root; returns the cdylib path or None."""
    cmd = ["cargo", "build", "--release"]
    log("+ (cd %s && %s)%s" % (REPO, " ".join(cmd),
        "  [CARGO_TARGET_DIR=%s]" % os.environ["CARGO_TARGET_DIR"]
        if os.environ.get("CARGO_TARGET_DIR") else ""))
    try:
        r = subprocess.run(cmd, cwd=REPO)
    except FileNotFoundError:
        log("warning: cargo not found; 'ours' is not measured")
        return None
    lib = os.path.join(target_dir(), "release", "libtiermalloc.so")
    if r.returncode != 0:
        log("warning: cargo build --release failed; 'ours' is not measured")
        return None
    if not os.path.exists(lib):
        log("warning: %s not found after the build; 'ours' is not measured" % lib)
        return None
    return lib


def preload_env(lib):
    """This process's environment with LD_PRELOAD=lib, or without LD_PRELOAD if lib is empty
    (glibc's malloc)."""
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    if lib:
        env["LD_PRELOAD"] = lib
    return env


def check_preload(whichmalloc, name, lib):
    """True if a process started with LD_PRELOAD=lib really calls lib's malloc and free."""
    env = preload_env(lib)
    r = subprocess.run([whichmalloc], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        log("warning: %s: probe failed (exit %d): %s" % (name, r.returncode, r.stderr.strip()))
        return False
    lines = r.stdout.split()
    want = os.path.realpath(lib) if lib else None
    for got in lines:
        real = os.path.realpath(got)
        if want is None:
            ok = os.path.basename(real).startswith("libc")
        else:
            ok = real == want
        if not ok:
            log("warning: %s: malloc/free resolve to %s, not %s%s" % (
                name, got, lib or "libc", (": " + r.stderr.strip()) if r.stderr.strip() else ""))
            return False
    return True


# ----------------------------------------------------------------------------------------
# running


class RunResult:
    def __init__(self, ok, wall=None, rss_kib=None, utime=None, stime=None, out="", err="",
                 why=""):
        self.ok, self.wall, self.rss_kib = ok, wall, rss_kib
        self.utime, self.stime = utime, stime
        self.out, self.err, self.why = out, err, why


def run_once(spawn, prog, args, lib, timeout, tmpdir, stdin=None):
    """Run prog args once under lib (None: glibc) via spawn; stdin: a file to read, or None."""
    res_file = os.path.join(tmpdir, "result")
    out_file = os.path.join(tmpdir, "stdout")
    err_file = os.path.join(tmpdir, "stderr")
    for f in (res_file,):
        if os.path.exists(f):
            os.unlink(f)
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)  # spawn sets it for the workload only
    with open(out_file, "w") as fo, open(err_file, "w") as fe, \
            open(stdin or os.devnull) as fi:
        p = subprocess.Popen([spawn, res_file, lib or "", prog] + args, stdin=fi, stdout=fo,
                             stderr=fe, env=env, start_new_session=True)
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # the spawn helper leads its own process group: this ends it and the workload
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            return RunResult(False, why="timeout after %ds" % timeout,
                             out=open(out_file).read(), err=open(err_file).read())
    out = open(out_file).read()
    err = open(err_file).read()
    if rc != 0 or not os.path.exists(res_file):
        return RunResult(False, out=out, err=err, why="exit status %d" % rc)
    if "cannot be preloaded" in err:
        return RunResult(False, out=out, err=err, why="LD_PRELOAD ignored by ld.so")
    wall_ns, rss, ut, st, _status = open(res_file).read().split()
    return RunResult(True, wall=int(wall_ns) / 1e9, rss_kib=int(rss), utime=int(ut) / 1e6,
                     stime=int(st) / 1e6, out=out, err=err)


def median(xs):
    return statistics.median(xs) if xs else None


def geomean(xs):
    xs = [x for x in xs if x is not None and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def fmt_ratio(x):
    return "—" if x is None else "%.2f" % x


def ratio_geomean(names, results, a, b, metric):
    """Geometric mean over the workloads of median(metric under a) / median(under b)."""
    xs = []
    for w in names:
        ma, mb = [median([metric(r) for r in results.get((w, x), []) if r.ok]) for x in (a, b)]
        if ma and mb:
            xs.append(ma / mb)
    return geomean(xs)


# Issue 3's targets: (what, measured as, allocator compared, bound).
TARGETS = [
    ("wall-time geomean ours/mimalloc", "wall", "mimalloc", 1.0),
    ("wall-time geomean ours/glibc", "wall", "glibc", 0.7),
    ("peak-RSS geomean ours/jemalloc", "rss", "jemalloc", 1.1),
    ("instructions ours/mimalloc (`%s`, whole program)" % TARGET_CALLGRIND, "ir", "mimalloc",
     1.0),
    # Issue 16's, against the strongest peers (built by benches/peers.py).
    ("peak-RSS geomean ours/glibc", "rss", "glibc", 1.0),
    ("instructions ours/mimalloc3 (`%s`, whole program)" % TARGET_CALLGRIND, "ir", "mimalloc3",
     0.9),
]


def targets_table(names, results, callgrind_rows):
    """Issue 3's targets against this run's figures, as a markdown table."""
    ir = {a: total for a, total, _outside, _why in callgrind_rows}
    metrics = {"wall": lambda r: r.wall, "rss": lambda r: r.rss_kib}
    lines = ["#### Targets (issues 3 and 16), all from this run", "",
             "| target | bound | measured | |", "|---|---:|---:|---|"]
    for what, kind, peer, bound in TARGETS:
        if kind == "ir":
            x = ir["ours"] / ir[peer] if ir.get("ours") and ir.get(peer) else None
        else:
            x = ratio_geomean(names, results, "ours", peer, metrics[kind])
        met = "—" if x is None else ("met" if x <= bound else "**not met**")
        lines.append("| %s | ≤ %.1f | %s | %s |" % (what, bound, fmt_ratio(x), met))
    lines.append("")
    return "\n".join(lines)


def build_tables(names, allocs, baseline, results, reps, mismatches, failures, time_note=""):
    """Markdown tables of median wall time and median peak RSS, with ratios baseline/X.

    time_note: extra sentence for the wall-time and CPU-time notes (e.g. how a workload's time
    was derived from its output)."""
    others = [a for a in allocs if a != baseline]
    lines = []

    def table(title, metric, fmt, unit_note):
        lines.append("#### %s" % title)
        lines.append("")
        lines.append(unit_note)
        lines.append("")
        head = ["workload"] + allocs + ["%s/%s" % (baseline, o) for o in others]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
        ratios = {o: [] for o in others}
        for w in names:
            cells = [w + (" ⚠ checksum" if w in mismatches else "")]
            med = {}
            for a in allocs:
                rs = results.get((w, a), [])
                vals = [metric(r) for r in rs if r.ok]
                if (w, a) in failures:
                    cells.append("FAIL")
                    continue
                if not vals:
                    cells.append("—")
                    continue
                med[a] = median(vals)
                cells.append(fmt(med[a], vals))
            for o in others:
                if baseline in med and o in med and med[o] > 0:
                    x = med[baseline] / med[o]
                    ratios[o].append(x)
                    cells.append(fmt_ratio(x))
                else:
                    cells.append("—")
            lines.append("| " + " | ".join(cells) + " |")
        gm = ["**geomean**"] + [""] * len(allocs)
        gm += ["**%s**" % fmt_ratio(geomean(ratios[o])) for o in others]
        lines.append("| " + " | ".join(gm) + " |")
        lines.append("")

    def fmt_time(m, vals):
        if len(vals) > 1 and m > 0:
            spread = (max(vals) - min(vals)) / 2 / m * 100
            return "%.3f ±%.0f%%" % (m, spread)
        return "%.3f" % m

    def fmt_rss(m, vals):
        return "%.1f" % (m / 1024.0)

    table("Wall time (s)", lambda r: r.wall, fmt_time,
          "Median of %d interleaved run%s; ±: half the min–max range, relative to the median. "
          "Ratio < 1: %s is faster.%s" % (reps, "" if reps == 1 else "s", baseline,
                                          " " + time_note if time_note else ""))
    table("CPU time, user + system (s)", lambda r: r.utime + r.stime, fmt_time,
          "Median of the workload process's user + system time (wait4 rusage). Less disturbed "
          "than wall time by other load for single-threaded workloads; for multi-threaded ones "
          "it includes time spent waiting actively (spinning, lock contention). Ratio < 1: %s "
          "used less CPU.%s" % (baseline, " " + time_note if time_note else ""))
    table("Peak RSS (MiB)", lambda r: r.rss_kib, fmt_rss,
          "Median over runs of the workload process's ru_maxrss. Ratio < 1: %s uses less memory."
          % baseline)
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# callgrind


def parse_callgrind(path):
    """Self instruction counts per object from a callgrind out file (events: Ir only)."""
    names = {}  # (kind, id) -> name for compressed names

    def resolve(kind, val):
        m = re.match(r"\((\d+)\)\s*(.*)$", val)
        if m:
            if m.group(2):
                names[(kind, m.group(1))] = m.group(2)
            return names.get((kind, m.group(1)), "?")
        return val

    by_obj = {}
    ob = "?"
    total = None
    skip_next_cost = False
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                if skip_next_cost:  # inclusive cost of a call, not self cost
                    skip_next_cost = False
                    continue
                parts = line.split()
                if len(parts) >= 2:
                    by_obj[ob] = by_obj.get(ob, 0) + int(parts[1])
                continue
            if line.startswith("ob="):
                ob = resolve("ob", line[3:])
            elif line.startswith("cob="):
                resolve("ob", line[4:])  # may define a compressed name
            elif line.startswith("calls="):
                skip_next_cost = True
            elif line.startswith("summary:") or line.startswith("totals:"):
                total = int(line.split()[1])
    return by_obj, total


def run_callgrind(workload, prog, args, allocs, libs, timeout, tmpdir):
    valgrind = shutil.which("valgrind")
    if not valgrind:
        log("error: valgrind not found")
        sys.exit(2)
    rows = []
    outputs = {}
    for a in allocs:
        out_file = os.path.join(tmpdir, "callgrind.%s.out" % a)
        env = preload_env(libs[a])
        cmd = [valgrind, "--tool=callgrind", "--callgrind-out-file=" + out_file, prog] + args
        log("+ %s%s" % ("LD_PRELOAD=%s " % libs[a] if libs[a] else "", " ".join(cmd)))
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
            rows.append((a, None, None, "timeout"))
            continue
        dt = time.monotonic() - t0
        if p.returncode != 0 or "cannot be preloaded" in err:
            log(err[-2000:])
            rows.append((a, None, None, "exit %d" % p.returncode))
            continue
        m = re.search(r"Collected\s*:\s*(\d+)", err)
        by_obj, total = parse_callgrind(out_file)
        if m:
            total = int(m.group(1))
        own = by_obj.get(os.path.realpath(prog), 0)
        outputs[a] = out.strip()
        log("  %s: %s Ir in %.1f s" % (a, total, dt))
        rows.append((a, total, total - own if total is not None else None, ""))
    ok = len(set(outputs.values())) <= 1
    return rows, ok, outputs


def callgrind_table(workload, args, rows, baseline, outputs):
    ops = None
    for out in outputs.values():
        m = re.search(r"\bops=(\d+)", out)
        if m:
            ops = int(m.group(1))
    base = {r[0]: r for r in rows}.get(baseline)
    lines = ["#### Instructions (callgrind): `%s %s`" % (workload, " ".join(args)), ""]
    lines.append("Total Ir: every instruction the process executed. Outside program: total "
                 "minus the instructions in the workload binary's own functions, i.e. the "
                 "allocator plus libc and dynamic-loader work (the latter two about equal under "
                 "every allocator)."
                 + (" Per op: outside-program Ir / ops (one free + one malloc)." if ops else ""))
    lines.append("")
    head = ["allocator", "total Ir", "%s/X total" % baseline, "outside program",
            "%s/X outside" % baseline]
    if ops:
        head.append("per op")
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
    for a, total, outside, why in rows:
        if total is None:
            lines.append("| %s | FAIL (%s) |%s" % (a, why, " |" * (len(head) - 2)))
            continue
        r_tot = r_out = None
        if base and base[1] and total:
            r_tot = base[1] / total
        if base and base[2] and outside:
            r_out = base[2] / outside
        cells = [a, "{:,}".format(total), fmt_ratio(r_tot), "{:,}".format(outside),
                 fmt_ratio(r_out)]
        if ops:
            cells.append("%.1f" % (outside / ops))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------


def source_note():
    """Which tiermalloc source was measured: commit and whether src/ differs from it."""
    def git(*args):
        r = subprocess.run(["git", "--no-optional-locks", "-C", REPO] + list(args),
                           capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None
    head = git("rev-parse", "--short", "HEAD")
    if head is None:
        return "no commit yet (measurement time)"
    dirty = git("status", "--porcelain", "--untracked-files=all", "--", "src", "Cargo.toml")
    return "commit %s%s (measurement time)" % (
        head, " + uncommitted changes in src/" if dirty else "")


def package_of(path):
    """'package version' of the Debian package that installed path, or None."""
    if not shutil.which("dpkg-query"):
        return None
    real = os.path.realpath(path)
    for p in (path, real, real.replace("/usr/lib/", "/lib/", 1)):
        r = subprocess.run(["dpkg-query", "-S", p], capture_output=True, text=True)
        if r.returncode == 0 and ":" in r.stdout:
            pkg = r.stdout.split(": ", 1)[0].split(",")[0].strip()
            v = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", pkg],
                               capture_output=True, text=True)
            if v.returncode == 0:
                return "%s %s" % (pkg, v.stdout.strip())
    return None


def describe_allocator(name, lib):
    if name == "ours":
        return "ours (`%s`)" % lib
    pkg = package_of(lib or "/lib/x86_64-linux-gnu/libc.so.6")
    if pkg is None and lib and peers.version_of(lib):
        pkg = "built from the crate %s's sources" % peers.version_of(lib)
    where = "`%s`" % lib if lib else "no LD_PRELOAD"
    return "%s (%s%s)" % (name, where, ", " + pkg if pkg else "")


def machine_note():
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = "%.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        load = "?"
    return "%d CPU (%s), Linux %s, load average at start %s" % (
        os.cpu_count() or 0, cpu, os.uname().release, load)


def add_common_options(ap):
    """The options run.py and external.py share."""
    ap.add_argument("--lib", help="tiermalloc shared library to use as 'ours' (skips cargo build)")
    ap.add_argument("--no-build", action="store_true",
                    help="do not run cargo build; use the existing target/release library")
    ap.add_argument("--reps", type=int, default=None,
                    help="repetitions (default 5; 1 with --quick)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 repetition, small parameters")
    ap.add_argument("--before", metavar="LIB",
                    help="another libtiermalloc.so (an earlier commit's) measured as allocator "
                    "'before', interleaved with the others: a change against its parent in one run")
    ap.add_argument("--allocators", help="comma-separated subset of: ours,before,glibc,mimalloc,"
                    "jemalloc,tcmalloc,mimalloc3,snmalloc")
    ap.add_argument("--baseline", default="ours",
                    help="allocator the ratios are relative to (default ours; glibc if ours is "
                    "unavailable)")
    ap.add_argument("--markdown", metavar="FILE", help="also write the tables to FILE")
    ap.add_argument("--json", metavar="FILE", help="write every raw measurement to FILE")
    ap.add_argument("--timeout", type=int, default=120, help="seconds per run (default 120)")
    ap.add_argument("--cc", default=os.environ.get("CC", "cc"), help="C compiler (default cc)")
    ap.add_argument("--peer", action="append", default=[], metavar="NAME=LIB",
                    help="one more allocator to preload under NAME, e.g. a build of this library "
                    "with one check compiled out (repeatable; --before LIB is --peer before=LIB)")


def repetitions(ap, opts):
    reps = opts.reps if opts.reps is not None else (1 if opts.quick else 5)
    if reps < 1:
        ap.error("--reps must be >= 1")
    return reps


def choose_allocators(ap, opts, whichmalloc):
    """Build or find 'ours', then keep the allocators asked for whose preload really takes.

    Returns (libs, order, baseline): libs maps name -> library path (None: glibc), order is the
    table order, baseline the allocator ratios are relative to. Exits 2 if none is left."""
    if opts.lib:
        ours = os.path.abspath(opts.lib)
        if not os.path.exists(ours):
            log("error: --lib %s does not exist" % ours)
            sys.exit(2)
    elif opts.no_build:
        ours = os.path.join(target_dir(), "release", "libtiermalloc.so")
        if not os.path.exists(ours):
            log("warning: %s not found; 'ours' is not measured" % ours)
            ours = None
    else:
        wanted = opts.allocators is None or "ours" in opts.allocators.split(",")
        ours = build_ours() if wanted else None
    libs = {}
    order = []
    # --before LIB is --peer before=LIB.
    specs = (["before=" + opts.before] if opts.before else []) + opts.peer
    extra = []
    for spec in specs:
        name, sep, lib = spec.partition("=")
        if not sep or not name or not lib:
            ap.error("--peer wants NAME=LIB, got %r" % spec)
        extra.append((name, os.path.abspath(lib)))
    want = None
    if opts.allocators:
        want = [a.strip() for a in opts.allocators.split(",") if a.strip()]
        for a in want:
            if a not in ["ours"] + [c[0] for c in extra + PEERS] + list(BUILT_PEERS):
                ap.error("unknown allocator %r" % a)
    to_build = [n for n in BUILT_PEERS if want is None or n in want]
    candidates = [("ours", ours)] + extra + PEERS + (peers.built(to_build) if to_build else [])
    for name, lib in candidates:
        if want is not None and name not in want:
            continue
        if lib is None and name != "glibc":
            continue
        if lib is not None and not os.path.exists(lib):
            log("note: %s not installed (%s); skipped" % (name, lib))
            continue
        if not check_preload(whichmalloc, name, lib):
            log("warning: %s skipped: its malloc is not the one in use under LD_PRELOAD" % name)
            continue
        libs[name] = lib
        order.append(name)
    if not order:
        log("error: no allocator to run")
        sys.exit(2)
    baseline = opts.baseline
    if baseline not in libs:
        fallback = "glibc" if "glibc" in libs else order[0]
        log("note: baseline %r unavailable; ratios are %s/X" % (baseline, fallback))
        baseline = fallback
    log("allocators: " + ", ".join("%s=%s" % (a, libs[a] or "(no preload)") for a in order))
    return libs, order, baseline


def run_interleaved(names, order, libs, reps, run, output_of=lambda w, r: r.out.strip()):
    """Repetition r runs every workload under every allocator (order rotated by r).

    run(w, lib) -> RunResult. output_of(w, r) is the part of a successful run's output that must
    be the same under every allocator (None: nothing to compare).
    Returns (results {(w, a): [RunResult]}, outputs {w: {output: [a]}}, failures {(w, a): why},
    machine note with the load average at start and end, elapsed seconds)."""
    results = {}
    outputs = {}
    failures = {}
    started = time.monotonic()
    note = machine_note()
    width = max([15] + [len(w) for w in names])
    for rep in range(reps):
        for w in names:
            rot = order[rep % len(order):] + order[:rep % len(order)]
            for a in rot:
                r = run(w, libs[a])
                results.setdefault((w, a), []).append(r)
                if not r.ok:
                    failures[(w, a)] = r.why
                    log("FAIL %s under %s (rep %d): %s\n%s" % (
                        w, a, rep + 1, r.why, (r.err or "")[-1500:]))
                    continue
                out = output_of(w, r)
                if out is not None:
                    outputs.setdefault(w, {}).setdefault(out, []).append(a)
                log("rep %d/%d %-*s %-9s %7.3f s %8.1f MiB" % (
                    rep + 1, reps, width, w, a, r.wall, r.rss_kib / 1024.0))
    elapsed = time.monotonic() - started
    try:
        note += ", at end %.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        pass
    return results, outputs, failures, note, elapsed


def lib_note(lib):
    return "library `%s` built %s" % (
        lib, time.strftime("%Y-%m-%d %H:%M", time.localtime(os.path.getmtime(lib))))


def report(names, order, libs, baseline, results, reps, outputs, failures, note, elapsed,
           cmdline, arguments, time_note="", extra=()):
    """The markdown report of a timed run: setup, tables, checksum mismatches, failures.

    arguments: the 'Arguments:' paragraph; extra: paragraphs inserted before the tables."""
    mismatches = {w for w, outs in outputs.items() if len(outs) > 1}
    parts = []
    parts.append("Machine: %s. Measured in %.0f s with `%s`." % (note, elapsed, cmdline))
    parts.append("")
    if "ours" in libs:
        parts.append("tiermalloc: repository at %s; %s." % (source_note(), lib_note(libs["ours"])))
        parts.append("")
    parts.append("Allocators: " + ", ".join(describe_allocator(a, libs[a]) for a in order) + ".")
    parts.append("")
    parts.append(arguments)
    parts.append("")
    for e in extra:
        parts += [e, ""]
    parts.append(build_tables(names, order, baseline, results, reps, mismatches, failures,
                              time_note))
    if mismatches:
        parts.append("**Checksum mismatch** (an allocator changed a program's output):")
        parts.append("")
        for w in sorted(mismatches):
            for out, who in outputs[w].items():
                parts.append("- %s under %s: `%s`" % (w, ", ".join(sorted(set(who))), out))
        parts.append("")
    if failures:
        parts.append("**Failed runs:** " + "; ".join(
            "%s under %s: %s" % (w, a, why) for (w, a), why in sorted(failures.items())))
        parts.append("")
    return "\n".join(parts), bool(mismatches or failures)


def command_line(script):
    """How this run was started, for the report."""
    return "python3 benches/%s" % script + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")


def emit(text, markdown):
    """Print the report, and write it to the --markdown file if one was given."""
    print(text)
    if markdown:
        with open(markdown, "w") as f:
            f.write(text + "\n")


def write_json(path, note, reps, libs, order, argv, results, fields=lambda r: {}, extra=None):
    """Every raw measurement; fields(r) adds per-run entries, extra top-level ones."""
    raw = {"machine": note, "reps": reps, "allocators": {a: libs[a] for a in order},
           "args": argv, "runs": [
               dict({"workload": w, "allocator": a, "ok": r.ok, "wall_s": r.wall,
                     "maxrss_kib": r.rss_kib, "utime_s": r.utime, "stime_s": r.stime,
                     "stdout": r.out.strip(), "why": r.why}, **fields(r))
               for (w, a), rs in sorted(results.items()) for r in rs]}
    raw.update(extra or {})
    with open(path, "w") as f:
        json.dump(raw, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Workloads: " + ", ".join(sorted(WORKLOADS)))
    add_common_options(ap)
    ap.add_argument("--workloads", help="comma-separated subset of workloads to run")
    ap.add_argument("--callgrind", metavar="WORKLOAD",
                    help="instead of timing, count instructions of WORKLOAD under callgrind")
    ap.add_argument("--args", help="override the workload arguments (space separated) for "
                    "--callgrind or a single --workloads entry")
    ap.add_argument("--real", action="store_true",
                    help="time the real programs (%s) instead of the workloads"
                    % ", ".join(REAL_PROGRAMS))
    ap.add_argument("--targets", action="store_true",
                    help="after the timed run, count %s's instructions under callgrind and "
                    "report issue 3's targets from this one run" % TARGET_CALLGRIND)
    opts = ap.parse_args()

    reps = repetitions(ap, opts)
    table = REAL_PROGRAMS if opts.real else WORKLOADS
    if opts.real and (opts.callgrind or opts.targets or opts.args is not None):
        ap.error("--real does not combine with --callgrind, --targets or --args")
    names = sorted(table)
    if opts.workloads:
        names = [w.strip() for w in opts.workloads.split(",") if w.strip()]
    if opts.callgrind:
        names = [opts.callgrind]
    for w in names:
        if w not in table:
            ap.error("unknown workload %r (have: %s)" % (w, ", ".join(sorted(table))))
    if opts.args is not None and len(names) != 1:
        ap.error("--args needs exactly one workload")

    build_dir = os.path.join(target_dir(), "bench-workloads")
    progs = build_c(build_dir, opts.cc)
    spawn = os.path.join(build_dir, "spawn")
    whichmalloc = os.path.join(build_dir, "whichmalloc")
    libs, order, baseline = choose_allocators(ap, opts, whichmalloc)

    tmpdir = tempfile.mkdtemp(prefix="tm-bench-")
    try:
        if opts.callgrind:
            w = opts.callgrind
            args = opts.args.split() if opts.args is not None else WORKLOADS[w]["callgrind"]
            rows, same, outputs = run_callgrind(w, progs[w], args, order, libs,
                                                opts.timeout * 20, tmpdir)
            text = callgrind_table(w, args, rows, baseline, outputs)
            if not same:
                text += "\n**Checksum differs between allocators:**\n\n" + "\n".join(
                    "- %s: `%s`" % (a, o) for a, o in outputs.items()) + "\n"
            header = "Machine: %s.\n\nCommand: `python3 benches/run.py --callgrind %s%s`\n" % (
                machine_note(), w, " --args '%s'" % opts.args if opts.args else "")
            if "ours" in libs:
                header += "\ntiermalloc: repository at %s; %s.\n" % (
                    source_note(), lib_note(libs["ours"]))
            print(header + "\n" + text)
            if opts.markdown:
                with open(opts.markdown, "w") as f:
                    f.write(header + "\n" + text)
            failed = any(r[1] is None for r in rows)
            sys.exit(1 if (failed or not same) else 0)

        # timed runs, interleaved
        if opts.real:
            os.environ.update(REAL_ENV)
            commands = {w: real_command(w) for w in names}
            for w in [w for w in names if commands[w] is None]:
                log("note: %s not installed; skipped" % REAL_PROGRAMS[w]["cmd"][0])
            names = [w for w in names if commands[w] is not None]
            results, outputs, failures, note, elapsed = run_interleaved(
                names, order, libs, reps,
                lambda w, lib: run_once(spawn, commands[w][0][0], commands[w][0][1:], lib,
                                        opts.timeout, tmpdir, stdin=commands[w][1]))
            argv = {w: commands[w][0] for w in names}
            arguments = "Commands (environment: %s): " % " ".join(
                "%s=%s" % kv for kv in sorted(REAL_ENV.items())) + "; ".join(
                "`%s%s`" % (" ".join(argv[w]), " < " + commands[w][1] if commands[w][1] else "")
                for w in names) + "."
        else:
            kind = "quick" if opts.quick else "full"
            argv = {w: (opts.args.split() if opts.args is not None else WORKLOADS[w][kind])
                    for w in names}
            results, outputs, failures, note, elapsed = run_interleaved(
                names, order, libs, reps,
                lambda w, lib: run_once(spawn, progs[w], argv[w], lib, opts.timeout, tmpdir))
            arguments = "Arguments: " + "; ".join("`%s %s`" % (w, " ".join(argv[w]))
                                                  for w in names) + "."
        cmdline = command_line("run.py")
        text, bad = report(names, order, libs, baseline, results, reps, outputs, failures, note,
                           elapsed, cmdline, arguments)
        if opts.targets:
            w = TARGET_CALLGRIND
            args = WORKLOADS[w]["callgrind"]
            rows, same, cg_outputs = run_callgrind(w, progs[w], args, order, libs,
                                                   opts.timeout * 20, tmpdir)
            bad |= not same or any(r[1] is None for r in rows)
            text += "\n" + callgrind_table(w, args, rows, baseline, cg_outputs)
            text += "\n" + targets_table(names, results, rows)
        emit(text, opts.markdown)
        if opts.json:
            write_json(opts.json, note, reps, libs, order, argv, results)
        sys.exit(1 if bad else 0)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


if __name__ == "__main__":
    main()
