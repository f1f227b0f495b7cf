/* stress_mt.c — 4 threads allocating, verifying, passing blocks around and freeing them.
 *
 * Each thread keeps up to 512 live blocks of random sizes (mostly 8 B .. 1 KiB, some up to
 * 64 KiB, a few up to 2 MiB), each filled with a pattern seeded by its address, size, thread
 * and a counter, so a block that overlaps another, is handed out twice, or is scribbled on by
 * the allocator's metadata shows up. Every operation replaces one slot: the old block is
 * verified, then freed locally (in random order) or passed to the next thread through a
 * lock-protected queue, whose owner verifies and frees it (remote frees, while the allocating
 * thread is alive and allocating). Some replacements are realloc (contents checked), calloc
 * (zero checked) or aligned allocations (alignment checked). Each thread stops after a fixed
 * number of operations or 4 seconds, whichever comes first; everything is verified and freed
 * at the end.
 */
#include "check.h"

enum { THREADS = 4, SLOTS = 512, QCAP = 1024, OPS = 250000 };
#define TIME_LIMIT_NS (4LL * 1000 * 1000 * 1000)

struct blk {
    unsigned char *p;
    size_t size;
    uint64_t seed;
};

struct queue {
    pthread_mutex_t lock;
    struct blk items[QCAP];
    int head, count;
};

static struct queue queues[THREADS];
static pthread_barrier_t done_barrier;
static long long start_ns;
static long stats_sent[THREADS], stats_received[THREADS], stats_ops[THREADS];

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int q_push(struct queue *q, struct blk b)
{
    pthread_mutex_lock(&q->lock);
    int ok = q->count < QCAP;
    if (ok) {
        q->items[(q->head + q->count) % QCAP] = b;
        q->count++;
    }
    pthread_mutex_unlock(&q->lock);
    return ok;
}

static int q_pop(struct queue *q, struct blk *out)
{
    pthread_mutex_lock(&q->lock);
    int ok = q->count > 0;
    if (ok) {
        *out = q->items[q->head];
        q->head = (q->head + 1) % QCAP;
        q->count--;
    }
    pthread_mutex_unlock(&q->lock);
    return ok;
}

static size_t random_size(uint64_t *rng)
{
    uint64_t r = rng_next(rng);
    unsigned cls = (unsigned)(r % 1000);
    if (cls < 850)
        return 8 + (r >> 10) % 1017;
    if (cls < 985)
        return 1024 + (r >> 10) % (63u << 10);
    return (64u << 10) + (r >> 10) % ((2u << 20) - (64u << 10));
}

static uint64_t make_seed(const void *p, size_t s, int tid, uint64_t n)
{
    return (uint64_t)(uintptr_t)p ^ ((uint64_t)s << 3) ^ ((uint64_t)tid << 58) ^
           (n * 0x9E3779B97F4A7C15ULL);
}

static int verify_and_free(const struct blk *b, int tid, const char *how)
{
    int ok = pattern_ok(b->p, b->size, b->seed);
    CHECK(ok, "thread %d: %s block %p (%zu bytes) was corrupted", tid, how, (void *)b->p, b->size);
    free(b->p);
    return ok;
}

/* Allocates a new block into *b by one of several routes; returns 0 on failure. */
static int fresh_block(struct blk *b, uint64_t *rng, int tid, uint64_t n)
{
    size_t s = random_size(rng);
    unsigned route = (unsigned)(rng_next(rng) % 20);
    unsigned char *p;
    if (route == 0) {
        p = calloc(1, s);
        if (!CHECK(p != NULL, "thread %d: calloc(1, %zu) failed", tid, s))
            return 0;
        size_t lim = s < 4096 ? s : 4096;
        int zero = 1;
        for (size_t k = 0; k < lim; k++)
            zero &= p[k] == 0;
        zero &= p[s - 1] == 0;
        CHECK(zero, "thread %d: calloc(1, %zu) returned dirty memory", tid, s);
    } else if (route == 1) {
        size_t align = (size_t)16 << (rng_next(rng) % 9); /* 16 .. 4096 */
        void *v = NULL;
        if (!CHECK(posix_memalign(&v, align, s) == 0, "thread %d: posix_memalign(%zu, %zu) failed",
                   tid, align, s))
            return 0;
        p = v;
        CHECK(is_aligned(p, align), "thread %d: posix_memalign(%zu, %zu) = %p", tid, align, s,
              (void *)p);
    } else if (route == 2) {
        size_t align = (size_t)32 << (rng_next(rng) % 8);
        p = aligned_alloc(align, s);
        if (!CHECK(p != NULL, "thread %d: aligned_alloc(%zu, %zu) failed", tid, align, s))
            return 0;
        CHECK(is_aligned(p, align), "thread %d: aligned_alloc(%zu, %zu) = %p", tid, align, s,
              (void *)p);
    } else {
        p = malloc(s);
        if (!CHECK(p != NULL, "thread %d: malloc(%zu) failed", tid, s))
            return 0;
        CHECK(is_aligned(p, 16), "thread %d: malloc(%zu) = %p not 16-byte aligned", tid, s,
              (void *)p);
    }
    b->p = p;
    b->size = s;
    b->seed = make_seed(p, s, tid, n);
    pattern_fill(p, s, b->seed);
    return 1;
}

