/* cross_thread_free.c — blocks freed by a thread other than the one that allocated them,
 * after the allocating thread has exited.
 *
 * Phase 1: 6 threads each allocate 1500 blocks (16 B .. 64 KiB, a few 1-2 MiB), fill each
 *   with a pattern seeded by (thread, index, address), and exit. Then 3 other threads verify
 *   every block, realloc some of them (contents kept), malloc_usable_size >= size, and free
 *   them in an interleaved order, while allocating and checking new blocks of the same sizes,
 *   which may come from the dead threads' pages.
 * Phase 2: overlap instead of sequence: producers hand blocks over through a queue and exit
 *   while consumers are still freeing them, so the owner's exit races with remote frees.
 * Phase 3: the main thread frees a dead thread's blocks while a live thread allocates in the
 *   same size classes.
 * Every block's content is checked before it is freed.
 */
#include "check.h"

enum { PRODUCERS = 6, CONSUMERS = 3, PER_PRODUCER = 1500 };

struct block {
    unsigned char *p;
    size_t size;
    uint64_t seed;
};

static struct block table[PRODUCERS][PER_PRODUCER];

static size_t pick_size(uint64_t *rng, int i)
{
    uint64_t r = rng_next(rng);
    if (i % 500 == 499)
        return (1u << 20) + r % (1u << 20);
    if (r % 10 == 0)
        return 4096 + (r >> 8) % (60u << 10);
    return 16 + (r >> 8) % 1000;
}

static uint64_t seed_for(int t, int i, const void *p)
{
    return ((uint64_t)t << 40) ^ ((uint64_t)i << 20) ^ (uint64_t)(uintptr_t)p;
}

static void *produce(void *arg)
{
    int t = (int)(uintptr_t)arg;
    uint64_t rng = (uint64_t)t * 77 + 1;
    for (int i = 0; i < PER_PRODUCER; i++) {
        size_t s = pick_size(&rng, i);
        unsigned char *p = malloc(s);
        if (!CHECK(p != NULL, "producer %d: malloc(%zu) failed", t, s))
            continue;
        table[t][i].p = p;
        table[t][i].size = s;
        table[t][i].seed = seed_for(t, i, p);
        pattern_fill(p, s, table[t][i].seed);
    }
    /* Free a few of its own, so the heap it leaves behind has both free and live blocks. */
    for (int i = 0; i < PER_PRODUCER; i += 10) {
        if (table[t][i].p && pattern_ok(table[t][i].p, table[t][i].size, table[t][i].seed)) {
            free(table[t][i].p);
            table[t][i].p = NULL;
        }
    }
    return NULL;
}

static void *consume(void *arg)
{
    int c = (int)(uintptr_t)arg;
    uint64_t rng = (uint64_t)c * 991 + 7;
    /* Consumer c owns every CONSUMERS-th block, walking the table in an interleaved order. */
    for (int i = 0; i < PER_PRODUCER; i++) {
        for (int t = 0; t < PRODUCERS; t++) {
            int flat = i * PRODUCERS + t;
            if (flat % CONSUMERS != c)
                continue;
            struct block *b = &table[t][i];
            if (!b->p)
                continue;
            CHECK(pattern_ok(b->p, b->size, b->seed),
                  "block %d of dead thread %d (%zu bytes at %p) was corrupted", i, t, b->size,
                  (void *)b->p);
            CHECK(malloc_usable_size(b->p) >= b->size,
                  "malloc_usable_size of a dead thread's %zu block = %zu", b->size,
                  malloc_usable_size(b->p));
            if (flat % 4 == 0) {
                /* realloc a dead thread's block: grow, check, shrink */
                size_t ns = b->size * 2 + 7;
                unsigned char *q = realloc(b->p, ns);
                if (CHECK(q != NULL, "realloc of a dead thread's block to %zu failed", ns)) {
                    CHECK(pattern_ok(q, b->size, b->seed),
                          "realloc of a dead thread's block lost contents");
                    b->p = q;
                }
            }
            free(b->p);
            b->p = NULL;
            /* allocate in the same size class, which may reuse the dead thread's memory */
            size_t s = pick_size(&rng, i);
            unsigned char *n = malloc(s);
            if (CHECK(n != NULL, "consumer malloc(%zu) failed", s)) {
                pattern_fill(n, s, 0xC0FFEEu + (uint64_t)flat);
                CHECK(pattern_ok(n, s, 0xC0FFEEu + (uint64_t)flat),
                      "fresh block changed under its owner");
                free(n);
            }
        }
    }
    return NULL;
}

/* ---- phase 2: a queue between producers that exit early and consumers ---- */

#define QCAP 4096
static struct {
    pthread_mutex_t lock;
    pthread_cond_t nonempty;
    struct block items[QCAP];
    int head, tail, count;
    int producers_left;
} q = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, {{0}}, 0, 0, 0, 0};

