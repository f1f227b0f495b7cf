/* fork_stdio.c — fork() while other threads are busy in malloc/free and in stdio.
 *
 * The situation of glibc's tst-malloc-fork-deadlock: 4 threads allocate and free blocks of
 * mixed sizes, and do stdio that allocates while holding stdio locks (getline of a 50000-byte
 * line reallocs under the FILE lock, open_memstream grows its buffer with realloc under the
 * FILE lock, fopen/fclose, fprintf to a shared FILE); one more thread calls fflush(NULL), which
 * takes the list-of-all-FILEs lock and every FILE's lock. Meanwhile the main thread forks 50
 * times and a second thread forks 25 times, concurrently. Each child, which has only the forking
 * thread and whatever locks the other threads held at the fork, must be able to malloc, free,
 * realloc, use stdio (printf), start a thread that allocates, and _exit(0).
 *
 * An allocator that does not take its locks in a pthread_atfork prepare handler (and release
 * or reinitialise them in the parent/child handlers), or whose handlers are ordered wrongly
 * against glibc's stdio locking, leaves a child stuck on a lock whose owner does not exist in
 * the child. A child that is not done after 5 s is killed and reported; the watchdog ends the
 * whole program if the parent itself hangs (e.g. in fork's prepare handlers).
 */
#include "check.h"

#define WORKERS 4
#define FORKS 50
#define THREAD_FORKS 25

static volatile int stop;
static FILE *shared_null; /* one FILE shared by all workers: its lock is contended */
static char long_line_path[] = "/tmp/fork_stdio_line_XXXXXX";

static void *worker(void *arg)
{
    uint64_t rng = (uint64_t)(uintptr_t)arg * 0x9E3779B97F4A7C15ULL + 1;
    enum { SLOTS = 64 };
    void *slot[SLOTS] = {0};
    unsigned long iter = 0;
    FILE *lines = fopen(long_line_path, "r");
    CHECK(lines != NULL, "fopen(%s) failed", long_line_path);
    while (!__atomic_load_n(&stop, __ATOMIC_RELAXED)) {
        uint64_t r = rng_next(&rng);
        int i = (int)(r % SLOTS);
        free(slot[i]);
        size_t s;
        switch ((r >> 8) % 16) {
        case 0: s = 100000 + (r >> 16) % 400000; break; /* large */
        case 1: s = 4096 + (r >> 16) % 60000; break;
        default: s = 1 + (r >> 16) % 512; break;
        }
        slot[i] = malloc(s);
        if (slot[i])
            memset(slot[i], (int)(r & 0xff), s < 256 ? s : 256);

        switch (iter++ % 8) {
        case 0: {
            FILE *f = fopen("/dev/null", "w");
            if (f) {
                fprintf(f, "worker %lu %d\n", iter, i);
                fclose(f);
            }
            break;
        }
        case 1: {
            char *buf = NULL;
            size_t len = 0;
            FILE *m = open_memstream(&buf, &len);
            if (m) {
                for (int k = 0; k < 40; k++)
                    fprintf(m, "line %d of some text that makes the buffer grow %lu\n", k, iter);
                fclose(m);
            }
            free(buf);
            break;
        }
        case 2:
            fprintf(shared_null, "shared %lu\n", iter);
            fflush(shared_null);
            break;
        case 3: {
            char tmp[64];
            snprintf(tmp, sizeof tmp, "%lu %f", iter, (double)iter / 3.0);
            char *d = strdup(tmp);
            free(d);
            break;
        }
        case 4:
            if (lines) {
                rewind(lines);
                char *line = NULL;
                size_t cap = 0;
                ssize_t got = getline(&line, &cap, lines);
                CHECK(got == 50001, "getline returned %zd, want 50001", got);
                free(line);
            }
            break;
        default:
            break;
        }
    }
    for (int i = 0; i < SLOTS; i++)
        free(slot[i]);
    if (lines)
        fclose(lines);
    return NULL;
}

static void *flush_all(void *arg)
{
    (void)arg;
    while (!__atomic_load_n(&stop, __ATOMIC_RELAXED))
        fflush(NULL);
    return NULL;
}

static void *child_thread(void *arg)
{
    (void)arg;
    for (int i = 0; i < 100; i++) {
        void *p = malloc((size_t)(i * 37 + 1));
        if (!p)
            return (void *)1;
        memset(p, 1, (size_t)(i * 37 + 1));
        free(p);
    }
    void *big = malloc(1 << 20);
    if (!big)
        return (void *)1;
    free(big);
    return NULL;
}

