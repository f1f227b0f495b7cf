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
 *           takes the claiming path at that level);
 *   owner   the default level, the owner (main thread) racing one other thread, on blocks of
 *           2000 bytes (see HAND_OUT_TESTED). The owner's
 *           fast-path free takes no claim (an atomic swap there costs every free a barrier), so
 *           a few of these races pass both frees and the block sits on two lists. It is caught
 *           when it is handed out from the second (src/dram/fast/page.rs, `Block::take_mark`:
 *           it no longer carries the free mark), as a "corrupted free list" line, and no
 *           block is handed out twice (main before the mark test: 60 and 129 blocks in two
 *           runs of a 200 000-round version). On a loaded machine both threads seldom run at
 *           once, so a run may see no race: `two_lists` below is the case that always fails
 *           without the test;
 *   two_lists the state such a race leaves, made without luck (blocks of 2000 bytes): the
 *           owner frees each block, the program clears its second word (the free mark) after
 *           the free, then another thread frees it (its claim now succeeds), so every block
 *           sits on the owner's list and on the page's remote list. The owner's mallocs
 *           afterwards must hand none out twice: the copy popped second is reported. Without
 *           the pop's mark test (main before it), a block comes out twice.
 */
#include "check.h"
#include <stdatomic.h>

#define SMALL_BLOCKS 20000
#define LARGE_BLOCKS 1000

static void *blocks[SMALL_BLOCKS];
static int nblocks;
static atomic_long gate;
/* Spins at the barrier before a waiter yields: the owner case spins longer, so that the two
 * freers more often run at once on a loaded machine. */
static int spins_before_yield = 1000;

/* Both freers arrive; neither goes on until the other is there (round i needs 2(i+1)). Then
 * each waits a random few dozen cycles, so that over the rounds one free's start sweeps
 * across the other's path instead of always trailing it by the barrier's latency. */
static void meet(long round) {
    static _Thread_local unsigned seed;
    if (!seed) seed = (unsigned)(uintptr_t)&seed | 1;
    atomic_fetch_add(&gate, 1);
    for (int spins = 0; atomic_load(&gate) < 2 * (round + 1); spins++)
        if (spins > spins_before_yield) sched_yield();
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
    CHECK(overlaps == 0, "%d blocks of %zu bytes handed out overlapping another live one", overlaps,
          size);
    for (int i = 0; i < count; i++) free(p[i]);
    free(p);
}

#define TWO_LISTS_BLOCKS 1000
/* The owner and two_lists cases use blocks over 1 KiB: only their allocations test the free
 * mark of the block handed out at the default level (src/dram/fast/page.rs, `pop_validated`;
 * BENCHMARKS.md, "Session 10, branch checks"); for smaller blocks the raced owner's free is
 * caught under TIERMALLOC_SECURE=1 only (the secure case). */
#define HAND_OUT_TESTED 2000

static void *remote_freer(void *arg) {
    (void)arg;
    for (int i = 0; i < TWO_LISTS_BLOCKS; i++) free(blocks[i]);
    return NULL; /* the thread's exit hands its gathered frees to the pages */
}

/* The two_lists case (see the top comment). */
static int two_lists(void) {
    /* Live throughout, so that the owner's frees never empty (and retire) the first page. */
    void *anchor = malloc(HAND_OUT_TESTED);
    for (int i = 0; i < TWO_LISTS_BLOCKS; i++) blocks[i] = malloc(HAND_OUT_TESTED);
    for (int i = 0; i < TWO_LISTS_BLOCKS; i++) {
        free(blocks[i]);
        ((volatile uintptr_t *)blocks[i])[1] = 0; /* written after its free: the mark is gone */
    }
    pthread_t t;
    CHECK(pthread_create(&t, NULL, remote_freer, NULL) == 0, "pthread_create");
    pthread_join(t, NULL);
    no_block_twice(HAND_OUT_TESTED, 2 * TWO_LISTS_BLOCKS);
    free(anchor);
    return check_done();
}

