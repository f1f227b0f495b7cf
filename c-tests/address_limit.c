/* address_limit.c — the library works in a small address space (RLIMIT_AS, `ulimit -v`):
 * start-up reserves only what it uses, so
 *  - under 64 MiB, malloc works from its first call (small, 1 MiB and 8 MiB blocks; the page
 *    map takes 32 MiB of address space in .bss), and a request the limit cannot hold fails
 *    with NULL + ENOMEM instead of crashing;
 *  - under 200 MiB (glibc's tst-malloc-thread-fail cap), 8 threads start and allocate, and
 *    allocation failures inside threads are NULL + ENOMEM;
 *  - python3, if installed, starts and runs under a 100 MB cap (`ulimit -v 100000`), as it does
 *    with glibc's malloc.
 * Each case re-executes this program (or python3) after setrlimit, so that the library starts
 * up, and maps whatever it maps first, under the limit.
 */
#include "check.h"

static int small_space(void)
{
    void *blocks[1000];
    for (int i = 0; i < 1000; i++) {
        blocks[i] = malloc((size_t)(i % 200) * 8 + 1);
        if (!CHECK(blocks[i] != NULL, "malloc %d failed under 64 MiB", i))
            return check_done();
    }
    char *mib = malloc(1 << 20), *big = malloc(8 << 20);
    CHECK(mib && big, "1 MiB / 8 MiB blocks failed under 64 MiB: %p %p", (void *)mib, (void *)big);
    if (big)
        memset(big, 1, 8 << 20);
    errno = 0;
    void *too_big = malloc(100 << 20);
    CHECK(too_big == NULL && errno == ENOMEM, "malloc(100 MiB) under 64 MiB = %p, errno %d",
          too_big, errno);
    free(mib);
    free(big);
    for (int i = 0; i < 1000; i++)
        free(blocks[i]);
    return check_done();
}

static void *thread_work(void *arg)
{
    (void)arg;
    for (int round = 0; round < 100; round++) {
        void *p[64];
        for (int i = 0; i < 64; i++)
            p[i] = malloc((size_t)(i * 37 % 4000) + 1);
        for (int i = 0; i < 64; i++)
            free(p[i]);
    }
    errno = 0;
    void *huge = malloc(300 << 20);
    int e = errno;
    CHECK(huge == NULL && e == ENOMEM, "malloc(300 MiB) in a thread under 200 MiB = %p, errno %d",
          huge, e);
    return NULL;
}

static int thread_space(void)
{
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 1 << 20);
    pthread_t t[8];
    int started = 0;
    for (int i = 0; i < 8; i++) {
        int rc = pthread_create(&t[i], &attr, thread_work, NULL);
        if (CHECK(rc == 0, "pthread_create %d under 200 MiB: %s", i, strerror(rc)))
            started++;
        else
            break;
    }
    for (int i = 0; i < started; i++)
        pthread_join(t[i], NULL);
    return check_done();
}

/* Runs argv with RLIMIT_AS = limit; returns the wait status. */
static int run_limited(size_t limit, char *const argv[])
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        struct rlimit rl = {limit, limit};
        if (setrlimit(RLIMIT_AS, &rl) != 0)
            _exit(126);
        execvp(argv[0], argv);
        _exit(127);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    return st;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--small") == 0)
        return small_space();
    if (argc > 1 && strcmp(argv[1], "--threads") == 0)
        return thread_space();
    watchdog(60, "address_limit");
    char *small[] = {"/proc/self/exe", "--small", NULL};
    int st = run_limited(64 << 20, small);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "under RLIMIT_AS 64 MiB: status %#x", st);
    char *threads[] = {"/proc/self/exe", "--threads", NULL};
    st = run_limited(200 << 20, threads);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "under RLIMIT_AS 200 MiB: status %#x", st);
    char *python[] = {"python3", "-c",
                      "import json; assert len(json.dumps(list(range(100000)))) == 688890", NULL};
    st = run_limited(100000 << 10, python);
    if (WIFEXITED(st) && WEXITSTATUS(st) == 127)
        printf("python3 not found: skipped\n");
    else
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "python3 under RLIMIT_AS 100 MB: status %#x",
              st);
    return check_done();
}
