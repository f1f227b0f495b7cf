#!/usr/bin/env python3
"""Fragmentation of a device tier's best and worst fit on allocation traces of real programs.

Issue 4: "fragmentation (peak footprint / peak live bytes) for best and worst fit when replaying
an allocation trace recorded from a real program". This script

  1. builds the cdylib (cargo build --release, unless --no-build), the trace recorder
     (benches/tools/trace.c, an LD_PRELOAD shim) and the replay (benches/device/replay.c);
  2. runs real programs under the recorder, each writing its trace into a fresh directory in
     /tmp (traces are tens of MB: never committed): python3 (PYTHONMALLOC=malloc, so its small
     objects reach malloc) on a csv/json/regex script, gcc -O2 -c of mimalloc's single-file
     build (the cc1 process's trace), sqlite3 on an in-memory table with indexes and a join,
     and perl on a hash of arrays; each program's output must be the same as without the
     recorder;
  3. replays each trace on a CXL tier backed by a file in /dev/shm, under best and worst fit:
     - on a roomy tier (1 GiB, or 16x the trace's peak live bytes if that is more), for the
       footprint (highest byte a live block reached) and ns per operation;
     - on tiers of decreasing size (bisection, to 0.5%), for the smallest tier that serves the
       whole trace without a failed allocation. Worst fit spreads blocks over whatever tier it
       is given, so its footprint on a roomy tier says more about the tier than about the
       policy; the smallest tier is the figure that does not depend on the capacity chosen;
  4. prints a markdown table.

usage: benches/device/fragmentation.py [--no-build] [--repeats N] [--programs a,b,...] [--keep]
Standard library only. The cdylib is taken from $CARGO_TARGET_DIR/release (default target/).
"""

import argparse
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

DEVICE_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(DEVICE_DIR))
PAGE = 4096

PYTHON_SCRIPT = r"""
import collections, csv, io, json, random, re
random.seed(4)
letters = 'abcdefghijklmnopqrstuvwxyz'
words = [''.join(random.choice(letters) for _ in range(random.randint(2, 12))) for _ in range(5000)]
buf = io.StringIO()
w = csv.writer(buf)
for i in range(30000):
    w.writerow([i, random.choice(words), ' '.join(random.choices(words, k=random.randint(1, 20))),
                random.random() * 1000])
rows = list(csv.reader(io.StringIO(buf.getvalue())))
index = collections.defaultdict(list)
counts = collections.Counter()
for n, r in enumerate(rows):
    index[r[1]].append(r)
    counts.update(re.findall(r'[a-z]+', r[2]))
    if n % 3 == 0 and len(index[r[1]]) > 4:
        del index[r[1]][:2]
summary = {k: {'n': len(v), 'total': round(sum(float(x[3]) for x in v), 3)} for k, v in index.items()}
text = json.dumps(summary, sort_keys=True, indent=1)
back = json.loads(text)
print(len(rows), len(text), len(back), counts.most_common(1)[0][1])
"""

SQLITE_SCRIPT = """
CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, grp INTEGER, val REAL);
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 200000)
INSERT INTO t SELECT i, hex(randomblob(8 + i % 40)), i % 997, i * 0.5 FROM c;
CREATE INDEX t_name ON t(name);
CREATE INDEX t_grp ON t(grp, val);
SELECT grp, count(*), sum(val), max(length(name)) FROM t GROUP BY grp ORDER BY 3 DESC LIMIT 3;
SELECT count(*) FROM t a JOIN t b ON a.grp = b.grp AND a.id < b.id
  WHERE a.id % 50 = 0 AND b.id % 50 = 0;
"""

PERL_SCRIPT = r"""
my %h;
for my $i (1 .. 300000) {
    $h{"k$i"} = [ ($i) x ($i % 7), "v" x ($i % 50) ];
    delete $h{"k" . ($i - 1000)} if $i % 3 == 0;
}
my @k = sort { $a cmp $b } keys %h;
print length(join(",", @k[0 .. 99])), " ", scalar(@k), "\n";
"""


def mimalloc_static_c():
    """mimalloc's single-file build (src/static.c), from the cargo registry: the crate's
    criterion benchmarks depend on libmimalloc-sys, so `cargo build` fetched it."""
    home = os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo"))
    found = sorted(glob.glob(os.path.join(
        home, "registry/src/*/libmimalloc-sys-*/c_src/mimalloc/v2/src/static.c")))
    return found[-1] if found else None


