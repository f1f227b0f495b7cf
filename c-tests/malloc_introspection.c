/* malloc_introspection.c — glibc's introspection names answer with the library's figures:
 *  - mallinfo2().uordblks (and mallinfo's) is non-zero once blocks are live, grows by at least
 *    the bytes allocated and falls back when they are freed; hblks/hblkhd count large blocks;
 *  - 5000 threads that each malloc/free/malloc 32 bytes, joined one by one, with the main
 *    thread freeing each result, leave uordblks within 5000 bytes of where it started (the
 *    scenario of glibc's tst-malloc-tcache-leak, whose assert on uordblks aborted under
 *    LD_PRELOAD when glibc answered for its own empty arena);
 *  - malloc_stats writes glibc's summary to stderr, malloc_info writes XML and rejects options
 *    != 0 with EINVAL, malloc_trim returns 0 or 1;
 *  - mallopt accepts glibc's parameters with the values glibc accepts (1) and refuses others (0);
 *  - malloc_stats in a thread with a cancellation pending writes its whole report (the tier
 *    lines after glibc's summary), and the thread is cancelled at its next cancellation point.
 */
#include "check.h"

static void *worker(void *arg)
{
    (void)arg;
    void *p = malloc(32);
    __asm__ volatile("" ::: "memory");
    free(p);
    return malloc(32);
}

/* Called with a cancellation pending: malloc_stats must finish, and the write after it (a
 * cancellation point) must not happen. */
static void *reporter_with_cancel_pending(void *arg)
{
    (void)arg;
    pthread_cancel(pthread_self());
    malloc_stats();
    static const char after[] = "written after malloc_stats\n";
    if (write(2, after, sizeof after - 1) < 0) return NULL;
    return NULL;
}

static void stats_in_cancelled_thread(void *arg)
{
    (void)arg;
    pthread_t t;
    void *rv = NULL;
    if (pthread_create(&t, NULL, reporter_with_cancel_pending, NULL) != 0) _exit(2);
    pthread_join(t, &rv);
    _exit(rv == PTHREAD_CANCELED ? 0 : 3);
}

static int stats_survive_cancellation(void)
{
    char err[16384];
    int st = in_child(stats_in_cancelled_thread, NULL, err, sizeof err);
    return CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the thread was not cancelled (status %#x)",
                 st) &&
           CHECK(strstr(err, "max mmap bytes") && strstr(err, "allocations,") &&
                     !strstr(err, "written after malloc_stats"),
                 "stderr of the cancelled thread: %s", err);
}

int main(void)
{
    watchdog(60, "malloc_introspection");
    void *keep = calloc(1, 100);
    struct mallinfo2 a = mallinfo2();
    CHECK(a.uordblks != 0, "mallinfo2().uordblks = 0 with a block live");
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    CHECK(mallinfo().uordblks != 0, "mallinfo().uordblks = 0 with a block live");
#pragma GCC diagnostic pop
    char *blocks[100];
    for (int i = 0; i < 100; i++)
        blocks[i] = malloc(1000);
    char *big = malloc(4 << 20);
    struct mallinfo2 b = mallinfo2();
    CHECK(b.uordblks >= a.uordblks + 100 * 1000 + (4 << 20), "uordblks %zu -> %zu after 4.1 MB",
          a.uordblks, b.uordblks);
    CHECK(b.hblks >= 1 && b.hblkhd >= (4 << 20), "hblks %zu hblkhd %zu with a 4 MiB block", b.hblks,
          b.hblkhd);
    CHECK(b.arena > 0 && b.fordblks <= b.arena, "arena %zu fordblks %zu", b.arena, b.fordblks);
    for (int i = 0; i < 100; i++)
        free(blocks[i]);
    free(big);
    struct mallinfo2 c = mallinfo2();
    CHECK(c.uordblks <= a.uordblks + 1000, "uordblks %zu after freeing, was %zu", c.uordblks,
          a.uordblks);

    struct mallinfo2 before = mallinfo2();
    for (int i = 0; i < 5000; i++) {
        pthread_t t;
        void *r = NULL;
        if (!CHECK(pthread_create(&t, NULL, worker, NULL) == 0, "pthread_create %d", i))
            break;
        pthread_join(t, &r);
        free(r);
    }
    struct mallinfo2 after = mallinfo2();
    CHECK(after.uordblks <= before.uordblks + 5000, "uordblks %zu -> %zu after 5000 threads",
          before.uordblks, after.uordblks);

    char err[4096];
    int st = in_child((void (*)(void *))malloc_stats, NULL, err, sizeof err);
    CHECK(WIFEXITED(st) && strstr(err, "in use bytes") && strstr(err, "system bytes"),
          "malloc_stats wrote: %s", err);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (CHECK(f != NULL, "open_memstream")) {
        CHECK(malloc_info(0, f) == 0, "malloc_info(0) failed");
        fclose(f);
        CHECK(buf && strstr(buf, "<malloc") && strstr(buf, "</malloc>"), "malloc_info wrote: %s",
              buf ? buf : "");
        free(buf);
    }
    errno = 0;
    CHECK(malloc_info(1, stdout) == -1 && errno == EINVAL, "malloc_info(1) did not give EINVAL");
    int trimmed = malloc_trim(0);
    CHECK(trimmed == 0 || trimmed == 1, "malloc_trim = %d", trimmed);
    /* glibc's parameters are accepted with the values glibc accepts (they have nothing to
     * tune here), anything else refused: glibc's answers. */
    CHECK(mallopt(M_ARENA_MAX, 1) == 1, "mallopt(M_ARENA_MAX, 1) refused");
    CHECK(mallopt(M_MMAP_THRESHOLD, 64 * 1024) == 1 && mallopt(M_TRIM_THRESHOLD, -1) == 1 &&
              mallopt(M_TOP_PAD, 0) == 1 && mallopt(M_MMAP_MAX, 0) == 1 &&
              mallopt(M_PERTURB, 0) == 1 && mallopt(M_CHECK_ACTION, 1) == 1 &&
              mallopt(M_ARENA_TEST, 2) == 1 && mallopt(M_MXFAST, 0) == 1,
          "mallopt refused one of glibc's parameters");
    CHECK(mallopt(M_ARENA_MAX, 0) == 0 && mallopt(M_MXFAST, 1000) == 0 && mallopt(12345, 1) == 0,
          "mallopt accepted a value or parameter glibc refuses");
    CHECK(stats_survive_cancellation(), "malloc_stats was cut short by a pending cancellation");
    free(keep);
    return check_done();
}
