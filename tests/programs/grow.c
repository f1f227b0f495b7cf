#define _GNU_SOURCE
/* A workload for the profile tests (tests/profile.rs): grows to MIB MiB of live blocks,
 * three in four of 64 B-2 KiB and one in four of 256 KiB-1 MiB, writing every byte it gets.
 * Prints "grown minflt N thread_minflt M thread_cpu_us C process_cpu_us P ms T" (faults of the
 * whole process and of this thread during the growth, the CPU time, user and system, of this
 * thread and of the whole process during it, and its time). With a second argument "wait",
 * then waits for a line on stdin before exiting (a live peer). With GROW_START_SHMEM set in
 * the environment, first prints "start shmem_kb N": the shared memory mapped in the process
 * when main starts (RssShmem), i.e. how much of a device tier's reserve was made present
 * before main. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static void *keep[1 << 20];

/* User and system time of a rusage, in microseconds. */
static long long cpu_us(const struct rusage *r) {
    return (r->ru_utime.tv_sec + r->ru_stime.tv_sec) * 1000000LL + r->ru_utime.tv_usec +
           r->ru_stime.tv_usec;
}

static void print_start_shmem(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "RssShmem: %ld", &kb) == 1)
            break;
    if (f)
        fclose(f);
    printf("start shmem_kb %ld\n", kb);
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (getenv("GROW_START_SHMEM"))
        print_start_shmem();
    size_t total = (argc > 1 ? strtoul(argv[1], 0, 10) : 300) << 20;
    struct rusage s0, s1, t0, t1;
    struct timespec c0, c1;
    getrusage(RUSAGE_SELF, &s0);
    getrusage(RUSAGE_THREAD, &t0);
    clock_gettime(CLOCK_MONOTONIC, &c0);
    size_t got = 0, n = 0;
    unsigned x = 12345;
    while (got < total && n < sizeof keep / sizeof keep[0]) {
        x = x * 1103515245 + 12345;
        size_t sz = (x >> 8) % 4 == 0 ? (256 << 10) + ((x >> 12) % (768 << 10))
                                      : 64 + ((x >> 12) % 2048);
        char *p = malloc(sz);
        if (!p) {
            fprintf(stderr, "malloc(%zu) failed\n", sz);
            return 1;
        }
        memset(p, (int)n, sz);
        keep[n++] = p;
        got += sz;
    }
    clock_gettime(CLOCK_MONOTONIC, &c1);
    getrusage(RUSAGE_THREAD, &t1);
    getrusage(RUSAGE_SELF, &s1);
    for (size_t i = 0; i < n; i += 97)
        if (((unsigned char *)keep[i])[0] != (unsigned char)i) {
            fprintf(stderr, "block %zu lost its contents\n", i);
            return 1;
        }
    printf("grown minflt %ld thread_minflt %ld thread_cpu_us %lld process_cpu_us %lld ms %.1f\n",
           s1.ru_minflt - s0.ru_minflt, t1.ru_minflt - t0.ru_minflt, cpu_us(&t1) - cpu_us(&t0),
           cpu_us(&s1) - cpu_us(&s0),
           (c1.tv_sec - c0.tv_sec) * 1e3 + (c1.tv_nsec - c0.tv_nsec) / 1e6);
    fflush(stdout);
    if (argc > 2 && strcmp(argv[2], "wait") == 0) {
        char line[16];
        if (!fgets(line, sizeof line, stdin))
            return 0;
    }
    for (size_t i = 0; i < n; i++)
        free(keep[i]);
    return 0;
}
