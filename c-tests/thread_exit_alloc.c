/* thread_exit_alloc.c — malloc/calloc/free during thread exit.
 *
 * When a thread ends, glibc runs, in order: destructors registered with
 * __cxa_thread_atexit_impl (C++ thread_local objects; registering one allocates), pthread key
 * destructors (up to 4 rounds while values keep being set), then frees its own per-thread
 * memory (the second-level arrays that pthread_setspecific allocated for keys >= 32, dynamic
 * TLS blocks). An allocator that tears down its thread heap in its own key destructor, which
 * usually runs *before* the program's keys' destructors (it registered its key first), must
 * still serve malloc/calloc/free afterwards: re-create the heap, or fall back to a global one.
 *
 * Each of 40 threads here (half of them detached) holds:
 *  - 40 pthread keys (so glibc calloc's a second-level block) whose destructors check and free
 *    the thread's block, then calloc (checked zero), malloc, realloc and free; one key's
 *    destructor sets a new value twice, forcing extra destructor rounds that allocate again;
 *  - a __thread pointer to a malloc'ed buffer (the thread_local pattern) freed by a key
 *    destructor;
 *  - two __cxa_thread_atexit_impl destructors that allocate, one of which registers another.
 * A last key's destructor allocates too. The main thread counts that every destructor ran and
 * saw good memory, then also allocates in an atexit handler.
 */
#include "check.h"

extern int __cxa_thread_atexit_impl(void (*func)(void *), void *obj, void *dso_symbol);
extern void *__dso_handle;

enum { THREADS = 40, NKEYS = 40, BLOCK = 200 };

static pthread_key_t keys[NKEYS];
static pthread_key_t resetting_key;
static __thread unsigned char *tls_buffer; /* a "thread_local" heap buffer */

static int key_dtor_runs, key_dtor_bad, reset_rounds, tls_dtor_runs, tls_dtor_bad, cxa_runs,
    cxa_bad;
static int threads_done;

static int exercise_allocator(void)
{
    int bad = 0;
    unsigned char *c = calloc(50, 20);
    if (!c)
        return 1;
    __asm__ volatile("" : : "r"(c) : "memory");
    for (int i = 0; i < 1000; i++)
        bad |= c[i] != 0;
    memset(c, 0xAB, 1000);
    unsigned char *m = malloc(5000);
    if (!m) {
        free(c);
        return 1;
    }
    memset(m, 0x11, 5000);
    unsigned char *r = realloc(m, 70000);
    if (!r) {
        free(m);
        free(c);
        return 1;
    }
    for (int i = 0; i < 5000; i++)
        bad |= r[i] != 0x11;
    void *big = malloc(1 << 20);
    bad |= big == NULL;
    free(big);
    free(r);
    free(c);
    return bad;
}

static void key_dtor(void *v)
{
    unsigned char *p = v;
    int bad = 0;
    for (int i = 0; i < BLOCK; i++)
        bad |= p[i] != (unsigned char)(BLOCK - i);
    free(p);
    bad |= exercise_allocator();
    __atomic_fetch_add(&key_dtor_runs, 1, __ATOMIC_RELAXED);
    if (bad)
        __atomic_fetch_add(&key_dtor_bad, 1, __ATOMIC_RELAXED);
}

/* Sets itself again twice: glibc runs another destructor round for it each time. */
static void resetting_dtor(void *v)
{
    uintptr_t round = *(uintptr_t *)v;
    free(v);
    int bad = exercise_allocator();
    if (bad)
        __atomic_fetch_add(&key_dtor_bad, 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&reset_rounds, 1, __ATOMIC_RELAXED);
    if (round < 2) {
        uintptr_t *next = malloc(sizeof *next);
        if (next) {
            *next = round + 1;
            pthread_setspecific(resetting_key, next);
        } else {
            __atomic_fetch_add(&key_dtor_bad, 1, __ATOMIC_RELAXED);
        }
    }
}

/* Frees the thread's __thread buffer, like a thread_local with a destructor would. */
static pthread_key_t tls_key;
static void tls_dtor(void *v)
{
    (void)v;
    int bad = tls_buffer == NULL;
    if (tls_buffer) {
        for (int i = 0; i < 4096; i++)
            bad |= tls_buffer[i] != 0x77;
        free(tls_buffer);
        tls_buffer = NULL;
    }
    bad |= exercise_allocator();
    __atomic_fetch_add(&tls_dtor_runs, 1, __ATOMIC_RELAXED);
    if (bad)
        __atomic_fetch_add(&tls_dtor_bad, 1, __ATOMIC_RELAXED);
}

/* What both __cxa_thread_atexit_impl destructors do first: check and free their object of 64
 * bytes of 0x42, then allocate: 1 if anything was wrong. */
static int cxa_object_done(unsigned char *p)
{
    int bad = 0;
    for (int i = 0; i < 64; i++)
        bad |= p[i] != 0x42;
    free(p);
    return bad | exercise_allocator();
}

static void cxa_count(int bad)
{
    __atomic_fetch_add(&cxa_runs, 1, __ATOMIC_RELAXED);
    if (bad)
        __atomic_fetch_add(&cxa_bad, 1, __ATOMIC_RELAXED);
}

static void cxa_dtor_inner(void *obj)
{
    cxa_count(cxa_object_done(obj));
}