def programs(work):
    """name -> (argv, stdin text or None, extra environment, extra output file to compare)."""
    out = {}
    script = os.path.join(work, "workload.py")
    with open(script, "w") as f:
        f.write(PYTHON_SCRIPT)
    # sys.executable is the interpreter itself, not a pyenv shim script that would exec it.
    out["python3"] = ([sys.executable, script], None, {"PYTHONMALLOC": "malloc"}, None)
    static_c = mimalloc_static_c()
    if static_c and shutil.which("gcc"):
        src = os.path.dirname(static_c)
        obj = os.path.join(work, "static.o")
        out["gcc"] = (["gcc", "-O2", "-c", "-I", os.path.join(os.path.dirname(src), "include"),
                       static_c, "-o", obj], None,
                      # mimalloc prints its build time (__DATE__, __TIME__): pin it, so the two
                      # object files can be compared.
                      {"SOURCE_DATE_EPOCH": "0"}, obj)
    else:
        print("skipping gcc: mimalloc's static.c not found in the cargo registry "
              "(run cargo fetch)", file=sys.stderr)
    if shutil.which("sqlite3"):
        out["sqlite3"] = (["sqlite3", ":memory:"], SQLITE_SCRIPT, {}, None)
    if shutil.which("perl"):
        out["perl"] = (["perl", "-e", PERL_SCRIPT], None, {}, None)
    return out


def run(argv, **kw):
    return subprocess.run(argv, check=True, **kw)


def file_digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def record(name, spec, shim, work):
    """Runs the program without and with the recorder; returns the largest trace it wrote
    (a program that starts others, like gcc -> cc1 and as, writes one per process)."""
    argv, stdin, extra_env, out_file = spec
    outputs = []
    for traced in (False, True):
        env = dict(os.environ, **extra_env)
        env.pop("LD_PRELOAD", None)
        if traced:
            env["LD_PRELOAD"] = shim
            env["TM_TRACE"] = os.path.join(work, "trace-" + name)
        p = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env, cwd=work)
        if p.returncode != 0:
            sys.exit(f"{name} failed ({'with' if traced else 'without'} the recorder): "
                     f"{p.stderr.strip()[:500]}")
        outputs.append((p.stdout, file_digest(out_file) if out_file else None))
    if outputs[0] != outputs[1]:
        sys.exit(f"{name}: the output differs under the recorder")
    traces = glob.glob(os.path.join(work, f"trace-{name}.*"))
    if not traces:
        sys.exit(f"{name}: no trace written")
    return max(traces, key=os.path.getsize)


def parse(line):
    return dict(kv.split("=", 1) for kv in line.split())


