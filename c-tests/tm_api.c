/* mode: link-only */
/* tm_api.c — the tm_* API of include/tiermalloc.h on the DRAM tier, with no tiers configured.
 *
 * - tm_malloc/tm_calloc/tm_aligned_alloc(TM_DRAM, ...) return usable DRAM blocks;
 *   tm_usable_size agrees with malloc_usable_size; tm_realloc preserves contents and stays on
 *   DRAM; tm_free and free are interchangeable for every pointer of ours.
 * - tm_kind_of: TM_DRAM for ours (from tm_* and from plain malloc, since the library provides
 *   malloc here), -1 for NULL, stack, static, string literal, and foreign mmap memory.
 * - errors: tm_calloc overflow and huge sizes give NULL + ENOMEM; non-power-of-two alignment
 *   gives NULL + EINVAL; CXL/CMB/PMR (not configured) give NULL + ENOMEM from tm_malloc,
 *   tm_calloc, tm_aligned_alloc, and -1 + errno from tm_get_stats and tm_set_fit.
 * - tm_get_stats(TM_DRAM) returns 0 and its counters move: allocations/frees grow, in_use
 *   grows by at least the bytes we hold (also when another thread allocated them) and falls
 *   when they are freed.
 * - tm_print_stats writes something to stderr.
 * - what include/tiermalloc.h documents beyond DESIGN.md: tm_realloc(NULL, n) allocates on
 *   DRAM, tm_usable_size is 0 for NULL and foreign pointers, tm_free and tm_realloc of a
 *   foreign pointer abort with one line (in a child), not-configured kinds give ENODEV from
 *   tm_get_stats/tm_set_fit, unknown kinds and a NULL stats pointer give EINVAL.
 */
#define _GNU_SOURCE 1 /* before any system header, including those tiermalloc.h pulls in */
#include "tiermalloc.h"

#include <stddef.h>
#include "check.h"

#define SENTINEL 12345

_Static_assert(TM_HEADER_SIZE == 16, "TM_HEADER_SIZE");
_Static_assert(sizeof(tm_block_header) == 16, "tm_block_header is 16 bytes");
/* DESIGN.md's nine counters first, in order; then the profile's reserved, reserve_used,
 * reserve_miss. */
_Static_assert(sizeof(tm_stats) == 14 * sizeof(uint64_t), "tm_stats has 14 u64 counters");
_Static_assert(offsetof(tm_stats, spilled_out) == 8 * sizeof(uint64_t), "the nine come first");
_Static_assert(offsetof(tm_stats, reserve_miss) == 11 * sizeof(uint64_t), "then the reserve's");
_Static_assert(TM_DRAM == 0 && TM_CXL == 1 && TM_CMB == 2 && TM_PMR == 3, "tm_kind values");
_Static_assert(TM_BEST_FIT == 0 && TM_WORST_FIT == 1, "tm_fit values");

static int static_var = 5;
static const char literal[] = "not a heap block";
int main_marker_for_kind_of(void);

