/* evacuate.c — the cost of a live evacuation (tm_evacuate) against plain memcpy, same run.
 *
 * usage: evacuate TARGET LIVE_MB WRITERS [SECONDS_BEFORE]
 *        (TIERMALLOC_TIERS must list cxl on a shmem file larger than LIVE_MB; TARGET is a new
 *        file in /dev/shm; TIERMALLOC_EVACUATE_CHUNK sets the chunk, 1M by default;
 *        TIERMALLOC_EVACUATE_RT=0 leaves the holds at the thread's own priority)
 *
 * 1. Fills the tier with LIVE_MB MiB of live blocks (95% of the bytes in 256 KiB blocks, the
 *    rest in 64..4000-byte slab blocks), every byte written.
 * 2. memcpy baseline: copies the same live bytes, block by block, into a fresh mapping of
 *    another /dev/shm file at the same offsets (the evacuation's copy pays the same first-touch
 *    faults on its target), and times every 1 MiB piece; then times one chunk's memcpy into
 *    present pages, 200 times: "one chunk copy".
 * 3. WRITERS threads store 8 bytes at a random place of a random block, timing every store
 *    (clock_gettime around it), for SECONDS_BEFORE (default 1) without a move, then (with
 *    writers) while the main thread does the memcpy baseline of step 2 again into another
 *    fresh file ("alongside": the same memory and core contention as the move will have),
 *    then during tm_evacuate(TM_CXL, TARGET).
 * Prints the evacuation's and memcpy's throughput and their ratio, in wall time and in the
 * copying thread's CPU time (steadier on a shared machine), against the memcpy of step 2 (no
 * writers yet: with writers, the move is charged for their load and memcpy is not) and, with
 * writers, against the memcpy of step 3 (the same load for both), the chunk copy time, the
 * writers' store latency (p99, p99.9, p99.99, max) before and during the move, their stores
 * per second before and during it, and the stall of the stores during which the writer slept
 * (held by the move, not preempted: its voluntary context switches, RUSAGE_THREAD).
 */
#define _GNU_SOURCE 1
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#include "tiermalloc.h"

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static uint64_t cpu_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static unsigned char **blocks;
static size_t *sizes;
static size_t nblocks;

/* Store latencies: buckets of 1/8 of a power of two of nanoseconds. */
#define BUCKETS (64 * 8)
struct hist {
    uint64_t count[BUCKETS];
    uint64_t n, max;
};

static int bucket_of(uint64_t ns)
{
    if (ns < 8) return (int)ns;
    int e = 63 - __builtin_clzll(ns);
    int m = (int)((ns >> (e - 3)) & 7);
    return e * 8 + m;
}

static uint64_t bucket_floor(int b)
{
    if (b < 8) return (uint64_t)b;
    int e = b / 8, m = b % 8;
    return ((uint64_t)8 + (uint64_t)m) << (e - 3);
}

static uint64_t percentile(const struct hist *h, double q)
{
    uint64_t want = (uint64_t)((double)h->n * q), seen = 0;
    for (int b = 0; b < BUCKETS; b++) {
        seen += h->count[b];
        if (seen > want) return bucket_floor(b);
    }
    return h->max;
}

enum { BEFORE = 0, DURING = 1, ALONGSIDE = 2, DONE = 3 };
static volatile int phase;

struct writer {
    pthread_t thread;
    unsigned long seed;
    struct hist hist[3];
    /* Stores during which the thread slept (a voluntary context switch): held by the move
     * (a write-protected chunk, or the mm lock of a remap), not preempted. */
    struct hist held[3];
    /* The control: how late this writer runs again after a 20 us nanosleep (timer slack 1 ns),
     * every 65536th store before the move: the scheduler's wake-up delay on this machine now,
     * which a writer released from a held chunk pays too. */
    struct hist wake;
    uint64_t stores[3];
};

static long voluntary_switches(void)
{
    struct rusage u;
    getrusage(RUSAGE_THREAD, &u);
    return u.ru_nvcsw;
}

