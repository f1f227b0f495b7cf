/* alignment.c — default alignment, every power-of-two alignment, bad alignments, valloc/pvalloc.
 *
 * - malloc/calloc/realloc results are 16-byte aligned for every size 1..64 KiB and for big
 *   sizes (glibc's MALLOC_ALIGNMENT on x86-64; programs rely on it for SSE and long double).
 * - posix_memalign (alignments >= sizeof(void*)), aligned_alloc and memalign (alignments >= 1)
 *   honour every power of two up to 4 MiB, for sizes below, at and above the alignment; the
 *   blocks are writable to their end, malloc_usable_size >= size, and live blocks never overlap.
 * - posix_memalign returns EINVAL (and leaves *memptr alone or NULL) for 0, non-powers of two and
 *   non-multiples of sizeof(void*); aligned_alloc gives NULL + EINVAL for a non-power-of-two
 *   alignment (C17, glibc >= 2.38); memalign either fails the same way or, as glibc does, rounds
 *   the alignment up to the next power of two.
 * - valloc returns page-aligned memory; pvalloc too, with the size rounded up to whole pages.
 */
#include "check.h"

#define SENTINEL 12345
#define MAX_ALIGN ((size_t)4 << 20)

static void default_alignment(void)
{
    int bad = 0;
    for (size_t s = 1; s <= 65536; s++) {
        void *p = malloc(s);
        if (!p || !is_aligned(p, 16)) {
            bad++;
            CHECK(p != NULL, "malloc(%zu) returned NULL", s);
            CHECK(p == NULL || is_aligned(p, 16), "malloc(%zu) = %p is not 16-byte aligned", s, p);
        }
        /* Keep a few alive so the next ones come from a used page, not always its start. */
        if (s % 3 == 0) {
            free(p);
        } else {
            void *q = malloc(s);
            if (q && !is_aligned(q, 16))
                CHECK(0, "second malloc(%zu) = %p is not 16-byte aligned", s, q);
            free(p);
            free(q);
        }
        if (bad > 20)
            break;
    }
    static const size_t big[] = {65537, 100000, 131072, 262145, 1 << 20, (3 << 20) + 1, 33 << 20};
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) {
        void *p = malloc(big[i]);
        CHECK(p != NULL && is_aligned(p, 16), "malloc(%zu) = %p (want 16-byte aligned)", big[i], p);
        void *c = calloc(1, big[i]);
        CHECK(c != NULL && is_aligned(c, 16), "calloc(1, %zu) = %p (want 16-byte aligned)", big[i],
              c);
        free(p);
        free(c);
    }
    for (size_t n = 1; n <= 4096; n += 7) {
        void *c = calloc(n, 3);
        CHECK(c != NULL && is_aligned(c, 16), "calloc(%zu, 3) = %p (want 16-byte aligned)", n, c);
        void *r = realloc(c, n * 5 + 1);
        CHECK(r != NULL && is_aligned(r, 16), "realloc(%zu) = %p (want 16-byte aligned)", n * 5 + 1,
              r);
        free(r ? r : c);
    }
}

struct blk {
    unsigned char *p;
    size_t size;
};

static int cmp_blk(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t)((const struct blk *)a)->p, y = (uintptr_t)((const struct blk *)b)->p;
    return x < y ? -1 : x > y;
}

/* which: 0 posix_memalign, 1 aligned_alloc, 2 memalign */
static const char *const fn_name[] = {"posix_memalign", "aligned_alloc", "memalign"};

static void *alloc_aligned(int which, size_t align, size_t size, int *rc_out)
{
    void *p = NULL;
    *rc_out = 0;
    switch (which) {
    case 0: *rc_out = posix_memalign(&p, align, size); if (*rc_out) p = NULL; break;
    case 1: p = aligned_alloc(align, size); break;
    case 2: p = memalign(align, size); break;
    }
    return p;
}

