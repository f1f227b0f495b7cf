/* usable_size.c — malloc_usable_size.
 *
 * - malloc_usable_size(NULL) == 0.
 * - for every size 1..64 KiB and a range of big sizes, usable >= requested, and not absurdly
 *   more (<= 2 * size + 4 KiB for small, + 1/4 for large: a size-class or page rounding,
 *   not a wrong size read from another block's metadata).
 * - writing the whole usable size of many live neighbouring blocks corrupts none of them:
 *   each is filled with its own byte to the last usable byte, then all are verified.
 * - usable size is stable: asking twice gives the same answer, and realloc within it keeps it
 *   usable.
 */
#include "check.h"

static int plausible(size_t requested, size_t usable)
{
    if (usable < requested)
        return 0;
    if (requested <= 65536)
        return usable <= 2 * requested + 4096;
    return usable <= requested + requested / 4 + (2u << 20);
}

static void null_and_range(void)
{
    CHECK(malloc_usable_size(NULL) == 0, "malloc_usable_size(NULL) = %zu",
          malloc_usable_size(NULL));
    int printed = 0;
    for (size_t s = 1; s <= 65536; s++) {
        unsigned char *p = malloc(s);
        if (!p) {
            CHECK(0, "malloc(%zu) failed", s);
            continue;
        }
        size_t u = malloc_usable_size(p);
        if (!plausible(s, u) && printed++ < 10)
            CHECK(0, "malloc(%zu): malloc_usable_size = %zu", s, u);
        p[u - 1] = 1; /* the last usable byte is writable */
        p[0] = 1;
        size_t u2 = malloc_usable_size(p);
        if (u2 != u && printed++ < 10)
            CHECK(0, "malloc(%zu): malloc_usable_size changed from %zu to %zu", s, u, u2);
        free(p);
    }
    CHECK(printed == 0, "%d sizes in 1..65536 had a bad usable size", printed);
    static const size_t big[] = {65537,   70000,         100000,  131072,  250000,
                                 1 << 20, (1 << 20) + 1, 5000000, 16 << 20};
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) {
        unsigned char *p = malloc(big[i]);
        if (!CHECK(p != NULL, "malloc(%zu) failed", big[i]))
            continue;
        size_t u = malloc_usable_size(p);
        CHECK(plausible(big[i], u), "malloc(%zu): malloc_usable_size = %zu", big[i], u);
        for (size_t off = 0; off < u; off += 4096)
            p[off] = 1;
        p[u - 1] = 1;
        free(p);
        unsigned char *c = calloc(1, big[i]);
        if (CHECK(c != NULL, "calloc(1, %zu) failed", big[i])) {
            u = malloc_usable_size(c);
            CHECK(plausible(big[i], u), "calloc(1, %zu): malloc_usable_size = %zu", big[i], u);
            c[u - 1] = 1;
            free(c);
        }
    }
}

enum { N = 3000 };
static unsigned char *blk[N];
static size_t use[N];

/* blk[i] = malloc(s), filled with its pattern to its last usable byte (use[i] bytes). */
static void take_and_fill(int i, size_t s)
{
    blk[i] = malloc(s);
    if (!CHECK(blk[i] != NULL, "malloc(%zu) failed", s))
        return;
    use[i] = malloc_usable_size(blk[i]);
    CHECK(use[i] >= s, "malloc(%zu): usable %zu", s, use[i]);
    memset(blk[i], (unsigned char)(i * 7 + 1), use[i]);
}

/* Live neighbours, each written to its very last usable byte. */
static void write_whole_usable(void)
{
    uint64_t rng = 7;
    for (int i = 0; i < N; i++) {
        size_t s;
        uint64_t r = rng_next(&rng);
        if (i % 500 == 499)
            s = 100000 + r % (3u << 20);
        else if (i % 10 == 0)
            s = 1 + r % 20000;
        else
            s = 1 + r % 600;
        take_and_fill(i, s);
    }
    /* Free every third one and refill the holes, writing the whole usable size again. */
    for (int i = 0; i < N; i += 3) {
        free(blk[i]);
        take_and_fill(i, 1 + rng_next(&rng) % 700);
    }
    int bad = 0;
    for (int i = 0; i < N; i++) {
        if (!blk[i])
            continue;
        unsigned char want = (unsigned char)(i * 7 + 1);
        for (size_t k = 0; k < use[i]; k++)
            if (blk[i][k] != want) {
                if (bad++ < 10)
                    CHECK(0,
                          "block %d (%p, usable %zu): byte %zu is %#x, want %#x (a neighbour wrote "
                          "past its "
                          "usable size, or two blocks overlap)",
                          i, (void *)blk[i], use[i], k, blk[i][k], want);
                break;
            }
        CHECK(malloc_usable_size(blk[i]) == use[i], "block %d: usable size changed from %zu to %zu",
              i, use[i], malloc_usable_size(blk[i]));
        free(blk[i]);
    }
}

/* realloc within the usable size must work and keep the bytes. */
static void realloc_within_usable(void)
{
    static const size_t sizes[] = {1, 13, 100, 1000, 5000, 70000, 300000};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        unsigned char *p = malloc(sizes[i]);
        if (!CHECK(p != NULL, "malloc(%zu) failed", sizes[i]))
            continue;
        size_t u = malloc_usable_size(p);
        memset(p, 0x6B, u);
        unsigned char *q = realloc(p, u);
        if (!CHECK(q != NULL, "realloc(p, usable %zu) failed", u)) {
            free(p);
            continue;
        }
        int ok = 1;
        for (size_t k = 0; k < u; k++)
            ok &= q[k] == 0x6B;
        CHECK(ok, "realloc(p, its usable size %zu) lost bytes", u);
        CHECK(malloc_usable_size(q) >= u, "after realloc to %zu: usable %zu", u,
              malloc_usable_size(q));
        free(q);
    }
}

static void aligned_usable(void)
{
    for (size_t a = 8; a <= (1u << 20); a <<= 2) {
        for (size_t s = 1; s < 3 * a; s = s * 5 + 3) {
            void *p = NULL;
            if (!CHECK(posix_memalign(&p, a, s) == 0, "posix_memalign(%zu, %zu) failed", a, s))
                continue;
            size_t u = malloc_usable_size(p);
            CHECK(u >= s, "posix_memalign(%zu, %zu): usable %zu", a, s, u);
            memset(p, 0x11, u);
            free(p);
        }
    }
}

int main(void)
{
    null_and_range();
    write_whole_usable();
    realloc_within_usable();
    aligned_usable();
    return check_done();
}
