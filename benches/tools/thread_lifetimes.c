/* thread_lifetimes: short-lived threads in batches, the pattern of mimalloc-bench's mleak rows,
 * with an optional busy wait at the end of each thread, to measure what a thread's lifetime
 * costs the kernel and how the scheduler reacts to its length (BENCHMARKS.md, "Session 11,
 * branch churn").
 *
 * usage: thread_lifetimes ROUNDS [LINGER_NS] [BATCH]
 *
 * Each round creates BATCH threads (default 10) and joins them. Each thread calloc()s one
 * 128-byte block, swaps it into a random slot of a 1000-entry table and frees what was there
 * (a block of an earlier, exited thread), then busy-waits LINGER_NS nanoseconds (default 0)
 * before it returns. Prints the rounds' mean and median time on stdout.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum { SLOTS = 1000, MAX_BATCH = 64 };

static _Atomic(void *) slots[SLOTS];
static long linger_ns;

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void *lifetime(void *arg) {
    unsigned slot = (unsigned)(uintptr_t)arg;
    void *block = calloc(16, sizeof(void *));
    free(atomic_exchange(&slots[slot], block));
    if (linger_ns > 0) {
        long long until = now_ns() + linger_ns;
        while (now_ns() < until)
            ;
    }
    return NULL;
}

static int by_value(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s ROUNDS [LINGER_NS] [BATCH]\n", argv[0]);
        return 2;
    }
    int rounds = atoi(argv[1]);
    linger_ns = argc > 2 ? atol(argv[2]) : 0;
    int batch = argc > 3 ? atoi(argv[3]) : 10;
    if (rounds < 1 || batch < 1 || batch > MAX_BATCH) {
        fprintf(stderr, "%s: ROUNDS must be at least 1 and BATCH 1..%d\n", argv[0], MAX_BATCH);
        return 2;
    }
    long long *took = malloc(sizeof(long long) * (size_t)rounds);
    if (!took)
        return 1;
    uint64_t x = 0x1ce4e5b9;
    long long total = 0;
    for (int r = 0; r < rounds; r++) {
        pthread_t threads[MAX_BATCH];
        long long start = now_ns();
        for (int i = 0; i < batch; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            if (pthread_create(&threads[i], NULL, lifetime, (void *)(uintptr_t)(x % SLOTS))) {
                fprintf(stderr, "%s: pthread_create failed\n", argv[0]);
                return 1;
            }
        }
        for (int i = 0; i < batch; i++)
            pthread_join(threads[i], NULL);
        took[r] = now_ns() - start;
        total += took[r];
    }
    for (int i = 0; i < SLOTS; i++)
        free(atomic_exchange(&slots[i], NULL));
    qsort(took, (size_t)rounds, sizeof took[0], by_value);
    printf("%d rounds of %d threads: mean %.1f us, median %.1f us per round\n", rounds, batch,
           total / 1e3 / rounds, took[rounds / 2] / 1e3);
    free(took);
    return 0;
}
