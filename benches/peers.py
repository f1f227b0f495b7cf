#!/usr/bin/env python3
"""LD_PRELOAD libraries of the strongest peers, built at benchmark time from crates' sources.

mimalloc v3 and snmalloc are not packaged by Debian. Their Rust crates, which benches/Cargo.toml
depends on for the criterion group, carry their C and C++ sources: `libmimalloc-sys` (0.1.49
and later build mimalloc v3; the sources are in `c_src/mimalloc/v3`) and `snmalloc-sys`
(`upstream/`). This module asks cargo where those crates are unpacked (`cargo metadata`, which
downloads them into ~/.cargo/registry the first time) and compiles one shared library of each,
with our own compiler command lines, into $CARGO_TARGET_DIR/bench-peers/:

    mimalloc3  libmimalloc3.so  mimalloc's src/static.c (the whole library in one translation
                                unit) with -DMI_MALLOC_OVERRIDE: it defines malloc, free, ...
    snmalloc   libsnmalloc.so   snmalloc's override/malloc.cc and override/new.cc, the malloc
                                family and operator new/delete, libstdc++ linked statically

Nothing of theirs is committed here. `python3 benches/peers.py` builds both and prints their
paths; run.py and external.py call `built()` and measure whichever built.

Standard library only.
"""

import json
import os
import subprocess
import sys

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
MANIFEST = os.path.join(BENCH_DIR, "Cargo.toml")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def target_dir():
    return os.environ.get("CARGO_TARGET_DIR") or os.path.join(os.path.dirname(BENCH_DIR), "target")


def crate_dirs(names):
    """{crate name: unpacked source directory} for the crates of benches/Cargo.toml's graph."""
    try:
        r = subprocess.run(["cargo", "metadata", "--format-version", "1", "--manifest-path",
                            MANIFEST], capture_output=True, text=True)
    except FileNotFoundError:
        log("note: cargo not found; mimalloc3 and snmalloc are not built")
        return {}
    if r.returncode != 0:
        log("note: cargo metadata failed; mimalloc3 and snmalloc are not built:\n"
            + r.stderr[-800:])
        return {}
    dirs = {}
    for pkg in json.loads(r.stdout)["packages"]:
        if pkg["name"] in names:
            dirs[pkg["name"]] = (pkg["version"], os.path.dirname(pkg["manifest_path"]))
    return dirs


def mimalloc3_command(src, out, cc):
    root = os.path.join(src, "c_src", "mimalloc", "v3")
    return [cc, "-O3", "-DNDEBUG", "-fPIC", "-shared", "-pthread",
            "-fvisibility=hidden", "-ftls-model=initial-exec", "-fno-builtin-malloc",
            "-DMI_MALLOC_OVERRIDE", "-DMI_SHARED_LIB", "-DMI_SHARED_LIB_EXPORT",
            "-I", os.path.join(root, "include"),
            os.path.join(root, "src", "static.c"), "-o", out], os.path.join(root, "src")


def snmalloc_command(src, out, cxx):
    root = os.path.join(src, "upstream", "src")
    override = os.path.join(root, "snmalloc", "override")
    return [cxx, "-O3", "-DNDEBUG", "-std=c++20", "-fPIC", "-shared", "-pthread",
            "-fvisibility=hidden", "-ftls-model=initial-exec", "-fomit-frame-pointer", "-mcx16",
            "-DSNMALLOC_USE_CXX11_THREAD_ATEXIT_DIRECT",
            "-DSNMALLOC_EXPORT=__attribute__((visibility(\"default\")))",
            "-DSNMALLOC_CHECK_LOADS=false", "-DSNMALLOC_PAGEID=false",
            "-DSNMALLOC_USE_WAIT_ON_ADDRESS=1",
            "-I", root, os.path.join(override, "malloc.cc"), os.path.join(override, "new.cc"),
            "-static-libstdc++", "-o", out], root


# name -> (crate, library file, command builder, compiler variable and default)
PEERS = {
    "mimalloc3": ("libmimalloc-sys", "libmimalloc3.so", mimalloc3_command, ("CC", "cc")),
    "snmalloc": ("snmalloc-sys", "libsnmalloc.so", snmalloc_command, ("CXX", "c++")),
}


def built(names=("mimalloc3", "snmalloc")):
    """[(name, path or None)] for the peers asked for, building any that is missing.

    A peer whose crate cannot be found or whose build fails gets None (run.py then skips it
    with a note). A library is rebuilt when the crate's version changes (its file name stamps
    the version in a side file)."""
    out_dir = os.path.join(target_dir(), "bench-peers")
    os.makedirs(out_dir, exist_ok=True)
    dirs = crate_dirs({PEERS[n][0] for n in names})
    result = []
    for name in names:
        crate, lib, command, (var, default) = PEERS[name]
        out = os.path.join(out_dir, lib)
        stamp = out + ".version"
        if crate not in dirs:
            log("note: crate %s not found; %s is not measured" % (crate, name))
            result.append((name, None))
            continue
        version, src = dirs[crate]
        have = open(stamp).read().strip() if os.path.exists(stamp) else None
        if not os.path.exists(out) or have != "%s %s" % (crate, version):
            cmd, _ = command(src, out, os.environ.get(var, default))
            log("+ " + " ".join(cmd))
            if subprocess.run(cmd).returncode != 0:
                log("warning: building %s from %s %s failed; it is not measured" % (
                    name, crate, version))
                result.append((name, None))
                continue
            with open(stamp, "w") as f:
                f.write("%s %s\n" % (crate, version))
        result.append((name, out))
    return result


def version_of(lib):
    """'crate version' that built lib, or None."""
    try:
        return open(lib + ".version").read().strip()
    except OSError:
        return None


if __name__ == "__main__":
    for name, path in built():
        print("%-9s %s" % (name, path or "(not built)"))
