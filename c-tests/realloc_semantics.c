/* realloc_semantics.c — realloc and reallocarray behaviour.
 *
 * - realloc(NULL, n) behaves like malloc(n) (also for n == 0).
 * - growing and shrinking preserve the first min(old, new) bytes, across every size-class
 *   boundary: tiny -> small -> medium -> large (mmap) -> huge and back down, in place or moved.
 * - realloc(p, 0): glibc frees p and returns NULL; returning a fresh unique minimum block is
 *   also allowed. Either way nothing crashes, a non-NULL result is freeable, and p itself must
 *   not be used afterwards.
 * - blocks from posix_memalign/aligned_alloc/memalign/valloc/calloc can be realloc'ed.
 * - reallocarray(p, n, s) == realloc(p, n * s) when the product fits.
 */
#include "check.h"

static const size_t ladder[] = {1,       7,       16,      24,     100,    255,     256,
                                1000,    4095,    4096,    4097,   16000,  32768,   65536,
                                65537,   131072,  200000,  262144, 500000, 1 << 20, (1 << 20) + 1,
                                3 << 20, 9 << 20, 33 << 20};
#define NL (sizeof ladder / sizeof ladder[0])

/* A size-independent byte pattern, so the kept prefix of a resized block can be verified. */
static unsigned char byte_at(size_t k, uint64_t seed)
{
    return (unsigned char)((k * 131u) ^ (k >> 8) ^ seed);
}

/* Bytes [from, to) get the pattern; for long ranges only the first 64 KiB, then one byte in 61
 * (a stride that walks through every offset within a page) and the last 64 bytes. */
static void fill_bytes(unsigned char *p, size_t from, size_t to, uint64_t seed)
{
    for (size_t k = from; k < to; k++)
        p[k] = byte_at(k, seed);
}

static int prefix_ok(const unsigned char *p, size_t n, uint64_t seed)
{
    size_t full = n < 65536 ? n : 65536;
    for (size_t k = 0; k < full; k++)
        if (p[k] != byte_at(k, seed))
            return 0;
    for (size_t k = full; k < n; k += 61)
        if (p[k] != byte_at(k, seed))
            return 0;
    for (size_t k = n > 64 ? n - 64 : 0; k < n; k++)
        if (p[k] != byte_at(k, seed))
            return 0;
    return 1;
}

static void realloc_null(void)
{
    for (size_t i = 0; i < NL; i += 3) {
        unsigned char *p = realloc(NULL, ladder[i]);
        if (!CHECK(p != NULL, "realloc(NULL, %zu) returned NULL", ladder[i]))
            continue;
        CHECK(is_aligned(p, 16), "realloc(NULL, %zu) = %p not 16-byte aligned", ladder[i], p);
        CHECK(malloc_usable_size(p) >= ladder[i], "realloc(NULL, %zu): usable %zu", ladder[i],
              malloc_usable_size(p));
        memset(p, 0x3C, ladder[i]);
        free(p);
    }
    void *a = realloc(NULL, 0), *b = realloc(NULL, 0);
    CHECK(a != NULL && b != NULL && a != b,
          "realloc(NULL, 0) twice: %p %p (want two distinct non-NULL)", a, b);
    free(a);
    free(b);
}

/* Walk the ladder up then down with one block, checking the preserved prefix at each step. */
static void grow_shrink(uint64_t seed)
{
    size_t cur = ladder[0];
    unsigned char *p = malloc(cur);
    if (!CHECK(p != NULL, "malloc(%zu) failed", cur))
        return;
    fill_bytes(p, 0, cur, seed);
    /* Up: the old bytes survive, the new tail gets the pattern too. */
    for (size_t i = 1; i < NL; i++) {
        size_t next = ladder[i];
        unsigned char *q = realloc(p, next);
        if (!CHECK(q != NULL, "realloc(%zu -> %zu) returned NULL", cur, next)) {
            free(p);
            return;
        }
        CHECK(is_aligned(q, 16), "realloc(%zu -> %zu) = %p not 16-byte aligned", cur, next, q);
        CHECK(prefix_ok(q, cur, seed), "realloc(%zu -> %zu) lost the old contents (moved: %s)", cur,
              next, q == p ? "no" : "yes");
        CHECK(malloc_usable_size(q) >= next, "realloc(%zu -> %zu): usable %zu", cur, next,
              malloc_usable_size(q));
        fill_bytes(q, cur, next, seed);
        p = q;
        cur = next;
    }
    /* Down: each step keeps exactly the prefix. */
    for (size_t i = NL - 1; i-- > 0;) {
        size_t next = ladder[i];
        unsigned char *q = realloc(p, next);
        if (!CHECK(q != NULL, "realloc(%zu -> %zu) returned NULL", cur, next)) {
            free(p);
            return;
        }
        CHECK(prefix_ok(q, next, seed), "realloc(%zu -> %zu) lost the kept prefix (moved: %s)", cur,
              next, q == p ? "no" : "yes");
        CHECK(malloc_usable_size(q) >= next, "realloc down to %zu: usable %zu", next,
              malloc_usable_size(q));
        p = q;
        cur = next;
    }
    free(p);
}

