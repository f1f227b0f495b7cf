/* mode: plain */
/* dlopen_lib.c — the library loaded with dlopen() into a program that is neither linked
 * against it nor runs it under LD_PRELOAD.
 *
 * The program's own malloc stays glibc's; the library's malloc family and tm_* API are reached
 * through dlsym and must work side by side with it:
 *  - dlopen(RTLD_NOW) succeeds. (It fails with "cannot allocate memory in static TLS block" if
 *    the library's initial-exec TLS is larger than glibc's surplus for dlopen'ed libraries.)
 *  - the library's malloc/calloc/realloc/free/malloc_usable_size/posix_memalign, called
 *    through dlsym, work (calloc zeroed, realloc keeps contents), including for large sizes;
 *    its first calls happen here, long after process start, on an uninitialised allocator,
 *    from 4 threads at once (released together by a barrier): lazy initialisation must be
 *    race-free.
 *  - tm_malloc/tm_free/tm_usable_size/tm_kind_of/tm_get_stats work; tm_kind_of is TM_DRAM for
 *    the library's blocks and -1 for glibc's heap blocks, the stack and static data.
 *  - a thread uses the library and exits (its thread-exit cleanup runs inside a dlopen'ed
 *    library); blocks it left are verified and freed by another thread.
 *  - glibc's blocks passed to the library's realloc and free go to glibc's (not reported as
 *    foreign pointers, as they would be if the library were the process's malloc);
 *  - a fork()ed child can use the library's malloc.
 * The library is argv[1], else $TIERMALLOC_LIB, else "libtiermalloc.so" (dlopen's search).
 */
#define _GNU_SOURCE 1 /* before any system header, including those tiermalloc.h pulls in */
#include "tiermalloc.h"

#include "check.h"

static void *(*lib_malloc)(size_t);
static void (*lib_free)(void *);
static void *(*lib_calloc)(size_t, size_t);
static void *(*lib_realloc)(void *, size_t);
static size_t (*lib_usable)(void *);
static int (*lib_posix_memalign)(void **, size_t, size_t);
static void *(*lib_tm_malloc)(tm_kind, size_t);
static void (*lib_tm_free)(void *);
static size_t (*lib_tm_usable_size)(const void *);
static int (*lib_tm_kind_of)(const void *);
static int (*lib_tm_get_stats)(tm_kind, tm_stats *);

static int static_thing = 1;

static void *sym(void *h, const char *name)
{
    dlerror();
    void *s = dlsym(h, name);
    CHECK(s != NULL, "dlsym(%s) failed: %s", name, dlerror());
    return s;
}

static void use_library(const char *where)
{
    static const size_t sizes[] = {0, 1, 24, 200, 4000, 70000, 300000, 5 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t s = sizes[i];
        unsigned char *p = lib_malloc(s);
        if (!CHECK(p != NULL, "%s: library malloc(%zu) failed", where, s))
            continue;
        CHECK(is_aligned(p, 16), "%s: library malloc(%zu) = %p not 16-byte aligned", where, s,
              (void *)p);
        CHECK(lib_usable(p) >= s, "%s: library malloc_usable_size = %zu for %zu", where,
              lib_usable(p), s);
        CHECK(lib_tm_kind_of(p) == TM_DRAM, "%s: tm_kind_of(library malloc(%zu)) = %d", where, s,
              lib_tm_kind_of(p));
        pattern_fill(p, s, s + 1);
        unsigned char *q = lib_realloc(p, s * 3 + 16);
        if (CHECK(q != NULL, "%s: library realloc(%zu -> %zu) failed", where, s, s * 3 + 16)) {
            CHECK(pattern_ok(q, s, s + 1), "%s: library realloc lost contents", where);
            p = q;
        }
        lib_free(p);

        unsigned char *c = lib_calloc(1, s + 1);
        if (CHECK(c != NULL, "%s: library calloc(1, %zu) failed", where, s + 1)) {
            int zero = 1;
            for (size_t k = 0; k <= s; k++)
                zero &= c[k] == 0;
            CHECK(zero, "%s: library calloc(1, %zu) not zeroed", where, s + 1);
            memset(c, 0xEE, s + 1);
            lib_free(c);
        }

        unsigned char *t = lib_tm_malloc(TM_DRAM, s);
        if (CHECK(t != NULL, "%s: tm_malloc(TM_DRAM, %zu) failed", where, s)) {
            CHECK(lib_tm_usable_size(t) >= s, "%s: tm_usable_size = %zu for %zu", where,
                  lib_tm_usable_size(t), s);
            CHECK(lib_tm_kind_of(t) == TM_DRAM, "%s: tm_kind_of(tm_malloc) = %d", where,
                  lib_tm_kind_of(t));
            memset(t, 0x44, s);
            lib_tm_free(t);
        }
    }
    void *a = NULL;
    int rc = lib_posix_memalign(&a, 4096, 10000);
    if (CHECK(rc == 0 && a != NULL, "%s: library posix_memalign(4096, 10000) = %d", where, rc)) {
        CHECK(is_aligned(a, 4096), "%s: library posix_memalign gave %p", where, a);
        memset(a, 1, 10000);
        lib_free(a);
    }
}