static void *writer(void *arg)
{
    struct writer *w = arg;
    unsigned long x = w->seed;
    prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
    long slept = voluntary_switches();
    int p;
    while ((p = __atomic_load_n(&phase, __ATOMIC_RELAXED)) != DONE) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        size_t i = x % nblocks;
        size_t at = (x >> 20) % (sizes[i] / 8) * 8;
        uint64_t t0 = now_ns();
        *(volatile uint64_t *)(blocks[i] + at) = x;
        uint64_t dt = now_ns() - t0;
        struct hist *h = &w->hist[p];
        h->count[bucket_of(dt)]++;
        h->n++;
        if (dt > h->max) h->max = dt;
        w->stores[p]++;
        if (p == BEFORE && (w->stores[p] & 0xffff) == 0) {
            struct timespec nap = {0, 20000};
            uint64_t s0 = now_ns();
            nanosleep(&nap, NULL);
            uint64_t late = now_ns() - s0 - 20000;
            w->wake.count[bucket_of(late)]++;
            w->wake.n++;
            if (late > w->wake.max) w->wake.max = late;
            slept = voluntary_switches();
            continue;
        }
        if (dt > 2000) {
            long now = voluntary_switches();
            if (now != slept) {
                struct hist *held = &w->held[p];
                held->count[bucket_of(dt)]++;
                held->n++;
                if (dt > held->max) held->max = dt;
                slept = now;
            }
        }
    }
    return NULL;
}

static void print_hist(const char *what, struct writer *ws, int n, int p, double seconds)
{
    struct hist all;
    memset(&all, 0, sizeof all);
    uint64_t stores = 0;
    for (int t = 0; t < n; t++) {
        for (int b = 0; b < BUCKETS; b++) all.count[b] += ws[t].hist[p].count[b];
        all.n += ws[t].hist[p].n;
        if (ws[t].hist[p].max > all.max) all.max = ws[t].hist[p].max;
        stores += ws[t].stores[p];
    }
    uint64_t over10 = 0;
    for (int b = bucket_of(10000); b < BUCKETS; b++) over10 += all.count[b];
    printf("%-7s stores %.1f M/s; latency p99 %llu ns, p99.9 %llu ns, p99.99 %llu ns, max %.1f us; "
           "%llu stores over 10 us\n",
           what, (double)stores / seconds / 1e6, (unsigned long long)percentile(&all, 0.99),
           (unsigned long long)percentile(&all, 0.999),
           (unsigned long long)percentile(&all, 0.9999), (double)all.max / 1e3,
           (unsigned long long)over10);
    if (p == BEFORE) {
        struct hist wake;
        memset(&wake, 0, sizeof wake);
        for (int t = 0; t < n; t++) {
            for (int b = 0; b < BUCKETS; b++) wake.count[b] += ws[t].wake.count[b];
            wake.n += ws[t].wake.n;
            if (ws[t].wake.max > wake.max) wake.max = ws[t].wake.max;
        }
        printf("%-7s wake-up delay after a 20 us nanosleep (%llu): p50 %.1f us, p90 %.1f us, "
               "p99 %.1f us, max %.1f us\n",
               what, (unsigned long long)wake.n, (double)percentile(&wake, 0.5) / 1e3,
               (double)percentile(&wake, 0.9) / 1e3, (double)percentile(&wake, 0.99) / 1e3,
               (double)wake.max / 1e3);
    }
    struct hist held;
    memset(&held, 0, sizeof held);
    for (int t = 0; t < n; t++) {
        for (int b = 0; b < BUCKETS; b++) held.count[b] += ws[t].held[p].count[b];
        held.n += ws[t].held[p].n;
        if (ws[t].held[p].max > held.max) held.max = ws[t].held[p].max;
    }
    printf(
        "%-7s held stores (the writer slept): %llu; stall p50 %.1f us, p90 %.1f us, p99 %.1f us, "
        "max %.1f us\n",
        what, (unsigned long long)held.n, (double)percentile(&held, 0.5) / 1e3,
        (double)percentile(&held, 0.9) / 1e3, (double)percentile(&held, 0.99) / 1e3,
        (double)held.max / 1e3);
}

/* The tier's region: the mapping that holds `p`, and its file offset; its end in *end. */
static uintptr_t region_base(const void *p, uintptr_t *end)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    unsigned long lo, hi, off;
    uintptr_t base = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "%lx-%lx %*s %lx", &lo, &hi, &off) == 3 && (uintptr_t)p >= lo &&
            (uintptr_t)p < hi) {
            base = lo - off;
            *end = hi;
        }
    if (f) fclose(f);
    return base;
}

