/* fork_signal.c — fork() from a signal handler that interrupted malloc, free or fork.
 *
 * The situation of glibc's tst-mallocfork2 (glibc makes fork async-signal-safe with respect
 * to malloc in a single-threaded process, and so must a replacement malloc): the process stays
 * single-threaded and loops over free/malloc of random sizes (up to 70000 bytes, sometimes
 * 300 KiB), occasionally forking itself. Three helper processes send it SIGUSR1, synchronised
 * with a process-shared barrier so the signals land while it is inside malloc, free or fork.
 * The SIGUSR1 handler forks; the child does _exit(0) at once; the handler reaps it.
 *
 * What goes wrong in an allocator: its pthread_atfork prepare handler takes a lock that the
 * interrupted malloc/free of the *same* thread already holds (self-deadlock), or takes it twice
 * when the signal interrupted fork itself; or the child handler reinitialises state that the
 * interrupted call is still using. An alarm ends the program with a message if it hangs (no
 * watchdog thread: the process must stay single-threaded).
 */
#include "check.h"

enum { SENDERS = 3, OBJECTS = 1009, ITERATIONS = 2500, MAX_SIZE = 70000 };

static struct {
    pthread_barrier_t barrier;
} *shared;

static volatile sig_atomic_t in_handler_forks;
static volatile sig_atomic_t handler_errors;
static volatile sig_atomic_t got_signal;
static volatile pid_t handler_child; /* for the alarm handler to kill a stuck child */
static pid_t senders[SENDERS];

static void on_usr1(int sig)
{
    (void)sig;
    int saved = errno;
    got_signal = 1;
    pid_t pid = fork();
    if (pid == 0)
        _exit(0);
    if (pid < 0) {
        raw_msg("FAIL fork in the signal handler failed\n");
        handler_errors = handler_errors + 1;
        errno = saved;
        return;
    }
    handler_child = pid;
    int st;
    pid_t r;
    do
        r = waitpid(pid, &st, 0);
    while (r < 0 && errno == EINTR);
    handler_child = 0;
    if (r != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        raw_msg("FAIL child forked in the signal handler did not exit(0)\n");
        handler_errors = handler_errors + 1;
    } else {
        in_handler_forks = in_handler_forks + 1;
    }
    errno = saved;
}

static void on_alarm(int sig)
{
    (void)sig;
    raw_msg("FAIL fork_signal: still running after the time limit: deadlock in fork/malloc/free "
            "interrupted by a signal handler that forks\n");
    if (handler_child > 0)
        kill(handler_child, SIGKILL);
    for (int i = 0; i < SENDERS; i++)
        if (senders[i] > 0)
            kill(senders[i], SIGKILL);
    _exit(3);
}

static void sender(pid_t target)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != target)
        _exit(0);
    for (;;) {
        pthread_barrier_wait(&shared->barrier);
        kill(target, SIGUSR1);
        pthread_barrier_wait(&shared->barrier);
    }
}

int main(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    alarm(30);

    shared = mmap(NULL, sizeof *shared, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (!CHECK(shared != MAP_FAILED, "mmap of the shared barrier failed"))
        return check_done();
    pthread_barrierattr_t ba;
    pthread_barrierattr_init(&ba);
    pthread_barrierattr_setpshared(&ba, PTHREAD_PROCESS_SHARED);
    if (!CHECK(pthread_barrier_init(&shared->barrier, &ba, SENDERS + 1) == 0,
               "pthread_barrier_init failed"))
        return check_done();
    pthread_barrierattr_destroy(&ba);

    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);

    pid_t self = getpid();
    for (int i = 0; i < SENDERS; i++) {
        senders[i] = fork();
        if (senders[i] == 0)
            sender(self);
        if (!CHECK(senders[i] > 0, "fork of sender %d failed", i))
            return check_done();
    }

    static void *objects[OBJECTS];
    uint64_t rng = 1;
    unsigned signals_in_fork = 0, signals_in_free = 0, signals_in_malloc = 0, own_forks = 0;
    int failed = 0;
    for (int it = 0; it < ITERATIONS && !failed; it++) {
        uint64_t r = rng_next(&rng);
        int slot = (int)(r % OBJECTS);
        size_t size = (r >> 20) % 64 == 0 ? 300000 : (size_t)((r >> 32) % MAX_SIZE);
        int do_fork = (r >> 12) % 7 == 0;

        pthread_barrier_wait(&shared->barrier);
        if (do_fork) {
            got_signal = 0;
            pid_t pid = fork();
            if (got_signal)
                signals_in_fork++;
            if (pid == 0)
                _exit(0);
            if (CHECK(pid > 0, "fork failed: errno %d", errno)) {
                int st;
                pid_t w;
                do
                    w = waitpid(pid, &st, 0);
                while (w < 0 && errno == EINTR);
                CHECK(w == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0,
                      "forked child did not exit(0)");
                own_forks++;
            }
        }
        got_signal = 0;
        free(objects[slot]);
        if (got_signal)
            signals_in_free++;
        got_signal = 0;
        objects[slot] = malloc(size);
        if (got_signal)
            signals_in_malloc++;
        pthread_barrier_wait(&shared->barrier);

        if (!CHECK(objects[slot] != NULL, "malloc(%zu) failed at iteration %d", size, it))
            failed = 1;
        else
            memset(objects[slot], (int)(it & 0xff), size < 64 ? size : 64);
        if (handler_errors)
            failed = 1;
    }
    for (int i = 0; i < SENDERS; i++) {
        kill(senders[i], SIGKILL);
        waitpid(senders[i], NULL, 0);
    }
    /* A late signal may still be pending: ignore SIGUSR1 before cleaning up. */
    signal(SIGUSR1, SIG_IGN);
    for (int i = 0; i < OBJECTS; i++)
        free(objects[i]);
    alarm(0);

    CHECK(handler_errors == 0, "%d errors in the signal handler", (int)handler_errors);
    CHECK(in_handler_forks > ITERATIONS / 2,
          "only %d forks from the signal handler happened (signals not delivered?)",
          (int)in_handler_forks);
    printf("info: %d forks in the handler, %u own forks; signals hit fork %u, free %u, malloc %u "
           "times\n",
           (int)in_handler_forks, own_forks, signals_in_fork, signals_in_free, signals_in_malloc);
    return check_done();
}
