/* calloc_zero.c — calloc always returns zeroed memory, also when it recycles dirty memory.
 *
 * The classic bug: an allocator that knows fresh mmap memory is zero skips the memset, and then
 * hands out a recycled (cached, dirtied) span to calloc without clearing it. So every size is
 * exercised as: allocate, fill the whole usable size with 0xAA, free, calloc the same size (and
 * nearby sizes, and as count*size), check every requested byte is 0 — many times over, for
 * small, medium (100 KiB), large (8 MiB) and odd sizes, with one block and with many live
 * blocks, in the main thread and in other threads, and after realloc shrinks left a dirty tail.
 */
#include "check.h"

static size_t first_nonzero(const unsigned char *p, size_t n)
{
    const uint64_t *w = (const uint64_t *)p; /* calloc results are at least 8-aligned */
    size_t nw = n / 8;
    for (size_t i = 0; i < nw; i++)
        if (w[i] != 0) {
            for (size_t k = i * 8; k < i * 8 + 8; k++)
                if (p[k])
                    return k;
        }
    for (size_t k = nw * 8; k < n; k++)
        if (p[k])
            return k;
    return (size_t)-1;
}

static void dirty_free(size_t s)
{
    unsigned char *p = malloc(s);
    if (!CHECK(p != NULL, "malloc(%zu) failed", s))
        return;
    size_t u = malloc_usable_size(p);
    memset(p, 0xAA, u > s ? u : s);
    free(p);
}

static void check_calloc(size_t count, size_t size, const char *what, int iter)
{
    unsigned char *c = calloc(count, size);
    if (!CHECK(c != NULL, "%s: calloc(%zu, %zu) failed", what, count, size))
        return;
    __asm__ volatile("" : : "r"(c) : "memory");
    size_t bad = first_nonzero(c, count * size);
    CHECK(bad == (size_t)-1, "%s iter %d: calloc(%zu, %zu) = %p has byte %zu = %#x, not 0", what,
          iter, count, size, (void *)c, bad, bad == (size_t)-1 ? 0 : c[bad]);
    /* dirty it ourselves before giving it back, for the next round */
    size_t u = malloc_usable_size(c);
    memset(c, 0xAA, u > count * size ? u : count * size);
    free(c);
}

static void same_size_cycles(const char *what)
{
    static const size_t sizes[] = {1, 8, 16, 24, 48, 100, 128, 500, 1000, 1024, 4000, 4096, 10000,
                                   40000, 65536, 100 * 1024, 256 * 1024, 1 << 20, 8 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t s = sizes[i];
        int iters = s >= (1 << 20) ? 12 : 40;
        for (int it = 0; it < iters; it++) {
            dirty_free(s);
            check_calloc(1, s, what, it);
            dirty_free(s);
            check_calloc(s, 1, what, it);
            if (s % 8 == 0) {
                dirty_free(s);
                check_calloc(s / 8, 8, what, it);
            }
            /* A slightly smaller request lands in the same size class / cached span. */
            if (s > 16) {
                dirty_free(s);
                check_calloc(1, s - s / 16, what, it);
            }
        }
    }
}

/* Many live dirty blocks freed together, then callocs that may reuse any of them. */
static void many_live(const char *what)
{
    static const size_t sizes[] = {32, 700, 9000, 100 * 1024, 3 << 20};
    enum { N = 48 };
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t s = sizes[i];
        int n = s >= (1 << 20) ? 6 : N;
        void *b[N];
        for (int round = 0; round < 3; round++) {
            for (int k = 0; k < n; k++) {
                b[k] = malloc(s);
                if (b[k])
                    memset(b[k], 0xAA, malloc_usable_size(b[k]));
            }
            for (int k = 0; k < n; k++)
                free(b[k]);
            for (int k = 0; k < n; k++) {
                b[k] = calloc(1, s);
                if (!CHECK(b[k] != NULL, "%s: calloc(1, %zu) failed", what, s))
                    continue;
                __asm__ volatile("" : : "r"(b[k]) : "memory");
                size_t bad = first_nonzero(b[k], s);
                CHECK(bad == (size_t)-1,
                      "%s: calloc(1, %zu) #%d (round %d) has nonzero byte at %zu", what, s, k,
                      round, bad);
            }
            for (int k = 0; k < n; k++) {
                if (b[k])
                    memset(b[k], 0xAA, s);
                free(b[k]);
            }
        }
    }
}

/* realloc shrinking in place leaves the dirty tail free for the next allocation. */
static void after_shrink(const char *what)
{
    static const size_t sizes[] = {4096, 65536, 300000, 4 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t s = sizes[i];
        for (int it = 0; it < 8; it++) {
            unsigned char *p = malloc(s);
            if (!CHECK(p != NULL, "%s: malloc(%zu) failed", what, s))
                continue;
            memset(p, 0xAA, s);
            unsigned char *q = realloc(p, s / 8);
            if (!q) {
                free(p);
                continue;
            }
            check_calloc(1, s / 2, what, it);
            check_calloc(1, s - s / 8, what, it);
            free(q);
        }
    }
}

static void *thread_body(void *arg)
{
    const char *what = arg;
    same_size_cycles(what);
    many_live(what);
    return NULL;
}

int main(void)
{
    same_size_cycles("main");
    many_live("main");
    after_shrink("main");
    pthread_t t[2];
    int ok[2];
    ok[0] =
        CHECK(pthread_create(&t[0], NULL, thread_body, "thread A") == 0, "pthread_create failed");
    ok[1] =
        CHECK(pthread_create(&t[1], NULL, thread_body, "thread B") == 0, "pthread_create failed");
    for (int i = 0; i < 2; i++)
        if (ok[i])
            pthread_join(t[i], NULL);
    return check_done();
}