static void dram_basics(void)
{
    static const size_t sizes[] = {0, 1, 16, 100, 1000, 4096, 40000, 100000, 1 << 20, 8 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t s = sizes[i];
        set_errno(SENTINEL);
        unsigned char *p = tm_malloc(TM_DRAM, s);
        if (!CHECK(p != NULL, "tm_malloc(TM_DRAM, %zu) returned NULL (errno %d)", s, get_errno()))
            continue;
        CHECK(get_errno() == SENTINEL, "successful tm_malloc(TM_DRAM, %zu) changed errno to %d", s,
              get_errno());
        CHECK(is_aligned(p, 16), "tm_malloc(TM_DRAM, %zu) = %p not 16-byte aligned", s, p);
        CHECK(tm_kind_of(p) == TM_DRAM, "tm_kind_of(tm_malloc(TM_DRAM, %zu)) = %d", s,
              tm_kind_of(p));
        size_t u = tm_usable_size(p);
        CHECK(u >= s, "tm_usable_size(tm_malloc(TM_DRAM, %zu)) = %zu", s, u);
        CHECK(u == malloc_usable_size(p),
              "tm_usable_size %zu != malloc_usable_size %zu for a %zu block", u,
              malloc_usable_size(p), s);
        if (u)
            memset(p, 0x5C, u);
        set_errno(SENTINEL);
        if (i % 2)
            tm_free(p);
        else
            free(p); /* "tm_free: any pointer of ours; same as free()" — and the reverse */
        CHECK(get_errno() == SENTINEL,
              "freeing a tm_malloc(TM_DRAM, %zu) block changed errno to %d", s, get_errno());
    }
    /* malloc's blocks are ours too and can go to tm_free. */
    void *m = malloc(333);
    if (CHECK(m != NULL, "malloc(333) failed")) {
        CHECK(tm_kind_of(m) == TM_DRAM, "tm_kind_of(malloc(333)) = %d (want TM_DRAM)",
              tm_kind_of(m));
        CHECK(tm_usable_size(m) >= 333, "tm_usable_size(malloc(333)) = %zu", tm_usable_size(m));
        tm_free(m);
    }
    void *big = malloc(3 << 20);
    if (CHECK(big != NULL, "malloc(3 MiB) failed")) {
        CHECK(tm_kind_of(big) == TM_DRAM, "tm_kind_of(malloc(3 MiB)) = %d (want TM_DRAM)",
              tm_kind_of(big));
        tm_free(big);
    }
    set_errno(SENTINEL);
    tm_free(NULL);
    CHECK(get_errno() == SENTINEL, "tm_free(NULL) changed errno to %d", get_errno());

    /* tm_malloc(TM_DRAM, 0): unique pointers like malloc(0). */
    void *z1 = tm_malloc(TM_DRAM, 0), *z2 = tm_malloc(TM_DRAM, 0);
    CHECK(z1 != NULL && z2 != NULL && z1 != z2, "tm_malloc(TM_DRAM, 0) twice gave %p and %p", z1,
          z2);
    tm_free(z1);
    tm_free(z2);
}

static void dram_calloc(void)
{
    static const size_t sizes[] = {1, 64, 5000, 100 * 1024, 8 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t s = sizes[i];
        for (int it = 0; it < 6; it++) {
            unsigned char *d = tm_malloc(TM_DRAM, s);
            if (d) {
                memset(d, 0xAA, tm_usable_size(d));
                tm_free(d);
            }
            unsigned char *c = tm_calloc(TM_DRAM, s, 1);
            if (!CHECK(c != NULL, "tm_calloc(TM_DRAM, %zu, 1) failed", s))
                continue;
            __asm__ volatile("" : : "r"(c) : "memory");
            size_t bad = (size_t)-1;
            for (size_t k = 0; k < s; k++)
                if (c[k]) {
                    bad = k;
                    break;
                }
            CHECK(bad == (size_t)-1, "tm_calloc(TM_DRAM, %zu, 1) byte %zu is not zero", s, bad);
            CHECK(tm_kind_of(c) == TM_DRAM, "tm_kind_of(tm_calloc) = %d", tm_kind_of(c));
            tm_free(c);
        }
    }
    static const size_t ovf[][2] = {{SIZE_MAX, 2},
                                    {(size_t)1 << 32, (size_t)1 << 32},
                                    {((size_t)1 << 32) + 1, (size_t)1 << 32}};
    for (size_t i = 0; i < sizeof ovf / sizeof ovf[0]; i++) {
        set_errno(SENTINEL);
        void *p = tm_calloc(TM_DRAM, opaque_size(ovf[i][0]), opaque_size(ovf[i][1]));
        int e = get_errno();
        CHECK(p == NULL && e == ENOMEM,
              "tm_calloc(TM_DRAM, %#zx, %#zx) = %p, errno %d (want NULL, ENOMEM)", ovf[i][0],
              ovf[i][1], p, e);
        if (p)
            tm_free(p);
    }
    static const size_t huge[] = {SIZE_MAX, SIZE_MAX - 15, (size_t)PTRDIFF_MAX + 1,
                                  (size_t)1 << 48};
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
        size_t s = opaque_size(huge[i]);
        set_errno(SENTINEL);
        void *p = tm_malloc(TM_DRAM, s);
        int e = get_errno();
        CHECK(p == NULL && e == ENOMEM,
              "tm_malloc(TM_DRAM, %#zx) = %p, errno %d (want NULL, ENOMEM)", s, p, e);
        if (p)
            tm_free(p);
        set_errno(SENTINEL);
        p = tm_aligned_alloc(TM_DRAM, 4096, s);
        e = get_errno();
        CHECK(p == NULL && e == ENOMEM,
              "tm_aligned_alloc(TM_DRAM, 4096, %#zx) = %p, errno %d (want NULL, ENOMEM)", s, p, e);
        if (p)
            tm_free(p);
    }
}

