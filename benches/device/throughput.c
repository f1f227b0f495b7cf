/* throughput.c — alloc + free pairs per second on a device tier against DRAM, same workload.
 *
 * usage: throughput PAIRS LIVE   (TIERMALLOC_TIERS must list pmr; the tier is any emulated one)
 * Keeps LIVE blocks of 16..4096 bytes alive and replaces a random one PAIRS times, first with
 * tm_malloc(TM_DRAM), then with tm_malloc(TM_PMR); prints ns per pair for each.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "tiermalloc.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static double run(tm_kind kind, long pairs, int live)
{
    void **slots = calloc((size_t)live, sizeof *slots);
    unsigned long x = 88172645463325252UL;
    for (int i = 0; i < live; i++) slots[i] = tm_malloc(kind, 16 + i % 4080);
    double t0 = now();
    for (long i = 0; i < pairs; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        int k = (int)(x % (unsigned long)live);
        tm_free(slots[k]);
        slots[k] = tm_malloc(kind, 16 + (x >> 20) % 4080);
        if (!slots[k]) { fprintf(stderr, "tier %d full\n", kind); exit(2); }
    }
    double ns = (now() - t0) * 1e9 / (double)pairs;
    for (int i = 0; i < live; i++) tm_free(slots[i]);
    free(slots);
    return ns;
}

int main(int argc, char **argv)
{
    long pairs = argc > 1 ? atol(argv[1]) : 2000000;
    int live = argc > 2 ? atoi(argv[2]) : 10000;
    double dram = run(TM_DRAM, pairs, live);
    double pmr = run(TM_PMR, pairs, live);
    printf("dram %.1f ns/pair, pmr %.1f ns/pair, pmr/dram %.2f (%ld pairs, %d live)\n", dram, pmr,
           pmr / dram, pairs, live);
    return 0;
}
