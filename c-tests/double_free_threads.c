/* double_free_threads.c — two threads free the same block at the same moment (an incorrect
 * program's double free, raced between threads): exactly one of the two frees is reported,
 * and the heap stays consistent afterwards (no block handed out twice).
 *
 * Without the claim (src/dram/fast/claim.rs) both frees of a block can read its free mark
 * before either writes it: both pass, the block goes on the lists twice, and later mallocs
 * return it twice. For each block, both freers wait at a spin barrier and then free it.
 *
 * Cases, each in a child re-executed with TIERMALLOC_ON_ERROR=ignore (one line per double
 * free, then on), stderr read by the parent:
 *   remote  the main thread allocates; two other threads race (the remote path's claim);
 *   large   two threads race on 1 MB blocks, one at a time (the header's atomic swap,
 *           src/dram/large.rs);
 *   secure  TIERMALLOC_SECURE=1: the owner (main thread) races one other thread (every free
 *           takes the claiming path at that level).
 * Not covered, by design: at the default level the owner's own fast-path free racing another
 * thread's (BENCHMARKS.md, "Hardening").
 */
#include "check.h"
#include <stdatomic.h>

#define SMALL_BLOCKS 20000
#define LARGE_BLOCKS 1000

static void *blocks[SMALL_BLOCKS];
static int nblocks;
static atomic_long gate;

/* Both freers arrive; neither goes on until the other is there (round i needs 2(i+1)). Then
 * each waits a random few dozen cycles, so that over the rounds one free's start sweeps
 * across the other's path instead of always trailing it by the barrier's latency. */
static void meet(long round) {
    static _Thread_local unsigned seed;
    if (!seed) seed = (unsigned)(uintptr_t)&seed | 1;
    atomic_fetch_add(&gate, 1);
    for (int spins = 0; atomic_load(&gate) < 2 * (round + 1); spins++)
        if (spins > 1000) sched_yield();
    seed = seed * 1103515245u + 12345u;
    for (volatile unsigned k = (seed >> 16) % 64; k > 0; k--) {
    }
}

static void free_all(void) {
    for (int i = 0; i < nblocks; i++) {
        meet(i);
        free(blocks[i]);
    }
}

static void *freer(void *arg) {
    (void)arg;
    free(malloc(16)); /* a heap of its own */
    free_all();
    return NULL;
}

/* Large blocks, one at a time, so that each freed mapping goes to the cache (an unmapped one
 * would be a use after unmap for the losing free, which no check can make safe): the first
 * freer allocates block i once the other has finished round i - 1, then both free it. */
static void *large_allocator(void *arg) {
    size_t size = *(size_t *)arg;
    for (int i = 0; i < nblocks; i++) {
        meet(2 * i);
        blocks[i] = malloc(size);
        meet(2 * i + 1);
        free(blocks[i]);
    }
    return NULL;
}

static void *large_second(void *arg) {
    (void)arg;
    for (int i = 0; i < nblocks; i++) {
        meet(2 * i);
        meet(2 * i + 1);
        free(blocks[i]);
    }
    return NULL;
}

static int cmp_ptr(const void *a, const void *b) {
    uintptr_t x = *(const uintptr_t *)a, y = *(const uintptr_t *)b;
    return x < y ? -1 : x > y;
}

/* After the races: blocks of the same size, all live at once, must not overlap. */
static void no_block_twice(size_t size, int count) {
    void **p = malloc(sizeof(void *) * (size_t)count);
    CHECK(p != NULL, "malloc of the table");
    for (int i = 0; i < count; i++) {
        p[i] = malloc(size);
        CHECK(p[i] != NULL, "malloc %zu", size);
        memset(p[i], 0x5a, size);
    }
    qsort(p, (size_t)count, sizeof(void *), cmp_ptr);
    int overlaps = 0;
    for (int i = 1; i < count; i++)
        if ((uintptr_t)p[i - 1] + size > (uintptr_t)p[i]) overlaps++;
    CHECK(overlaps == 0, "%d blocks of %zu bytes handed out overlapping another live one", overlaps, size);
    for (int i = 0; i < count; i++) free(p[i]);
    free(p);
}

static int child(const char *mode) {
    int large = strcmp(mode, "large") == 0, secure = strcmp(mode, "secure") == 0;
    size_t size = large ? 1000000 : 64; /* above the largest size class (512 KiB) */
    nblocks = large ? LARGE_BLOCKS : SMALL_BLOCKS;
    pthread_t a, b;
    if (large) {
        CHECK(pthread_create(&a, NULL, large_allocator, &size) == 0, "pthread_create");
        CHECK(pthread_create(&b, NULL, large_second, NULL) == 0, "pthread_create");
        pthread_join(a, NULL);
        pthread_join(b, NULL);
        no_block_twice(size, 200);
        return check_done();
    }
    for (int i = 0; i < nblocks; i++) blocks[i] = malloc(size);
    CHECK(pthread_create(&a, NULL, freer, NULL) == 0, "pthread_create");
    if (secure) {
        free_all(); /* the owner is one of the two freers */
    } else {
        CHECK(pthread_create(&b, NULL, freer, NULL) == 0, "pthread_create");
        pthread_join(b, NULL);
    }
    pthread_join(a, NULL);
    no_block_twice(size, 2 * SMALL_BLOCKS);
    return check_done();
}

struct line_counts {
    const char *mode;
    long double_frees, other;
};

static void count_line(const char *line, void *ctx) {
    struct line_counts *c = ctx;
    if (strstr(line, "double free; ignored")) c->double_frees++;
    else if (c->other++ < 3) fprintf(stderr, "%s: unexpected line: %s\n", c->mode, line);
}

static void run_case(const char *argv0, const char *mode) {
    int secure = strcmp(mode, "secure") == 0, fd = -1;
    pid_t pid = rerun_ignoring(argv0, "DOUBLE_FREE_THREADS_CHILD", mode, secure ? "TIERMALLOC_SECURE" : NULL, "1", &fd);
    CHECK(pid > 0, "pipe or fork");
    struct line_counts counts = {mode, 0, 0};
    for_each_line(fd, count_line, &counts);
    long double_frees = counts.double_frees, other = counts.other;
    close(fd);
    int st = 0;
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s: the racing child: %s %d", mode,
          WIFSIGNALED(st) ? "killed by signal" : "exit status",
          WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
    long expected = strcmp(mode, "large") == 0 ? LARGE_BLOCKS : SMALL_BLOCKS;
    CHECK(double_frees == expected, "%s: %ld double frees reported for %ld blocks freed twice",
          mode, double_frees, expected);
    CHECK(other == 0, "%s: %ld other lines", mode, other);
    printf("%s: %ld double frees reported of %ld\n", mode, double_frees, expected);
}

int main(int argc, char **argv) {
    (void)argc;
    const char *mode = getenv("DOUBLE_FREE_THREADS_CHILD");
    if (mode) return child(mode);
    watchdog(240, "double_free_threads");
    run_case(argv[0], "remote");
    run_case(argv[0], "large");
    run_case(argv[0], "secure");
    return check_done();
}
