#!/usr/bin/env python3
"""Benchmarks from an outside suite (mimalloc-bench): tiermalloc against its peers.

A check that the ordering of allocators in our own suite (benches/run.py) is not an artefact of
workloads we wrote: the same comparison on programs written by others.

The suite is not part of this repository. Give a checkout (or an extracted archive) of
github.com/daanx/mimalloc-bench with --suite DIR (its root or its bench/ directory). Only the
programs' own C/C++ sources are used: this script compiles the selected programs itself, with
plain `cc`/`c++ -O2 -pthread` command lines of its own (PROGRAMS below; the suite's CMake files
and scripts are not used), into $CARGO_TARGET_DIR/bench-external/, then runs each benchmark
under every allocator found (the allocators, the interleaving, spawn, the tables: all from
run.py, imported).

The suite's real-program rows (gs, lua, redis) run programs that are not in its repository:
Ghostscript, the Lua interpreter and the Redis server (with its own allocator off, MALLOC=libc)
are built at benchmark time from Debian's source packages (benches/debian_sources.py: `apt-get
source`, deb-src lines needed) into $CARGO_TARGET_DIR/bench-external/debian/; the first run
builds them (Ghostscript takes the longest, about 20 min on 2 loaded cores), later runs reuse
them. The inputs are ours: Ghostscript's own sample documents, benches/real/lua_alloc.lua, and
a redis-benchmark mix (benches/server_bench.py runs the server and its client).

Per row, issue 16's two criteria are computed and printed (also in --markdown and --json):
ours' median time against the fastest peer's (bound 1.10), and ours' spread across reps
((max - min) / median) against the steadiest peer's (bound 1.2x).

Fixed-duration programs (larson, xmalloc-test, glibc-thread; rptest, which sleeps) run for a set
time whatever the allocator; their "time" is the program's own throughput figure turned into
seconds the way the suite's bench.sh does (larson: its printed relative time; xmalloc-test: its
printed rtime; glibc-thread: 1e9 / iterations; rptest: 2e6 / its memory ops per CPU second),
and their CPU time is scaled to the same amount of work (CPU seconds x derived time / wall
time).

At the end, an "ordering" line: the allocators sorted by the geometric mean of their median
times over the benchmarks every one of them completed; with --compare-json FILE (a
`run.py --json` output) the same for our own suite, whether the two orderings agree, and
whether they agree on ours against each peer (which of the two is faster).

Standard library only. Exit status: 0 ok, 1 a run failed, an output differed, or the orderings
differ; 2 usage/setup.
"""

import argparse
import hashlib
import io
import itertools
import json
import os
import re
import shutil
import sys
import subprocess
import tempfile
import urllib.request
import zipfile

sys.dont_write_bytecode = True  # no __pycache__ in benches/ from importing run.py
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (benches/run.py)
import debian_sources  # noqa: E402  (benches/debian_sources.py)
import server_bench  # noqa: E402  (benches/server_bench.py)

from run import log  # noqa: E402

# Compiler flags for the old K&R-style C programs: they rely on implicit int and implicit
# function declarations, which gcc 12 accepts with a warning only in gnu89 mode.
OLD_C = ["-std=gnu89", "-w"]

# sh8bench's source as the suite's build script gets it: MicroQuill's zip (checked against the
# SHA-256 the suite pins), SH8BENCH.C with DOS line ends removed, then the suite's own
# bench/shbench/sh8bench.patch applied. A checkout where the suite's build script already made
# bench/shbench/sh8bench-new.c is used as it is.
SH8BENCH = {
    "url": "http://www.microquill.com/smartheap/SH8BENCH.zip",
    "sha256": "12a8e75248c9dcbfee28245c12bc937a16ef56ec9cbfab88d0e348271667726f",
    "member": "SH8BENCH.C",
    "patch": "shbench/sh8bench.patch",
}
SH8BENCH_SOURCE = "fetched:sh8bench-new.c"