static int child(const char *mode) {
    if (strcmp(mode, "two_lists") == 0) return two_lists();
    if (strcmp(mode, "owner") == 0) spins_before_yield = 100000;
    int large = strcmp(mode, "large") == 0;
    int owner_races = strcmp(mode, "secure") == 0 || strcmp(mode, "owner") == 0;
    /* 1000000: above the largest size class (512 KiB) */
    size_t size = large ? 1000000 : strcmp(mode, "owner") == 0 ? HAND_OUT_TESTED : 64;
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
    if (owner_races) {
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
    long double_frees, found_at_reuse, other;
};

static void count_line(const char *line, void *ctx) {
    struct line_counts *c = ctx;
    int owner = strcmp(c->mode, "owner") == 0, two_lists = strcmp(c->mode, "two_lists") == 0;
    if (strstr(line, "double free; ignored")) c->double_frees++;
    /* The owner retires a page its frees emptied: the other thread's free of the same block
     * then finds no page there. */
    else if (owner && strstr(line, "invalid pointer (not the start of a live block); ignored"))
        c->double_frees++;
    /* A block on two lists: the copy popped second is found by its lost mark or, when the
     * other list's link was written over its own, by the head's range test; what the heap
     * leaks then (the dropped list) leaves the page's count short, so a later free of its
     * blocks may find the page retired. Only a block handed out twice (the child's own check)
     * is a failure. */
    else if ((owner || two_lists) && strstr(line, "corrupted free list"))
        c->found_at_reuse++;
    else if (two_lists && strstr(line, "invalid pointer (not the start of a live block); ignored"))
        ;
    else if (c->other++ < 3) fprintf(stderr, "%s: unexpected line: %s\n", c->mode, line);
}

static void run_case(const char *argv0, const char *mode) {
    int secure = strcmp(mode, "secure") == 0, fd = -1;
    pid_t pid = rerun_ignoring(argv0, "DOUBLE_FREE_THREADS_CHILD", mode,
                               secure ? "TIERMALLOC_SECURE" : NULL, "1", &fd);
    CHECK(pid > 0, "pipe or fork");
    struct line_counts counts = {mode, 0, 0, 0};
    for_each_line(fd, count_line, &counts);
    long double_frees = counts.double_frees, found = counts.found_at_reuse, other = counts.other;
    close(fd);
    int st = 0;
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s: the racing child: %s %d", mode,
          WIFSIGNALED(st) ? "killed by signal" : "exit status",
          WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
    if (strcmp(mode, "two_lists") == 0) {
        CHECK(double_frees == 0 && found >= 1 && other == 0,
              "two_lists: %ld double frees, %ld lists found corrupted at reuse, %ld other lines",
              double_frees, found, other);
        printf("two_lists: %ld lists found corrupted at reuse\n", found);
        return;
    }
    long expected = strcmp(mode, "large") == 0 ? LARGE_BLOCKS : SMALL_BLOCKS;
    if (strcmp(mode, "owner") == 0) {
        /* A raced pair whose frees both passed leaves its page's count short, so the page can
         * be retired early and later frees of its blocks are each reported, and one dropped
         * list can hold more than one raced block: the reports do not add up to the rounds
         * exactly. What must hold is the child's check, no block handed out twice. */
        CHECK(other == 0,
              "owner: %ld reported at the free, %ld at reuse, %ld other lines, for %ld rounds",
              double_frees, found, other, expected);
        printf(
            "owner: %ld rounds, %ld reports at the free, %ld at reuse (races both frees passed)\n",
            expected, double_frees, found);
        return;
    }
    CHECK(double_frees + found == expected,
          "%s: %ld double frees reported at the free and %ld at reuse, for %ld blocks freed twice",
          mode, double_frees, found, expected);
    CHECK(other == 0, "%s: %ld other lines", mode, other);
    printf("%s: %ld double frees reported of %ld, %ld of them at reuse\n", mode,
           double_frees + found, expected, found);
}

int main(int argc, char **argv) {
    (void)argc;
    const char *mode = getenv("DOUBLE_FREE_THREADS_CHILD");
    if (mode) return child(mode);
    watchdog(240, "double_free_threads");
    run_case(argv[0], "remote");
    run_case(argv[0], "large");
    run_case(argv[0], "secure");
    run_case(argv[0], "owner");
    run_case(argv[0], "two_lists");
    return check_done();
}