static void power_of_two_alignments(void)
{
    for (int which = 0; which < 3; which++) {
        for (size_t align = 1; align <= MAX_ALIGN; align *= 2) {
            if (which == 0 && align < sizeof(void *))
                continue; /* EINVAL by definition; checked in bad_alignments() */
            size_t sizes[] = {1, align / 2 + 1, align, align + 1, 3 * align - 1, 24, 1000, 70000};
            enum { NS = sizeof sizes / sizeof sizes[0] };
            struct blk live[NS];
            int nlive = 0;
            for (int k = 0; k < NS; k++) {
                size_t s = sizes[k];
                if (s == 0)
                    continue;
                int rc;
                set_errno(SENTINEL);
                unsigned char *p = alloc_aligned(which, align, s, &rc);
                int e = get_errno();
                if (!CHECK(p != NULL, "%s(%zu, %zu) failed (rc %d, errno %d)", fn_name[which],
                           align, s, rc, e))
                    continue;
                CHECK(e == SENTINEL, "successful %s(%zu, %zu) changed errno to %d", fn_name[which],
                      align, s, e);
                CHECK(is_aligned(p, align) && is_aligned(p, sizeof(void *)),
                      "%s(%zu, %zu) = %p is misaligned", fn_name[which], align, s, p);
                size_t u = malloc_usable_size(p);
                CHECK(u >= s, "malloc_usable_size(%s(%zu, %zu)) = %zu < size", fn_name[which],
                      align, s, u);
                /* Writable: all of it when small, both ends and every page when big. */
                if (s <= (256u << 10)) {
                    memset(p, 0xC3, s);
                } else {
                    for (size_t off = 0; off < s; off += 4096)
                        p[off] = 0xC3;
                    p[s - 1] = 0xC3;
                }
                if (u > s)
                    p[u - 1] = 0xC3;
                live[nlive].p = p;
                live[nlive].size = u > s ? u : s;
                nlive++;
            }
            /* Live blocks must not overlap. */
            qsort(live, (size_t)nlive, sizeof live[0], cmp_blk);
            for (int k = 0; k + 1 < nlive; k++)
                CHECK(live[k].p + live[k].size <= live[k + 1].p,
                      "%s(%zu, ...): blocks %p (+%zu) and %p overlap", fn_name[which], align,
                      live[k].p, live[k].size, live[k + 1].p);
            for (int k = 0; k < nlive; k++) {
                CHECK(live[k].p[0] == 0xC3, "%s(%zu, ...): first byte of %p changed",
                      fn_name[which], align, live[k].p);
                set_errno(SENTINEL);
                free(live[k].p);
                CHECK(get_errno() == SENTINEL, "free of %s(%zu, ...) block changed errno",
                      fn_name[which], align);
            }
        }
    }
}

