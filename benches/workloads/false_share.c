/* false_share: allocator-induced false sharing of cache lines.
 *
 * T threads each repeatedly allocate a small object, write every byte of it many times, and
 * free it. If the allocator hands out neighbouring objects of one cache line to different
 * threads, the writes make that line bounce between cores and the run gets many times slower.
 *
 * Two phases, timed together:
 *   active:  threads start with nothing; false sharing appears if the allocator serves
 *            concurrent threads from one shared pool of small blocks;
 *   passive: the main thread first allocates T adjacent objects and gives object t to thread
 *            t, which frees it before its loop; an allocator that lets the freeing thread reuse
 *            a block from another thread's page (e.g. via a per-thread cache) then keeps
 *            handing the threads neighbouring blocks.
 *
 * usage: false_share [threads=2] [iterations=80000] [writes=800] [objsize=8]
 */
#include <pthread.h>
#include <time.h>

#include "common.h"

typedef struct task {
    _Alignas(64) int id;
    int passive;
    void *initial; /* passive phase: object allocated by main, freed by this thread */
    uint64_t iterations, writes;
    size_t objsize;
    uint64_t sum;
    char pad[64];
} task;

static void *run(void *arg) {
    task *t = arg;
    if (t->initial) free(t->initial);
    uint64_t sum = 0;
    for (uint64_t i = 0; i < t->iterations; i++) {
        volatile unsigned char *p = xmalloc(t->objsize);
        for (size_t b = 0; b < t->objsize; b++)
            p[b] = (unsigned char)(i + b + 7 * (uint64_t)t->passive);
        for (uint64_t w = 0; w < t->writes; w++)
            for (size_t b = 0; b < t->objsize; b++) p[b] = (unsigned char)(p[b] * 3 + w + b);
        for (size_t b = 0; b < t->objsize; b++) sum += p[b];
        free((void *)p);
    }
    t->sum = sum;
    return NULL;
}

static uint64_t phase(int nthreads, int passive, uint64_t iterations, uint64_t writes,
                      size_t objsize) {
    task *ts = aligned_alloc(64, sizeof(task) * (size_t)nthreads);
    pthread_t *tids = xmalloc(sizeof(pthread_t) * (size_t)nthreads);
    CHECK(ts != NULL, "aligned_alloc");
    for (int i = 0; i < nthreads; i++) {
        memset(&ts[i], 0, sizeof(task));
        ts[i].id = i;
        ts[i].passive = passive;
        ts[i].iterations = iterations;
        ts[i].writes = writes;
        ts[i].objsize = objsize;
        /* objects allocated back to back: likely neighbours in one cache line */
        ts[i].initial = passive ? xmalloc(objsize) : NULL;
        if (passive) memset(ts[i].initial, 0, objsize);
    }
    for (int i = 0; i < nthreads; i++)
        if (pthread_create(&tids[i], NULL, run, &ts[i]) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            exit(1);
        }
    uint64_t h = 0;
    for (int i = 0; i < nthreads; i++) {
        pthread_join(tids[i], NULL);
        h = mix(h, ts[i].sum);
    }
    free(tids);
    free(ts);
    return h;
}

int main(int argc, char **argv) {
    int nthreads = (int)arg_u64(argc, argv, 1, 2);
    uint64_t iterations = arg_u64(argc, argv, 2, 80000);
    uint64_t writes = arg_u64(argc, argv, 3, 800);
    size_t objsize = (size_t)arg_u64(argc, argv, 4, 8);
    if (nthreads < 1) nthreads = 1;
    if (objsize < 1) objsize = 1;
    struct timespec t0, t1, t2;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    uint64_t h = mix(1, phase(nthreads, 0, iterations, writes, objsize));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    h = mix(h, phase(nthreads, 1, iterations, writes, objsize));
    clock_gettime(CLOCK_MONOTONIC, &t2);
    fprintf(stderr, "false_share: active %.3f s, passive %.3f s\n",
            (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec),
            (double)(t2.tv_sec - t1.tv_sec) + 1e-9 * (double)(t2.tv_nsec - t1.tv_nsec));
    printf("false_share checksum=%016llx threads=%d\n", (unsigned long long)h, nthreads);
    return 0;
}
