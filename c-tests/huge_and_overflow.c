/* huge_and_overflow.c — requests no machine can satisfy, and size arithmetic that overflows.
 *
 * Every entry point must answer NULL + errno ENOMEM (posix_memalign: return ENOMEM), never
 * crash, never return a small block because `size + header` or `round_up(size, align)`
 * wrapped around. realloc/reallocarray that fail must keep the old block, contents and all.
 * Sizes close to SIZE_MAX are the ones that wrap in careless rounding code; sizes just above
 * PTRDIFF_MAX are the ones glibc rejects up front; sizes like 2^47 would need the whole user
 * address space.
 */
#include "check.h"

#define SENTINEL 12345

static const size_t huge[] = {
    SIZE_MAX,
    SIZE_MAX - 1,
    SIZE_MAX - 7,
    SIZE_MAX - 15,
    SIZE_MAX - 16,
    SIZE_MAX - 31,
    SIZE_MAX - 4095,
    SIZE_MAX - 4096,
    SIZE_MAX - (1u << 21),
    SIZE_MAX / 2,
    SIZE_MAX / 2 + 1, /* == PTRDIFF_MAX + 1 */
    (size_t)PTRDIFF_MAX,
    (size_t)PTRDIFF_MAX - 4095,
    (size_t)1 << 62,
    (size_t)1 << 56,
    (size_t)1 << 48, /* 256 TiB: more than the x86-64 user address space */
    ((size_t)1 << 47) + 4096,
};
#define NHUGE (sizeof huge / sizeof huge[0])

/* Records a failure unless the call failed with NULL and errno == ENOMEM. */
#define EXPECT_ENOMEM(call, fmt, ...)                                                           \
    do {                                                                                        \
        set_errno(SENTINEL);                                                                    \
        void *r_ = (call);                                                                      \
        int e_ = get_errno();                                                                   \
        CHECK(r_ == NULL && e_ == ENOMEM, fmt " returned %p with errno %d (want NULL, ENOMEM=%d)", \
              __VA_ARGS__, r_, e_, ENOMEM);                                                     \
        if (r_)                                                                                 \
            free(r_);                                                                           \
    } while (0)

static void plain_huge(void)
{
    for (size_t i = 0; i < NHUGE; i++) {
        size_t s = opaque_size(huge[i]);
        EXPECT_ENOMEM(malloc(s), "malloc(%#zx)", s);
        EXPECT_ENOMEM(calloc(1, s), "calloc(1, %#zx)", s);
        EXPECT_ENOMEM(calloc(s, 1), "calloc(%#zx, 1)", s);
        EXPECT_ENOMEM(realloc(NULL, s), "realloc(NULL, %#zx)", s);
        EXPECT_ENOMEM(reallocarray(NULL, s, 1), "reallocarray(NULL, %#zx, 1)", s);
        EXPECT_ENOMEM(valloc(s), "valloc(%#zx)", s);
        EXPECT_ENOMEM(pvalloc(s), "pvalloc(%#zx)", s);
        static const size_t aligns[] = {8, 16, 64, 4096, 1 << 16, 1 << 21};
        for (size_t a = 0; a < sizeof aligns / sizeof aligns[0]; a++) {
            size_t al = opaque_size(aligns[a]);
            EXPECT_ENOMEM(aligned_alloc(al, s), "aligned_alloc(%zu, %#zx)", al, s);
            EXPECT_ENOMEM(memalign(al, s), "memalign(%zu, %#zx)", al, s);
            void *p = (void *)0x1; /* POSIX: on failure *memptr is left alone or set to NULL */
            int rc = posix_memalign(&p, al, s);
            CHECK(rc == ENOMEM, "posix_memalign(%zu, %#zx) returned %d (want ENOMEM=%d)", al, s, rc,
                  ENOMEM);
            CHECK(p == (void *)0x1 || p == NULL, "failed posix_memalign(%zu, %#zx) stored %p", al,
                  s, p);
            if (rc == 0 && p && p != (void *)0x1)
                free(p);
        }
    }
    /* Alignment so large that no address in user space satisfies it (except 0). */
    static const size_t big_align[] = {(size_t)1 << 47, (size_t)1 << 52, (size_t)1 << 62,
                                       SIZE_MAX / 2 + 1};
    for (size_t i = 0; i < sizeof big_align / sizeof big_align[0]; i++) {
        size_t al = opaque_size(big_align[i]);
        void *p = (void *)0x1;
        int rc = posix_memalign(&p, al, 16);
        CHECK(rc == ENOMEM || rc == EINVAL,
              "posix_memalign(%#zx, 16) returned %d (want ENOMEM or EINVAL)", al, rc);
        if (rc == 0)
            free(p);
        set_errno(SENTINEL);
        void *q = aligned_alloc(al, 16);
        int e = get_errno();
        CHECK(q == NULL && (e == ENOMEM || e == EINVAL),
              "aligned_alloc(%#zx, 16) returned %p, errno %d", al, q, e);
        if (q)
            free(q);
        set_errno(SENTINEL);
        q = memalign(al, 16);
        e = get_errno();
        CHECK(q == NULL && (e == ENOMEM || e == EINVAL), "memalign(%#zx, 16) returned %p, errno %d",
              al, q, e);
        if (q)
            free(q);
    }
}

