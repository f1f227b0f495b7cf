/* recovery.c — how long opening a persistent tier takes, against the time to read the bytes
 * its recovery reads.
 *
 * usage: recovery LIB FILE [BLOCKS [SIZE [ROUNDS]]]   (LIB: path of libtiermalloc.so;
 *        FILE: the tier's file, made here; BLOCKS default 1000000; SIZE default 1G;
 *        ROUNDS default 5)
 *        recovery LIB FILE 0   opens the FILE an earlier run left, once, and nothing else
 *
 * 1. A child dlopens LIB with TIERMALLOC_TIERS=dram;pmr:path=FILE,size=SIZE,create,fresh and
 *    allocates BLOCKS blocks of 16..1007 bytes (slab slots) and one in 64 of 4..20 KiB
 *    (extents), then calls tm_persist and exits.
 * 2. Rounds, alternating: (a) a child dlopens LIB with the tier (the library's constructor
 *    opens the tier: format or recover; here recovery of the heap left in 1), timing the
 *    dlopen, then the first tm_malloc(TM_PMR) on its own; (b) this process reads, from a
 *    read-only mapping of FILE, exactly the header bytes the recovery scan reads (the chain of
 *    headers, and inside each slab every slot's header), in address order, as a sum of words:
 *    the time to read them sequentially, the bound recovery is measured against.
 * Prints per round and the best of each, in wall time and in CPU time of the thread (the
 * open's includes dlopen's own work, a fraction of a millisecond), each side's page faults
 * (pages faulted in, counting those populated by madvise), and the median over rounds of the
 * CPU-time ratio (each round's open and read run back to back), of the opening thread and of the
 * open's whole process, and of the wall-time ratio. At most 64 rounds.
 */
