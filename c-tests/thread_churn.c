/* thread_churn.c — 3000 short-lived threads must not make memory use grow without bound.
 *
 * 30 batches of 100 threads run one after the other. Each thread allocates and frees about
 * 3 MiB in total (mostly small blocks, some medium, a few large), keeping at most a handful
 * alive at a time, and leaves 4 blocks alive that the main thread checks and frees after the
 * thread has exited (so the exiting thread's heap still owns live blocks when it dies, and
 * those blocks come back as "remote" frees later).
 *
 * An allocator with per-thread heaps must give an exited thread's memory back for reuse
 * (abandon/adopt the heap, or return its pages), or memory grows with the number of threads
 * ever created: 3000 threads x even 256 KiB each retained would be 750 MiB. VmRSS from
 * /proc/self/status must stay below 200 MiB, and the growth between the 10th and the 30th
 * batch must stay below 64 MiB (a steady state, not a slow leak).
 */
#include "check.h"

enum { BATCHES = 30, PER_BATCH = 100, KEEP = 4, WINDOW = 16 };
#define RSS_LIMIT_KIB (200L * 1024)
#define GROWTH_LIMIT_KIB (64L * 1024)

struct job {
    int id;
    void *kept[KEEP];
    size_t kept_size[KEEP];
    int failed;
};

static void *thread_body(void *arg)
{
    struct job *j = arg;
    uint64_t rng = (uint64_t)j->id * 0x9E3779B97F4A7C15ULL + 12345;
    void *win[WINDOW] = {0};
    size_t win_size[WINDOW] = {0};
    size_t total = 0;
    for (int i = 0; total < (3u << 20); i++) {
        uint64_t r = rng_next(&rng);
        size_t s;
        unsigned cls = (unsigned)(r % 100);
        if (cls < 80)
            s = 8 + (r >> 8) % 1024;          /* small */
        else if (cls < 97)
            s = 1024 + (r >> 8) % (64 << 10); /* medium */
        else
            s = (256u << 10) + (r >> 8) % (768u << 10); /* large */
        int k = i % WINDOW;
        if (win[k]) {
            if (!pattern_ok(win[k], win_size[k], (uint64_t)j->id * 1000 + (uint64_t)k))
                j->failed = 1;
            free(win[k]);
        }
        win[k] = malloc(s);
        if (!win[k]) {
            j->failed = 2;
            break;
        }
        win_size[k] = s;
        pattern_fill(win[k], s, (uint64_t)j->id * 1000 + (uint64_t)k);
        total += s;
    }
    for (int k = 0; k < WINDOW; k++) {
        if (win[k] && !pattern_ok(win[k], win_size[k], (uint64_t)j->id * 1000 + (uint64_t)k))
            j->failed = 1;
        free(win[k]);
    }
    /* Blocks that outlive this thread. */
    for (int k = 0; k < KEEP; k++) {
        size_t s = k == KEEP - 1 ? (size_t)(100u << 10) : (size_t)(24 + 200 * k);
        j->kept[k] = malloc(s);
        j->kept_size[k] = s;
        if (j->kept[k])
            pattern_fill(j->kept[k], s, (uint64_t)j->id * 7 + (uint64_t)k);
        else
            j->failed = 2;
    }
    return NULL;
}

int main(void)
{
    watchdog(50, "thread_churn");
    static struct job jobs[PER_BATCH];
    pthread_t th[PER_BATCH];
    long rss_after_10 = 0, rss_max = 0;
    int id = 0;
    for (int b = 0; b < BATCHES; b++) {
        int started = 0;
        for (int i = 0; i < PER_BATCH; i++) {
            memset(&jobs[i], 0, sizeof jobs[i]);
            jobs[i].id = id++;
            if (!CHECK(pthread_create(&th[i], NULL, thread_body, &jobs[i]) == 0,
                       "pthread_create failed in batch %d", b))
                break;
            started++;
        }
        for (int i = 0; i < started; i++)
            pthread_join(th[i], NULL);
        /* The threads are gone; their kept blocks are freed here, after a content check. */
        for (int i = 0; i < started; i++) {
            CHECK(jobs[i].failed != 1, "thread %d saw one of its blocks change under it",
                  jobs[i].id);
            CHECK(jobs[i].failed != 2, "malloc failed in thread %d", jobs[i].id);
            for (int k = 0; k < KEEP; k++) {
                if (!jobs[i].kept[k])
                    continue;
                CHECK(pattern_ok(jobs[i].kept[k], jobs[i].kept_size[k],
                                 (uint64_t)jobs[i].id * 7 + (uint64_t)k),
                      "block %d of exited thread %d (%zu bytes) was corrupted", k, jobs[i].id,
                      jobs[i].kept_size[k]);
                free(jobs[i].kept[k]);
            }
        }
        long rss = vm_rss_kib();
        if (rss > rss_max)
            rss_max = rss;
        if (b == 9)
            rss_after_10 = rss;
        if (b % 10 == 9)
            printf("batch %d: %d threads so far, VmRSS %ld KiB\n", b + 1, id, rss);
        if (!CHECK(rss < RSS_LIMIT_KIB, "VmRSS %ld KiB after %d threads exceeds %ld KiB", rss, id,
                   RSS_LIMIT_KIB))
            break;
    }
    long rss_end = vm_rss_kib();
    CHECK(rss_end > 0, "could not read VmRSS from /proc/self/status");
    CHECK(rss_end - rss_after_10 < GROWTH_LIMIT_KIB,
          "VmRSS grew from %ld KiB (after 1000 threads) to %ld KiB (after %d threads): memory of "
          "exited threads is "
          "not reused",
          rss_after_10, rss_end, id);
    printf("max VmRSS %ld KiB, final %ld KiB\n", rss_max, rss_end);
    return check_done();
}