static void overflow(void)
{
    /* count * size overflows size_t; the truncated product would be small. */
    static const size_t pairs[][2] = {
        {SIZE_MAX, 2},
        {2, SIZE_MAX},
        {SIZE_MAX / 2 + 1, 2},          /* product wraps to exactly 0 */
        {(size_t)1 << 32, (size_t)1 << 32}, /* wraps to 0 */
        {((size_t)1 << 32) + 1, (size_t)1 << 32}, /* wraps to 2^32: a plausible size */
        {(SIZE_MAX / 16) + 2, 16},      /* wraps to 16 */
        {65537, (SIZE_MAX / 65536)},    /* wraps to a small number */
        {SIZE_MAX, SIZE_MAX},           /* wraps to 1 */
        {3, SIZE_MAX / 3 + 1},
    };
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        size_t n = opaque_size(pairs[i][0]), s = opaque_size(pairs[i][1]);
        EXPECT_ENOMEM(calloc(n, s), "calloc(%#zx, %#zx)", n, s);
        EXPECT_ENOMEM(reallocarray(NULL, n, s), "reallocarray(NULL, %#zx, %#zx)", n, s);

        char *old = malloc(100);
        if (!CHECK(old != NULL, "malloc(100) failed"))
            continue;
        memset(old, 'k', 100);
        set_errno(SENTINEL);
        void *r = reallocarray(old, n, s);
        int e = get_errno();
        CHECK(r == NULL && e == ENOMEM, "reallocarray(p, %#zx, %#zx) returned %p, errno %d", n, s,
              r, e);
        if (r == NULL) {
            int intact = 1;
            for (int k = 0; k < 100; k++)
                intact &= old[k] == 'k';
            CHECK(intact, "failed reallocarray(p, %#zx, %#zx) damaged the old block", n, s);
            CHECK(malloc_usable_size(old) >= 100,
                  "old block's usable size shrank after failed reallocarray");
            free(old);
        } else {
            free(r);
        }
    }
}

/* A failed realloc keeps the old block valid, intact and freeable, for blocks of every size
 * class, then the allocator keeps working. */
static void failed_realloc_keeps_block(void)
{
    static const size_t olds[] = {1, 16, 200, 4096, 70000, 1 << 20, 5 << 20};
    for (size_t i = 0; i < sizeof olds / sizeof olds[0]; i++) {
        size_t os = olds[i];
        unsigned char *p = malloc(os);
        if (!CHECK(p != NULL, "malloc(%zu) failed", os))
            continue;
        pattern_fill(p, os, 77 + i);
        size_t usable_before = malloc_usable_size(p);
        for (size_t h = 0; h < NHUGE; h++) {
            size_t s = opaque_size(huge[h]);
            set_errno(SENTINEL);
            void *r = realloc(p, s);
            int e = get_errno();
            CHECK(r == NULL && e == ENOMEM, "realloc(block of %zu, %#zx) returned %p, errno %d", os,
                  s, r, e);
            if (r != NULL) {
                /* Cannot continue with this block: its identity changed. */
                p = NULL;
                free(r);
                break;
            }
            if (!CHECK(pattern_ok(p, os, 77 + i),
                       "failed realloc(block of %zu, %#zx) damaged its contents", os, s))
                break;
        }
        if (p) {
            CHECK(malloc_usable_size(p) == usable_before,
                  "usable size of a %zu block changed from %zu to %zu "
                  "after failed reallocs",
                  os, usable_before, malloc_usable_size(p));
            /* The old block still works as a block: it can grow for real and then be freed. */
            unsigned char *g = realloc(p, os * 2 + 10);
            if (CHECK(g != NULL, "realloc(%zu -> %zu) after failed reallocs returned NULL", os,
                      os * 2 + 10)) {
                CHECK(pattern_ok(g, os, 77 + i),
                      "contents lost growing a block after failed reallocs");
                free(g);
            } else {
                free(p);
            }
        }
    }
}

/* After all those failures the allocator still serves ordinary requests. */
static void still_works(void)
{
    for (size_t s = 1; s <= (4u << 20); s = s * 3 + 1) {
        set_errno(SENTINEL);
        char *p = malloc(s);
        if (!CHECK(p != NULL, "malloc(%zu) failed after the huge requests", s))
            continue;
        CHECK(get_errno() == SENTINEL, "malloc(%zu) after failures changed errno to %d", s,
              get_errno());
        memset(p, 1, s);
        free(p);
    }
}

/* The same in a second thread: failure paths of a thread heap that was never used before. */
static void *thread_body(void *arg)
{
    (void)arg;
    plain_huge();
    overflow();
    still_works();
    return NULL;
}

int main(void)
{
    plain_huge();
    overflow();
    failed_realloc_keeps_block();
    still_works();
    pthread_t t;
    if (CHECK(pthread_create(&t, NULL, thread_body, NULL) == 0, "pthread_create failed"))
        pthread_join(t, NULL);
    return check_done();
}
