/* mode: link-only */
/* thread_lifetime_kernel.c — a short-lived thread's malloc and exit ask nothing of the kernel.
 *
 * mimalloc-bench's mleak creates and joins 10 threads at a time, thousands of times; each thread
 * allocates one 128-byte block and frees one an earlier thread left. (Here each thread also uses
 * and frees 32 blocks of 2000 bytes first, so that its heap ends with an empty page.) Measured on a
 * 2-vCPU VM (BENCHMARKS.md, "Session 11, branch churn"), that program's time is glibc's own thread
 * start and exit: stacks mapped, protected, advised away and unmapped, and the mmap_lock convoy
 * between the creating thread and the exiting ones. Ours adds no system call and no page fault to a
 * thread's lifetime once its heap is reused, which is why ours runs at glibc's kernel cost there; a
 * purge, an unmap, a futex wait or a fresh heap per thread would each add a call (and TLB
 * shootdowns to the other CPU) to every thread's exit.
 *
 * So: the program defines mmap, munmap, mprotect, madvise, mremap and syscall itself. Linked
 * against the library, the library's calls to them bind to these (the executable comes first
 * in the lookup order; glibc's own thread code calls its internal aliases and is not
 * counted), which count them and make the system call directly. After a warm-up that lets the
 * library make the heaps 10 concurrent threads need, 2000 thread lifetimes in the mleak pattern
 * must make at most 40 such calls in all (0-2 are seen: pages opened in a segment as the
 * transferred blocks spread; a heap made late costs about 6): one call per thread, as any of
 * the regressions above gives, is 2000. The minor page faults of the same
 * 2000 lifetimes, against 2000 lifetimes that do not allocate, must grow by at most 0.25 per
 * thread: a thread whose first malloc touched a new stack or heap page every time would add at
 * least 1.
 */
#include "check.h"

#include <stdatomic.h>
#include <sys/syscall.h>

enum { THREADS = 10, WARM_ROUNDS = 100, ROUNDS = 200, TRANSFERS = 1000 };
enum { SCRATCH_BLOCKS = 32, SCRATCH_SIZE = 2000 };
#define MAX_CALLS 40
#define MAX_EXTRA_FAULTS_PER_THREAD 0.25

#if defined(__x86_64__)

static _Atomic int counting;
static _Atomic long calls[6]; /* mmap, munmap, mprotect, madvise, mremap, syscall */
static const char *const call_names[6] = {"mmap", "munmap", "mprotect", "madvise", "mremap",
                                          "syscall"};

static long raw_syscall6(long n, long a, long b, long c, long d, long e, long f)
{
    long ret;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}

static long result(long ret)
{
    if (ret < 0 && ret > -4096) {
        errno = (int)-ret;
        return -1;
    }
    return ret;
}

static void count(int which)
{
    if (atomic_load_explicit(&counting, memory_order_relaxed))
        atomic_fetch_add_explicit(&calls[which], 1, memory_order_relaxed);
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    count(0);
    long r = raw_syscall6(SYS_mmap, (long)addr, (long)len, prot, flags, fd, (long)off);
    if (r < 0 && r > -4096) {
        errno = (int)-r;
        return MAP_FAILED;
    }
    return (void *)r;
}

int munmap(void *addr, size_t len)
{
    count(1);
    return (int)result(raw_syscall6(SYS_munmap, (long)addr, (long)len, 0, 0, 0, 0));
}

int mprotect(void *addr, size_t len, int prot)
{
    count(2);
    return (int)result(raw_syscall6(SYS_mprotect, (long)addr, (long)len, prot, 0, 0, 0));
}

int madvise(void *addr, size_t len, int advice)
{
    count(3);
    return (int)result(raw_syscall6(SYS_madvise, (long)addr, (long)len, advice, 0, 0, 0));
}

void *mremap(void *old, size_t old_len, size_t new_len, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    void *new_addr = va_arg(ap, void *);
    va_end(ap);
    count(4);
    long r = raw_syscall6(SYS_mremap, (long)old, (long)old_len, (long)new_len, flags,
                          (long)new_addr, 0);
    if (r < 0 && r > -4096) {
        errno = (int)-r;
        return MAP_FAILED;
    }
    return (void *)r;
}

long syscall(long n, ...)
{
    va_list ap;
    va_start(ap, n);
    long a = va_arg(ap, long), b = va_arg(ap, long), c = va_arg(ap, long);
    long d = va_arg(ap, long), e = va_arg(ap, long), f = va_arg(ap, long);
    va_end(ap);
    count(5);
    return result(raw_syscall6(n, a, b, c, d, e, f));
}

static _Atomic(uint64_t *) transfer[TRANSFERS];
static uint64_t rng = 0x1ce4e5b9;
static _Atomic int mismatched;

struct job {
    unsigned slot;
    int allocate;
    pthread_barrier_t *all_alive; /* warm-up: wait until every thread of the round has a heap */
};

