/* big_block_cache.c — blocks over 8 KiB freed by their own thread wait in its heap's cache
 * (src/dram/fast/block_cache.rs) for its next requests of their class, and:
 *  - are handed out again, each once;
 *  - a second free of a cached block, by the owner or by another thread, is a double free;
 *    a realloc of one is reported too;
 *  - malloc_trim gives them back to their pages, whose memory it then returns: no freed
 *    block's memory stays resident (at most the page each class keeps as its current one);
 *  - a fork()ed child takes them as its parent would;
 *  - under DRAM's limit=, a page refused gives the cached blocks back first;
 *  - under TIERMALLOC_SECURE=1 nothing is cached: a freed block waits in the quarantine;
 *  - a request over 8 KiB takes the cache's block first, before its class's current page
 *    (src/dram/fast/mod.rs, alloc_big), though the page has freed blocks too.
 * Each aborting case runs in a fork()ed child (check.h's EXPECT_ABORT).
 */
#include "check.h"

#define BIG 20000    /* class 20 KiB: 3 blocks a page */
#define WHOLE 60000  /* class 56 KiB: 1 block a page of one slice */
#define OS_PAGE 4096
#define CACHE_SLOTS 16 /* blocks a class keeps (block_cache.rs, SLOTS) */

/* Where `p` is in `blocks[0..n)`, or -1. */
static int index_of(char **blocks, int n, char *p)
{
    for (int i = 0; i < n; i++)
        if (blocks[i] == p)
            return i;
    return -1;
}

static void double_free_cached(void *arg)
{
    (void)arg;
    malloc_trim(0); /* the cache empty: the free below goes there */
    char *p = malloc(BIG);
    free(p);
    free(p);
}

static void *free_there(void *p)
{
    free(p);
    return NULL;
}

static void double_free_cached_from_another_thread(void *arg)
{
    (void)arg;
    malloc_trim(0);
    char *p = malloc(BIG);
    free(p); /* cached by this thread's heap */
    pthread_t t;
    pthread_create(&t, NULL, free_there, p);
    pthread_join(t, NULL);
}

static void realloc_cached(void *arg)
{
    (void)arg;
    malloc_trim(0);
    char *p = malloc(BIG);
    free(p);
    char *volatile q = realloc(p, 2 * BIG);
    (void)q;
}

/* Resident OS pages of the `n` bytes at `p`. */
static size_t resident(void *p, size_t n)
{
    uintptr_t from = (uintptr_t)p & ~(uintptr_t)(OS_PAGE - 1);
    uintptr_t to = ((uintptr_t)p + n + OS_PAGE - 1) & ~(uintptr_t)(OS_PAGE - 1);
    unsigned char vec[64];
    size_t pages = (to - from) / OS_PAGE;
    if (pages > sizeof vec || mincore((void *)from, to - from, vec) != 0)
        return SIZE_MAX;
    size_t r = 0;
    for (size_t i = 0; i < pages; i++)
        r += vec[i] & 1;
    return r;
}

static int secure_checks(void)
{
    /* A freed block comes back only after the quarantine let it go, never at once. */
    char *p = malloc(BIG);
    free(p);
    int n = -1;
    for (int i = 0; i < 1000 && n < 0; i++) {
        char *q = malloc(BIG);
        free(q);
        if (q == p)
            n = i;
    }
    CHECK(n >= 40, "a freed block of %d bytes came back after %d other frees", BIG, n);
    return check_done();
}

/* Under DRAM's limit=, blocks freed into the cache do not hold their pages against the
 * limit: every freed block cached (no page emptied, no free slice), a request of a class that
 * cannot borrow them (over 1.75 times its size) still gets pages once the cache gives them up. */
