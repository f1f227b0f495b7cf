/* zero_and_errno.c — malloc(0), and what the malloc family does to errno.
 *
 * glibc manual, "Replacing malloc": malloc(0) returns a unique non-NULL pointer that can be
 * freed; free() preserves errno; a call that succeeds does not change errno. The errno checks
 * run both in the main thread and as the very first allocation calls of fresh threads, because
 * lazy per-thread or per-size-class initialisation (reading a file, a failed mmap attempt, a
 * probe syscall) is where an allocator typically leaves a stray errno behind. The C23
 * free_sized/free_aligned_sized, where the allocator exports them, keep errno like free.
 */
#include "check.h"

#define SENTINEL 12345 /* not a real errno value: any change is visible */

static void malloc_zero(void)
{
    enum { N = 64 };
    void *p[N];
    for (int i = 0; i < N; i++) {
        p[i] = malloc(0);
        CHECK(p[i] != NULL, "malloc(0) #%d returned NULL", i);
    }
    for (int i = 0; i < N; i++)
        for (int j = i + 1; j < N; j++)
            if (p[i] && p[j])
                CHECK(p[i] != p[j], "malloc(0) #%d and #%d both returned %p", i, j, p[i]);
    /* Mixing with other tiny requests must not hand out the same address either. */
    void *q = malloc(1);
    CHECK(q != NULL, "malloc(1) returned NULL");
    for (int i = 0; i < N; i++)
        CHECK(q != p[i], "malloc(1) returned %p, still live as malloc(0) #%d", q, i);
    for (int i = 0; i < N; i++)
        free(p[i]);
    free(q);

    /* The other zero-size forms: also unique and freeable (glibc returns a minimum chunk). */
    void *c = calloc(0, 16), *d = calloc(16, 0), *e = calloc(0, 0);
    CHECK(c != NULL && d != NULL && e != NULL,
          "calloc with a zero count/size returned NULL: %p %p %p", c, d, e);
    CHECK(c != d && d != e && c != e, "zero-size callocs not distinct: %p %p %p", c, d, e);
    free(c);
    free(d);
    free(e);
    void *r = reallocarray(NULL, 0, 8);
    CHECK(r != NULL, "reallocarray(NULL, 0, 8) returned NULL");
    free(r);
    void *a = NULL;
    int rc = posix_memalign(&a, 64, 0);
    CHECK(rc == 0, "posix_memalign(64, 0) returned %d", rc);
    if (rc == 0 && a) {
        CHECK(is_aligned(a, 64), "posix_memalign(64, 0) gave %p", a);
        free(a);
    }
    void *m = aligned_alloc(256, 0);
    if (m) {
        CHECK(is_aligned(m, 256), "aligned_alloc(256, 0) gave %p", m);
        free(m);
    }
}

/* free() of every kind of block, and of NULL, keeps errno. */
static void free_keeps_errno(const char *where)
{
    static const size_t sizes[] = {0, 1, 8, 16, 24, 100, 512, 1024, 4000, 8192, 32768, 65536,
                                   100000, 262144, 1 << 20, 3 << 20, 16 << 20};
    size_t n = sizeof sizes / sizeof sizes[0];
    for (size_t i = 0; i < n; i++) {
        void *p = malloc(sizes[i]);
        if (!CHECK(p != NULL, "%s: malloc(%zu) failed", where, sizes[i]))
            continue;
        memset(p, 0x5A, sizes[i]);
        set_errno(SENTINEL);
        free(p);
        CHECK(get_errno() == SENTINEL, "%s: free(malloc(%zu)) changed errno to %d", where, sizes[i],
              get_errno());

        void *q = NULL;
        if (posix_memalign(&q, 4096, sizes[i]) == 0) {
            set_errno(SENTINEL);
            free(q);
            CHECK(get_errno() == SENTINEL,
                  "%s: free(posix_memalign(4096, %zu)) changed errno to %d", where, sizes[i],
                  get_errno());
        }
        void *c = calloc(1, sizes[i]);
        if (c) {
            void *r = realloc(c, sizes[i] * 2 + 1);
            if (r)
                c = r;
            set_errno(SENTINEL);
            free(c);
            CHECK(get_errno() == SENTINEL, "%s: free(realloc(calloc(%zu))) changed errno to %d",
                  where, sizes[i], get_errno());
        }
    }
    set_errno(SENTINEL);
    free(NULL);
    CHECK(get_errno() == SENTINEL, "%s: free(NULL) changed errno to %d", where, get_errno());

    /* Freeing many blocks at once can make the allocator return memory to the OS (munmap,
     * madvise): those syscalls must not leak their errno either. */
    enum { MANY = 512 };
    void *blocks[MANY];
    for (int i = 0; i < MANY; i++)
        blocks[i] = malloc((size_t)(i % 7 == 0 ? 200000 : 48 + i * 16));
    set_errno(SENTINEL);
    for (int i = 0; i < MANY; i++)
        free(blocks[i]);
    CHECK(get_errno() == SENTINEL, "%s: freeing %d mixed blocks changed errno to %d", where, MANY,
          get_errno());
}