static void bad_alignments(void)
{
    /* posix_memalign: must be a power of two AND a multiple of sizeof(void *). */
    static const size_t bad_pm[] = {0, 1, 2, 4, 3, 12, 24, 40, 48, 96, 100, 4095, 4097, 12288,
                                    (1 << 20) + 8, SIZE_MAX, SIZE_MAX / 2 + 2, SIZE_MAX - 7};
    for (size_t i = 0; i < sizeof bad_pm / sizeof bad_pm[0]; i++) {
        size_t al = opaque_size(bad_pm[i]);
        void *p = (void *)0x1;
        set_errno(SENTINEL);
        int rc = posix_memalign(&p, al, 64);
        CHECK(rc == EINVAL, "posix_memalign(&p, %#zx, 64) returned %d (want EINVAL=%d)", al, rc,
              EINVAL);
        CHECK(p == (void *)0x1 || p == NULL, "failed posix_memalign(&p, %#zx, 64) stored %p", al,
              p);
        if (rc == 0 && p != (void *)0x1 && p != NULL)
            free(p);
    }
    /* aligned_alloc: any non-power-of-two alignment is an error (C17 7.22.3.1, glibc 2.38). */
    static const size_t npot[] = {3, 5, 6, 12, 24, 48, 96, 100, 4095, 4097, 12288, (1 << 20) + 8,
                                  SIZE_MAX, SIZE_MAX - 7};
    for (size_t i = 0; i < sizeof npot / sizeof npot[0]; i++) {
        size_t al = opaque_size(npot[i]);
        set_errno(SENTINEL);
        void *p = aligned_alloc(al, 64);
        int e = get_errno();
        CHECK(p == NULL && e == EINVAL,
              "aligned_alloc(%#zx, 64) returned %p, errno %d (want NULL, EINVAL=%d)", al, p, e,
              EINVAL);
        if (p)
            free(p);
    }
    /* memalign: glibc documents EINVAL for a non-power-of-two alignment, and its implementation
     * instead rounds the alignment up. Accept either, but nothing else: a NULL must come with
     * EINVAL, a block must be aligned to the next power of two and usable. An alignment whose
     * next power of two does not exist must fail. */
    for (size_t i = 0; i < sizeof npot / sizeof npot[0]; i++) {
        size_t al = opaque_size(npot[i]);
        set_errno(SENTINEL);
        unsigned char *p = memalign(al, 64);
        int e = get_errno();
        if (p == NULL) {
            CHECK(e == EINVAL, "memalign(%#zx, 64) returned NULL with errno %d (want EINVAL=%d)",
                  al, e, EINVAL);
        } else {
            size_t next = 1;
            while (next < al && next != 0)
                next <<= 1;
            CHECK(next != 0 && al <= SIZE_MAX / 2,
                  "memalign(%#zx, 64) returned %p: no such alignment exists", al, p);
            if (next != 0)
                CHECK(is_aligned(p, next), "memalign(%#zx, 64) = %p is not aligned to %zu", al, p,
                      next);
            CHECK(e == SENTINEL, "successful memalign(%#zx, 64) changed errno to %d", al, e);
            CHECK(malloc_usable_size(p) >= 64, "memalign(%#zx, 64): usable size %zu", al,
                  malloc_usable_size(p));
            memset(p, 1, 64);
            free(p);
        }
    }
}

static void valloc_pvalloc(void)
{
    size_t ps = page_size();
    static const size_t sizes[] = {0, 1, 100, 4095, 4096, 4097, 8191, 65536, 100000, (3 << 20) + 5};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t s = sizes[i];
        unsigned char *v = valloc(s);
        if (CHECK(v != NULL, "valloc(%zu) returned NULL", s)) {
            CHECK(is_aligned(v, ps), "valloc(%zu) = %p is not page aligned", s, v);
            CHECK(malloc_usable_size(v) >= s, "malloc_usable_size(valloc(%zu)) = %zu", s,
                  malloc_usable_size(v));
            if (s)
                memset(v, 0x11, s);
        }
        size_t rounded = (s + ps - 1) / ps * ps;
        unsigned char *pv = pvalloc(s);
        if (CHECK(pv != NULL, "pvalloc(%zu) returned NULL", s)) {
            CHECK(is_aligned(pv, ps), "pvalloc(%zu) = %p is not page aligned", s, pv);
            size_t u = malloc_usable_size(pv);
            CHECK(u >= rounded,
                  "malloc_usable_size(pvalloc(%zu)) = %zu < %zu (size rounded to pages)", s, u,
                  rounded);
            if (u >= rounded && rounded)
                memset(pv, 0x22, rounded); /* the whole rounded size is ours */
        }
        if (v && s)
            CHECK(v[0] == 0x11 && v[s - 1] == 0x11, "valloc(%zu) block changed under pvalloc", s);
        free(v);
        free(pv);
    }
}

int main(void)
{
    default_alignment();
    power_of_two_alignments();
    bad_alignments();
    valloc_pvalloc();
    return check_done();
}
