/* random_replace: the pattern of mimalloc-bench's larson and alloc-test rows on one thread, with
 * a fixed number of operations, timed in the thread's CPU time: LIVE blocks of MIN..MAX bytes
 * stay live; each operation frees a random one (its line long out of the cache when LIVE
 * blocks are more than the cache holds) and allocates a new one of a random size, whose first
 * two bytes it writes. Prints the CPU nanoseconds per operation on stdout (BENCHMARKS.md,
 * "Session 12, branch rows").
 *
 * usage: random_replace [OPS] [LIVE] [MIN] [MAX]   (defaults 10000000 5000 8 1000: larson's)
 *
 * Unlike larson (a fixed wall time, its threads' CPU share decides its figure) the count of
 * operations is fixed and the time is the thread's own CPU time, so a loaded machine moves the
 * figure less; what still moves it is what other processes leave in the shared caches.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static unsigned long long state = 88172645463325252ULL;

static unsigned long long next_random(void) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}

static double thread_cpu_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

int main(int argc, char **argv) {
    long ops = argc > 1 ? atol(argv[1]) : 10000000;
    long live = argc > 2 ? atol(argv[2]) : 5000;
    size_t min = argc > 3 ? (size_t)atol(argv[3]) : 8;
    size_t max = argc > 4 ? (size_t)atol(argv[4]) : 1000;
    if (ops <= 0 || live <= 0 || min == 0 || max < min) {
        fprintf(stderr, "usage: random_replace [OPS] [LIVE] [MIN] [MAX]\n");
        return 2;
    }
    size_t span = max - min + 1;
    char **blocks = malloc((size_t)live * sizeof *blocks);
    if (!blocks)
        return 1;
    for (long i = 0; i < live; i++) {
        blocks[i] = malloc(min + next_random() % span);
        if (!blocks[i])
            return 1;
        blocks[i][0] = 1;
    }
    double start = thread_cpu_ns();
    for (long k = 0; k < ops; k++) {
        long victim = (long)(next_random() % (unsigned long long)live);
        free(blocks[victim]);
        volatile char *p = malloc(min + next_random() % span);
        if (!p)
            return 1;
        p[0] = 'a';
        p[1] = 'b';
        blocks[victim] = (char *)p;
    }
    double ns = (thread_cpu_ns() - start) / (double)ops;
    for (long i = 0; i < live; i++)
        free(blocks[i]);
    free(blocks);
    printf("%.2f\n", ns);
    return 0;
}
