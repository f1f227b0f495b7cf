/* touches.c — the workload whose device-memory accesses tests/device_touches.rs counts with
 * valgrind --tool=lackey: N pairs of tm_malloc + tm_free on a tier, touching nothing itself.
 *
 * usage: touches KIND PAIRS [KEEP]   (KIND 1 cxl, 2 cmb, 3 pmr; the tier is set by
 *        TIERMALLOC_TIERS). With KEEP 1, one block of every size the loop asks for stays live
 *        through it, so every pair finds a slab with room (the steady state of a program with
 *        live blocks); without, each pair makes a slab and retires it. With KEEP 2, the loop
 *        asks for 4..8 KiB instead: extents cut from the tier's free space, freed back into it.
 * Prints "range START END" (the tier's mapping, from /proc/self/maps), "marker ADDR" (a
 * variable written once before and once after the measured loop, to find the loop in the
 * trace: a store, unlike an unused load, survives valgrind's optimisation of the code)
 * and "pairs N".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tiermalloc.h"

static volatile unsigned long marker;

int main(int argc, char **argv)
{
    int kind = argc > 1 ? atoi(argv[1]) : TM_PMR;
    int pairs = argc > 2 ? atoi(argv[2]) : 1000;
    int keep = argc > 3 ? atoi(argv[3]) : 0;
    size_t last = 0; /* one live block per size class */
    for (int i = 0; keep == 1 && i < 4000; i += 16) {
        void *p = tm_malloc((tm_kind)kind, 16 + (size_t)i);
        if (p && tm_usable_size(p) == last) tm_free(p);
        else if (p) last = tm_usable_size(p);
    }
    void *warm = tm_malloc((tm_kind)kind, 64); /* first use: nothing measured */
    tm_free(warm);
    unsigned long lo = 0, hi = 0;
    FILE *maps = fopen("/proc/self/maps", "r");
    char line[512];
    while (maps && fgets(line, sizeof line, maps)) {
        unsigned long a, b;
        if (sscanf(line, "%lx-%lx", &a, &b) == 2 && (unsigned long)warm >= a &&
            (unsigned long)warm < b) {
            lo = a;
            hi = b;
        }
    }
    if (maps) fclose(maps);
    printf("range %lx %lx\nmarker %lx\npairs %d\n", lo, hi, (unsigned long)&marker, pairs);
    fflush(stdout);
    marker = 1;
    for (int i = 0; i < pairs; i++) {
        size_t size = keep == 2 ? 4096 + (size_t)(i * 37) % 4096 : 16 + (size_t)(i * 37) % 4000;
        void *p = tm_malloc((tm_kind)kind, size);
        if (!p) return 2;
        tm_free(p);
    }
    marker = 2;
    return 0;
}