static void dram_aligned(void)
{
    for (size_t a = 1; a <= ((size_t)4 << 20); a <<= 1) {
        size_t sizes[] = {1, a, a + 1, 5000};
        for (int k = 0; k < 4; k++) {
            size_t s = sizes[k];
            set_errno(SENTINEL);
            unsigned char *p = tm_aligned_alloc(TM_DRAM, a, s);
            if (!CHECK(p != NULL, "tm_aligned_alloc(TM_DRAM, %zu, %zu) failed, errno %d", a, s,
                       get_errno()))
                continue;
            CHECK(get_errno() == SENTINEL, "successful tm_aligned_alloc changed errno to %d",
                  get_errno());
            CHECK(is_aligned(p, a), "tm_aligned_alloc(TM_DRAM, %zu, %zu) = %p misaligned", a, s, p);
            CHECK(tm_usable_size(p) >= s, "tm_aligned_alloc(TM_DRAM, %zu, %zu): usable %zu", a, s,
                  tm_usable_size(p));
            CHECK(tm_kind_of(p) == TM_DRAM, "tm_kind_of(tm_aligned_alloc(%zu, %zu)) = %d", a, s,
                  tm_kind_of(p));
            memset(p, 0x3D, s);
            tm_free(p);
        }
    }
    static const size_t bad[] = {3, 12, 24, 100, 4097, SIZE_MAX};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        set_errno(SENTINEL);
        void *p = tm_aligned_alloc(TM_DRAM, opaque_size(bad[i]), 64);
        int e = get_errno();
        CHECK(p == NULL && e == EINVAL,
              "tm_aligned_alloc(TM_DRAM, %#zx, 64) = %p, errno %d (want NULL, EINVAL)", bad[i], p,
              e);
        if (p)
            tm_free(p);
    }
}

static void dram_realloc(void)
{
    size_t cur = 10;
    unsigned char *p = tm_malloc(TM_DRAM, cur);
    if (!CHECK(p != NULL, "tm_malloc failed"))
        return;
    for (size_t k = 0; k < cur; k++)
        p[k] = (unsigned char)(k * 13);
    static const size_t steps[] = {100, 5000, 70000, 1 << 20, 9 << 20, 300000, 2000, 24, 3};
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        size_t next = steps[i];
        unsigned char *q = tm_realloc(p, next);
        if (!CHECK(q != NULL, "tm_realloc(%zu -> %zu) failed", cur, next))
            break;
        size_t keep = cur < next ? cur : next;
        int ok = 1;
        for (size_t k = 0; k < keep; k++)
            ok &= q[k] == (unsigned char)(k * 13);
        CHECK(ok, "tm_realloc(%zu -> %zu) lost contents", cur, next);
        CHECK(tm_kind_of(q) == TM_DRAM, "tm_realloc(%zu -> %zu) left DRAM: kind %d", cur, next,
              tm_kind_of(q));
        CHECK(tm_usable_size(q) >= next, "tm_realloc(%zu -> %zu): usable %zu", cur, next,
              tm_usable_size(q));
        for (size_t k = keep; k < next; k++)
            q[k] = (unsigned char)(k * 13);
        p = q;
        cur = next;
    }
    /* realloc and tm_realloc are interchangeable on our blocks. */
    unsigned char *q = realloc(p, 50000);
    if (CHECK(q != NULL, "realloc of a tm_malloc block failed")) {
        int ok = 1;
        for (size_t k = 0; k < cur; k++)
            ok &= q[k] == (unsigned char)(k * 13);
        CHECK(ok, "realloc of a tm_realloc'ed block lost contents");
        p = q;
    }
    /* tm_realloc(NULL, n) allocates on DRAM. */
    void *fresh = tm_realloc(NULL, 1000);
    if (CHECK(fresh != NULL, "tm_realloc(NULL, 1000) returned NULL")) {
        CHECK(tm_kind_of(fresh) == TM_DRAM, "tm_kind_of(tm_realloc(NULL, 1000)) = %d",
              tm_kind_of(fresh));
        CHECK(tm_usable_size(fresh) >= 1000, "tm_usable_size(tm_realloc(NULL, 1000)) = %zu",
              tm_usable_size(fresh));
        memset(fresh, 1, 1000);
        tm_free(fresh);
    }
    /* A huge tm_realloc fails and keeps the block. */
    set_errno(SENTINEL);
    q = tm_realloc(p, opaque_size(SIZE_MAX - 100));
    int e = get_errno();
    CHECK(q == NULL && e == ENOMEM,
          "tm_realloc(p, SIZE_MAX - 100) = %p, errno %d (want NULL, ENOMEM)", q, e);
    if (q == NULL) {
        int ok = 1;
        for (size_t k = 0; k < cur; k++)
            ok &= p[k] == (unsigned char)(k * 13);
        CHECK(ok, "failed tm_realloc damaged the block");
        tm_free(p);
    } else {
        tm_free(q);
    }
}