def fetch_sh8bench(bench_dir, build_dir):
    """Path of sh8bench's patched source, fetching it once into build_dir; None (with a note
    saying why) when it cannot be had."""
    ready = os.path.join(bench_dir, "shbench", "sh8bench-new.c")
    if os.path.isfile(ready):
        return ready
    out = os.path.join(build_dir, "sh8bench-new.c")
    if os.path.isfile(out):
        return out
    try:
        data = urllib.request.urlopen(SH8BENCH["url"], timeout=30).read()
    except Exception as e:  # noqa: BLE001 (any network failure means: skip it)
        log("note: sh8benchN skipped: could not fetch %s (%s)" % (SH8BENCH["url"], e))
        return None
    digest = hashlib.sha256(data).hexdigest()
    if digest != SH8BENCH["sha256"]:
        log("note: sh8benchN skipped: %s has SHA-256 %s, the suite pins %s"
            % (SH8BENCH["url"], digest, SH8BENCH["sha256"]))
        return None
    work = tempfile.mkdtemp(prefix="tm-sh8bench-")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            name = next((n for n in z.namelist() if n.upper() == SH8BENCH["member"]), None)
            if name is None:
                log("note: sh8benchN skipped: no %s in the zip" % SH8BENCH["member"])
                return None
            source = z.read(name).replace(b"\r\n", b"\n")
        patch = open(os.path.join(bench_dir, SH8BENCH["patch"]), "rb").read()
        patch = patch.replace(b"\r\n", b"\n")
        open(os.path.join(work, "SH8BENCH.C"), "wb").write(source)
        open(os.path.join(work, "sh8bench.patch"), "wb").write(patch)
        r = subprocess.run(["patch", "-p1", "-o", out, "SH8BENCH.C", "sh8bench.patch"], cwd=work,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            log("note: sh8benchN skipped: the suite's patch does not apply: %s" % r.stdout.strip())
            if os.path.exists(out):
                os.unlink(out)
            return None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


# Programs of the suite and how to build them: language, sources (relative to bench/), extra
# flags, libraries. Written from the sources (which files make up a program, which macros
# select what the benchmark measures), not from the suite's build files.
PROGRAMS = {
    "cfrac": ("c", ["cfrac/" + f for f in (
        "cfrac.c pops.c pconst.c pio.c pabs.c pneg.c pcmp.c podd.c phalf.c padd.c psub.c "
        "pmul.c pdivmod.c psqrt.c ppowmod.c atop.c ptoa.c itop.c utop.c ptou.c errorp.c "
        "pfloat.c pidiv.c pimod.c picmp.c primes.c pcfrac.c pgcd.c").split()],
        # NOMEMOPT: plain malloc/free instead of cfrac's own free lists of precision numbers
        OLD_C + ["-DNOMEMOPT=1"], ["-lm"]),
    "espresso": ("c", "espresso/*.c", OLD_C, ["-lm"]),
    "barnes": ("c", ["barnes/" + f for f in
                     "code.c code_io.c load.c grav.c getparam.c util.c".split()],
               OLD_C, ["-lm"]),
    # CPP: new/delete instead of malloc/free; SIZED: sized delete
    "larson": ("c++", ["larson/larson.cpp"], ["-DCPP=1", "-w"], []),
    "larson-sized": ("c++", ["larson/larson.cpp"],
                     ["-DCPP=1", "-DSIZED=1", "-fsized-deallocation", "-w"], []),
    "mstress": ("c", ["mstress/mstress.c"], [], []),
    "xmalloc-test": ("c", ["xmalloc-test/xmalloc-test.c"], [], []),
    "cache-scratch": ("c++", ["cache-scratch/cache-scratch.cpp"], [], []),
    "cache-thrash": ("c++", ["cache-thrash/cache-thrash.cpp"], [], []),
    "glibc-simple": ("c", ["glibc-bench/bench-malloc-simple.c"], [], []),
    "glibc-thread": ("c", ["glibc-bench/bench-malloc-thread.c"], [], ["-lm"]),
    "mleak": ("c", ["mleak/mleak.c"], [], []),
    # BENCH: the benchmark configuration of the tester (its default is a correctness run)
    "alloc-test": ("c++", ["alloc-test/test_common.cpp", "alloc-test/allocator_tester.cpp"],
                   ["-DBENCH=4"], []),
    "malloc-large": ("c++", ["malloc-large/malloc-large.cpp"], [], []),
    "rptest": ("c", ["rptest/rptest.c", "rptest/thread.c", "rptest/timer.c"], ["-w"], ["-lm"]),
    # MicroQuill's SmartHeap benchmark: not in the suite's repository. Its source is fetched
    # at benchmark time (SH8BENCH, below) into the build directory, never into this one.
    # BENCH: takes the thread count as its argument instead of prompting.
    "sh8bench": ("c", SH8BENCH_SOURCE, ["-DBENCH=1", "-DSYS_MULTI_THREAD=1", "-w"], []),
}

# Real programs the suite runs too, not in its repository: built from Debian's source packages
# at benchmark time (benches/debian_sources.py). Program -> (its recipe there, the binary).
DEBIAN_PROGRAMS = {
    "gs": ("gs", "gs"),
    "lua": ("lua", "lua"),
    "redis-server": ("redis", "redis-server"),
}


def larson_time(out):
    m = re.search(r"relative time: ([0-9.]+)s", out)
    return float(m.group(1)) if m else None


def xmalloc_time(out):
    m = re.search(r"^rtime: ([0-9.]+)", out, re.M)
    return float(m.group(1)) if m else None


def glibc_thread_time(out):
    m = re.search(r"^(\d+) iterations", out, re.M)
    return 1e9 / int(m.group(1)) if m and int(m.group(1)) > 0 else None


def rptest_time(out):
    # the suite's bench.sh: 2e6 / the memory ops per CPU second rptest prints
    m = re.search(r"\.\.\.(\d+) memory ops", out)
    return 2e6 / int(m.group(1)) if m and int(m.group(1)) > 0 else None


def redis_time(out):
    """Seconds the server took per the client: the sum over redis-benchmark's tests of requests
    / requests per second (its -q lines `TEST: N requests per second`)."""
    rates = re.findall(r"^[^\r\n]*?: ([0-9.]+) requests per second", out.replace("\r", "\n"),
                       re.M)
    requests = re.search(r"(?:^|\s)-n (\d+)", out)
    if not rates or not requests or any(float(x) <= 0 for x in rates):
        return None
    return sum(int(requests.group(1)) / float(x) for x in rates)


def dropping(pattern):
    """output_of for programs that print timings: their output minus lines matching pattern."""
    rx = re.compile(pattern)
    return lambda out: "\n".join(l for l in out.strip().splitlines() if not rx.search(l))


def shown_arguments(args, times):
    """args for a report, where the benchmark's arguments end with one list repeated `times`
    times (gs reads its documents several times in one run): that list shown once, as
    `(DIR/{a,b,c}) xN`."""
    if times <= 1:
        return args
    n = len(args)
    for period in range(1, n // times + 1):
        unit = args[n - period:]
        if unit * times == args[n - period * times:]:
            head = args[:n - period * times]
            common = os.path.commonpath(unit) if len(unit) > 1 and all(
                a.startswith("/") for a in unit) else ""
            if common:
                unit = ["%s/{%s}" % (common, ",".join(os.path.relpath(a, common) for a in unit))]
            return head + ["(%s) x%d" % (" ".join(unit), times)]
    return args


def whole(out):
    return out.strip()


# Ghostscript's sample documents (examples/ of its source package) the gs row reads.
GS_DOCUMENTS = ["annots.pdf", "text_graphic_image.pdf", "text_graph_image_cmyk_rgb.pdf",
                "tiger.eps", "golfer.eps", "escher.ps", "snowflak.ps", "colorcir.ps",
                "vasarely.ps", "alphabet.ps", "doretree.ps", "waterfal.ps"]
# How many times the gs row reads the whole list in one run (a run of about a second).
GS_READS = 8

# Benchmarks: program, arguments (full: 0.3-5 s each under glibc on a 2-core machine; quick:
# smoke), stdin file (relative to bench/), `time` (None: wall time; else a function of stdout
# giving the program's own time figure, for fixed-duration programs), `output` (None: nothing
# deterministic to compare; else a function of stdout giving what must be the same under every
# allocator). "{bench}" in an argument is the suite's bench/ directory.
BENCHMARKS = {
    "cfrac": {
        "prog": "cfrac",
        "full": ["2857443395294270801377415695715928264767"],  # 40 digits; suite: 44 digits
        "quick": ["175891579187581657617"],
        "output": whole},
    "espresso": {
        "prog": "espresso",
        "full": ["{bench}/espresso/largest.espresso"],
        "quick": ["{bench}/espresso/largest.espresso"],
        "output": whole},
    "barnes": {
        "prog": "barnes", "full": [], "quick": [], "stdin": "barnes/input",
        # the report ends with timings; the bodies' positions are deterministic
        "output": dropping(r"COMPUTE(START|END)|(?i:time)")},
    "larsonN": {
        # seconds min_size max_size chunks_per_thread rounds seed threads
        "prog": "larson", "full": ["1", "8", "1000", "5000", "100", "4141", "2"],
        "quick": ["1", "8", "1000", "500", "10", "4141", "2"],
        "time": larson_time},
    "larsonN-sized": {
        "prog": "larson-sized", "full": ["1", "8", "1000", "5000", "100", "4141", "2"],
        "quick": ["1", "8", "1000", "500", "10", "4141", "2"],
        "time": larson_time},
    "mstressN": {
        "prog": "mstress", "full": ["2", "100", "100"],  # threads load% iterations
        "quick": ["2", "25", "10"],
        "output": whole},
    "xmalloc-testN": {
        "prog": "xmalloc-test", "full": ["-w", "2", "-t", "1", "-s", "64"],
        "quick": ["-w", "2", "-t", "0.2", "-s", "64"],
        "time": xmalloc_time},
    "cache-scratch1": {
        # threads iterations objSize repetitions concurrency
        "prog": "cache-scratch", "full": ["1", "1000", "1", "2000000", "2"],
        "quick": ["1", "1000", "1", "100000", "2"]},
    "cache-scratchN": {
        "prog": "cache-scratch", "full": ["2", "1000", "1", "2000000", "2"],
        "quick": ["2", "1000", "1", "100000", "2"]},
    "cache-thrashN": {
        "prog": "cache-thrash", "full": ["2", "1000", "1", "2000000", "2"],
        "quick": ["2", "1000", "1", "100000", "2"]},
    "glibc-simple": {"prog": "glibc-simple", "full": [], "quick": []},
    "glibc-thread": {
        "prog": "glibc-thread", "full": ["2"], "quick": ["2"],  # runs 2 s whatever the argument
        "time": glibc_thread_time},
    "mleak10": {"prog": "mleak", "full": ["10"], "quick": ["2"], "output": whole},
    "alloc-test1": {"prog": "alloc-test", "full": ["1"], "quick": ["1"]},
    "malloc-large": {"prog": "malloc-large", "full": [], "quick": []},
    # the variants the suite's bench.sh runs too
    "alloc-testN": {"prog": "alloc-test", "full": ["2"], "quick": ["2"]},
    "mleak100": {"prog": "mleak", "full": ["50"], "quick": ["5"], "output": whole},
    "cache-thrash1": {
        "prog": "cache-thrash", "full": ["1", "1000", "1", "2000000", "2"],
        "quick": ["1", "1000", "1", "100000", "2"]},
    # threads mode size-mode cross-rate loops allocs ops min max (bench.sh's, 2 threads). It
    # sleeps about 14 s between its phases whatever the allocator and reports memory ops per
    # CPU second; it writes a result file into the working directory (a temporary one here).
    "rptestN": {
        "prog": "rptest", "full": ["2", "0", "1", "2", "500", "1000", "100", "8", "16000"],
        "quick": ["2", "0", "1", "2", "50", "1000", "100", "8", "16000"],
        "time": rptest_time, "in_tmpdir": True},
    # 2 threads per core as bench.sh runs it; most blocks are freed by another thread than the
    # one that allocated them
    "sh8benchN": {"prog": "sh8bench", "full": ["4"], "quick": ["4"]},
    # Real programs built from Debian's sources ("{tree:NAME}": that program's source tree).
    # Ghostscript interpreting PDF and PostScript without a display, as the suite runs it; the
    # inputs are the sample documents of Ghostscript's own source package, each read several
    # times in one run (the suite's own large PDF is not in its repository).
    "gs": {"prog": "gs",
           "full": ["-q", "-dBATCH", "-dNODISPLAY", "-dNOPAUSE", "-dSAFER"]
           + ["{tree:gs}/examples/" + f for f in GS_DOCUMENTS] * GS_READS,
           "list_times": GS_READS,  # for the report: the arguments end with a list read N times
           "quick": ["-q", "-dBATCH", "-dNODISPLAY", "-dNOPAUSE", "-dSAFER",
                     "{tree:gs}/examples/tiger.eps"],
           "output": whole},
    # The Lua interpreter on a script of ours that allocates the way Lua programs do (tables,
    # strings, closures, through Lua's realloc-style allocator and its collector).
    "lua": {"prog": "lua", "full": ["{real}/lua_alloc.lua", "2"],
            "quick": ["{real}/lua_alloc.lua", "1"], "output": whole},
    # The Redis server (its own allocator off: MALLOC=libc) under the allocator, driven over a
    # Unix socket by redis-benchmark (not preloaded): pipelined requests on a random key space,
    # each test the server's allocation pattern for one data type. The time is the server's
    # per the client (redis_time); RSS and CPU are the server's.
    "redis": {"prog": "redis-server", "client": "redis-benchmark",
              "full": ["-n", "300000", "-r", "200000", "-P", "16", "-d", "64", "-q",
                       "-t", "set,get,lpush,lpop,sadd,hset,spop"],
              "quick": ["-n", "20000", "-r", "10000", "-P", "16", "-d", "64", "-q",
                        "-t", "set,get,lpush,lpop"],
              "time": redis_time},
}


def suite_bench_dir(path):
    """The bench/ directory of a suite checkout given as its root or as bench/ itself."""
    for d in (os.path.join(path, "bench"), path):
        if os.path.isfile(os.path.join(d, "larson", "larson.cpp")):
            return os.path.abspath(d)
    return None


def sources_of(bench_dir, srcs, build_dir=None):
    if srcs == SH8BENCH_SOURCE:
        path = fetch_sh8bench(bench_dir, build_dir)
        return [path] if path else None
    if isinstance(srcs, str):  # a glob pattern: dir/*.ext
        d, pat = os.path.split(srcs)
        ext = pat.lstrip("*")
        return sorted(os.path.join(bench_dir, d, f) for f in os.listdir(os.path.join(bench_dir, d))
                      if f.endswith(ext))
    return [os.path.join(bench_dir, s) for s in srcs]


def build_programs(bench_dir, build_dir, names, cc, cxx):
    """Compile the programs the selected benchmarks need; returns {program: path} of those
    that built (a program that does not build is reported and left out)."""
    os.makedirs(build_dir, exist_ok=True)
    built = {}
    for prog in sorted(names):
        if prog in DEBIAN_PROGRAMS:
            continue
        lang, srcs, flags, libs = PROGRAMS[prog]
        files = sources_of(bench_dir, srcs, build_dir)
        if files is None:  # a fetched source that could not be had (said why)
            continue
        srcdirs = sorted({os.path.dirname(f) for f in files})
        headers = [os.path.join(d, f) for d in srcdirs for f in os.listdir(d)
                   if f.endswith((".h", ".hpp"))]
        out = os.path.join(build_dir, prog)
        compiler = cxx if lang == "c++" else cc
        cmd = ([compiler, "-O2", "-pthread"] + flags + ["-I" + d for d in srcdirs]
               + ["-o", out] + files + libs)
        if run.compile_if_needed(cmd, out, files + headers):
            built[prog] = out
        else:
            log("warning: %s did not build; its benchmarks are skipped" % prog)
    return built


def build_debian_programs(build_dir, names):
    """Fetch and build the Debian programs among names (DEBIAN_PROGRAMS; last: they take
    longest). Returns ({program: path}, {recipe: {binary: path}}) of those that built; one that
    could not be had is reported (debian_sources says why) and left out."""
    built, binaries = {}, {}
    for prog in sorted(n for n in names if n in DEBIAN_PROGRAMS):
        recipe, binary = DEBIAN_PROGRAMS[prog]
        if recipe not in binaries:
            got = debian_sources.build(recipe, os.path.join(build_dir, "debian"))
            if got is None:
                continue
            binaries[recipe] = got
        built[prog] = binaries[recipe][binary]
    return built, binaries


# ----------------------------------------------------------------------------------------
# ordering


def ordering(medians, allocs):
    """Allocators sorted by the geometric mean of their median times over the workloads that
    every one of them completed. medians: {(workload, allocator): seconds}.
    Returns ([(allocator, geomean)], number of workloads used)."""
    workloads = sorted({w for w, _ in medians})
    common = [w for w in workloads if all((w, a) in medians for a in allocs)]
    gm = {a: run.geomean([medians[(w, a)] for w in common]) for a in allocs}
    ranked = sorted((a for a in allocs if gm[a] is not None), key=lambda a: gm[a])
    return [(a, gm[a]) for a in ranked], len(common)


def medians_of(results):
    """{(w, a): median time} from {(w, a): [RunResult]} (successful runs only)."""
    med = {}
    for key, rs in results.items():
        vals = [r.wall for r in rs if r.ok]
        if vals and all(r.ok for r in rs):
            med[key] = run.median(vals)
    return med


def medians_from_json(path):
    """{(w, a): median wall time} and allocators of a run.py --json file."""
    with open(path) as f:
        raw = json.load(f)
    runs = {}
    for r in raw["runs"]:
        runs.setdefault((r["workload"], r["allocator"]), []).append(r)
    med = {k: run.median([r["wall_s"] for r in rs]) for k, rs in runs.items()
           if all(r["ok"] for r in rs)}
    return med, list(raw["allocators"])


def fmt_ordering(ranked):
    return " < ".join("%s (%.3f s)" % (a, g) for a, g in ranked)


def discordant(r1, r2):
    """Pairs of allocators (in both rankings) ordered differently by the two."""
    p1 = {a: i for i, (a, _) in enumerate(r1)}
    p2 = {a: i for i, (a, _) in enumerate(r2)}
    both = [a for a, _ in r1 if a in p2]
    return [(a, b) for a, b in itertools.combinations(both, 2)
            if (p1[a] < p1[b]) != (p2[a] < p2[b])]


def ordering_lines(results, order, compare_json):
    """The ordering paragraph, and whether the two suites agree (None: nothing to compare)."""
    ext, n_ext = ordering(medians_of(results), order)
    lines = ["**Ordering** (fastest first; geometric mean of median times over the %d "
             "benchmarks every allocator completed):" % n_ext, "",
             "- mimalloc-bench: " + fmt_ordering(ext)]
    agree = None
    if compare_json:
        med, allocs = medians_from_json(compare_json)
        allocs = [a for a in order if a in allocs]
        own, n_own = ordering(med, allocs)
        lines.append("- own suite (`%s`, %d workloads): %s" % (
            os.path.basename(compare_json), n_own, fmt_ordering(own)))
        ext_same, _ = ordering(medians_of(results), allocs)
        bad = discordant(ext_same, own)
        agree = not bad
        g_ext, g_own = dict(ext_same), dict(own)
        lines.append("- same ordering: " + ("**yes**" if agree else "**no**; ordered differently "
                     "(ratio of geomeans here, in our suite): " + ", ".join(
                         "%s/%s %.2f, %.2f" % (x, y, g_ext[x] / g_ext[y], g_own[x] / g_own[y])
                         for x, y in bad)))
        # What the check is for: whether our own workloads flatter us against any peer.
        ours_bad = [(x, y) for x, y in bad if "ours" in (x, y)]
        if "ours" in g_ext:
            lines.append("- ours against each peer (which of the two is faster): " + (
                "**the same in both suites**" if not ours_bad else "**differs** for " + ", ".join(
                    "%s/%s" % pair for pair in ours_bad)))
    lines.append("")
    return "\n".join(lines), agree


# ----------------------------------------------------------------------------------------
# issue 16's per-row criteria: time within 10% of the best peer, and a spread across reps no
# wider than the steadiest peer's by more than 1.2x

ROW_TIME_BOUND = 1.10
ROW_SPREAD_BOUND = 1.2


def spread(vals):
    """(max - min) / median of a row's times across reps; None with fewer than 2 reps."""
    if len(vals) < 2:
        return None
    m = run.median(vals)
    return (max(vals) - min(vals)) / m if m > 0 else None


def row_criteria(names, order, results):
    """Per benchmark, ours against the peers (Debian's and the built ones; not 'before' nor
    other --peer variants of ours): {workload: {...}} with ours' median time, the best peer and
    ours / its median, ours' spread, the steadiest peer and ours' spread / its spread."""
    peers = [a for a in order if a in dict(run.PEERS) or a in run.BUILT_PEERS]
    rows = {}
    for w in names:
        times = {a: [r.wall for r in results.get((w, a), []) if r.ok] for a in order}
        # a run that failed leaves its allocator out of the row
        ok = {a: v for a, v in times.items()
              if v and all(r.ok for r in results.get((w, a), []))}
        if "ours" not in ok:
            continue
        row = {"ours_s": run.median(ok["ours"]), "ours_spread": spread(ok["ours"])}
        have = [a for a in peers if a in ok]
        if have:
            best = min(have, key=lambda a: run.median(ok[a]))
            row.update(best=best, best_s=run.median(ok[best]),
                       ours_per_best=row["ours_s"] / run.median(ok[best]))
        spreads = {a: spread(ok[a]) for a in have if spread(ok[a]) is not None}
        if spreads:
            steady = min(spreads, key=lambda a: spreads[a])
            row.update(steadiest=steady, steadiest_spread=spreads[steady],
                       peers_median_spread=run.median(list(spreads.values())))
            if row["ours_spread"] is not None and spreads[steady] > 0:
                row["spread_ratio"] = row["ours_spread"] / spreads[steady]
        row["time_met"] = (row["ours_per_best"] <= ROW_TIME_BOUND
                           if "ours_per_best" in row else None)
        row["spread_met"] = (None if row["ours_spread"] is None or "steadiest" not in row else
                             row["ours_spread"] <= ROW_SPREAD_BOUND * row["steadiest_spread"])
        rows[w] = row
    return rows


def criteria_table(rows, reps):
    """The per-row criteria as a markdown paragraph and table."""
    def pct(x):
        return "—" if x is None else "%.1f%%" % (100 * x)

    def yes(x):
        return "—" if x is None else ("yes" if x else "**no**")

    lines = ["#### Per row: ours against the best and the steadiest peer", "",
             "Time: ours' median / the fastest peer's (bound ≤ %.2f). Spread: (max − min) / "
             "median of a row's times over the %d reps; bound: ours' ≤ %.1f× the steadiest "
             "peer's (the peers' median spread is shown for scale: the steadiest of several "
             "peers is steadier than a typical one). Peers: Debian's and the built ones (not "
             "`before` or other variants of ours)." % (ROW_TIME_BOUND, reps, ROW_SPREAD_BOUND),
             "",
             "| workload | ours (s) | best peer | ours / best | ≤ %.2f | ours' spread | "
             "steadiest peer | its spread | peers' median spread | spread ratio | ≤ %.1f |"
             % (ROW_TIME_BOUND, ROW_SPREAD_BOUND),
             "|---|---:|---|---:|---|---:|---|---:|---:|---:|---|"]
    for w, r in rows.items():
        lines.append("| %s | %.3f | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            w, r["ours_s"], r.get("best", "—"), run.fmt_ratio(r.get("ours_per_best")),
            yes(r["time_met"]), pct(r["ours_spread"]), r.get("steadiest", "—"),
            pct(r.get("steadiest_spread")), pct(r.get("peers_median_spread")),
            run.fmt_ratio(r.get("spread_ratio")), yes(r["spread_met"])))
    ratios = [r["ours_per_best"] for r in rows.values() if "ours_per_best" in r]
    gm = run.geomean(ratios)
    timed = [r["time_met"] for r in rows.values() if r["time_met"] is not None]
    spread_ok = [r["spread_met"] for r in rows.values() if r["spread_met"] is not None]
    lines += ["", "Geomean of ours / best peer over %d rows: **%s**; rows within %d%% of the "
              "best peer: **%d of %d**; rows whose spread is within %.1f× the steadiest peer's: "
              "**%d of %d**." % (len(ratios), run.fmt_ratio(gm), round(100 * (ROW_TIME_BOUND - 1)),
                                 sum(timed), len(timed), ROW_SPREAD_BOUND, sum(spread_ok),
                                 len(spread_ok)), ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Benchmarks: " + ", ".join(BENCHMARKS))
    run.add_common_options(ap)
    ap.add_argument("--suite", required=True, metavar="DIR",
                    help="mimalloc-bench checkout: its root or its bench/ directory")
    ap.add_argument("--benchmarks", help="comma-separated subset of benchmarks to run")
    ap.add_argument("--cxx", default=os.environ.get("CXX", "c++"), help="C++ compiler "
                    "(default c++)")
    ap.add_argument("--compare-json", metavar="FILE",
                    help="a `run.py --json` output: also print our own suite's ordering and "
                    "check that it is the same")
    opts = ap.parse_args()

    reps = run.repetitions(ap, opts)
    bench_dir = suite_bench_dir(opts.suite)
    if bench_dir is None:
        ap.error("--suite %s: no mimalloc-bench checkout there (bench/larson/larson.cpp "
                 "missing)" % opts.suite)
    names = list(BENCHMARKS)
    if opts.benchmarks:
        names = [b.strip() for b in opts.benchmarks.split(",") if b.strip()]
        for b in names:
            if b not in BENCHMARKS:
                ap.error("unknown benchmark %r (have: %s)" % (b, ", ".join(BENCHMARKS)))
    if opts.compare_json and not os.path.exists(opts.compare_json):
        ap.error("--compare-json %s does not exist" % opts.compare_json)

    spawn, whichmalloc = run.build_tools(os.path.join(run.target_dir(), "bench-workloads"),
                                         opts.cc)
    build_dir = os.path.join(run.target_dir(), "bench-external")
    progs = {BENCHMARKS[b]["prog"] for b in names}
    built = build_programs(bench_dir, build_dir, progs, opts.cc, opts.cxx)
    debian_built, debian_binaries = build_debian_programs(build_dir, progs)
    built.update(debian_built)
    skipped = [b for b in names if BENCHMARKS[b]["prog"] not in built]
    names = [b for b in names if b not in skipped]
    if not names:
        log("error: no benchmark built")
        sys.exit(2)
    libs, order, baseline = run.choose_allocators(ap, opts, whichmalloc)

    kind = "quick" if opts.quick else "full"
    places = {"{bench}": bench_dir, "{real}": os.path.join(run.BENCH_DIR, "real")}
    places.update({"{tree:%s}" % r: debian_sources.tree_of(os.path.join(build_dir, "debian"), r)
                   for r in debian_binaries})

    def placed(arg):
        for k, v in places.items():
            arg = arg.replace(k, v)
        return arg

    argv = {b: [placed(a) for a in BENCHMARKS[b][kind]] for b in names}

    tmpdir = tempfile.mkdtemp(prefix="tm-external-")

    def one(b, lib):
        spec = BENCHMARKS[b]
        stdin = os.path.join(bench_dir, spec["stdin"]) if spec.get("stdin") else None
        here = os.getcwd()
        if spec.get("in_tmpdir"):  # a program that writes files where it runs
            os.chdir(tmpdir)
        try:
            if spec.get("client"):
                recipe = DEBIAN_PROGRAMS[spec["prog"]][0]
                r = server_bench.run_once(spawn, built[spec["prog"]],
                                          debian_binaries[recipe][spec["client"]], argv[b], lib,
                                          opts.timeout, tmpdir)
            else:
                r = run.run_once(spawn, built[spec["prog"]], argv[b], lib, opts.timeout, tmpdir,
                                 stdin)
        finally:
            os.chdir(here)
        r.raw_wall = r.wall
        if r.ok and spec.get("time"):
            t = spec["time"](r.out)
            if t is None:
                r.ok, r.why = False, "no time figure in its output"
            else:  # the program's own figure; CPU scaled to the same amount of work
                r.wall, r.utime, r.stime = (t, r.utime * t / r.raw_wall,
                                            r.stime * t / r.raw_wall)
        return r

    def output_of(b, r):
        f = BENCHMARKS[b].get("output")
        return f(r.out) if f else None

    try:
        results, outputs, failures, note, elapsed = run.run_interleaved(
            names, order, libs, reps, one, output_of)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)

    def cmd_of(b):
        spec = BENCHMARKS[b]
        words = [spec["prog"]] + shown_arguments(argv[b], spec.get("list_times", 1))
        if spec.get("client"):  # the client's arguments; the server runs as server_bench says
            words = [spec["prog"], "+", spec["client"]] + argv[b]
        if spec.get("stdin"):
            words += ["<", os.path.join(bench_dir, spec["stdin"])]
        return "`%s`" % " ".join(words)

    timed = [b for b in names if BENCHMARKS[b].get("time")]
    time_note = ("For the fixed-duration programs (%s) the time is the program's own throughput "
                 "figure as a time (larson: its relative time; xmalloc-test: its rtime; "
                 "glibc-thread: 1e9 / iterations; rptest: 2e6 / its memory ops per CPU second; "
                 "redis: the sum over redis-benchmark's tests of requests / requests per "
                 "second, with the server's RSS and CPU) and CPU time is scaled to that amount "
                 "of work." % ", ".join(timed)) if timed else ""
    cmdline = run.command_line("external.py")
    arguments = ("Commands (programs built from mimalloc-bench sources in `%s`; %s from "
                 "Debian's source packages): %s." % (
                     bench_dir, ", ".join(sorted(DEBIAN_PROGRAMS)),
                     "; ".join("%s %s" % (b, cmd_of(b)) for b in names)))
    extra = []
    if skipped:
        extra.append("Skipped (did not build): " + ", ".join(skipped) + ".")
    text, bad = run.report(names, order, libs, baseline, results, reps, outputs, failures, note,
                           elapsed, cmdline, arguments, time_note, extra)
    order_text, agree = ordering_lines(results, order, opts.compare_json)
    text += "\n" + order_text
    rows = row_criteria(names, order, results)
    if rows:
        text += "\n" + criteria_table(rows, reps)
    run.emit(text, opts.markdown)
    if opts.json:
        run.write_json(opts.json, note, reps, libs, order, argv, results,
                       lambda r: {"raw_wall_s": r.raw_wall}, extra={"rows": rows})
    sys.exit(1 if (bad or agree is False or skipped) else 0)


if __name__ == "__main__":
    main()