/* Successful allocations leave errno alone. */
static void success_keeps_errno(const char *where)
{
    static const size_t sizes[] = {1, 16, 100, 1000, 5000, 40000, 70000, 300000, 2 << 20, 9 << 20};
    size_t n = sizeof sizes / sizeof sizes[0];
    for (size_t i = 0; i < n; i++) {
        size_t s = sizes[i];
        void *p, *q;
        int rc;

        set_errno(SENTINEL);
        p = malloc(s);
        CHECK(p != NULL && get_errno() == SENTINEL, "%s: malloc(%zu) = %p, errno %d", where, s, p,
              get_errno());

        set_errno(SENTINEL);
        q = realloc(p, s * 2);
        CHECK(q != NULL && get_errno() == SENTINEL, "%s: realloc(%zu -> %zu) = %p, errno %d", where,
              s, s * 2, q, get_errno());
        if (q)
            p = q;
        set_errno(SENTINEL);
        q = realloc(p, s / 2 + 1);
        CHECK(q != NULL && get_errno() == SENTINEL, "%s: realloc(shrink to %zu) = %p, errno %d",
              where, s / 2 + 1, q, get_errno());
        if (q)
            p = q;
        free(p);

        set_errno(SENTINEL);
        p = calloc(s, 1);
        CHECK(p != NULL && get_errno() == SENTINEL, "%s: calloc(%zu, 1) = %p, errno %d", where, s,
              p, get_errno());
        free(p);

        set_errno(SENTINEL);
        p = reallocarray(NULL, s, 2);
        CHECK(p != NULL && get_errno() == SENTINEL, "%s: reallocarray(NULL, %zu, 2) = %p, errno %d",
              where, s, p, get_errno());
        free(p);

        p = NULL;
        set_errno(SENTINEL);
        rc = posix_memalign(&p, 64, s);
        CHECK(rc == 0 && p != NULL && get_errno() == SENTINEL,
              "%s: posix_memalign(64, %zu) = %d, errno %d", where, s, rc, get_errno());
        free(p);

        p = NULL;
        set_errno(SENTINEL);
        rc = posix_memalign(&p, 1 << 16, s);
        CHECK(rc == 0 && p != NULL && get_errno() == SENTINEL,
              "%s: posix_memalign(64K, %zu) = %d, errno %d", where, s, rc, get_errno());
        free(p);

        set_errno(SENTINEL);
        p = aligned_alloc(128, s);
        CHECK(p != NULL && get_errno() == SENTINEL, "%s: aligned_alloc(128, %zu) = %p, errno %d",
              where, s, p, get_errno());
        free(p);

        set_errno(SENTINEL);
        p = memalign(4096, s);
        CHECK(p != NULL && get_errno() == SENTINEL, "%s: memalign(4096, %zu) = %p, errno %d", where,
              s, p, get_errno());
        free(p);

        set_errno(SENTINEL);
        p = valloc(s);
        CHECK(p != NULL && get_errno() == SENTINEL, "%s: valloc(%zu) = %p, errno %d", where, s, p,
              get_errno());
        free(p);

        set_errno(SENTINEL);
        p = pvalloc(s);
        CHECK(p != NULL && get_errno() == SENTINEL, "%s: pvalloc(%zu) = %p, errno %d", where, s, p,
              get_errno());
        if (p) {
            set_errno(SENTINEL);
            size_t u = malloc_usable_size(p);
            CHECK(u >= s && get_errno() == SENTINEL,
                  "%s: malloc_usable_size(pvalloc(%zu)) = %zu, errno %d", where, s, u, get_errno());
        }
        free(p);
    }
    set_errno(SENTINEL);
    size_t u = malloc_usable_size(NULL);
    CHECK(u == 0 && get_errno() == SENTINEL, "%s: malloc_usable_size(NULL) = %zu, errno %d", where,
          u, get_errno());
}

