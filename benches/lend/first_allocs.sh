#!/bin/sh
# Issue 12, "slabs cut ahead": the first allocation of each of the 44 slab classes of a
# private device tier (tests/programs/first_allocs.c, after 500 ms of start-up), run after run
# of one profile, interleaved: run 1 has nothing recorded (every class cuts its slab on the
# allocation's path), runs 2.. find the slabs cut ahead. Prints per run the program's timing
# line and the tier's profile line (slabs_ahead, slabs_on_demand). With CALLGRIND=1, also the
# instructions `main` executes (callgrind --toggle-collect=main) in a run 1 and a run 2.
# Usage: benches/lend/first_allocs.sh LIB ROUNDS
set -eu
LIB=$1; ROUNDS=${2:-5}
T=$(mktemp -d /tmp/first-allocs.XXXXXX)
CXL=/dev/shm/first-allocs-$$
cc -O2 -o "$T/first" "$(dirname "$0")/../../tests/programs/first_allocs.c"
run() { # $1 profile dir, $2 wrapper...
    dir=$1; shift
    rm -f "$CXL"
    env TIERMALLOC_TIERS="cxl:path=$CXL,size=64M,create" TIERMALLOC_PROFILE=f \
        TIERMALLOC_PROFILE_DIR="$dir" TIERMALLOC_SHOW_STATS=1 LD_PRELOAD="$LIB" \
        "$@" "$T/first" 500 2>&1 | grep -E "^first_allocs|cxl   profile" |
        sed 's/, peak .*//; s/.*profile f: //'
}
i=0
while [ $i -lt "$ROUNDS" ]; do
    rm -rf "$T/p$i"
    echo "round $i run 1:"; run "$T/p$i"
    echo "round $i run 2:"; run "$T/p$i"
    i=$((i + 1))
done
if [ "${CALLGRIND:-0}" = 1 ]; then
    rm -rf "$T/cg"
    for n in 1 2; do
        rm -f "$CXL"
        TIERMALLOC_TIERS="cxl:path=$CXL,size=64M,create" TIERMALLOC_PROFILE=f \
            TIERMALLOC_PROFILE_DIR="$T/cg" LD_PRELOAD="$LIB" \
            valgrind --tool=callgrind --toggle-collect=main --callgrind-out-file="$T/cg.$n" \
            "$T/first" 500 >/dev/null 2>&1
        total=$(callgrind_annotate "$T/cg.$n" | grep -m1 'PROGRAM TOTALS' | awk '{print $1}')
        echo "callgrind run $n: main executed $total instructions"
    done
fi
rm -rf "$T" "$CXL"