class Replayer:
    def __init__(self, binary, work):
        self.binary = binary
        self.tier = os.path.join("/dev/shm", f"tm-frag-{os.getpid()}")

    def info(self, trace):
        p = run([self.binary, "-i", trace], capture_output=True, text=True)
        return parse(p.stdout)

    def replay(self, trace, capacity, fits, repeats):
        env = dict(os.environ)
        env.pop("LD_PRELOAD", None)
        env["TIERMALLOC_TIERS"] = f"dram;cxl:path={self.tier},size={capacity},create"
        try:
            p = subprocess.run([self.binary, "-r", str(repeats), trace] + fits,
                               capture_output=True, text=True, env=env)
        finally:
            if os.path.exists(self.tier):
                os.unlink(self.tier)
        if p.returncode != 0 or p.stderr.strip():
            sys.exit(f"replay of {trace} on {capacity} B failed or complained:\n{p.stderr}")
        return [parse(l) for l in p.stdout.splitlines()]

    def smallest_tier(self, trace, fit, lo, hi):
        """The smallest capacity (in pages, to 0.5%) that replays the trace without a failed
        allocation, searched between lo (fails) and hi (doubled until it serves, at most 4
        times: failures that more room does not cure are not fragmentation). None if none."""
        serves = lambda c: int(self.replay(trace, c, [fit], 0)[0]["failures"]) == 0
        doublings = 0
        while not serves(hi):
            if doublings == 4:
                return None
            lo, hi, doublings = hi, 2 * hi, doublings + 1
        while hi - lo > max(PAGE, hi // 200):
            mid = (lo + hi) // 2 // PAGE * PAGE
            if mid <= lo:
                break
            if serves(mid):
                hi = mid
            else:
                lo = mid
        return hi


def mib(n):
    return f"{int(n) / (1 << 20):.2f} MiB"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--no-build", action="store_true", help="use the cdylib already built")
    ap.add_argument("--repeats", type=int, default=3, help="timed replays per fit (median)")
    ap.add_argument("--programs", help="comma-separated subset of python3,gcc,sqlite3,perl")
    ap.add_argument("--keep", action="store_true", help="keep the traces' directory")
    args = ap.parse_args()

    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    libdir = os.path.join(target, "release")
    if not args.no_build:
        run(["cargo", "build", "--release"], cwd=REPO)
    if not os.path.exists(os.path.join(libdir, "libtiermalloc.so")):
        sys.exit(f"no {libdir}/libtiermalloc.so: build it, or set CARGO_TARGET_DIR")
    # The replayer is linked with -ltiermalloc, so it asks the loader for the soname
    # (libtiermalloc.so.0, build.rs); cargo writes only libtiermalloc.so. install.sh makes
    # the same link.
    soname = os.path.join(libdir, "libtiermalloc.so.0")
    if not os.path.lexists(soname):
        os.symlink("libtiermalloc.so", soname)

    work = tempfile.mkdtemp(prefix="tm-frag-", dir="/tmp")
    try:
        shim = os.path.join(work, "libtmtrace.so")
        run(["cc", "-O2", "-shared", "-fPIC", "-o", shim,
             os.path.join(REPO, "benches/tools/trace.c"), "-lpthread"])
        replay_bin = os.path.join(work, "replay")
        run(["cc", "-O2", "-I", os.path.join(REPO, "include"),
             os.path.join(DEVICE_DIR, "replay.c"), "-L", libdir, "-ltiermalloc",
             f"-Wl,-rpath,{libdir}", "-o", replay_bin])
        replayer = Replayer(replay_bin, work)

        progs = programs(work)
        if args.programs:
            progs = {k: v for k, v in progs.items() if k in args.programs.split(",")}
        rows = []
        for name, spec in progs.items():
            trace = record(name, spec, shim, work)
            info = replayer.info(trace)
            peak = int(info["peak_req"])
            roomy = max(1 << 30, 1 << (16 * peak - 1).bit_length())
            print(f"{name}: {os.path.basename(trace)}, {os.path.getsize(trace)} B, "
                  f"{info['ops']} ops, peak live {mib(peak)}; replaying on {mib(roomy)}",
                  file=sys.stderr, flush=True)
            for r in replayer.replay(trace, roomy, ["best", "worst"], args.repeats):
                lo = (int(r["peak_extent"]) - 1) // PAGE * PAGE
                hi = -(-int(r["footprint"]) // PAGE) * PAGE
                r["smallest"] = replayer.smallest_tier(trace, r["fit"], lo, hi)
                r["program"] = name
                rows.append(r)
                print(f"  {r['fit']}: footprint {mib(r['footprint'])}, smallest tier "
                      f"{mib(r['smallest']) if r['smallest'] else 'none'}, "
                      f"failures {r['failures']}, {r['zero_reallocs']} reallocs of 0-byte "
                      f"blocks", file=sys.stderr, flush=True)
    finally:
        if args.keep:
            print(f"traces kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    print("| program | ops | fit | peak live: requested | usable | usable + headers | blocks "
          "| footprint (roomy tier) | ÷ requested | ÷ usable + headers | smallest tier "
          "| ÷ requested | failures | ns/op |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        req = int(r["peak_req"])
        small = (f"{mib(r['smallest'])} | **{r['smallest'] / req:.2f}**" if r["smallest"]
                 else "none | –")
        print(f"| {r['program']} | {int(r['ops']):,} | {r['fit']} | {mib(req)} | "
              f"{mib(r['peak_usable'])} | {mib(r['peak_extent'])} | {int(r['peak_blocks']):,} | "
              f"{mib(r['footprint'])} of {mib(r['capacity'])} | "
              f"**{float(r['ratio_req']):.2f}** | {float(r['ratio_extent']):.2f} | "
              f"{small} | {r['failures']} | {float(r['ns_per_op']):.0f} |")
    zero = {r["program"]: r["zero_reallocs"] for r in rows if r["zero_reallocs"] != "0"}
    if zero:
        print("\nReallocs of 0-byte blocks, replayed as tm_malloc + tm_free (tm_realloc refuses "
              "them): " + ", ".join(f"{k} {v}" for k, v in zero.items()) + ".")


if __name__ == "__main__":
    main()
