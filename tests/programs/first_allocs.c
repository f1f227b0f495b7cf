/* For tests/profile.rs and BENCHMARKS.md ("Session 9, branch reserve"): the first allocation
 * of each size class of a device tier's slabs, on the workload's critical path. After
 * DELAY_MS (argv[1], default 0) of start-up work, allocates one block of each class's usable
 * size (16..4080 B: 44 classes), timing each, and prints
 * "first_allocs N ns_total T ns_max M ns_median D". The blocks are kept until exit. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const unsigned sizes[] = {
    16,   32,   48,   64,   80,   96,   112,  128,  144,  160,  176,  192,  208,  224,  240,
    256,  272,  288,  304,  320,  336,  352,  368,  384,  400,  416,  432,  448,  464,  480,
    496,  512,  640,  768,  896,  1024, 1280, 1536, 1792, 2048, 2560, 3072, 3584, 4080,
};
#define CLASSES (sizeof sizes / sizeof sizes[0])

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int by_value(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    long delay_ms = argc > 1 ? strtol(argv[1], 0, 10) : 0;
    if (delay_ms > 0) {
        struct timespec d = {delay_ms / 1000, (delay_ms % 1000) * 1000000L};
        nanosleep(&d, 0);
    }
    void *kept[CLASSES];
    long long ns[CLASSES], total = 0, max = 0;
    for (size_t i = 0; i < CLASSES; i++) {
        long long t0 = now_ns();
        kept[i] = malloc(sizes[i]);
        ns[i] = now_ns() - t0;
        if (!kept[i]) {
            fprintf(stderr, "malloc(%u) failed\n", sizes[i]);
            return 1;
        }
        memset(kept[i], 1, sizes[i]);
        total += ns[i];
        if (ns[i] > max)
            max = ns[i];
    }
    qsort(ns, CLASSES, sizeof ns[0], by_value);
    printf("first_allocs %zu ns_total %lld ns_max %lld ns_median %lld\n", CLASSES, total, max,
           ns[CLASSES / 2]);
    for (size_t i = 0; i < CLASSES; i++)
        free(kept[i]);
    return 0;
}