static void tm_free_of(void *p)
{
    tm_free(p);
}

static void tm_realloc_of(void *p)
{
    tm_realloc(p, 100);
}

static void kind_of_foreign(void)
{
    int stack_var = 3;
    CHECK(tm_kind_of(NULL) == -1, "tm_kind_of(NULL) = %d", tm_kind_of(NULL));
    CHECK(tm_kind_of(&stack_var) == -1, "tm_kind_of(&stack variable) = %d", tm_kind_of(&stack_var));
    CHECK(tm_kind_of(&static_var) == -1, "tm_kind_of(&static variable) = %d",
          tm_kind_of(&static_var));
    CHECK(tm_kind_of(literal) == -1, "tm_kind_of(string literal) = %d", tm_kind_of(literal));
    CHECK(tm_kind_of((void *)main_marker_for_kind_of) == -1, "tm_kind_of(function) = %d",
          tm_kind_of((void *)main_marker_for_kind_of));
    CHECK(tm_kind_of((void *)(uintptr_t)0x1000) == -1, "tm_kind_of(0x1000) = %d",
          tm_kind_of((void *)0x1000));
    CHECK(tm_kind_of((void *)(uintptr_t)0x7ffffffff000ULL) == -1,
          "tm_kind_of(top of user space) = %d", tm_kind_of((void *)0x7ffffffff000ULL));
    CHECK(tm_kind_of((void *)UINTPTR_MAX) == -1, "tm_kind_of(UINTPTR_MAX) = %d",
          tm_kind_of((void *)UINTPTR_MAX));
    CHECK(tm_usable_size(NULL) == 0, "tm_usable_size(NULL) = %zu", tm_usable_size(NULL));
    CHECK(tm_usable_size(&stack_var) == 0, "tm_usable_size(&stack variable) = %zu",
          tm_usable_size(&stack_var));
    CHECK(tm_usable_size(&static_var) == 0, "tm_usable_size(&static variable) = %zu",
          tm_usable_size(&static_var));
    /* Memory mapped by the program itself, not through the allocator. */
    size_t len = 4 << 20;
    unsigned char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (CHECK(m != MAP_FAILED, "mmap failed")) {
        memset(m, 0x6D, 8192);
        CHECK(tm_kind_of(m) == -1, "tm_kind_of(own mmap) = %d", tm_kind_of(m));
        CHECK(tm_kind_of(m + len / 2) == -1, "tm_kind_of(own mmap + 2 MiB) = %d",
              tm_kind_of(m + len / 2));
        CHECK(tm_usable_size(m + 16) == 0, "tm_usable_size(own mmap + 16) = %zu",
              tm_usable_size(m + 16));
        /* tm_free and tm_realloc of memory that is not ours: reported, then abort (heap_misuse.c
         * covers the cases one by one). */
        EXPECT_ABORT(tm_free_of, m + 16, "not allocated by tiermalloc", m + 16);
        EXPECT_ABORT(tm_realloc_of, m + 16, "not allocated by tiermalloc", m + 16);
        CHECK(m[0] == 0x6D && m[16] == 0x6D && m[8191] == 0x6D,
              "the child's tm_free(foreign) reached our memory");
        munmap(m, len);
    }
    EXPECT_ABORT(tm_free_of, &stack_var, "not allocated by tiermalloc", &stack_var);
}

