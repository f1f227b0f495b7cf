/* prodcons: one thread allocates, another frees.
 *
 * P producer/consumer pairs (default 1, i.e. two threads). The producer allocates blocks of
 * 16..512 bytes (skewed small), writes a tag into each, and hands them over in batches of
 * `batch` pointers (the batch record is malloc'd too) through a bounded queue of 8 batches;
 * the consumer checks and frees every block and the batch record. Every free is of memory
 * allocated by another thread, so what is measured is the allocator's remote-free path and
 * whether memory freed by the consumer finds its way back to the producer rather than piling
 * up. The queue blocks on a condition variable (no spinning), and batching keeps the
 * hand-over cost small, so the run time is stable whether or not the two threads get a core
 * each.
 *
 * usage: prodcons [pairs=1] [items_per_pair=4000000] [batch=256]
 */
#include <pthread.h>

#include "common.h"

#define QUEUE 8

typedef struct batch {
    uint32_t n;
    void *p[];
} batch;

typedef struct pair {
    _Alignas(64) pthread_mutex_t mu;
    pthread_cond_t not_full, not_empty;
    batch *q[QUEUE];
    uint64_t head, tail; /* batches pushed / popped */
    uint64_t items, batch_size;
    int id;
    uint64_t sum_produced, sum_consumed, h_consumed;
} pair;

static void push(pair *q, batch *b) {
    pthread_mutex_lock(&q->mu);
    while (q->head - q->tail == QUEUE) pthread_cond_wait(&q->not_full, &q->mu);
    q->q[q->head++ % QUEUE] = b;
    pthread_cond_signal(&q->not_empty);
    pthread_mutex_unlock(&q->mu);
}

static batch *pop(pair *q) {
    pthread_mutex_lock(&q->mu);
    while (q->head == q->tail) pthread_cond_wait(&q->not_empty, &q->mu);
    batch *b = q->q[q->tail++ % QUEUE];
    pthread_cond_signal(&q->not_full);
    pthread_mutex_unlock(&q->mu);
    return b;
}

static void *producer(void *arg) {
    pair *q = arg;
    rng r;
    rng_seed(&r, 0x9D0D + (uint64_t)q->id);
    uint64_t sum = 0;
    batch *b = NULL;
    for (uint64_t i = 0; i < q->items; i++) {
        if (!b) {
            b = xmalloc(sizeof(batch) + q->batch_size * sizeof(void *));
            b->n = 0;
        }
        size_t size = size_skewed_8_1024(&r) / 2;
        if (size < 16) size = 16;
        uint64_t *p = xmalloc(size);
        uint64_t tag = (splitmix64(((uint64_t)q->id << 48) ^ i) & ~(uint64_t)0xFFF) | size;
        p[0] = tag;
        p[1] = i;
        sum += tag;
        b->p[b->n++] = p;
        if (b->n == q->batch_size) {
            push(q, b);
            b = NULL;
        }
    }
    if (b) push(q, b);
    q->sum_produced = sum;
    return NULL;
}

static void *consumer(void *arg) {
    pair *q = arg;
    uint64_t sum = 0, h = 0, i = 0;
    while (i < q->items) {
        batch *b = pop(q);
        for (uint32_t k = 0; k < b->n; k++, i++) {
            uint64_t *p = b->p[k];
            CHECK(p[1] == i, "items arrive in order");
            size_t size = (size_t)(p[0] & 0xFFF);
            CHECK(size >= 16 && size <= 512, "bad tag");
            sum += p[0];
            h = mix(h, p[0] >> 32);
            free(p);
        }
        free(b);
    }
    q->sum_consumed = sum;
    q->h_consumed = h;
    return NULL;
}

int main(int argc, char **argv) {
    int pairs = (int)arg_u64(argc, argv, 1, 1);
    uint64_t items = arg_u64(argc, argv, 2, 4000000);
    uint64_t batch_size = arg_u64(argc, argv, 3, 256);
    if (pairs < 1) pairs = 1;
    if (batch_size < 1) batch_size = 1;

    pair *qs = aligned_alloc(64, sizeof(pair) * (size_t)pairs);
    CHECK(qs != NULL, "aligned_alloc");
    pthread_t *tids = xmalloc(sizeof(pthread_t) * 2 * (size_t)pairs);
    for (int k = 0; k < pairs; k++) {
        memset(&qs[k], 0, sizeof(pair));
        pthread_mutex_init(&qs[k].mu, NULL);
        pthread_cond_init(&qs[k].not_full, NULL);
        pthread_cond_init(&qs[k].not_empty, NULL);
        qs[k].items = items;
        qs[k].batch_size = batch_size;
        qs[k].id = k;
    }
    for (int k = 0; k < pairs; k++) {
        if (pthread_create(&tids[2 * k], NULL, consumer, &qs[k]) != 0 ||
            pthread_create(&tids[2 * k + 1], NULL, producer, &qs[k]) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            return 1;
        }
    }
    for (int k = 0; k < 2 * pairs; k++) pthread_join(tids[k], NULL);
    uint64_t h = 0;
    for (int k = 0; k < pairs; k++) {
        CHECK(qs[k].sum_produced == qs[k].sum_consumed, "producer and consumer sums agree");
        h = mix(h, qs[k].sum_consumed);
        h = mix(h, qs[k].h_consumed);
        pthread_mutex_destroy(&qs[k].mu);
        pthread_cond_destroy(&qs[k].not_full);
        pthread_cond_destroy(&qs[k].not_empty);
    }
    printf("prodcons checksum=%016llx items=%llu\n", (unsigned long long)h,
           (unsigned long long)(items * (uint64_t)pairs));
    free(tids);
    free(qs);
    return 0;
}