#define _GNU_SOURCE 1
#include <dlfcn.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double clock_s(clockid_t id)
{
    struct timespec t;
    clock_gettime(id, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static double now(void) { return clock_s(CLOCK_MONOTONIC); }

/* CPU time of this thread (user and kernel: page faults included): on a loaded machine, less
 * of other programs' noise than the wall time. */
static double cpu(void) { return clock_s(CLOCK_THREAD_CPUTIME_ID); }

/* CPU time of the whole process, every thread's (ended ones included): the open may take
 * page faults on a helper thread (src/device/persist/fault_ahead.rs), which the opening
 * thread's CPU time does not see. */
static double process_cpu(void) { return clock_s(CLOCK_PROCESS_CPUTIME_ID); }

/* Page faults of this thread so far: the open and the bound must fault in the same pages of the
 * file for the bound to be fair (the open also faults in its host metadata). */
static double faults(void)
{
    struct rusage u;
    getrusage(RUSAGE_THREAD, &u);
    return (double)u.ru_minflt + (double)u.ru_majflt;
}

typedef void *(*malloc_fn)(int, size_t);
typedef int (*persist_fn)(const void *, size_t);

static void *open_lib(const char *lib)
{
    void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        exit(2);
    }
    return h;
}

static void fill(const char *lib, long blocks)
{
    void *h = open_lib(lib);
    malloc_fn tm_malloc = (malloc_fn)dlsym(h, "tm_malloc");
    persist_fn tm_persist = (persist_fn)dlsym(h, "tm_persist");
    unsigned long x = 88172645463325252UL;
    void *p = NULL;
    for (long i = 0; i < blocks; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        size_t size = i % 64 == 63 ? 4096 + (x >> 8) % 16384 : 16 + (x >> 8) % 992;
        p = tm_malloc(3, size);
        if (!p) {
            fprintf(stderr, "the tier is full after %ld blocks\n", i);
            exit(2);
        }
    }
    tm_persist(p, 1);
}

/* The slab layout (src/device_slabs.rs): usable bytes of each class. */
static uint64_t usable_of(unsigned class)
{
    static const uint64_t wide[] = {640,  768,  896,  1024, 1280, 1536,
                                    1792, 2048, 2560, 3072, 3584, 4080};
    return class <= 32 ? 16 * (uint64_t)class : wide[class - 33];
}

/* Reads the header bytes the recovery scan reads; returns their count (bytes). */
static uint64_t read_headers(const unsigned char *image, uint64_t len, uint64_t *sum)
{
    uint64_t at = 4096, bytes = 0, s = 0;
    while (at + 16 <= len) {
        const uint64_t *h = (const uint64_t *)(image + at);
        uint64_t size = h[0], tail = h[1];
        unsigned state = (unsigned)(tail >> 48);
        s += size ^ tail;
        bytes += 16;
        if (state & 0x8000) {
            uint64_t usable = usable_of(state & 0x7fff), slot = usable + 16;
            for (uint64_t o = at + 16; o + slot <= at + 16384; o += slot) {
                const uint64_t *sh = (const uint64_t *)(image + o);
                s += sh[0] ^ sh[1];
                bytes += 16;
            }
        }
        at += size + 16;
    }
    *sum = s;
    return bytes;
}

/* The median of `v[0..n)` (sorts it). */
static double median(double *v, int n)
{
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && v[j - 1] > v[j]; j--) {
            double t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: recovery LIB FILE [BLOCKS [SIZE [ROUNDS]]]\n");
        return 2;
    }
    const char *lib = argv[1], *file = argv[2];
    long blocks = argc > 3 ? atol(argv[3]) : 1000000;
    if (blocks == 0) {
        /* The open alone, of the FILE left by an earlier run, in this process: for
         * `perf stat -e page-faults` and `perf record`. */
        char tiers[512];
        snprintf(tiers, sizeof tiers, "dram;pmr:path=%s", file);
        setenv("TIERMALLOC_TIERS", tiers, 1);
        double c0 = cpu();
        open_lib(lib);
        printf("open alone: cpu %.1f ms\n", (cpu() - c0) * 1e3);
        return 0;
    }
    const char *size = argc > 4 ? argv[4] : "1G";
    int rounds = argc > 5 ? atoi(argv[5]) : 5;
    char tiers[512];
    unlink(file);
    snprintf(tiers, sizeof tiers, "dram;pmr:path=%s,size=%s,create,fresh", file, size);
    pid_t pid = fork();
    if (pid == 0) {
        setenv("TIERMALLOC_TIERS", tiers, 1);
        fill(lib, blocks);
        _exit(0);
    }
    int status;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return 2;
    snprintf(tiers, sizeof tiers, "dram;pmr:path=%s", file);

    int fd = open(file, O_RDONLY);
    struct stat st;
    fstat(fd, &st);
    double best_open = 1e9, best_first = 1e9, best_read = 1e9, best_open_cpu = 1e9,
           best_read_cpu = 1e9;
    uint64_t header_bytes = 0;
    double ratios[64], wall_ratios[64], process_ratios[64];
    if (rounds > 64) rounds = 64;
    if (rounds < 1) rounds = 1;
    printf("%ld blocks in a %s tier (%s)\n", blocks, size, file);
    for (int round = 0; round < rounds; round++) {
        int pipefd[2];
        if (pipe(pipefd) != 0) return 2;
        pid = fork();
        if (pid == 0) {
            setenv("TIERMALLOC_TIERS", tiers, 1);
            double f0 = faults(), c0 = cpu(), p0 = process_cpu(), t0 = now();
            void *h = open_lib(lib);
            double t1 = now(), c1 = cpu(), p1 = process_cpu(), f1 = faults();
            malloc_fn tm_malloc = (malloc_fn)dlsym(h, "tm_malloc");
            double t2 = now();
            void *p = tm_malloc(3, 100);
            double t3 = now();
            double r[5] = {t1 - t0, p ? t3 - t2 : -1, c1 - c0, f1 - f0, p1 - p0};
            if (write(pipefd[1], r, sizeof r) != sizeof r) _exit(3);
            _exit(0);
        }
        close(pipefd[1]);
        double r[5] = {0, 0, 0, 0, 0};
        ssize_t got = read(pipefd[0], r, sizeof r);
        close(pipefd[0]);
        waitpid(pid, &status, 0);
        if (got != sizeof r || r[1] < 0) {
            fprintf(stderr, "the opening child failed\n");
            return 2;
        }
        unsigned char *image = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
        uint64_t sum;
        double f0 = faults(), c0 = cpu(), t0 = now();
        header_bytes = read_headers(image, (uint64_t)st.st_size, &sum);
        double t1 = now(), c1 = cpu(), f1 = faults();
        munmap(image, (size_t)st.st_size);
        printf(
            "round %d: open (dlopen, recovery included) %.1f ms (cpu %.1f ms); first tm_malloc "
            "%.1f us; reading the %llu header bytes %.1f ms (cpu %.1f ms) (sum %llx); page faults: "
            "open %.0f, read %.0f; open's process cpu (every thread) %.1f ms\n",
            round, r[0] * 1e3, r[2] * 1e3, r[1] * 1e6, (unsigned long long)header_bytes,
            (t1 - t0) * 1e3, (c1 - c0) * 1e3, (unsigned long long)(sum & 0xfff), r[3], f1 - f0,
            r[4] * 1e3);
        ratios[round] = r[2] / (c1 - c0);
        wall_ratios[round] = r[0] / (t1 - t0);
        process_ratios[round] = r[4] / (c1 - c0);
        if (r[2] < best_open_cpu) best_open_cpu = r[2];
        if (c1 - c0 < best_read_cpu) best_read_cpu = c1 - c0;
        if (r[0] < best_open) best_open = r[0];
        if (r[1] < best_first) best_first = r[1];
        if (t1 - t0 < best_read) best_read = t1 - t0;
    }
    printf("best: open %.1f ms, first tm_malloc %.1f us, header read %.1f ms (%llu bytes): "
           "open / read = %.2f\n",
           best_open * 1e3, best_first * 1e6, best_read * 1e3, (unsigned long long)header_bytes,
           best_open / best_read);
    printf("best cpu time: open %.1f ms, header read %.1f ms: open / read = %.2f\n",
           best_open_cpu * 1e3, best_read_cpu * 1e3, best_open_cpu / best_read_cpu);
    /* Each round's open and read run back to back: the median of their ratios is the least
     * swayed by other programs' load changing between rounds. */
    printf("median over rounds of cpu open / read: %.2f (the opening thread's); %.2f (the open's "
           "whole process); wall open / read: %.2f\n",
           median(ratios, rounds), median(process_ratios, rounds), median(wall_ratios, rounds));
    return 0;
}