static void unconfigured_tiers(void)
{
    CHECK(getenv("TIERMALLOC_TIERS") == NULL,
          "this test expects TIERMALLOC_TIERS to be unset, it is \"%s\"",
          getenv("TIERMALLOC_TIERS"));
    static const tm_kind kinds[] = {TM_CXL, TM_CMB, TM_PMR};
    static const char *const names[] = {"TM_CXL", "TM_CMB", "TM_PMR"};
    for (int i = 0; i < 3; i++) {
        tm_kind k = kinds[i];
        set_errno(SENTINEL);
        void *p = tm_malloc(k, 64);
        int e = get_errno();
        CHECK(p == NULL && e == ENOMEM, "tm_malloc(%s, 64) = %p, errno %d (want NULL, ENOMEM)",
              names[i], p, e);
        if (p)
            tm_free(p);
        set_errno(SENTINEL);
        p = tm_malloc(k, 1 << 20);
        e = get_errno();
        CHECK(p == NULL && e == ENOMEM, "tm_malloc(%s, 1 MiB) = %p, errno %d (want NULL, ENOMEM)",
              names[i], p, e);
        if (p)
            tm_free(p);
        set_errno(SENTINEL);
        p = tm_calloc(k, 4, 16);
        e = get_errno();
        CHECK(p == NULL && e == ENOMEM, "tm_calloc(%s, 4, 16) = %p, errno %d (want NULL, ENOMEM)",
              names[i], p, e);
        if (p)
            tm_free(p);
        set_errno(SENTINEL);
        p = tm_aligned_alloc(k, 64, 64);
        e = get_errno();
        CHECK(p == NULL && e == ENOMEM,
              "tm_aligned_alloc(%s, 64, 64) = %p, errno %d (want NULL, ENOMEM)", names[i], p, e);
        if (p)
            tm_free(p);

        tm_stats st;
        memset(&st, 0x5A, sizeof st);
        set_errno(0);
        int rc = tm_get_stats(k, &st);
        e = get_errno();
        CHECK(rc == -1 && e == ENODEV, "tm_get_stats(%s) = %d, errno %d (want -1, ENODEV=%d)",
              names[i], rc, e, ENODEV);
        set_errno(0);
        rc = tm_set_fit(k, TM_BEST_FIT);
        e = get_errno();
        CHECK(rc == -1 && e == ENODEV,
              "tm_set_fit(%s, TM_BEST_FIT) = %d, errno %d (want -1, ENODEV)", names[i], rc, e);
        set_errno(0);
        rc = tm_set_fit(k, TM_WORST_FIT);
        e = get_errno();
        CHECK(rc == -1 && e == ENODEV,
              "tm_set_fit(%s, TM_WORST_FIT) = %d, errno %d (want -1, ENODEV)", names[i], rc, e);
    }
    /* A kind that does not exist at all: C callers can pass any int. */
    tm_kind bogus = (tm_kind)opaque_size(9);
    set_errno(0);
    void *p = tm_malloc(bogus, 64);
    int e = get_errno();
    CHECK(p == NULL && e == EINVAL, "tm_malloc((tm_kind)9, 64) = %p, errno %d (want NULL, EINVAL)",
          p, e);
    tm_stats st;
    set_errno(0);
    int rc = tm_get_stats(bogus, &st);
    e = get_errno();
    CHECK(rc == -1 && e == EINVAL, "tm_get_stats((tm_kind)9) = %d, errno %d (want -1, EINVAL)", rc,
          e);
    set_errno(0);
    rc = tm_set_fit(bogus, TM_BEST_FIT);
    e = get_errno();
    CHECK(rc == -1 && e == EINVAL, "tm_set_fit((tm_kind)9) = %d, errno %d (want -1, EINVAL)", rc,
          e);
    set_errno(0);
    rc = tm_get_stats(TM_DRAM, NULL);
    e = get_errno();
    CHECK(rc == -1 && e == EINVAL, "tm_get_stats(TM_DRAM, NULL) = %d, errno %d (want -1, EINVAL)",
          rc, e);
}

static int dram_stats(tm_stats *st)
{
    memset(st, 0, sizeof *st);
    set_errno(SENTINEL);
    int rc = tm_get_stats(TM_DRAM, st);
    CHECK(rc == 0, "tm_get_stats(TM_DRAM) = %d, errno %d", rc, get_errno());
    CHECK(rc != 0 || get_errno() == SENTINEL, "successful tm_get_stats changed errno to %d",
          get_errno());
    return rc == 0;
}