/* Shrinking keeps exactly the prefix: verified byte by byte against a reference copy. */
static void shrink_keeps_prefix(void)
{
    for (size_t i = 1; i < NL; i++) {
        size_t big = ladder[i];
        for (size_t j = 0; j < i; j += 2) {
            size_t small = ladder[j];
            unsigned char *p = malloc(big);
            if (!CHECK(p != NULL, "malloc(%zu) failed", big))
                continue;
            for (size_t k = 0; k < small; k++)
                p[k] = (unsigned char)(k * 131 + big);
            if (big > small)
                memset(p + small, 0xEE, big > small + 4096 ? 4096 : big - small);
            unsigned char *q = realloc(p, small);
            if (!CHECK(q != NULL, "realloc(%zu -> %zu) returned NULL", big, small)) {
                free(p);
                continue;
            }
            int ok = 1;
            for (size_t k = 0; k < small; k++)
                ok &= q[k] == (unsigned char)(k * 131 + big);
            CHECK(ok, "realloc(%zu -> %zu) did not keep the first %zu bytes", big, small, small);
            /* The freed tail (if in place) may be reused: allocate over it and write. */
            unsigned char *r = malloc(big - small + 1);
            if (r)
                memset(r, 0x77, big - small + 1);
            ok = 1;
            for (size_t k = 0; k < small; k++)
                ok &= q[k] == (unsigned char)(k * 131 + big);
            CHECK(ok, "after realloc(%zu -> %zu), a new malloc overwrote the kept prefix", big,
                  small);
            free(r);
            free(q);
        }
    }
}

static void realloc_zero(void)
{
    static const size_t sizes[] = {1, 64, 5000, 100000, 2 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        unsigned char *p = malloc(sizes[i]);
        if (!CHECK(p != NULL, "malloc(%zu) failed", sizes[i]))
            continue;
        memset(p, 0x42, sizes[i]);
        void *q = realloc(p, 0);
        if (q != NULL) {
            /* Allowed (C17: implementation-defined): then it is a valid minimum-size block. */
            void *r = malloc(0);
            CHECK(r != q, "realloc(p, 0) returned %p, also returned by a later malloc(0)", q);
            free(r);
            free(q);
        }
        /* Either way the allocator must still work normally. */
        void *s = malloc(sizes[i]);
        CHECK(s != NULL, "malloc(%zu) after realloc(p, 0) failed", sizes[i]);
        free(s);
    }
}