static void cxa_dtor_outer(void *obj)
{
    int bad = cxa_object_done(obj);
    /* Register one more from inside a destructor: glibc allocates its list node now. */
    unsigned char *q = malloc(64);
    if (q) {
        memset(q, 0x42, 64);
        if (__cxa_thread_atexit_impl(cxa_dtor_inner, q, &__dso_handle) != 0) {
            free(q);
            bad = 1;
        }
    } else {
        bad = 1;
    }
    cxa_count(bad);
}

static void *thread_body(void *arg)
{
    (void)arg;
    for (int k = 0; k < NKEYS; k++) {
        unsigned char *p = malloc(BLOCK);
        if (!p)
            continue;
        for (int i = 0; i < BLOCK; i++)
            p[i] = (unsigned char)(BLOCK - i);
        pthread_setspecific(keys[k], p);
    }
    uintptr_t *r = malloc(sizeof *r);
    if (r) {
        *r = 0;
        pthread_setspecific(resetting_key, r);
    }
    tls_buffer = malloc(4096);
    if (tls_buffer)
        memset(tls_buffer, 0x77, 4096);
    pthread_setspecific(tls_key, (void *)1);

    unsigned char *o = malloc(64);
    if (o) {
        memset(o, 0x42, 64);
        __cxa_thread_atexit_impl(cxa_dtor_outer, o, &__dso_handle);
    }
    /* some ordinary work so the thread heap has state */
    void *tmp[100];
    for (int i = 0; i < 100; i++)
        tmp[i] = malloc((size_t)(i * 50 + 1));
    for (int i = 0; i < 100; i += 2)
        free(tmp[i]);
    for (int i = 1; i < 100; i += 2)
        free(tmp[i]);
    return NULL;
}

/* One more allocating destructor; also counts threads that got this far. */
static void done_dtor(void *v)
{
    (void)v;
    void *p = malloc(32);
    free(p);
    __atomic_fetch_add(&threads_done, 1, __ATOMIC_RELEASE);
}
static pthread_key_t done_key;

static void *wrapped(void *arg)
{
    pthread_setspecific(done_key, (void *)1);
    return thread_body(arg);
}

static void at_exit_alloc(void)
{
    /* Runs after main returned: the allocator must still work here. */
    void *p = malloc(1000);
    void *c = calloc(10, 10);
    if (!p || !c) {
        raw_msg("FAIL thread_exit_alloc: malloc in an atexit handler failed\n");
        _exit(1);
    }
    free(p);
    free(c);
}

int main(void)
{
    watchdog(50, "thread_exit_alloc");
    for (int k = 0; k < NKEYS; k++)
        if (!CHECK(pthread_key_create(&keys[k], key_dtor) == 0, "pthread_key_create %d failed", k))
            return check_done();
    CHECK(pthread_key_create(&resetting_key, resetting_dtor) == 0, "pthread_key_create failed");
    CHECK(pthread_key_create(&tls_key, tls_dtor) == 0, "pthread_key_create failed");
    CHECK(pthread_key_create(&done_key, done_dtor) == 0, "pthread_key_create failed");
    atexit(at_exit_alloc);

    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++) {
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        if (i % 2)
            pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (!CHECK(pthread_create(&th[i], &attr, wrapped, (void *)(uintptr_t)i) == 0,
                   "pthread_create %d failed", i)) {
            pthread_attr_destroy(&attr);
            return check_done();
        }
        pthread_attr_destroy(&attr);
    }
    for (int i = 0; i < THREADS; i += 2)
        pthread_join(th[i], NULL);
    /* Detached threads cannot be joined: wait (bounded) until every destructor has been
     * counted. The counts are exact, so waiting for them is not a race. */
    for (int ms = 0; ms < 20000; ms++) {
        if (__atomic_load_n(&threads_done, __ATOMIC_ACQUIRE) == THREADS &&
            __atomic_load_n(&key_dtor_runs, __ATOMIC_ACQUIRE) == THREADS * NKEYS &&
            __atomic_load_n(&reset_rounds, __ATOMIC_ACQUIRE) == THREADS * 3 &&
            __atomic_load_n(&tls_dtor_runs, __ATOMIC_ACQUIRE) == THREADS &&
            __atomic_load_n(&cxa_runs, __ATOMIC_ACQUIRE) == THREADS * 2)
            break;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    CHECK(threads_done == THREADS, "only %d of %d threads finished their destructors", threads_done,
          THREADS);
    CHECK(key_dtor_runs == THREADS * NKEYS, "key destructors ran %d times, want %d", key_dtor_runs,
          THREADS * NKEYS);
    CHECK(reset_rounds == THREADS * 3, "resetting destructor ran %d times, want %d", reset_rounds,
          THREADS * 3);
    CHECK(key_dtor_bad == 0, "%d key destructors saw a bad block or a failed allocation",
          key_dtor_bad);
    CHECK(tls_dtor_runs == THREADS, "thread_local-style destructor ran %d times, want %d",
          tls_dtor_runs, THREADS);
    CHECK(tls_dtor_bad == 0,
          "%d thread_local-style destructors saw a bad buffer or failed allocation", tls_dtor_bad);
    CHECK(cxa_runs == THREADS * 2, "__cxa_thread_atexit_impl destructors ran %d times, want %d",
          cxa_runs, THREADS * 2);
    CHECK(cxa_bad == 0,
          "%d __cxa_thread_atexit_impl destructors saw bad memory or failed allocation", cxa_bad);
    CHECK(exercise_allocator() == 0, "allocator misbehaves in main after the threads exited");
    return check_done();
}