struct held {
    void *blocks[64];
    size_t bytes;
};

static void *thread_alloc(void *arg)
{
    struct held *h = arg;
    h->bytes = 0;
    for (int i = 0; i < 64; i++) {
        h->blocks[i] = malloc(20000);
        if (h->blocks[i]) {
            memset(h->blocks[i], 1, 20000);
            h->bytes += 20000;
        }
    }
    return NULL;
}

static void stats_move(void)
{
    tm_stats a, b, c, d;
    if (!dram_stats(&a))
        return;
    enum { N = 100 };
    void *blk[N];
    size_t live = 0;
    for (int i = 0; i < N; i++) {
        size_t s = i % 10 == 9 ? (size_t)300000 : (size_t)(1000 + i * 100);
        blk[i] = tm_malloc(TM_DRAM, s);
        if (blk[i]) {
            memset(blk[i], 2, s);
            live += s;
        }
    }
    void *big = malloc(8 << 20);
    if (big) {
        memset(big, 3, 8 << 20);
        live += 8 << 20;
    }
    if (!dram_stats(&b))
        return;
    CHECK(b.allocations >= a.allocations + N,
          "allocations went from %" PRIu64 " to %" PRIu64 " across %d allocations", a.allocations,
          b.allocations, N + 1);
    CHECK(b.in_use >= a.in_use + live,
          "in_use went from %" PRIu64 " to %" PRIu64 " while holding %zu more bytes", a.in_use,
          b.in_use, live);

    for (int i = 0; i < N; i++)
        tm_free(blk[i]);
    free(big);
    if (!dram_stats(&c))
        return;
    CHECK(c.frees >= b.frees + N, "frees went from %" PRIu64 " to %" PRIu64 " across %d frees",
          b.frees, c.frees, N + 1);
    CHECK(c.in_use + live / 2 <= b.in_use,
          "in_use went from %" PRIu64 " to %" PRIu64 " after freeing %zu bytes", b.in_use, c.in_use,
          live);
    CHECK(c.allocations >= b.allocations, "allocations went down: %" PRIu64 " -> %" PRIu64,
          b.allocations, c.allocations);

    /* Blocks allocated by another thread (which has exited) count as in use. */
    struct held h;
    pthread_t t;
    if (!CHECK(pthread_create(&t, NULL, thread_alloc, &h) == 0, "pthread_create failed"))
        return;
    pthread_join(t, NULL);
    if (!dram_stats(&d))
        return;
    CHECK(d.in_use >= c.in_use + h.bytes, "in_use went from %" PRIu64 " to %" PRIu64
          " while an exited thread's %zu bytes are live", c.in_use, d.in_use, h.bytes);
    CHECK(d.allocations >= c.allocations + 64, "allocations went from %" PRIu64 " to %" PRIu64
          " across another thread's 64 allocations", c.allocations, d.allocations);
    for (int i = 0; i < 64; i++)
        free(h.blocks[i]);
    tm_stats e;
    if (dram_stats(&e))
        CHECK(e.in_use + h.bytes / 2 <= d.in_use, "in_use went from %" PRIu64 " to %" PRIu64
              " after freeing the exited thread's %zu bytes", d.in_use, e.in_use, h.bytes);
}

static void print_stats_writes_stderr(void)
{
    char path[] = "/tmp/tm_api_stderr_XXXXXX";
    int fd = mkstemp(path);
    if (!CHECK(fd >= 0, "mkstemp failed"))
        return;
    unlink(path);
    fflush(stderr);
    int saved = dup(2);
    dup2(fd, 2);
    tm_print_stats();
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    off_t n = lseek(fd, 0, SEEK_END);
    close(fd);
    CHECK(n > 0, "tm_print_stats() wrote %lld bytes to stderr", (long long)n);
}

int main_marker_for_kind_of(void) { return static_var; }

int main(void)
{
    dram_basics();
    dram_calloc();
    dram_aligned();
    dram_realloc();
    kind_of_foreign();
    unconfigured_tiers();
    stats_move();
    print_stats_writes_stderr();
    return check_done();
}
