#!/bin/bash
# glibc's own malloc tests (malloc/tst-* of a glibc source tree) against the installed glibc,
# without building glibc: glibc's test-support library (support/*.c) and each test are
# compiled here against the installed headers and libc, then every test runs twice, on glibc's
# malloc and with LIB preloaded, with the environment glibc's malloc/Makefile gives it.
# Nothing of glibc is in this repository; the source tree is the caller's.
#
#   benches/glibc_malloc_tests.sh GLIBC_SRC WORKDIR LIB [ENV=VALUE ...]
#
# GLIBC_SRC: a glibc source tree of the installed version (`apt-get source glibc` on Debian);
# WORKDIR: a scratch directory; LIB: the library to preload; ENV=VALUE: more environment for
# the preloaded run (e.g. TIERMALLOC_SECURE=1). Prints one line per test: name, glibc's
# result, LIB's result (PASS, FAIL(status), UNSUPPORTED); logs in WORKDIR/logs.
# Left out (they need glibc's build tree): tst-interpose-static-* (static links),
# tests-internal (glibc's private APIs), and the -mcheck, -malloc-check, -malloc-hugetlb1/2
# variants (the same tests under glibc's own debugging and tunables).
set -u
src=$1; work=$2; lib=$3; shift 3
extra_env=("$@")
mkdir -p "$work/inc" "$work/support" "$work/bin" "$work/logs"
ln -sfn "$src/support" "$work/inc/support"
# configure's config.h is needed by a few support files and tests: a configure run of the
# tree, once.
if [ ! -f "$work/cfg/config.h" ]; then
    mkdir -p "$work/cfg" &&
        (cd "$work/cfg" && "$src/configure" --prefix=/usr --disable-werror >configure.log 2>&1)
fi
# abi-versions.h (for the compat-symbol tests): glibc's own rule, generated from Versions.def.
[ -f "$work/cfg/abi-versions.h" ] ||
    make -r -C "$src" objdir="$work/cfg" "$work/cfg/abi-versions.h" \
        >"$work/logs/abi-versions.log" 2>&1
CF=(-O1 -g -std=gnu11 -D_GNU_SOURCE -I"$work/inc" -idirafter "$src/support"
    -idirafter "$src/include" -idirafter "$src/sysdeps/x86_64" -idirafter "$work/cfg"
    -idirafter "$src" -idirafter "$src/sysdeps/x86"
    -idirafter "$src/sysdeps/unix/sysv/linux/x86_64" -idirafter "$src/sysdeps/unix/sysv/linux"
    -idirafter "$src/sysdeps/generic" -include limits.h -DTIMEOUTFACTOR=1
    '-Dlibc_hidden_proto(...)=' "-DSRCDIR_PATH=\"$src\"" "-DOBJDIR_PATH=\"$work/cfg\""
    '-DOBJDIR_ELF_LDSO_PATH="/lib64/ld-linux-x86-64.so.2"'
    '-DINSTDIR_PATH="/usr"' '-DLIBDIR_PATH="/usr/lib"' '-DBINDIR_PATH="/usr/bin"'
    '-DSBINDIR_PATH="/usr/sbin"' '-DSLIBDIR_PATH="/lib"' '-DROOTSBINDIR_PATH="/sbin"'
    '-DCOMPLOCALEDIR_PATH="/usr/lib/locale"')
if [ ! -f "$work/libsupport.a" ]; then
    for f in "$src"/support/*.c; do
        b=$(basename "$f" .c)
        case $b in test-driver|test-run-command) continue;; esac
        gcc -c "${CF[@]}" -o "$work/support/$b.o" "$f" 2>"$work/logs/support-$b.err" ||
            echo "support: $b did not build (not needed by the malloc tests)" >&2
    done
    # Those that built: enough for the malloc tests.
    ar rcs "$work/libsupport.a" "$work"/support/*.o
fi
dbg=$(ls /lib/*/libc_malloc_debug.so.0 /lib64/libc_malloc_debug.so.0 2>/dev/null | head -1)
tests=$(sed -n '/^tests :=/,/^$/p' "$src/malloc/Makefile" | tr -d '\\' | sed 's/tests :=//')
tests="$tests tst-mallocstate tst-compathooks-off tst-compathooks-on"
tests="$tests tst-malloc-usable-tunables tst-mxfast"
for t in $tests; do
    [ -x "$work/bin/$t" ] && continue
    extra=()
    case $t in
        tst-interpose-nothread) extra=("$src/malloc/tst-interpose-aux-nothread.c");;
        tst-interpose-thread) extra=("$src/malloc/tst-interpose-aux-thread.c");;
        tst-mallocstate) extra=("$dbg");;
    esac
    gcc "${CF[@]}" -DTEST_NO_MALLOPT -iquote "$src/malloc" -o "$work/bin/$t" "$src/malloc/$t.c" \
        "${extra[@]}" "$work/libsupport.a" -lpthread -ldl 2>"$work/logs/build-$t.err" ||
        echo "$t did not build" >&2
done
result() { case $1 in 0) echo PASS;; 77) echo UNSUPPORTED;; *) echo "FAIL($1)";; esac; }
glibc_pass=0; lib_pass=0; n=0
for t in $tests; do
    [ -x "$work/bin/$t" ] || continue
    envs=(); pre=""
    case $t in   # glibc's malloc/Makefile: tst-*-ENV
        tst-malloc-check|tst-malloc-usable) envs=(MALLOC_CHECK_=3); pre=$dbg;;
        tst-malloc-usable-tunables) envs=(GLIBC_TUNABLES=glibc.malloc.check=3); pre=$dbg;;
        tst-mxfast) envs=(GLIBC_TUNABLES=glibc.malloc.tcache_count=0:glibc.malloc.mxfast=0);;
        tst-compathooks-on|tst-mallocstate) pre=$dbg;;
    esac
    (cd "$work/bin" && env TIMEOUTFACTOR=10 "${envs[@]}" ${pre:+LD_PRELOAD="$pre"} "./$t" \
        >"$work/logs/glibc-$t.log" 2>&1)
    g=$?
    # LIB first, so that its malloc is the one bound; glibc's debugging library after it.
    (cd "$work/bin" && env TIMEOUTFACTOR=10 "${envs[@]}" "${extra_env[@]}" \
        LD_PRELOAD="$lib${pre:+ $pre}" "./$t" >"$work/logs/lib-$t.log" 2>&1)
    l=$?
    n=$((n + 1))
    [ $g = 0 ] && glibc_pass=$((glibc_pass + 1))
    [ $l = 0 ] && lib_pass=$((lib_pass + 1))
    echo "$t $(result $g) $(result $l)"
done
echo "passed: glibc $glibc_pass of $n, $(basename "$lib") $lib_pass of $n"
