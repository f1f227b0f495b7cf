/* process_lifecycle.c — allocation at the edges of a process's life.
 *
 * - Before any constructor: a function in the executable's .preinit_array runs before the
 *   initialisers of every shared library, the allocator's included. It mallocs, callocs,
 *   reallocs, posix_memaligns and frees; main() checks what it saw. The allocator must
 *   initialise lazily on that first call.
 * - After main: an atexit handler and a destructor allocate and free.
 * - exit() while other threads are allocating: children of this program (re-executed through
 *   /proc/self/exe, so each starts from scratch) start 3 threads that loop on malloc/realloc/free
 *   and return from main (or call exit() from one of the threads) while those threads run. The
 *   allocator's exit-time work (statistics printing, flushing, unmapping) must not crash them:
 *   every child must exit with status 0, not die of a signal. Half the children run with
 *   TIERMALLOC_SHOW_STATS=1 so that the library's at-exit statistics report runs during the
 *   race too (other allocators ignore the variable).
 */
#include "check.h"

/* ---- before every constructor ---- */

static int preinit_ran, preinit_bad;
static unsigned char *preinit_block;

static void early_allocations(int argc, char **argv, char **envp)
{
    (void)argc;
    (void)argv;
    (void)envp;
    preinit_ran = 1;
    unsigned char *p = malloc(100);
    unsigned char *c = calloc(10, 100);
    if (!p || !c) {
        preinit_bad |= 1;
    } else {
        memset(p, 0x55, 100);
        for (int i = 0; i < 1000; i++)
            if (c[i])
                preinit_bad |= 2;
        unsigned char *r = realloc(p, 100000);
        if (!r) {
            preinit_bad |= 4;
        } else {
            for (int i = 0; i < 100; i++)
                if (r[i] != 0x55)
                    preinit_bad |= 8;
            p = r;
        }
    }
    void *a = NULL;
    if (posix_memalign(&a, 4096, 5000) != 0 || !is_aligned(a, 4096))
        preinit_bad |= 16;
    void *big = malloc(4 << 20);
    if (!big)
        preinit_bad |= 32;
    free(big);
    free(a);
    free(c);
    free(p);
    /* One block stays allocated across the whole run and is freed by main. */
    preinit_block = malloc(777);
    if (preinit_block)
        memset(preinit_block, 0x7A, 777);
}

__attribute__((section(".preinit_array"),
               used)) static void (*const preinit_entry)(int, char **, char **) = early_allocations;

/* ---- after main ---- */

static void late_allocations(void)
{
    void *p = malloc(300);
    void *q = calloc(3, 3000);
    void *r = realloc(p, 70000);
    if (!p || !q || !r) {
        raw_msg("FAIL process_lifecycle: allocation after main returned failed\n");
        _exit(1);
    }
    free(r);
    free(q);
}

__attribute__((destructor)) static void destructor_allocations(void)
{
    late_allocations();
}

/* ---- exit() racing with allocating threads (in a child process) ---- */

static volatile int spinning;

static void *allocate_forever(void *arg)
{
    uint64_t rng = (uint64_t)(uintptr_t)arg + 1;
    void *slot[64] = {0};
    __atomic_fetch_add(&spinning, 1, __ATOMIC_RELAXED);
    for (;;) {
        uint64_t r = rng_next(&rng);
        int i = (int)(r % 64);
        size_t s = (r >> 8) % 16 == 0 ? (size_t)(100000 + (r >> 20) % 900000)
                                      : (size_t)(1 + (r >> 20) % 2000);
        if (slot[i] && (r & 0x100)) {
            void *q = realloc(slot[i], s);
            if (q)
                slot[i] = q;
        } else {
            free(slot[i]);
            slot[i] = malloc(s);
        }
        if (slot[i])
            ((unsigned char *)slot[i])[0] = (unsigned char)r;
    }
    return NULL;
}

static void *exit_from_thread(void *arg)
{
    (void)arg;
    struct timespec ts = {0, 3 * 1000000};
    nanosleep(&ts, NULL);
    exit(0);
    return NULL;
}

static int exit_race_child(int variant)
{
    pthread_t t;
    for (int i = 0; i < 3; i++)
        if (pthread_create(&t, NULL, allocate_forever, (void *)(uintptr_t)i) != 0)
            return 2;
    while (__atomic_load_n(&spinning, __ATOMIC_RELAXED) < 3)
        sched_yield();
    struct timespec ts = {0, 5 * 1000000};
    nanosleep(&ts, NULL);
    if (variant == 1) {
        if (pthread_create(&t, NULL, exit_from_thread, NULL) != 0)
            return 2;
        for (;;) /* main keeps allocating until the other thread's exit() ends the process */
            free(malloc(64));
    }
    return 0; /* exit() runs atexit handlers and destructors while the threads allocate */
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--exit-race") == 0)
        return exit_race_child(atoi(argv[2]));

    watchdog(40, "process_lifecycle");
    atexit(late_allocations);

    CHECK(preinit_ran, "the .preinit_array function did not run");
    CHECK(
        preinit_bad == 0,
        "allocations before any constructor misbehaved: flags %#x (1 malloc/calloc NULL, 2 calloc "
        "not zero, 4 realloc NULL, 8 realloc lost data, 16 posix_memalign, 32 malloc(4 MiB))",
        preinit_bad);
    if (CHECK(preinit_block != NULL, "malloc(777) in .preinit_array returned NULL")) {
        int ok = 1;
        for (int i = 0; i < 777; i++)
            ok &= preinit_block[i] == 0x7A;
        CHECK(ok, "a block allocated before any constructor ran was overwritten by main's start");
        free(preinit_block);
    }

    /* 16 children race exit() against allocating threads. */
    for (int i = 0; i < 16; i++) {
        int variant = i % 2;
        int show_stats = (i / 2) % 2;
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            char var[8];
            snprintf(var, sizeof var, "%d", variant);
            if (show_stats)
                setenv("TIERMALLOC_SHOW_STATS", "1", 1);
            char *args[] = {argv[0], "--exit-race", var, NULL};
            execv("/proc/self/exe", args);
            _exit(127);
        }
        if (!CHECK(pid > 0, "fork failed"))
            break;
        int st = 0;
        pid_t w;
        do
            w = waitpid(pid, &st, 0);
        while (w < 0 && errno == EINTR);
        if (WIFSIGNALED(st))
            CHECK(0,
                  "child %d (%s, stats %s) was killed by signal %d during exit() with allocating "
                  "threads",
                  i, variant ? "exit() from a thread" : "return from main",
                  show_stats ? "on" : "off", WTERMSIG(st));
        else
            CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
                  "child %d (%s, stats %s) exited with status %d", i,
                  variant ? "exit() from a thread" : "return from main", show_stats ? "on" : "off",
                  WEXITSTATUS(st));
    }
    return check_done();
}