static void realloc_of_special_blocks(void)
{
    static const size_t aligns[] = {32, 64, 256, 4096, 1 << 16, 1 << 21};
    for (size_t a = 0; a < sizeof aligns / sizeof aligns[0]; a++) {
        for (int which = 0; which < 3; which++) {
            size_t al = aligns[a], s = 3000;
            unsigned char *p = NULL;
            if (which == 0 && posix_memalign((void **)&p, al, s) != 0)
                p = NULL;
            if (which == 1)
                p = aligned_alloc(al, s);
            if (which == 2)
                p = memalign(al, s);
            if (!CHECK(p != NULL, "aligned allocation #%d (%zu, %zu) failed", which, al, s))
                continue;
            pattern_fill(p, s, al + (size_t)which);
            unsigned char *q = realloc(p, 300000);
            if (CHECK(q != NULL, "realloc of an aligned(%zu) block to 300000 failed", al)) {
                CHECK(pattern_ok(q, s, al + (size_t)which),
                      "realloc of aligned(%zu) block lost contents", al);
                p = q;
            }
            q = realloc(p, 100);
            if (CHECK(q != NULL, "realloc of an aligned(%zu) block to 100 failed", al)) {
                p = q;
            }
            free(p);
        }
    }
    unsigned char *v = valloc(10000);
    if (CHECK(v != NULL, "valloc failed")) {
        pattern_fill(v, 10000, 5);
        unsigned char *q = realloc(v, 20000);
        if (CHECK(q != NULL, "realloc(valloc block) failed")) {
            CHECK(pattern_ok(q, 10000, 5), "realloc(valloc block) lost contents");
            v = q;
        }
        free(v);
    }
    unsigned char *c = calloc(100, 100);
    if (CHECK(c != NULL, "calloc failed")) {
        unsigned char *q = realloc(c, 50000);
        if (CHECK(q != NULL, "realloc(calloc block) failed")) {
            int zero = 1;
            for (size_t k = 0; k < 10000; k++)
                zero &= q[k] == 0;
            CHECK(zero, "realloc of a calloc block lost its zero prefix");
            c = q;
        }
        free(c);
    }
}

static void reallocarray_basic(void)
{
    unsigned char *p = reallocarray(NULL, 10, 10);
    if (!CHECK(p != NULL, "reallocarray(NULL, 10, 10) failed"))
        return;
    CHECK(malloc_usable_size(p) >= 100, "reallocarray(NULL, 10, 10): usable %zu",
          malloc_usable_size(p));
    fill_bytes(p, 0, 100, 9);
    unsigned char *q = reallocarray(p, 1000, 100);
    if (CHECK(q != NULL, "reallocarray(p, 1000, 100) failed")) {
        CHECK(prefix_ok(q, 100, 9), "reallocarray lost contents growing");
        CHECK(malloc_usable_size(q) >= 100000, "reallocarray(p, 1000, 100): usable %zu",
              malloc_usable_size(q));
        memset(q + 100, 0, 100000 - 100);
        p = q;
    }
    q = reallocarray(p, 5, 4);
    if (CHECK(q != NULL, "reallocarray(p, 5, 4) failed")) {
        CHECK(prefix_ok(q, 20, 9), "reallocarray lost the kept prefix shrinking to 20");
        p = q;
    }
    free(p);
}

/* Two blocks reallocated in alternation must never end up overlapping. */
static void interleaved(void)
{
    uint64_t rng = 42;
    unsigned char *a = malloc(10), *b = malloc(10);
    size_t sa = 10, sb = 10;
    if (!a || !b) {
        CHECK(0, "malloc failed");
        return;
    }
    memset(a, 'a', sa);
    memset(b, 'b', sb);
    for (int i = 0; i < 400; i++) {
        size_t ns = 1 + rng_next(&rng) % (i % 50 == 0 ? (4u << 20) : 70000u);
        int pick = rng_next(&rng) & 1;
        unsigned char **pp = pick ? &b : &a;
        size_t *ps = pick ? &sb : &sa;
        unsigned char ch = pick ? 'b' : 'a';
        unsigned char *q = realloc(*pp, ns);
        if (!CHECK(q != NULL, "realloc(%zu) failed", ns))
            break;
        size_t keep = *ps < ns ? *ps : ns;
        int ok = 1;
        for (size_t k = 0; k < keep; k += (keep > 65536 ? 4096 : 1))
            ok &= q[k] == ch;
        ok &= keep == 0 || q[keep - 1] == ch;
        CHECK(ok, "interleaved realloc %d (%zu -> %zu) lost contents", i, *ps, ns);
        memset(q, ch, ns);
        *pp = q;
        *ps = ns;
        CHECK(a + sa <= b || b + sb <= a, "blocks %p+%zu and %p+%zu overlap", a, sa, b, sb);
    }
    free(a);
    free(b);
}

int main(void)
{
    realloc_null();
    grow_shrink(1);
    shrink_keeps_prefix();
    realloc_zero();
    realloc_of_special_blocks();
    reallocarray_basic();
    interleaved();
    return check_done();
}