static pthread_barrier_t first_use;

static void *first_calls(void *arg)
{
    int id = (int)(uintptr_t)arg;
    pthread_barrier_wait(&first_use);
    void *blocks[200];
    for (int i = 0; i < 200; i++) {
        size_t s = (size_t)(i * 41 + id + 1) * (i % 50 == 49 ? 997 : 1);
        switch (i % 4) {
        case 0: blocks[i] = lib_malloc(s); break;
        case 1: blocks[i] = lib_calloc(s, 1); break;
        case 2: blocks[i] = lib_tm_malloc(TM_DRAM, s); break;
        default: if (lib_posix_memalign(&blocks[i], 64, s) != 0) blocks[i] = NULL; break;
        }
        if (CHECK(blocks[i] != NULL, "first-use thread %d: allocation %d of %zu bytes failed", id,
                  i, s))
            pattern_fill(blocks[i], s, (uint64_t)id * 1000 + (uint64_t)i);
    }
    for (int i = 0; i < 200; i++) {
        size_t s = (size_t)(i * 41 + id + 1) * (i % 50 == 49 ? 997 : 1);
        if (!blocks[i])
            continue;
        CHECK(pattern_ok(blocks[i], s, (uint64_t)id * 1000 + (uint64_t)i),
              "first-use thread %d: block %d (%zu bytes) overlaps another thread's", id, i, s);
        lib_free(blocks[i]);
    }
    return NULL;
}

struct left_behind {
    unsigned char *blocks[50];
    size_t sizes[50];
};

static void *thread_using_library(void *arg)
{
    struct left_behind *lb = arg;
    use_library("thread");
    for (int i = 0; i < 50; i++) {
        lb->sizes[i] = (size_t)(i * 97 + 1) * (i % 10 == 9 ? 1000 : 1);
        lb->blocks[i] = lib_malloc(lb->sizes[i]);
        if (lb->blocks[i])
            pattern_fill(lb->blocks[i], lb->sizes[i], 500 + (uint64_t)i);
    }
    return NULL;
}

