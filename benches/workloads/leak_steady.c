/* leak_steady: a steady state with a slow leak, in T threads.
 *
 * Each thread keeps a sliding window of W live objects of 8..1024 bytes (skewed small): every
 * operation frees the oldest object and allocates a new one, so the live set is constant.
 * In addition, one allocation in `leak_every` is never freed: a slow leak of long-lived
 * objects scattered among short-lived ones. This is the classic recipe for fragmentation:
 * each leaked object pins the page it sits on, so an allocator that mixes lifetimes on one
 * page, or never gives partly used pages back, shows peak RSS far above the live bytes. The
 * threads also exchange a few windows' worth of objects at the phase boundary (every thread
 * frees the window of its neighbour once, half-way), so pages owned by one thread end up
 * with blocks freed by another.
 *
 * usage: leak_steady [threads=2] [ops_per_thread=6000000] [window=20000] [leak_every=500]
 */
#include <pthread.h>

#include "common.h"

typedef struct worker {
    _Alignas(64) int id;
    uint64_t ops, window, leak_every;
    void **ring;        /* this thread's window */
    void **handover;    /* window given to the neighbour at half time */
    uint64_t h;         /* order-dependent, own objects only */
    uint64_t live_sum;  /* sum of tags freed: commutative */
    uint64_t leaked, leaked_bytes;
    char pad[64];
} worker;

static worker *workers;
static int nthreads;
static pthread_barrier_t barrier;

static void *obj_new(rng *r, uint64_t id, uint64_t seq, uint64_t *tag_out) {
    size_t size = size_skewed_8_1024(r);
    uint64_t tag = (splitmix64((id << 44) ^ seq) & ~(uint64_t)0x7FF) | size;
    unsigned char *p = xmalloc(size);
    memcpy(p, &tag, 8);
    memset(p + 8, (int)(tag >> 40) & 0xFF, size - 8);
    if (tag_out) *tag_out = tag;
    return p;
}

static uint64_t obj_free(void *q) {
    unsigned char *p = q;
    uint64_t tag;
    memcpy(&tag, p, 8);
    size_t size = (size_t)(tag & 0x7FF);
    CHECK(size >= 8 && size <= 1024, "bad tag");
    if (size > 8) CHECK(p[size - 1] == (unsigned char)(tag >> 40), "tail lost");
    free(p);
    return tag;
}

static void *run(void *arg) {
    worker *w = arg;
    rng r;
    rng_seed(&r, 0x1EA4 + (uint64_t)w->id);
    uint64_t seq = 0, h = 0, sum = 0;
    w->ring = xmalloc(w->window * sizeof(void *));
    for (uint64_t i = 0; i < w->window; i++) w->ring[i] = obj_new(&r, (uint64_t)w->id, seq++, NULL);
    for (uint64_t op = 0; op < w->ops; op++) {
        if (op == w->ops / 2 && nthreads > 1) {
            /* hand the whole window to the neighbour, take over the previous one's */
            w->handover = w->ring;
            pthread_barrier_wait(&barrier);
            worker *prev = &workers[(w->id + nthreads - 1) % nthreads];
            void **theirs = prev->handover;
            pthread_barrier_wait(&barrier);
            for (uint64_t i = 0; i < w->window; i++) sum += obj_free(theirs[i]);
            free(theirs);
            w->ring = xmalloc(w->window * sizeof(void *));
            for (uint64_t i = 0; i < w->window; i++)
                w->ring[i] = obj_new(&r, (uint64_t)w->id, seq++, NULL);
        }
        uint64_t k = op % w->window;
        sum += obj_free(w->ring[k]);
        uint64_t tag;
        w->ring[k] = obj_new(&r, (uint64_t)w->id, seq++, &tag);
        h = mix(h, tag >> 32);
        if (w->leak_every && op % w->leak_every == 0) {
            uint64_t ltag;
            void *leak = obj_new(&r, (uint64_t)w->id, seq++, &ltag);
            (void)leak; /* leaked on purpose: never freed */
            w->leaked++;
            w->leaked_bytes += ltag & 0x7FF;
        }
    }
    for (uint64_t i = 0; i < w->window; i++) sum += obj_free(w->ring[i]);
    free(w->ring);
    w->h = h;
    w->live_sum = sum;
    return NULL;
}

int main(int argc, char **argv) {
    nthreads = (int)arg_u64(argc, argv, 1, 2);
    uint64_t ops = arg_u64(argc, argv, 2, 6000000);
    uint64_t window = arg_u64(argc, argv, 3, 20000);
    uint64_t leak_every = arg_u64(argc, argv, 4, 500);
    if (nthreads < 1) nthreads = 1;
    if (window < 1) window = 1;

    workers = aligned_alloc(64, sizeof(worker) * (size_t)nthreads);
    CHECK(workers != NULL, "aligned_alloc");
    pthread_t *tids = xmalloc(sizeof(pthread_t) * (size_t)nthreads);
    pthread_barrier_init(&barrier, NULL, (unsigned)nthreads);
    for (int t = 0; t < nthreads; t++) {
        memset(&workers[t], 0, sizeof(worker));
        workers[t].id = t;
        workers[t].ops = ops;
        workers[t].window = window;
        workers[t].leak_every = leak_every;
    }
    for (int t = 0; t < nthreads; t++)
        if (pthread_create(&tids[t], NULL, run, &workers[t]) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            return 1;
        }
    uint64_t h = 0, sum = 0, leaked = 0, leaked_bytes = 0;
    for (int t = 0; t < nthreads; t++) pthread_join(tids[t], NULL);
    for (int t = 0; t < nthreads; t++) {
        h = mix(h, workers[t].h);
        sum += workers[t].live_sum;
        leaked += workers[t].leaked;
        leaked_bytes += workers[t].leaked_bytes;
    }
    h = mix(h, sum);
    printf("leak_steady checksum=%016llx leaked=%llu leaked_bytes=%llu\n", (unsigned long long)h,
           (unsigned long long)leaked, (unsigned long long)leaked_bytes);
    pthread_barrier_destroy(&barrier);
    free(tids);
    free(workers);
    return 0;
}
