/* spawn: run one benchmark process and report its wall time and peak RSS.
 *
 * usage: spawn RESULT_FILE PRELOAD PROGRAM [ARGS...]
 *
 * Forks, sets LD_PRELOAD=PRELOAD in the child only (an empty PRELOAD removes LD_PRELOAD), execs
 * PROGRAM, waits with wait4() and writes one line to RESULT_FILE:
 *     wall_ns maxrss_kib utime_us stime_us wait_status
 * and exits with the child's exit status (128 + signal if it was killed).
 *
 * Why not measure from python directly: a process's ru_maxrss is the high-water mark over
 * every address space it had, and exec() folds the pre-exec one in. A child forked (or
 * vforked) by a python interpreter therefore reports at least python's RSS, which swamps small
 * workloads. Forking from this small program keeps that floor at about one megabyte.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s RESULT_FILE PRELOAD PROGRAM [ARGS...]\n", argv[0]);
        return 125;
    }
    const char *result = argv[1], *preload = argv[2];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 125;
    }
    if (pid == 0) {
        if (preload[0]) setenv("LD_PRELOAD", preload, 1);
        else unsetenv("LD_PRELOAD");
        execv(argv[3], argv + 3);
        perror("execv");
        _exit(127);
    }
    int status = 0;
    struct rusage ru;
    if (wait4(pid, &status, 0, &ru) < 0) {
        perror("wait4");
        return 125;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long long wall = (long long)(t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec);
    FILE *f = fopen(result, "w");
    if (!f) {
        perror(result);
        return 125;
    }
    fprintf(f, "%lld %ld %lld %lld %d\n", wall, ru.ru_maxrss,
            (long long)ru.ru_utime.tv_sec * 1000000 + ru.ru_utime.tv_usec,
            (long long)ru.ru_stime.tv_sec * 1000000 + ru.ru_stime.tv_usec, status);
    fclose(f);
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return 125;
}
