"""Outside programs built from Debian's source packages at benchmark time, for external.py.

The rows gs, lua and redis of the outside suite run real programs (Ghostscript, the Lua
interpreter, the Redis server). None of their code is in this repository: `apt-get source
--download-only PACKAGE` fetches Debian's source package (the deb-src lines of the machine's
apt sources; Debian's own patches are not applied, only the upstream `.orig` tarball is built),
into $CARGO_TARGET_DIR/bench-external/debian/PACKAGE/, where it is unpacked and built with the
command lines in RECIPES below (written for this harness: plain configure/make invocations with
the features a benchmark needs).

A build is done once: a stamp file records the recipe it was built with, and a changed recipe
rebuilds. A package that cannot be fetched or built is reported in one line naming the
package and the log to read, and its rows are skipped; the rest of the suite runs on.

Standard library only.
"""

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys

sys.dont_write_bytecode = True


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# Per program: the Debian source package, the build (a list of commands run in the unpacked
# tree, each under `nice -n 10`: the machine is shared), the binaries it makes (relative to the
# tree), the Debian packages its build needs (named in the message when the build fails), and a
# rough build time on 2 cores (told before building).
RECIPES = {
    "gs": {
        "package": "ghostscript",
        "build": [
            # Only what `gs -dNODISPLAY` on PDF and PostScript needs: no X11, CUPS, GTK,
            # OCR, paper-size library, or printer drivers (FILES: the file output devices).
            ["./configure", "--without-x", "--disable-cups", "--disable-gtk", "--disable-dbus",
             "--without-tesseract", "--without-libpaper", "--without-libidn",
             "--without-pdftoraster", "--without-ijs", "--without-urf", "--disable-fontconfig",
             "--with-drivers=FILES"],
            ["make", "-j2", "gs"],
        ],
        "binaries": {"gs": "bin/gs"},
        "build_deps": "libjpeg-dev libpng-dev zlib1g-dev libfreetype-dev liblcms2-dev "
                      "libjbig2dec0-dev libopenjp2-7-dev",
        "minutes": 20,
    },
    "lua": {
        "package": "lua5.4",
        "build": [["make", "-j2", "linux"]],  # the standalone interpreter, without readline
        "binaries": {"lua": "src/lua"},
        "build_deps": "",
        "minutes": 1,
    },
    "redis": {
        "package": "redis",
        # MALLOC=libc: Redis calls malloc/free itself (its default, a bundled jemalloc, would
        # hide the allocator under test). No TLS, no systemd.
        "build": [["make", "-j2", "MALLOC=libc", "BUILD_TLS=no", "USE_SYSTEMD=no"]],
        "binaries": {"redis-server": "src/redis-server",
                     "redis-benchmark": "src/redis-benchmark",
                     "redis-cli": "src/redis-cli"},
        "build_deps": "",
        "minutes": 4,
    },
}


def recipe_digest(recipe):
    return hashlib.sha256(json.dumps([recipe["package"], recipe["build"]]).encode()).hexdigest()


def fetch(package, pkg_dir):
    """The path of PACKAGE's upstream tarball in pkg_dir, fetching it with apt-get source if
    needed; None (said why) when it cannot be had."""
    def orig():
        found = sorted(glob.glob(os.path.join(pkg_dir, "%s_*.orig.tar.*" % package)))
        return found[-1] if found else None

    if orig():
        return orig()
    os.makedirs(pkg_dir, exist_ok=True)
    log("fetching Debian's source of %s (apt-get source --download-only) into %s"
        % (package, pkg_dir))
    try:
        r = subprocess.run(["apt-get", "source", "--download-only", package], cwd=pkg_dir,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except FileNotFoundError:
        log("note: %s skipped: apt-get not found (Debian's sources come from it)" % package)
        return None
    # A missing .dsc or Debian diff (a security mirror may lack them) does not matter: only
    # the upstream tarball is built.
    if orig():
        return orig()
    tail = "; ".join(r.stdout.strip().splitlines()[-3:])
    log("note: %s skipped: `apt-get source %s` gave no upstream tarball (are deb-src lines "
        "configured in /etc/apt/sources.list.d/?): %s" % (package, package, tail))
    return None


def tree_of(debian_dir, name):
    """Where program NAME's source tree is unpacked (and built)."""
    return os.path.join(debian_dir, RECIPES[name]["package"], "src")


def build(name, debian_dir):
    """{binary: path} of program NAME (a key of RECIPES), fetched and built under debian_dir
    if not yet built with the current recipe; None (said why) when it cannot be had."""
    recipe = RECIPES[name]
    pkg_dir = os.path.join(debian_dir, recipe["package"])
    tree = tree_of(debian_dir, name)
    stamp = os.path.join(pkg_dir, "built")
    binaries = {b: os.path.join(tree, p) for b, p in recipe["binaries"].items()}
    digest = recipe_digest(recipe)
    if (os.path.isfile(stamp) and open(stamp).read().strip() == digest
            and all(os.path.isfile(p) for p in binaries.values())):
        return binaries
    tarball = fetch(recipe["package"], pkg_dir)
    if tarball is None:
        return None
    shutil.rmtree(tree, ignore_errors=True)
    os.makedirs(tree)
    r = subprocess.run(["tar", "-xf", tarball, "--strip-components=1", "-C", tree])
    if r.returncode != 0:
        log("note: %s skipped: could not unpack %s" % (name, tarball))
        return None
    build_log = os.path.join(pkg_dir, "build.log")
    log("building %s from %s (about %d min on 2 cores; log: %s)"
        % (name, os.path.basename(tarball), recipe["minutes"], build_log))
    with open(build_log, "w") as out:
        for cmd in recipe["build"]:
            out.write("+ %s\n" % " ".join(cmd))
            out.flush()
            r = subprocess.run(["nice", "-n", "10"] + cmd, cwd=tree, stdout=out,
                               stderr=subprocess.STDOUT)
            if r.returncode != 0:
                deps = recipe["build_deps"]
                log("note: %s skipped: `%s` failed in %s (see %s)%s" % (
                    name, " ".join(cmd), tree, build_log,
                    "; it needs: apt-get install %s" % deps if deps else ""))
                return None
    missing = [p for p in binaries.values() if not os.path.isfile(p)]
    if missing:
        log("note: %s skipped: the build made no %s (see %s)" % (name, missing[0], build_log))
        return None
    with open(stamp, "w") as f:
        f.write(digest + "\n")
    return binaries
