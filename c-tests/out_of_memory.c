/* out_of_memory.c — running out of address space, in several threads at once.
 *
 * The situation of glibc's tst-malloc-thread-fail: a child process lowers RLIMIT_AS to its
 * current size + 384 MiB, then 4 threads (created before the limit, so their stacks exist)
 * allocate with the entry points (malloc, calloc, realloc(NULL, n), posix_memalign,
 * aligned_alloc) blocks of 16 B .. 1 MiB until allocations fail. Every call must either
 * succeed with writable memory or fail with NULL + ENOMEM (posix_memalign: return ENOMEM, and
 * errno ENOMEM as glibc leaves it);
 * a failed realloc keeps its block. Nothing may crash or abort — also not when the allocator's
 * own metadata cannot be mapped. Then everything is freed and the same threads must be able to
 * allocate 64 MiB again; a new thread must be able to allocate too.
 */
#include "check.h"

enum { THREADS = 4, MAX_BLOCKS = 200000 };
#define HEADROOM ((size_t)384 << 20)

static pthread_barrier_t start_line, limit_set, freed_all;
static int fail_count[THREADS], success_count[THREADS];

static long vm_size_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    long kib = 0;
    char line[256];
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "VmSize:", 7) == 0)
            kib = strtol(line + 7, NULL, 10);
    if (f)
        fclose(f);
    return kib;
}

static void *grab(void *arg)
{
    int id = (int)(uintptr_t)arg;
    uint64_t rng = (uint64_t)id * 7919 + 3;
    void **blocks = malloc(MAX_BLOCKS * sizeof *blocks); /* before the limit */
    size_t *sizes = malloc(MAX_BLOCKS * sizeof *sizes);
    if (blocks)
        memset(blocks, 0, MAX_BLOCKS * sizeof *blocks);
    pthread_barrier_wait(&start_line);
    pthread_barrier_wait(&limit_set);
    int n = 0, consecutive_failures = 0;
    while (blocks && sizes && n < MAX_BLOCKS && consecutive_failures < 64) {
        uint64_t r = rng_next(&rng);
        size_t s =
            r % 8 == 0 ? (size_t)(64u << 10) + (r >> 8) % (960u << 10) : 16 + (r >> 8) % 4000;
        unsigned char *p = NULL;
        int rc = 0;
        set_errno(0);
        switch ((r >> 40) % 5) {
        case 0: p = malloc(s); break;
        case 1: p = calloc(1, s); break;
        case 2: p = realloc(NULL, s); break;
        case 3: rc = posix_memalign((void **)&p, 256, s); if (rc) p = NULL; break;
        default: p = aligned_alloc(4096, s); break;
        }
        int e = get_errno();
        if (p == NULL) {
            if ((r >> 40) % 5 == 3)
                CHECK(rc == ENOMEM && e == ENOMEM,
                      "thread %d: failed posix_memalign(256, %zu) returned %d, errno %d (want "
                      "ENOMEM, as glibc's)",
                      id, s, rc, e);
            else
                CHECK(e == ENOMEM,
                      "thread %d: failed allocation of %zu (route %d) left errno %d (want ENOMEM)",
                      id, s, (int)((r >> 40) % 5), e);
            fail_count[id]++;
            consecutive_failures++;
            /* A realloc that cannot grow keeps the old block. */
            if (n > 0 && blocks[n - 1]) {
                unsigned char *old = blocks[n - 1];
                size_t os = sizes[n - 1];
                old[0] = 0xA5;
                old[os - 1] = 0x5A;
                set_errno(0);
                void *q = realloc(old, os + (64u << 20));
                if (q) {
                    blocks[n - 1] = q;
                    sizes[n - 1] = os + (64u << 20);
                    ((unsigned char *)q)[sizes[n - 1] - 1] = 0x5A;
                } else {
                    CHECK(get_errno() == ENOMEM, "thread %d: failed realloc left errno %d", id,
                          get_errno());
                    CHECK(old[0] == 0xA5 && old[os - 1] == 0x5A,
                          "thread %d: failed realloc damaged the block", id);
                }
            }
            continue;
        }
        consecutive_failures = 0;
        success_count[id]++;
        p[0] = (unsigned char)id;
        p[s - 1] = (unsigned char)id;
        blocks[n] = p;
        sizes[n] = s;
        n++;
    }
    for (int i = 0; i < n; i++) {
        unsigned char *p = blocks[i];
        if (!p)
            continue;
        CHECK(p[0] == (unsigned char)id || p[0] == 0xA5, "thread %d: block %d's first byte changed",
              id, i);
        free(p);
    }
    pthread_barrier_wait(&freed_all);
    /* With everything freed, allocation works again. */
    void *again[64];
    int ok = 0;
    for (int i = 0; i < 16; i++) {
        again[i] = malloc(1 << 20);
        if (again[i]) {
            memset(again[i], 1, 1 << 20);
            ok++;
        }
    }
    CHECK(ok == 16,
          "thread %d: after freeing everything only %d of 16 1-MiB blocks could be allocated", id,
          ok);
    for (int i = 0; i < 16; i++)
        free(again[i]);
    free(blocks);
    free(sizes);
    return NULL;
}

static void *late_thread(void *arg)
{
    (void)arg;
    void *p = malloc(100000);
    void *q = calloc(100, 100);
    int ok = p && q;
    free(p);
    free(q);
    return ok ? NULL : (void *)1;
}

static int child(void)
{
    pthread_barrier_init(&start_line, NULL, THREADS + 1);
    pthread_barrier_init(&limit_set, NULL, THREADS + 1);
    pthread_barrier_init(&freed_all, NULL, THREADS);
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++)
        if (pthread_create(&th[i], NULL, grab, (void *)(uintptr_t)i) != 0) {
            raw_msg("FAIL out_of_memory: pthread_create failed\n");
            return 1;
        }
    pthread_barrier_wait(&start_line);
    struct rlimit rl;
    size_t now = (size_t)vm_size_kib() * 1024;
    rl.rlim_cur = rl.rlim_max = now + HEADROOM;
    if (setrlimit(RLIMIT_AS, &rl) != 0) {
        raw_msg("FAIL out_of_memory: setrlimit(RLIMIT_AS) failed\n");
        return 1;
    }
    pthread_barrier_wait(&limit_set);
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    int fails = 0, successes = 0;
    for (int i = 0; i < THREADS; i++) {
        fails += fail_count[i];
        successes += success_count[i];
    }
    CHECK(fails > 0, "no allocation failed under RLIMIT_AS = VmSize + %zu MiB (%d succeeded)",
          HEADROOM >> 20, successes);
    CHECK(successes > 100, "only %d allocations succeeded before the limit", successes);
    /* A thread created now (its stack needs address space too: there is room again). */
    pthread_t t;
    if (CHECK(pthread_create(&t, NULL, late_thread, NULL) == 0,
              "pthread_create after freeing everything failed")) {
        void *ret = NULL;
        pthread_join(t, &ret);
        CHECK(ret == NULL, "a new thread could not allocate after the memory was freed");
    }
    printf("out of memory child: %d allocations succeeded, %d failed cleanly\n", successes, fails);
    return check_done();
}

int main(void)
{
    watchdog(40, "out_of_memory");
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0)
        _exit(child());
    if (!CHECK(pid > 0, "fork failed"))
        return check_done();
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    if (WIFSIGNALED(st))
        CHECK(0,
              "the process running out of memory was killed by signal %d (crash or abort instead "
              "of NULL+ENOMEM)",
              WTERMSIG(st));
    else
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "the process running out of memory exited with status %d", WEXITSTATUS(st));
    return check_done();
}