static int limit_checks(void)
{
    static char *held[4096];
    int n = 0, got = 0;
    while (n < 4096 && (held[n] = malloc(WHOLE)) != NULL) {
        memset(held[n], 0x66, WHOLE);
        n++;
    }
    CHECK(n > 32 && n < 4096, "%d blocks of %d bytes under the limit", n, WHOLE);
    for (int i = 0; i < 16; i++)
        free(held[i]);
    while (got < 100 && malloc(BIG) != NULL)
        got++;
    CHECK(got >= 30, "under limit=, %d blocks of %d bytes after 16 of %d bytes were freed", got,
          BIG, WHOLE);
    return check_done();
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--secure") == 0)
        return secure_checks();
    if (argc > 1 && strcmp(argv[1], "--limit") == 0)
        return limit_checks();
    watchdog(60, "big_block_cache");

    /* Freed blocks, cached or not, are handed out again each once (pages that emptied may
     * have been retired and cut again meanwhile: new addresses are no fault). */
    char *blocks[40], *got[40];
    for (int i = 0; i < 40; i++)
        blocks[i] = malloc(BIG);
    for (int i = 0; i < 40; i++)
        free(blocks[i]);
    int again = 0;
    for (int i = 0; i < 40; i++) {
        got[i] = malloc(BIG);
        memset(got[i], 0x33, BIG);
        for (int k = 0; k < 40; k++)
            again += blocks[k] == got[i];
        for (int k = 0; k < i; k++)
            CHECK(got[k] != got[i], "block %p handed out twice", (void *)got[i]);
    }
    CHECK(again >= 30, "only %d of 40 freed blocks handed out again", again);
    for (int i = 0; i < 40; i++)
        free(got[i]);

    EXPECT_ABORT(double_free_cached, NULL, "double free", NULL);
    EXPECT_ABORT(double_free_cached_from_another_thread, NULL, "double free", NULL);
    EXPECT_ABORT(realloc_cached, NULL, "freed already", NULL);

    /* A fork()ed child takes the parent's cached blocks as the parent would. */
    char *last = malloc(BIG);
    free(last);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        char *q = malloc(BIG);
        int ok = q == last;
        memset(q, 0x44, BIG);
        free(q);
        malloc_trim(0);
        _exit(ok ? 0 : 3);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the child did not get the cached block (%#x)",
          st);

    /* malloc_trim: every freed block's memory goes back, the cached ones' too. */
    char *whole[32];
    for (int i = 0; i < 32; i++) {
        whole[i] = malloc(WHOLE);
        memset(whole[i], 0x55, WHOLE);
    }
    for (int i = 0; i < 32; i++)
        free(whole[i]);
    malloc_trim(0);
    int kept = 0;
    for (int i = 0; i < 32; i++) {
        size_t r = resident(whole[i], WHOLE);
        CHECK(r != SIZE_MAX, "mincore");
        kept += r > 1; /* a block whose memory stayed (its page's first OS page may be shared) */
    }
    CHECK(kept <= 1, "%d of 32 freed blocks of %d bytes still resident after malloc_trim", kept,
          WHOLE);

    /* The cache (empty after the trim) takes the first CACHE_SLOTS blocks freed, the others
     * go back to their pages, the class's current one among them; the next request gets the
     * block cached last, not one of its current page's. */
    char *many[40];
    for (int i = 0; i < 40; i++)
        many[i] = malloc(BIG);
    for (int i = 0; i < 40; i++)
        free(many[i]);
    char *next = malloc(BIG);
    CHECK(next == many[CACHE_SLOTS - 1], "after 40 frees of %d bytes, block %d handed out, not %d",
          BIG, index_of(many, 40, next), CACHE_SLOTS - 1);
    free(next);

    CHECK(rerun_self_with("TIERMALLOC_SECURE", "1", "--secure") == 0,
          "TIERMALLOC_SECURE=1 cached a block (see above)");
    CHECK(rerun_self_with("TIERMALLOC_TIERS", "dram:limit=16M", "--limit") == 0,
          "under limit=, the cached blocks' pages were not given up (see above)");
    return check_done();
}