/* A fresh thread: its very first allocation call must not disturb errno either. */
struct first_call {
    int which;
    int errno_after;
    int ok;
};

static void *fresh_thread(void *arg)
{
    struct first_call *fc = arg;
    void *p = NULL;
    set_errno(SENTINEL);
    switch (fc->which) {
    case 0: p = malloc(24); break;
    case 1: p = calloc(3, 40); break;
    case 2: p = realloc(NULL, 200); break;
    case 3: if (posix_memalign(&p, 256, 1000) != 0) p = NULL; break;
    case 4: p = malloc(1 << 20); break;
    case 5: free(NULL); p = malloc(1); break; /* free before any malloc in this thread */
    }
    fc->errno_after = get_errno();
    fc->ok = p != NULL;
    free(p);
    success_keeps_errno("fresh thread");
    free_keeps_errno("fresh thread");
    return NULL;
}

static void *free_foreign_thread(void *arg)
{
    /* First allocator call of this thread is a free() of a block another thread allocated. */
    void *p = arg;
    set_errno(SENTINEL);
    free(p);
    CHECK(get_errno() == SENTINEL,
          "free() as a thread's first call (remote block) changed errno to %d", get_errno());
    return NULL;
}

/* C23 free_sized / free_aligned_sized, when the malloc in use provides them (tiermalloc does;
 * glibc 2.36 does not): they free like free() and keep errno. */
static void sized_frees(void)
{
    void (*fs)(void *, size_t) = (void (*)(void *, size_t))dlsym(RTLD_DEFAULT, "free_sized");
    void (*fas)(void *, size_t, size_t) =
        (void (*)(void *, size_t, size_t))dlsym(RTLD_DEFAULT, "free_aligned_sized");
    static const size_t sizes[] = {1, 100, 5000, 70000, 3 << 20};
    for (size_t i = 0; fs && i < sizeof sizes / sizeof sizes[0]; i++) {
        void *p = malloc(sizes[i]);
        if (!CHECK(p != NULL, "malloc(%zu) failed", sizes[i]))
            continue;
        memset(p, 1, sizes[i]);
        set_errno(SENTINEL);
        fs(p, sizes[i]);
        CHECK(get_errno() == SENTINEL, "free_sized(p, %zu) changed errno to %d", sizes[i],
              get_errno());
    }
    if (fs) {
        set_errno(SENTINEL);
        fs(NULL, 0);
        CHECK(get_errno() == SENTINEL, "free_sized(NULL, 0) changed errno to %d", get_errno());
    }
    for (size_t i = 0; fas && i < sizeof sizes / sizeof sizes[0]; i++) {
        void *p = aligned_alloc(4096, sizes[i]);
        if (!CHECK(p != NULL, "aligned_alloc(4096, %zu) failed", sizes[i]))
            continue;
        memset(p, 1, sizes[i]);
        set_errno(SENTINEL);
        fas(p, 4096, sizes[i]);
        CHECK(get_errno() == SENTINEL, "free_aligned_sized(p, 4096, %zu) changed errno to %d",
              sizes[i], get_errno());
    }
    /* The allocator still works after them. */
    void *q = malloc(5000);
    CHECK(q != NULL, "malloc after sized frees failed");
    free(q);
}

int main(void)
{
    sized_frees();
    malloc_zero();
    success_keeps_errno("main");
    free_keeps_errno("main");

    for (int which = 0; which < 6; which++) {
        struct first_call fc = {which, 0, 0};
        pthread_t t;
        if (!CHECK(pthread_create(&t, NULL, fresh_thread, &fc) == 0, "pthread_create failed"))
            continue;
        pthread_join(t, NULL);
        CHECK(fc.ok, "first call #%d in a fresh thread failed", which);
        CHECK(fc.errno_after == SENTINEL, "first call #%d in a fresh thread changed errno to %d",
              which, fc.errno_after);
    }
    for (int i = 0; i < 4; i++) {
        void *p = malloc(i == 3 ? (size_t)1 << 21 : (size_t)32 << (i * 4));
        pthread_t t;
        if (CHECK(pthread_create(&t, NULL, free_foreign_thread, p) == 0, "pthread_create failed"))
            pthread_join(t, NULL);
    }
    return check_done();
}