/* A fresh shmem file of REGION bytes at PATH, mapped shared (NULL on failure). */
static unsigned char *fresh_copy_target(const char *path, size_t region)
{
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || ftruncate(fd, (off_t)region) != 0) {
        perror("evacuate: baseline file");
        return NULL;
    }
    unsigned char *copy = mmap(NULL, region, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    return copy == MAP_FAILED ? NULL : copy;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: evacuate TARGET LIVE_MB WRITERS [SECONDS_BEFORE]\n");
        return 2;
    }
    const char *target = argv[1];
    size_t live = (size_t)atol(argv[2]) << 20;
    int nwriters = atoi(argv[3]);
    double before_s = argc > 4 ? atof(argv[4]) : 1.0;
    tm_stats s;
    if (tm_get_stats(TM_CXL, &s) != 0) {
        fprintf(stderr, "evacuate: TIERMALLOC_TIERS must list cxl\n");
        return 2;
    }
    size_t cap = live / 4096 + 100000;
    blocks = calloc(cap, sizeof *blocks);
    sizes = calloc(cap, sizeof *sizes);
    size_t filled = 0;
    unsigned long x = 88172645463325252UL;
    while (filled < live && nblocks < cap) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        size_t size = x % 20 == 0 ? 64 + x % 3936 : (256 << 10) - 16;
        unsigned char *p = tm_malloc(TM_CXL, size);
        if (!p) {
            fprintf(stderr, "evacuate: the tier is full after %zu MiB\n", filled >> 20);
            return 2;
        }
        memset(p, (int)nblocks, size);
        blocks[nblocks] = p;
        sizes[nblocks++] = size;
        filled += size + 16;
    }
    tm_get_stats(TM_CXL, &s);
    uintptr_t region_end = 0;
    uintptr_t base = region_base(blocks[0], &region_end);
    /* The whole mapped region (the capacity leaves out a persistent tier's superblock). */
    size_t region = (size_t)(region_end - base);

    /* memcpy baseline into a fresh shmem file, block by block at the same offsets. */
    char copy_path[256];
    snprintf(copy_path, sizeof copy_path, "%s.memcpy", target);
    unsigned char *copy = fresh_copy_target(copy_path, region);
    if (!copy) return 2;
    uint64_t c0 = cpu_ns();
    uint64_t t0 = now_ns(), piece_start = t0, pieces = 0, piece_sum = 0, piece_max = 0;
    size_t piece_bytes = 0;
    for (size_t i = 0; i < nblocks; i++) {
        size_t off = (size_t)((uintptr_t)blocks[i] - 16 - base);
        memcpy(copy + off, blocks[i] - 16, sizes[i] + 16);
        piece_bytes += sizes[i] + 16;
        if (piece_bytes >= (1 << 20)) {
            uint64_t t = now_ns(), d = t - piece_start;
            piece_sum += d;
            if (d > piece_max) piece_max = d;
            pieces++;
            piece_start = t;
            piece_bytes = 0;
        }
    }
    uint64_t memcpy_ns = now_ns() - t0, memcpy_cpu = cpu_ns() - c0;
    /* One chunk's copy as the evacuation does it: CHUNK bytes (TIERMALLOC_EVACUATE_CHUNK,
     * default 1M) into pages already present (the evacuation populates the target before it
     * holds a chunk). Median and p99 of 200. */
    size_t chunk = 1 << 20;
    const char *chunk_env = getenv("TIERMALLOC_EVACUATE_CHUNK");
    if (chunk_env) {
        char *unit;
        chunk = strtoul(chunk_env, &unit, 10);
        chunk <<= *unit == 'K' ? 10 : *unit == 'M' ? 20 : 0;
    }
    uint64_t chunk_ns[200];
    uintptr_t lowest = (uintptr_t)blocks[0];
    for (size_t i = 1; i < nblocks; i++)
        if ((uintptr_t)blocks[i] < lowest) lowest = (uintptr_t)blocks[i];
    size_t first_live = (size_t)(lowest - 16 - base) & ~(size_t)4095;
    for (int k = 0; k < 200; k++) {
        size_t off = first_live + (size_t)(k % 64) * chunk;
        if (off + chunk > region) off = region - chunk;
        uint64_t c = now_ns();
        memcpy(copy + off, (unsigned char *)base + off, chunk);
        chunk_ns[k] = now_ns() - c;
    }
    for (int a = 1; a < 200; a++)
        for (int b = a; b > 0 && chunk_ns[b] < chunk_ns[b - 1]; b--) {
            uint64_t t = chunk_ns[b];
            chunk_ns[b] = chunk_ns[b - 1];
            chunk_ns[b - 1] = t;
        }
    munmap(copy, region);
    unlink(copy_path);

    struct writer *ws = calloc((size_t)(nwriters > 0 ? nwriters : 1), sizeof *ws);
    phase = BEFORE;
    for (int t = 0; t < nwriters; t++) {
        ws[t].seed = 0x9e3779b97f4a7c15UL * (unsigned long)(t + 1);
        pthread_create(&ws[t].thread, NULL, writer, &ws[t]);
    }
    usleep((useconds_t)(before_s * 1e6));
    /* The memcpy baseline again, with the writers running: the copy the move is compared with
     * under the same contention for the cores and the memory. */
    uint64_t alongside_ns = 0, alongside_cpu = 0;
    if (nwriters > 0) {
        __atomic_store_n(&phase, ALONGSIDE, __ATOMIC_RELAXED);
        snprintf(copy_path, sizeof copy_path, "%s.memcpy2", target);
        copy = fresh_copy_target(copy_path, region);
        if (!copy) return 2;
        c0 = cpu_ns();
        t0 = now_ns();
        for (size_t i = 0; i < nblocks; i++) {
            size_t off = (size_t)((uintptr_t)blocks[i] - 16 - base);
            memcpy(copy + off, blocks[i] - 16, sizes[i] + 16);
        }
        alongside_ns = now_ns() - t0;
        alongside_cpu = cpu_ns() - c0;
        munmap(copy, region);
        unlink(copy_path);
    }
    __atomic_store_n(&phase, DURING, __ATOMIC_RELAXED);
    c0 = cpu_ns();
    t0 = now_ns();
    int rc = tm_evacuate(TM_CXL, target);
    uint64_t evac_ns = now_ns() - t0, evac_cpu = cpu_ns() - c0;
    __atomic_store_n(&phase, DONE, __ATOMIC_RELAXED);
    for (int t = 0; t < nwriters; t++) pthread_join(ws[t].thread, NULL);
    if (rc != 0) {
        fprintf(stderr, "evacuate: tm_evacuate failed: %s\n", strerror(errno));
        return 1;
    }
    double live_gb = (double)filled / 1e9;
    printf("one %zu KiB chunk memcpy, pages present: median %.1f us, p90 %.1f us, p99 %.1f us\n",
           chunk >> 10, (double)chunk_ns[100] / 1e3, (double)chunk_ns[180] / 1e3,
           (double)chunk_ns[198] / 1e3);
    printf("live %zu MiB in %zu blocks, region %zu MiB, %d writers\n", filled >> 20, nblocks,
           region >> 20, nwriters);
    printf("memcpy   %.3f s, %.2f GB/s; one 1 MiB piece: mean %.0f us, max %.0f us\n",
           (double)memcpy_ns / 1e9, live_gb / ((double)memcpy_ns / 1e9),
           (double)piece_sum / (double)(pieces ? pieces : 1) / 1e3, (double)piece_max / 1e3);
    /* With writers, these two compare the move (writers running) with the memcpy above, timed
     * before they started: the strict comparison. "with the writers running" below is the one
     * under the same load. */
    const char *baseline = nwriters > 0 ? " (memcpy timed without the writers)" : "";
    printf("evacuate %.3f s, %.2f GB/s = %.0f%% of memcpy%s\n", (double)evac_ns / 1e9,
           live_gb / ((double)evac_ns / 1e9), 100.0 * (double)memcpy_ns / (double)evac_ns,
           baseline);
    printf("cpu time of the copying thread: memcpy %.3f s, evacuate %.3f s: evacuation at %.0f%% "
           "of memcpy's throughput per CPU second%s\n",
           (double)memcpy_cpu / 1e9, (double)evac_cpu / 1e9,
           100.0 * (double)memcpy_cpu / (double)evac_cpu, baseline);
    if (nwriters > 0)
        printf("with the writers running: memcpy %.3f s wall, %.3f s cpu; evacuation at %.0f%% of "
               "memcpy's wall throughput, %.0f%% per CPU second\n",
               (double)alongside_ns / 1e9, (double)alongside_cpu / 1e9,
               100.0 * (double)alongside_ns / (double)evac_ns,
               100.0 * (double)alongside_cpu / (double)evac_cpu);
    if (nwriters > 0) {
        print_hist("before", ws, nwriters, BEFORE, before_s);
        print_hist("during", ws, nwriters, DURING, (double)evac_ns / 1e9);
    }
    for (size_t i = 0; i < nblocks; i++) tm_free(blocks[i]);
    unlink(target);
    return 0;
}