static void *thread_freeing(void *arg)
{
    struct left_behind *lb = arg;
    for (int i = 0; i < 50; i++) {
        if (!CHECK(lb->blocks[i] != NULL, "library malloc(%zu) in a thread failed", lb->sizes[i]))
            continue;
        CHECK(pattern_ok(lb->blocks[i], lb->sizes[i], 500 + (uint64_t)i),
              "block %d of an exited thread corrupted", i);
        lib_free(lb->blocks[i]);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    watchdog(50, "dlopen_lib");
    const char *path = argc > 1 ? argv[1] : getenv("TIERMALLOC_LIB");
    if (!path)
        path = "libtiermalloc.so";

    /* The program's own allocator is in use before the library arrives. */
    void *before = malloc(1000);
    memset(before, 1, 1000);

    void *h = dlopen(path, RTLD_NOW);
    if (!CHECK(h != NULL, "dlopen(%s, RTLD_NOW) failed: %s", path, dlerror()))
        return check_done();

    lib_malloc = (void *(*)(size_t))sym(h, "malloc");
    lib_free = (void (*)(void *))sym(h, "free");
    lib_calloc = (void *(*)(size_t, size_t))sym(h, "calloc");
    lib_realloc = (void *(*)(void *, size_t))sym(h, "realloc");
    lib_usable = (size_t(*)(void *))sym(h, "malloc_usable_size");
    lib_posix_memalign = (int (*)(void **, size_t, size_t))sym(h, "posix_memalign");
    lib_tm_malloc = (void *(*)(tm_kind, size_t))sym(h, "tm_malloc");
    lib_tm_free = (void (*)(void *))sym(h, "tm_free");
    lib_tm_usable_size = (size_t(*)(const void *))sym(h, "tm_usable_size");
    lib_tm_kind_of = (int (*)(const void *))sym(h, "tm_kind_of");
    lib_tm_get_stats = (int (*)(tm_kind, tm_stats *))sym(h, "tm_get_stats");
    if (!lib_malloc || !lib_free || !lib_calloc || !lib_realloc || !lib_usable ||
        !lib_posix_memalign || !lib_tm_malloc || !lib_tm_free || !lib_tm_usable_size ||
        !lib_tm_kind_of || !lib_tm_get_stats)
        return check_done();

    /* This test is about the library NOT being the process's malloc. */
    CHECK((void *)lib_malloc != dlsym(RTLD_DEFAULT, "malloc"),
          "the library's malloc is the process's malloc: run this test without LD_PRELOAD or "
          "linking");

    /* The library's very first calls: 4 threads at once. */
    pthread_barrier_init(&first_use, NULL, 4);
    pthread_t ft[4];
    int started = 0;
    for (int i = 0; i < 4; i++)
        if (CHECK(pthread_create(&ft[i], NULL, first_calls, (void *)(uintptr_t)i) == 0,
                  "pthread_create failed"))
            started++;
    if (started == 4)
        for (int i = 0; i < 4; i++)
            pthread_join(ft[i], NULL);
    else
        return check_done(); /* the barrier would never open */

    use_library("main");

    /* The program's (glibc's) blocks are not the library's. */
    void *g = malloc(64);
    void *gbig = malloc(4 << 20);
    int stack_thing = 0;
    CHECK(lib_tm_kind_of(g) == -1, "tm_kind_of(glibc malloc(64)) = %d, want -1", lib_tm_kind_of(g));
    CHECK(lib_tm_kind_of(gbig) == -1, "tm_kind_of(glibc malloc(4 MiB)) = %d, want -1",
          lib_tm_kind_of(gbig));
    CHECK(lib_tm_kind_of(before) == -1, "tm_kind_of(glibc block from before dlopen) = %d, want -1",
          lib_tm_kind_of(before));
    CHECK(lib_tm_kind_of(&stack_thing) == -1, "tm_kind_of(stack) = %d, want -1",
          lib_tm_kind_of(&stack_thing));
    CHECK(lib_tm_kind_of(&static_thing) == -1, "tm_kind_of(static) = %d, want -1",
          lib_tm_kind_of(&static_thing));
    /* A glibc block handed to the library's free/realloc goes to glibc's own (the library was
     * loaded late, so it may legitimately meet them): no abort, contents kept. */
    char *gr = malloc(100);
    memset(gr, 0x5b, 100);
    gr = lib_realloc(gr, 200);
    if (CHECK(gr != NULL, "library realloc of a glibc block failed"))
        CHECK(gr[0] == 0x5b && gr[99] == 0x5b,
              "library realloc of a glibc block lost its contents");
    lib_free(gr);
    lib_free(g);
    free(gbig);
    free(before);

    tm_stats st;
    memset(&st, 0, sizeof st);
    int rc = lib_tm_get_stats(TM_DRAM, &st);
    CHECK(rc == 0, "tm_get_stats(TM_DRAM) = %d", rc);
    CHECK(st.allocations > 0, "tm_get_stats(TM_DRAM).allocations = %" PRIu64 " after allocating",
          st.allocations);

    struct left_behind lb;
    memset(&lb, 0, sizeof lb);
    pthread_t t;
    if (CHECK(pthread_create(&t, NULL, thread_using_library, &lb) == 0, "pthread_create failed")) {
        pthread_join(t, NULL);
        if (CHECK(pthread_create(&t, NULL, thread_freeing, &lb) == 0, "pthread_create failed"))
            pthread_join(t, NULL);
    }

    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        alarm(10);
        void *p = lib_malloc(12345);
        if (!p)
            _exit(1);
        memset(p, 2, 12345);
        lib_free(p);
        p = lib_tm_malloc(TM_DRAM, 100);
        if (!p)
            _exit(1);
        lib_tm_free(p);
        _exit(0);
    }
    if (CHECK(pid > 0, "fork failed")) {
        int stw = 0;
        waitpid(pid, &stw, 0);
        CHECK(WIFEXITED(stw) && WEXITSTATUS(stw) == 0,
              "forked child using the library failed (status %#x)", stw);
    }
    /* No dlclose: an allocator cannot be unloaded while its blocks and thread hooks live. */
    return check_done();
}