static void *worker(void *arg)
{
    int tid = (int)(uintptr_t)arg;
    uint64_t rng = 0x1234567ULL * (uint64_t)(tid + 1);
    static __thread struct blk slots[SLOTS];
    memset(slots, 0, sizeof slots);
    struct queue *next = &queues[(tid + 1) % THREADS];
    struct queue *mine = &queues[tid];
    long ops = 0;
    for (uint64_t n = 0; n < OPS; n++) {
        if ((n & 255) == 0 && now_ns() - start_ns > TIME_LIMIT_NS)
            break;
        ops++;
        /* take in what the previous thread sent */
        struct blk in;
        for (int k = 0; k < 4 && q_pop(mine, &in); k++) {
            verify_and_free(&in, tid, "received");
            stats_received[tid]++;
        }
        int i = (int)(rng_next(&rng) % SLOTS);
        struct blk *b = &slots[i];
        if (b->p) {
            unsigned what = (unsigned)(rng_next(&rng) % 10);
            if (what < 2) {
                /* realloc: contents up to the smaller size survive */
                size_t ns = random_size(&rng);
                CHECK(pattern_ok(b->p, b->size, b->seed),
                      "thread %d: block %p (%zu) corrupted before realloc", tid, (void *)b->p,
                      b->size);
                /* when shrinking, remember the head and the new tail of the old contents */
                unsigned char head[256], tail[64];
                size_t hn = 0;
                if (ns < b->size) {
                    hn = ns < sizeof head ? ns : sizeof head;
                    memcpy(head, b->p, hn);
                    if (ns >= sizeof tail)
                        memcpy(tail, b->p + ns - sizeof tail, sizeof tail);
                }
                unsigned char *q = realloc(b->p, ns);
                if (!CHECK(q != NULL, "thread %d: realloc(%zu -> %zu) failed", tid, b->size, ns))
                    continue;
                if (ns >= b->size) {
                    CHECK(pattern_ok(q, b->size, b->seed),
                          "thread %d: realloc(%zu -> %zu) lost contents", tid, b->size, ns);
                } else {
                    CHECK(memcmp(q, head, hn) == 0 &&
                              (ns < sizeof tail ||
                               memcmp(q + ns - sizeof tail, tail, sizeof tail) == 0),
                          "thread %d: realloc(%zu -> %zu) lost the kept prefix", tid, b->size, ns);
                }
                b->p = q;
                b->size = ns;
                b->seed = make_seed(q, ns, tid, n);
                pattern_fill(q, ns, b->seed);
                continue;
            }
            if (what < 5 && q_push(next, *b)) {
                stats_sent[tid]++;
            } else {
                verify_and_free(b, tid, "local");
            }
            b->p = NULL;
        }
        fresh_block(b, &rng, tid, n);
    }
    stats_ops[tid] = ops;
    /* Everyone stops sending; then each drains its own queue and frees its slots in a
     * random order. */
    pthread_barrier_wait(&done_barrier);
    struct blk in;
    while (q_pop(mine, &in)) {
        verify_and_free(&in, tid, "received");
        stats_received[tid]++;
    }
    for (int k = 0; k < SLOTS; k++) {
        int j = k + (int)(rng_next(&rng) % (uint64_t)(SLOTS - k));
        struct blk t = slots[k];
        slots[k] = slots[j];
        slots[j] = t;
    }
    for (int k = 0; k < SLOTS; k++)
        if (slots[k].p)
            verify_and_free(&slots[k], tid, "final");
    return NULL;
}

int main(void)
{
    watchdog(40, "stress_mt");
    for (int t = 0; t < THREADS; t++)
        pthread_mutex_init(&queues[t].lock, NULL);
    pthread_barrier_init(&done_barrier, NULL, THREADS);
    start_ns = now_ns();
    pthread_t th[THREADS];
    for (int t = 0; t < THREADS; t++)
        if (!CHECK(pthread_create(&th[t], NULL, worker, (void *)(uintptr_t)t) == 0,
                   "pthread_create failed"))
            return check_done();
    for (int t = 0; t < THREADS; t++)
        pthread_join(th[t], NULL);
    long sent = 0, received = 0, ops = 0;
    for (int t = 0; t < THREADS; t++) {
        sent += stats_sent[t];
        received += stats_received[t];
        ops += stats_ops[t];
    }
    CHECK(sent == received, "%ld blocks sent between threads but %ld received", sent, received);
    CHECK(sent > 0, "no block was passed between threads");
    printf("%ld operations, %ld blocks freed by another thread, %.2f s\n", ops, sent,
           (double)(now_ns() - start_ns) / 1e9);
    return check_done();
}