static void q_push(struct block b)
{
    pthread_mutex_lock(&q.lock);
    while (q.count == QCAP) { /* never happens with these sizes, but stay correct */
        pthread_mutex_unlock(&q.lock);
        sched_yield();
        pthread_mutex_lock(&q.lock);
    }
    q.items[q.tail] = b;
    q.tail = (q.tail + 1) % QCAP;
    q.count++;
    pthread_cond_signal(&q.nonempty);
    pthread_mutex_unlock(&q.lock);
}

static int q_pop(struct block *out)
{
    pthread_mutex_lock(&q.lock);
    while (q.count == 0 && q.producers_left > 0)
        pthread_cond_wait(&q.nonempty, &q.lock);
    if (q.count == 0) {
        pthread_mutex_unlock(&q.lock);
        return 0;
    }
    *out = q.items[q.head];
    q.head = (q.head + 1) % QCAP;
    q.count--;
    pthread_mutex_unlock(&q.lock);
    return 1;
}

static void *produce_and_leave(void *arg)
{
    int t = (int)(uintptr_t)arg;
    uint64_t rng = (uint64_t)t * 31 + 5;
    for (int i = 0; i < 600; i++) {
        size_t s = pick_size(&rng, i + 1);
        unsigned char *p = malloc(s);
        if (!CHECK(p != NULL, "malloc(%zu) failed", s))
            continue;
        struct block b = {p, s, seed_for(t + 100, i, p)};
        pattern_fill(p, s, b.seed);
        q_push(b);
    }
    pthread_mutex_lock(&q.lock);
    q.producers_left--;
    pthread_cond_broadcast(&q.nonempty);
    pthread_mutex_unlock(&q.lock);
    return NULL; /* exits while its blocks are still being freed by others */
}

static void *drain(void *arg)
{
    (void)arg;
    struct block b;
    while (q_pop(&b)) {
        CHECK(pattern_ok(b.p, b.size, b.seed), "queued block (%zu bytes) corrupted", b.size);
        free(b.p);
    }
    return NULL;
}

/* ---- phase 3 ---- */

static volatile int stop_churn;

static void *churn(void *arg)
{
    (void)arg;
    uint64_t rng = 99;
    void *keep[32] = {0};
    while (!__atomic_load_n(&stop_churn, __ATOMIC_RELAXED)) {
        int k = (int)(rng_next(&rng) % 32);
        free(keep[k]);
        keep[k] = malloc(16 + rng_next(&rng) % 1000);
        if (keep[k])
            memset(keep[k], 0x33, 16);
    }
    for (int k = 0; k < 32; k++)
        free(keep[k]);
    return NULL;
}

int main(void)
{
    watchdog(50, "cross_thread_free");
    pthread_t th[PRODUCERS + CONSUMERS];

    /* phase 1 */
    for (int t = 0; t < PRODUCERS; t++)
        if (!CHECK(pthread_create(&th[t], NULL, produce, (void *)(uintptr_t)t) == 0,
                   "pthread_create failed"))
            return check_done();
    for (int t = 0; t < PRODUCERS; t++)
        pthread_join(th[t], NULL);
    for (int c = 0; c < CONSUMERS; c++)
        if (!CHECK(pthread_create(&th[c], NULL, consume, (void *)(uintptr_t)c) == 0,
                   "pthread_create failed"))
            return check_done();
    for (int c = 0; c < CONSUMERS; c++)
        pthread_join(th[c], NULL);
    for (int t = 0; t < PRODUCERS; t++)
        for (int i = 0; i < PER_PRODUCER; i++)
            CHECK(table[t][i].p == NULL, "block %d of thread %d was never freed", i, t);

    /* phase 2 */
    for (int round = 0; round < 8; round++) {
        q.producers_left = PRODUCERS;
        for (int t = 0; t < PRODUCERS; t++)
            if (!CHECK(pthread_create(&th[t], NULL, produce_and_leave, (void *)(uintptr_t)t) == 0,
                       "pthread_create"))
                return check_done();
        for (int c = 0; c < CONSUMERS; c++)
            if (!CHECK(pthread_create(&th[PRODUCERS + c], NULL, drain, NULL) == 0,
                       "pthread_create failed"))
                return check_done();
        for (int t = 0; t < PRODUCERS + CONSUMERS; t++)
            pthread_join(th[t], NULL);
        CHECK(q.count == 0, "queue not drained: %d left", q.count);
    }

    /* phase 3 */
    if (!CHECK(pthread_create(&th[0], NULL, produce, (void *)(uintptr_t)0) == 0,
               "pthread_create failed"))
        return check_done();
    pthread_join(th[0], NULL);
    if (!CHECK(pthread_create(&th[1], NULL, churn, NULL) == 0, "pthread_create failed"))
        return check_done();
    for (int i = PER_PRODUCER - 1; i >= 0; i--) {
        struct block *b = &table[0][i];
        if (!b->p)
            continue;
        CHECK(pattern_ok(b->p, b->size, b->seed), "block %d of dead thread 0 corrupted (phase 3)",
              i);
        free(b->p);
        b->p = NULL;
    }
    __atomic_store_n(&stop_churn, 1, __ATOMIC_RELAXED);
    pthread_join(th[1], NULL);
    return check_done();
}