/* Runs in the child: returns the exit status. Only the forking thread exists here. */
static int child_work(int n)
{
    int status = 0;
    void *blocks[32];
    for (int i = 0; i < 32; i++) {
        size_t s = i % 8 == 7 ? (size_t)200000 : (size_t)(16 + i * 24);
        blocks[i] = malloc(s);
        if (!blocks[i]) {
            raw_msg("FAIL child: malloc returned NULL\n");
            status = 1;
            continue;
        }
        memset(blocks[i], 0x5A, s);
    }
    for (int i = 0; i < 32; i += 2) {
        void *q = realloc(blocks[i], 5000);
        if (!q) {
            raw_msg("FAIL child: realloc returned NULL\n");
            status = 1;
        } else {
            blocks[i] = q;
        }
    }
    for (int i = 0; i < 32; i++)
        free(blocks[i]);
    /* stdio in the child: takes stdout's lock and may allocate its buffer */
    char *s = NULL;
    if (asprintf(&s, "child %d of fork_stdio: malloc/free/realloc ok", n) < 0) {
        raw_msg("FAIL child: asprintf failed\n");
        return 1;
    }
    printf("%s\n", s);
    fflush(stdout);
    free(s);
    /* a new thread in the child, allocating */
    pthread_t t;
    if (pthread_create(&t, NULL, child_thread, NULL) != 0) {
        raw_msg("FAIL child: pthread_create failed\n");
        return 1;
    }
    void *ret = NULL;
    pthread_join(t, &ret);
    if (ret != NULL) {
        raw_msg("FAIL child: malloc failed in a thread of the child\n");
        status = 1;
    }
    return status;
}

/* waitpid with a deadline; on timeout kill the child and report. */
static int wait_child(pid_t pid, int n, unsigned seconds)
{
    struct timespec nap = {0, 1000000};
    for (unsigned long waited_ms = 0;; waited_ms++) {
        int st = 0;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) {
            if (WIFSIGNALED(st))
                CHECK(0, "child %d killed by signal %d", n, WTERMSIG(st));
            else
                CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child %d exited with status %d", n,
                      WEXITSTATUS(st));
            return 1;
        }
        if (r < 0) {
            CHECK(0, "waitpid(child %d) failed: errno %d", n, errno);
            return 0;
        }
        if (waited_ms >= seconds * 1000u) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            CHECK(0, "child %d still running after %u s: deadlocked after fork (killed)", n,
                  seconds);
            return 0;
        }
        nanosleep(&nap, NULL);
    }
}

static int child_work(int n);
static int wait_child(pid_t pid, int n, unsigned seconds);

/* Forks `count` times, each child does child_work; returns the number of hung children. */
static int fork_loop(int count, int base)
{
    int hung = 0;
    for (int n = base; n < base + count && hung == 0; n++) {
        pid_t pid = fork();
        if (pid == 0) {
            alarm(15); /* belt and braces: a stuck child dies even if the parent is gone */
            _exit(child_work(n));
        }
        if (!CHECK(pid > 0, "fork %d failed: errno %d", n, errno))
            break;
        if (!wait_child(pid, n, 5))
            hung++;
        /* the parent keeps allocating too */
        void *p = malloc((size_t)(n * 1000 + 1));
        CHECK(p != NULL, "parent malloc after fork %d failed", n);
        free(p);
    }
    return hung;
}

static void *forker(void *arg)
{
    (void)arg;
    fork_loop(THREAD_FORKS, 1000);
    return NULL;
}

int main(void)
{
    watchdog(30, "fork_stdio");
    shared_null = fopen("/dev/null", "w");
    if (!CHECK(shared_null != NULL, "fopen(/dev/null) failed"))
        return check_done();
    /* A file with one 50000-character line, for getline. */
    int fd = mkstemp(long_line_path);
    if (!CHECK(fd >= 0, "mkstemp failed"))
        return check_done();
    FILE *lf = fdopen(fd, "w");
    for (int i = 0; i < 50000; i++)
        fputc('x', lf);
    fputc('\n', lf);
    fclose(lf);

    pthread_t th[WORKERS + 1];
    for (int i = 0; i < WORKERS; i++)
        if (!CHECK(pthread_create(&th[i], NULL, worker, (void *)(uintptr_t)(i + 1)) == 0,
                   "pthread_create failed"))
            return check_done();
    if (!CHECK(pthread_create(&th[WORKERS], NULL, flush_all, NULL) == 0, "pthread_create failed"))
        return check_done();

    struct timespec settle = {0, 20 * 1000000};
    nanosleep(&settle, NULL); /* let the workers get going */

    pthread_t second_forker;
    int have_forker =
        CHECK(pthread_create(&second_forker, NULL, forker, NULL) == 0, "pthread_create failed");
    fflush(stdout);
    fork_loop(FORKS, 0);
    if (have_forker)
        pthread_join(second_forker, NULL);

    __atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
    for (int i = 0; i < WORKERS + 1; i++)
        pthread_join(th[i], NULL);
    fclose(shared_null);
    unlink(long_line_path);
    return check_done();
}
