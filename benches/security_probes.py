#!/usr/bin/env python3
"""mimalloc-bench's security probes (bench/security/ of a checkout) under each allocator.

Each probe misuses the heap (a double free, an invalid free, an overflow, a use after free...)
and prints NOT_CAUGHT if the program survives the misuse. As the suite's bench.sh counts: a
probe is caught when NOT_CAUGHT is not printed and the run does not time out (1 s). Every C
probe is built three times (-DALLOCATION_SIZE=8, 4096, 256*1024), every C++ probe once (4096),
with the suite's compiler flags, into $CARGO_TARGET_DIR/bench-security/ (nothing of the suite
is copied into this repository).

    python3 benches/security_probes.py --suite /tmp/mimalloc-bench [--allocators ours,glibc]
        [--peer main=/path/to/libtiermalloc.so] [--show]

Prints caught/total per allocator and, with --show, each probe's result. Standard library only.
"""

import argparse
import os
import subprocess
import sys

import run  # the allocators (ours, glibc, peers), their preload check and --peer

C_FLAGS = ["-O1", "-Wno-free-nonheap-object", "-fno-inline", "-fno-builtin-inline",
           "-fno-inline-small-functions", "-fno-ipa-pure-const", "-w"]
SIZES = [("small", "8"), ("medium", "4096"), ("large", "256*1024")]


def build(suite, out):
    src = os.path.join(suite, "bench", "security")
    if not os.path.isdir(src):
        src = os.path.join(suite, "security")
    os.makedirs(out, exist_ok=True)
    probes = []
    for f in sorted(os.listdir(src)):
        path = os.path.join(src, f)
        name, ext = os.path.splitext(f)
        if ext == ".c":
            for tag, size in SIZES:
                exe = os.path.join(out, "%s_%s" % (name, tag))
                cmd = ["cc"] + C_FLAGS + ["-DALLOCATION_SIZE=%s" % size, path, "-o", exe]
                probes.append((exe, cmd))
        elif ext == ".cc":
            exe = os.path.join(out, name)
            cmd = ["c++", "-O1", "-w", "-std=c++17", "-fsized-deallocation",
                   "-DALLOCATION_SIZE=4096", path, "-o", exe]
            probes.append((exe, cmd))
    built = []
    for exe, cmd in probes:
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode == 0:
            built.append(exe)
        else:
            run.log("note: %s did not build: %s" % (os.path.basename(exe), r.stderr.strip()[:200]))
    return built


def caught(exe, lib):
    try:
        r = subprocess.run([exe], env=run.preload_env(lib), capture_output=True, timeout=1)
    except subprocess.TimeoutExpired:
        return False
    return b"NOT_CAUGHT" not in r.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    run.add_common_options(ap)
    ap.add_argument("--suite", required=True, help="a mimalloc-bench checkout")
    ap.add_argument("--show", action="store_true", help="print every probe's result")
    opts = ap.parse_args()
    _spawn, whichmalloc = run.build_tools(os.path.join(run.target_dir(), "bench-workloads"),
                                          opts.cc)
    libs, order, _ = run.choose_allocators(ap, opts, whichmalloc)
    out = os.path.join(run.target_dir(), "bench-security")
    probes = build(opts.suite, out)
    results = {a: {p: caught(p, libs[a]) for p in probes} for a in order}
    print("| allocator | probes caught |")
    print("|---|---:|")
    for a in order:
        print("| %s | %d of %d |" % (a, sum(results[a].values()), len(probes)))
    if opts.show:
        print()
        print("| probe | " + " | ".join(order) + " |")
        print("|---|" + "---|" * len(order))
        for p in probes:
            print("| %s | %s |" % (os.path.basename(p),
                                   " | ".join("+" if results[a][p] else "-" for a in order)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
