/* mode: link-only */
/* traffic_counts.c — the DRAM tier's allocations, frees and in_use are exact at rest, however
 * the blocks were freed. The small-block figures are derived, not counted per call (see
 * src/dram/fast/traffic.rs): a page counts what it hands out, a free by the owner counts
 * nothing, a free from another thread is counted by that thread's heap until the owner
 * collects it. Each phase below reads tm_get_stats(TM_DRAM) before and after, with every other
 * thread parked, and wants the differences exactly:
 *
 * - N blocks of mixed small sizes allocated: allocations +N, in_use + their class sizes;
 * - half of them freed by the owner: frees +N/2, in_use back by those bytes;
 * - the other half freed by another thread (remote frees, not collected yet): frees +N/2,
 *   in_use back to where it started;
 * - the owner allocates again (collecting the remote frees) and frees: nothing counted twice;
 * - pages emptied and retired, segments released and reused: the counts carry over.
 */
#define _GNU_SOURCE 1
#include "tiermalloc.h"

#include "check.h"
#include <pthread.h>
#include <semaphore.h>

#define N 6000

static void *blocks[N];
static size_t sizes[N];
static sem_t go, done;

static tm_stats now(void) {
    tm_stats s;
    CHECK(tm_get_stats(TM_DRAM, &s) == 0, "tm_get_stats");
    return s;
}

/* The class size of a small request, as malloc_usable_size says. */
static size_t class_bytes(void *p) { return malloc_usable_size(p); }

static void *remote_freer(void *arg) {
    (void)arg;
    free(malloc(16)); /* this thread's heap exists before the counts are read */
    sem_post(&done);
    sem_wait(&go);
    for (int i = 1; i < N; i += 2) free(blocks[i]);
    sem_post(&done);
    sem_wait(&go); /* parked until the end */
    return NULL;
}

int main(void) {
    watchdog(60, "traffic_counts");
    sem_init(&go, 0, 0);
    sem_init(&done, 0, 0);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, remote_freer, NULL) == 0, "pthread_create");
    sem_wait(&done);
    /* Warm up: the calling thread's heap exists, its pages of these classes too. */
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < N; i++) blocks[i] = malloc(8 + (i * 37) % 1500);
        for (int i = 0; i < N; i++) free(blocks[i]);
    }

    tm_stats a = now();
    uint64_t bytes = 0, odd_bytes = 0;
    for (int i = 0; i < N; i++) {
        sizes[i] = 8 + (i * 7919) % 3000 + (i % 97 == 0 ? 20000 : 0);
        blocks[i] = malloc(sizes[i]);
        CHECK(blocks[i] != NULL, "malloc");
        bytes += class_bytes(blocks[i]);
        if (i % 2) odd_bytes += class_bytes(blocks[i]);
    }
    tm_stats b = now();
    CHECK(b.allocations - a.allocations == N, "allocations +%llu, want %d",
          (unsigned long long)(b.allocations - a.allocations), N);
    CHECK(b.frees == a.frees, "frees +%llu, want 0", (unsigned long long)(b.frees - a.frees));
    CHECK(b.in_use - a.in_use == bytes, "in_use +%llu, want %llu",
          (unsigned long long)(b.in_use - a.in_use), (unsigned long long)bytes);

    for (int i = 0; i < N; i += 2) free(blocks[i]);
    tm_stats c = now();
    CHECK(c.frees - b.frees == N / 2, "local frees +%llu, want %d",
          (unsigned long long)(c.frees - b.frees), N / 2);
    CHECK(c.allocations == b.allocations, "allocations moved on frees");
    CHECK(b.in_use - c.in_use == bytes - odd_bytes, "in_use -%llu, want %llu",
          (unsigned long long)(b.in_use - c.in_use), (unsigned long long)(bytes - odd_bytes));

    sem_post(&go);
    sem_wait(&done);
    tm_stats d = now();
    CHECK(d.frees - c.frees == N / 2, "remote frees +%llu, want %d",
          (unsigned long long)(d.frees - c.frees), N / 2);
    CHECK(d.in_use == a.in_use, "in_use %llu after every block went, want %llu",
          (unsigned long long)d.in_use, (unsigned long long)a.in_use);
    CHECK(d.allocations == b.allocations, "allocations moved on remote frees");

    /* The owner collects the remote frees as it allocates again; then frees everything, which
     * retires pages and lets segments go. Nothing may be counted twice or lost. */
    for (int round = 0; round < 4; round++) {
        for (int i = 0; i < N; i++) blocks[i] = malloc(sizes[i]);
        for (int i = 0; i < N; i++) free(blocks[i]);
    }
    malloc_trim(0);
    tm_stats e = now();
    CHECK(e.allocations - d.allocations == 4 * N, "allocations +%llu, want %d",
          (unsigned long long)(e.allocations - d.allocations), 4 * N);
    CHECK(e.frees - d.frees == 4 * N, "frees +%llu, want %d",
          (unsigned long long)(e.frees - d.frees), 4 * N);
    CHECK(e.in_use == a.in_use, "in_use %llu at the end, want %llu", (unsigned long long)e.in_use,
          (unsigned long long)a.in_use);

    sem_post(&go);
    pthread_join(t, NULL);
    return check_done();
}