static void *leak(void *arg)
{
    struct job *job = arg;
    if (!job->allocate)
        return NULL;
    /* Some work of its own, freed before the thread ends: at exit its heap holds an empty
     * page of resident slices, which the next thread must be able to reuse as they are. */
    void *scratch[SCRATCH_BLOCKS];
    for (int i = 0; i < SCRATCH_BLOCKS; i++) {
        scratch[i] = malloc(SCRATCH_SIZE);
        if (scratch[i])
            memset(scratch[i], i, SCRATCH_SIZE);
        else
            atomic_fetch_add(&mismatched, 1);
    }
    for (int i = 0; i < SCRATCH_BLOCKS; i++)
        free(scratch[i]);
    uint64_t *p = calloc(16, sizeof(void *));
    if (!p || p[0] || p[15])
        atomic_fetch_add(&mismatched, 1);
    else
        p[0] = job->slot;
    uint64_t *q = atomic_exchange(&transfer[job->slot], p);
    free(q);
    if (job->all_alive)
        pthread_barrier_wait(job->all_alive);
    return NULL;
}

static void rounds(int n, int allocate, pthread_barrier_t *all_alive)
{
    for (int r = 0; r < n; r++) {
        pthread_t threads[THREADS];
        struct job jobs[THREADS];
        for (int i = 0; i < THREADS; i++) {
            jobs[i].slot = (unsigned)(rng_next(&rng) % TRANSFERS);
            jobs[i].allocate = allocate;
            jobs[i].all_alive = all_alive;
            if (!CHECK(pthread_create(&threads[i], NULL, leak, &jobs[i]) == 0,
                       "pthread_create"))
                exit(check_done());
        }
        for (int i = 0; i < THREADS; i++)
            pthread_join(threads[i], NULL);
    }
}

static long minor_faults(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_minflt;
}

int main(void)
{
    watchdog(60, "thread_lifetime_kernel");
    /* The interposers must be what the library calls: one counted call of our own. */
    atomic_store(&counting, 1);
    void *probe = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(probe != MAP_FAILED && munmap(probe, 4096) == 0, "mmap/munmap through the counters");
    atomic_store(&counting, 0);
    CHECK(calls[0] == 1 && calls[1] == 1, "the counters see calls (mmap %ld, munmap %ld)",
          calls[0], calls[1]);
    calls[0] = calls[1] = 0;

    /* The library's first large mapping must reach the counter too (else the check below
     * could pass with every call of the library going elsewhere). */
    atomic_store(&counting, 1);
    void *big = malloc(64u << 20);
    CHECK(big != NULL, "malloc(64 MiB)");
    free(big);
    atomic_store(&counting, 0);
    long seen = 0;
    for (int i = 0; i < 6; i++)
        seen += calls[i];
    CHECK(seen >= 1, "a 64 MiB malloc/free reached none of the counted calls: the library's "
                     "system calls bypass them, so this test would count nothing");
    for (int i = 0; i < 6; i++)
        calls[i] = 0;

    /* Warm-up: first every thread of a round alive at once, so that the library has made as
     * many heaps as the counted rounds can ever need (under load more threads of a round
     * overlap, and each heap made late costs about 6 calls); then the pattern itself. */
    pthread_barrier_t all_alive;
    pthread_barrier_init(&all_alive, NULL, THREADS);
    rounds(3, 1, &all_alive);
    pthread_barrier_destroy(&all_alive);
    rounds(WARM_ROUNDS, 1, NULL);
    rounds(WARM_ROUNDS, 0, NULL);

    long before = minor_faults();
    rounds(ROUNDS, 0, NULL);
    long bare_faults = minor_faults() - before;

    atomic_store(&counting, 1);
    before = minor_faults();
    rounds(ROUNDS, 1, NULL);
    long alloc_faults = minor_faults() - before;
    atomic_store(&counting, 0);

    long total = 0;
    char detail[256];
    int at = 0;
    for (int i = 0; i < 6; i++) {
        total += calls[i];
        at += snprintf(detail + at, sizeof detail - (size_t)at, " %s %ld", call_names[i],
                       calls[i]);
    }
    int lifetimes = ROUNDS * THREADS;
    double extra = (double)(alloc_faults - bare_faults) / lifetimes;
    printf("%d thread lifetimes: %ld calls of the library (%s ), minor faults %ld against %ld "
           "without allocating (%+.3f per thread)\n",
           lifetimes, total, detail, alloc_faults, bare_faults, extra);
    CHECK(total <= MAX_CALLS, "%d thread lifetimes made %ld system calls from the library "
                              "(at most %d):%s", lifetimes, total, MAX_CALLS, detail);
    CHECK(extra <= MAX_EXTRA_FAULTS_PER_THREAD,
          "%d thread lifetimes that allocate took %ld minor faults, %ld without allocating: "
          "%+.3f per thread (at most %+.2f)", lifetimes, alloc_faults, bare_faults, extra,
          MAX_EXTRA_FAULTS_PER_THREAD);
    CHECK(mismatched == 0, "%d blocks were null or (calloc) not zeroed", (int)mismatched);

    for (int i = 0; i < TRANSFERS; i++)
        free(atomic_exchange(&transfer[i], NULL));
    return check_done();
}

#else

int main(void)
{
    printf("thread_lifetime_kernel: counts system calls with x86_64 inline syscalls only\n");
    return check_done();
}

#endif
