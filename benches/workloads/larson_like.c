/* larson_like: a server model with cross-thread frees.
 *
 * T worker threads each own an array of S slots holding blocks of 8..1024 bytes (uniform).
 * Each operation picks a random slot, retires the block in it and puts a fresh block there.
 * A retired block is usually freed by its own thread, but one in `handoff` of them is handed
 * to the next thread (as a server hands a request buffer to another worker), which frees it:
 * the handed blocks travel in batches of 64 through a lock-free mailbox per thread (push by
 * CAS, the owner takes the whole list with one exchange) and the batch records themselves are
 * freed remotely too. A sender whose peer has more than 64 batches waiting pauses until the
 * peer catches up, and a thread that has finished keeps freeing what arrives until all have
 * finished, so a descheduled thread cannot make the live set balloon. Every block
 * carries a tag checked when it is freed.
 *
 * usage: larson_like [threads=2] [slots=4000] [ops_per_thread=8000000] [handoff=8]
 *
 * The checksum is the sum of the tags of all blocks ever freed (which does not depend on who
 * freed them or when) plus the per-thread allocation counts.
 */
#include <pthread.h>
#include <sched.h>
#include <time.h>
#include <stdatomic.h>

#include "common.h"

#define BATCH 64
#define MAX_PENDING 64 /* batches: at most 4096 blocks in flight per thread */

typedef struct batch {
    struct batch *next;
    uint32_t n;
    void *p[BATCH];
} batch;

typedef struct worker {
    _Alignas(64) _Atomic(batch *) inbox;
    _Atomic uint64_t pending; /* batches in the inbox */
    int id;
    uint64_t sum;      /* sum of tags freed by this thread */
    uint64_t freed;
    uint64_t allocated;
    char pad[64];
} worker;

static int nthreads;
static uint64_t nslots, nops, handoff;
static worker *workers;
static _Atomic int finished; /* threads that have sent their last batch */

static inline uint64_t block_tag(uint64_t id, uint64_t seq) {
    return splitmix64((id << 40) ^ seq);
}

static void *block_new(worker *w, rng *r) {
    size_t size = (size_t)rng_range(r, 8, 1024);
    uint64_t tag = (block_tag((uint64_t)w->id, w->allocated++) & ~(uint64_t)0xFFFF) | size;
    unsigned char *p = xmalloc(size);
    memcpy(p, &tag, sizeof tag);
    if (size >= 16) p[size - 1] = (unsigned char)(tag >> 24);
    return p;
}

static void block_free(worker *w, void *q) {
    unsigned char *p = q;
    uint64_t tag;
    memcpy(&tag, p, sizeof tag);
    size_t size = (size_t)(tag & 0xFFFF);
    CHECK(size >= 8 && size <= 1024, "bad block tag");
    if (size >= 16) CHECK(p[size - 1] == (unsigned char)(tag >> 24), "block tail overwritten");
    w->sum += tag;
    w->freed++;
    free(p);
}

static void drain_inbox(worker *w) {
    if (atomic_load_explicit(&w->inbox, memory_order_relaxed) == NULL) return;
    batch *b = atomic_exchange_explicit(&w->inbox, NULL, memory_order_acquire);
    uint64_t n = 0;
    while (b) {
        batch *next = b->next;
        for (uint32_t i = 0; i < b->n; i++) block_free(w, b->p[i]);
        free(b);
        b = next;
        n++;
    }
    atomic_fetch_sub_explicit(&w->pending, n, memory_order_relaxed);
}

static void send_batch(worker *to, batch *b) {
    batch *head = atomic_load_explicit(&to->inbox, memory_order_relaxed);
    do {
        b->next = head;
    } while (!atomic_compare_exchange_weak_explicit(&to->inbox, &head, b, memory_order_release,
                                                    memory_order_relaxed));
    atomic_fetch_add_explicit(&to->pending, 1, memory_order_relaxed);
}

/* Back-pressure: if the peer has fallen behind (it lost its core, say), wait for it instead of
 * piling up blocks in its inbox, so that peak RSS measures the allocator, not the scheduler.
 * Waiting drains our own inbox, so two threads waiting on each other both make progress. */
static void wait_for_peer(worker *w, worker *peer) {
    while (atomic_load_explicit(&peer->pending, memory_order_relaxed) > MAX_PENDING) {
        drain_inbox(w);
        sched_yield();
    }
}

static void *run(void *arg) {
    worker *w = arg;
    worker *peer = &workers[(w->id + 1) % nthreads];
    rng r;
    rng_seed(&r, 0x1A850 + (uint64_t)w->id);
    void **slots = xmalloc(nslots * sizeof(void *));
    for (uint64_t i = 0; i < nslots; i++) slots[i] = block_new(w, &r);
    batch *out = xmalloc(sizeof(batch));
    out->n = 0;
    for (uint64_t op = 0; op < nops; op++) {
        uint64_t x = rng_next(&r);
        uint64_t i = (x >> 16) % nslots;
        if (nthreads > 1 && handoff && (x & 0xFFFF) % handoff == 0) {
            out->p[out->n++] = slots[i];
            if (out->n == BATCH) {
                wait_for_peer(w, peer);
                send_batch(peer, out);
                out = xmalloc(sizeof(batch));
                out->n = 0;
            }
        } else {
            block_free(w, slots[i]);
        }
        slots[i] = block_new(w, &r);
        if ((op & 255) == 0) drain_inbox(w);
    }
    for (uint64_t i = 0; i < nslots; i++) block_free(w, slots[i]);
    free(slots);
    if (out->n) send_batch(peer, out);
    else free(out);
    /* Keep serving the inbox until every thread has sent its last batch. */
    atomic_fetch_add_explicit(&finished, 1, memory_order_release);
    while (atomic_load_explicit(&finished, memory_order_acquire) < nthreads) {
        drain_inbox(w);
        struct timespec ts = {0, 50000};
        nanosleep(&ts, NULL);
    }
    drain_inbox(w);
    return NULL;
}

int main(int argc, char **argv) {
    nthreads = (int)arg_u64(argc, argv, 1, 2);
    nslots = arg_u64(argc, argv, 2, 4000);
    nops = arg_u64(argc, argv, 3, 8000000);
    handoff = arg_u64(argc, argv, 4, 8);
    if (nthreads < 1) nthreads = 1;
    if (nslots < 1) nslots = 1;

    workers = aligned_alloc(64, sizeof(worker) * (size_t)nthreads);
    CHECK(workers != NULL, "aligned_alloc");
    pthread_t *tids = xmalloc(sizeof(pthread_t) * (size_t)nthreads);
    for (int t = 0; t < nthreads; t++) {
        memset(&workers[t], 0, sizeof(worker));
        atomic_init(&workers[t].inbox, NULL);
        atomic_init(&workers[t].pending, 0);
        workers[t].id = t;
    }
    for (int t = 0; t < nthreads; t++)
        if (pthread_create(&tids[t], NULL, run, &workers[t]) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            return 1;
        }
    uint64_t sum = 0, freed = 0, allocated = 0, h = 0;
    for (int t = 0; t < nthreads; t++) {
        pthread_join(tids[t], NULL);
    }
    for (int t = 0; t < nthreads; t++) {
        sum += workers[t].sum;
        freed += workers[t].freed;
        allocated += workers[t].allocated;
        h = mix(h, workers[t].allocated);
    }
    CHECK(freed == allocated, "every block freed exactly once");
    h = mix(h, sum);
    printf("larson_like checksum=%016llx blocks=%llu\n", (unsigned long long)h,
           (unsigned long long)allocated);
    free(tids);
    free(workers);
    return 0;
}
