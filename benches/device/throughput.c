/* throughput.c — alloc + free pairs per second on a device tier against DRAM, same workload.
 *
 * usage: throughput PAIRS LIVE [THREADS [MAX]]   (TIERMALLOC_TIERS must list pmr; the tier is
 *        any emulated one)
 * Keeps LIVE blocks of 16..MAX-1 bytes (MAX default 4096) alive and replaces a random one PAIRS
 * times, first with tm_malloc(TM_DRAM), then with tm_malloc(TM_PMR); prints ns per pair for
 * each. With THREADS (default 1), that many threads each run the whole workload at once on the
 * same tier, and the figure is wall time per pair of one thread (equal to the 1-thread figure
 * when nothing is shared).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "tiermalloc.h"

static double clock_s(clockid_t id)
{
    struct timespec t;
    clock_gettime(id, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static double now(void) { return clock_s(CLOCK_MONOTONIC); }

static int max_size = 4096;

static double run(tm_kind kind, long pairs, int live, unsigned long seed)
{
    void **slots = calloc((size_t)live, sizeof *slots);
    unsigned long x = 88172645463325252UL ^ seed;
    for (int i = 0; i < live; i++) slots[i] = tm_malloc(kind, 16 + i % (max_size - 16));
    double t0 = now();
    for (long i = 0; i < pairs; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        int k = (int)(x % (unsigned long)live);
        tm_free(slots[k]);
        slots[k] = tm_malloc(kind, 16 + (x >> 20) % (unsigned long)(max_size - 16));
        if (!slots[k]) { fprintf(stderr, "tier %d full\n", kind); exit(2); }
    }
    double ns = (now() - t0) * 1e9 / (double)pairs;
    for (int i = 0; i < live; i++) tm_free(slots[i]);
    free(slots);
    return ns;
}

struct job {
    tm_kind kind;
    long pairs;
    int live;
    unsigned long seed;
    double ns;
};

static void *run_job(void *arg)
{
    struct job *j = arg;
    j->ns = run(j->kind, j->pairs, j->live, j->seed);
    return NULL;
}

/* The slowest thread's ns per pair, with `threads` threads running at once. */
static double run_threads(tm_kind kind, long pairs, int live, int threads)
{
    struct job jobs[64];
    pthread_t ids[64];
    for (int t = 0; t < threads; t++) {
        jobs[t] = (struct job){kind, pairs, live, (unsigned long)t * 0x9e3779b97f4a7c15UL, 0};
        pthread_create(&ids[t], NULL, run_job, &jobs[t]);
    }
    double worst = 0;
    for (int t = 0; t < threads; t++) {
        pthread_join(ids[t], NULL);
        if (jobs[t].ns > worst) worst = jobs[t].ns;
    }
    return worst;
}

int main(int argc, char **argv)
{
    long pairs = argc > 1 ? atol(argv[1]) : 2000000;
    int live = argc > 2 ? atoi(argv[2]) : 10000;
    int threads = argc > 3 ? atoi(argv[3]) : 1;
    if (argc > 4) max_size = atoi(argv[4]);
    if (threads < 1 || threads > 64 || max_size < 17) {
        fprintf(stderr, "THREADS must be 1..64, MAX at least 17\n");
        return 2;
    }
    /* CPU time of the whole process per pair of one thread, phase by phase (steadier than the
     * wall time on a loaded machine; spinning on a lock counts in both). */
    double c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
    double dram = run_threads(TM_DRAM, pairs, live, threads);
    double c1 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
    double pmr = run_threads(TM_PMR, pairs, live, threads);
    double c2 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
    printf("dram %.1f ns/pair, pmr %.1f ns/pair, pmr/dram %.2f (%ld pairs, %d live, %d thread%s, "
           "16..%d B); cpu per pair of one thread: dram %.1f ns, pmr %.1f ns\n",
           dram, pmr, pmr / dram, pairs, live, threads, threads > 1 ? "s" : "", max_size - 1,
           (c1 - c0) * 1e9 / (double)pairs / threads, (c2 - c1) * 1e9 / (double)pairs / threads);
    return 0;
}
