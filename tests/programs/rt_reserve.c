#define _GNU_SOURCE
/* A workload for tests/realtime_waits.rs: a SCHED_FIFO thread that needs the profile reserve
 * while the pre-fault thread, of lower real-time priority, is still populating it on the same
 * CPU. Run under LD_PRELOAD with TIERMALLOC_PROFILE naming a profile whose reserve is MIB MiB
 * or more. The main thread pins itself to CPU 0 at SCHED_FIFO 2, then pins the library's
 * pre-fault thread (the process's other thread) to CPU 0 at SCHED_FIFO 1, so the pre-fault
 * thread runs only while the main thread sleeps; then it allocates MIB MiB in 1 MiB blocks,
 * which the reserve serves past what is populated. Prints "refused" (exit 3) if the system
 * refuses SCHED_FIFO, "no pre-fault thread" (exit 4) if it had already finished, else
 * "allocated N MiB in T ms". */
#include <dirent.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int fifo_on_cpu0(pid_t tid, int priority) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(0, &set);
    struct sched_param param = {.sched_priority = priority};
    return sched_setaffinity(tid, sizeof set, &set) == 0 &&
           sched_setscheduler(tid, SCHED_FIFO, &param) == 0;
}

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], 0, 10) : 64;
    if (!fifo_on_cpu0(0, 2)) {
        puts("refused");
        return 3;
    }
    pid_t self = getpid(), other = 0;
    DIR *tasks = opendir("/proc/self/task");
    struct dirent *e;
    while (tasks && (e = readdir(tasks)))
        if (atoi(e->d_name) > 0 && atoi(e->d_name) != self) other = atoi(e->d_name);
    if (tasks) closedir(tasks);
    if (!other) {
        puts("no pre-fault thread");
        return 4;
    }
    if (!fifo_on_cpu0(other, 1)) {
        puts("refused");
        return 3;
    }
    struct timespec c0, c1;
    clock_gettime(CLOCK_MONOTONIC, &c0);
    for (size_t i = 0; i < mib; i++) {
        char *p = malloc(1 << 20);
        if (!p) {
            fprintf(stderr, "malloc failed\n");
            return 1;
        }
        memset(p, 1, 1 << 20);
    }
    clock_gettime(CLOCK_MONOTONIC, &c1);
    printf("allocated %zu MiB in %.1f ms\n", mib,
           (c1.tv_sec - c0.tv_sec) * 1e3 + (c1.tv_nsec - c0.tv_nsec) / 1e6);
    return 0;
}
