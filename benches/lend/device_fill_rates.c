/* Issue 12, private device tiers: what making a tier's free space present costs per byte, on
 * a shared mapping of a file in /dev/shm (shmem), against the touching loop a workload runs
 * into without a reserve. Four ways, ROUNDS rounds interleaved, MIB MiB each, CPU of this
 * process (user+sys) and its minor faults:
 *   touch-fresh     one write per 4 KiB page of a new file (the faults allocate the pages)
 *   copy-fresh      UFFDIO_COPY of zeros, 64 KiB per ioctl, into a new file's holes
 *   touch-cached    one write per page of a file whose pages are in the page cache already
 *   continue-cached UFFDIO_CONTINUE over such a file (maps them; one ioctl)
 * Prints each round and the medians in GB/s of CPU.
 * Usage: device_fill_rates [MIB] [ROUNDS] (file: /dev/shm/tm-device-fill-PID) */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

static double cpu(long *flt) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    *flt = u.ru_minflt;
    return u.ru_utime.tv_sec + u.ru_stime.tv_sec + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    size_t len = (size_t)(argc > 1 ? atoi(argv[1]) : 256) << 20;
    int rounds = argc > 2 ? atoi(argv[2]) : 5;
    char path[64];
    snprintf(path, sizeof path, "/dev/shm/tm-device-fill-%d", getpid());
    const char *names[4] = {"touch-fresh", "copy-fresh", "touch-cached", "continue-cached"};
    double t[4][64];
    long faults[4] = {0};
    char *zeros =
        mmap(0, 65536, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    for (int r = 0; r < rounds && r < 64; r++) {
        for (int way = 0; way < 4; way++) {
            if (way == 0 || way == 1) unlink(path);
            int fd = open(path, O_RDWR | O_CREAT, 0600);
            if (fd < 0 || ftruncate(fd, len)) { perror(path); return 1; }
            char *p = mmap(0, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            int u = -1;
            if (way == 1 || way == 3) {
                u = syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY);
                struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_MINOR_SHMEM};
                struct uffdio_register reg = {.range = {(unsigned long)p, len},
                    .mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_MINOR};
                if (u < 0 || ioctl(u, UFFDIO_API, &api) || ioctl(u, UFFDIO_REGISTER, &reg)) {
                    perror("userfaultfd"); return 1;
                }
            }
            long f0, f1;
            double c0 = cpu(&f0);
            if (way == 0 || way == 2) {
                for (size_t i = 0; i < len; i += 4096) p[i] = 1;
            } else if (way == 1) {
                for (size_t at = 0; at < len;) {
                    struct uffdio_copy c = {
                        .dst = (unsigned long)p + at, .src = (unsigned long)zeros, .len = 65536};
                    ioctl(u, UFFDIO_COPY, &c);
                    if (c.copy <= 0) { perror("UFFDIO_COPY"); return 1; }
                    at += c.copy;
                }
            } else {
                for (size_t at = 0; at < len;) {
                    struct uffdio_continue c = {.range = {(unsigned long)p + at, len - at}};
                    ioctl(u, UFFDIO_CONTINUE, &c);
                    if (c.mapped <= 0) { perror("UFFDIO_CONTINUE"); return 1; }
                    at += c.mapped;
                }
            }
            t[way][r] = cpu(&f1) - c0;
            faults[way] = f1 - f0;
            printf("round %d %-16s %.3f s CPU, %ld faults\n", r, names[way], t[way][r],
                   faults[way]);
            if (u >= 0) close(u);
            munmap(p, len);
            close(fd);
        }
    }
    unlink(path);
    for (int way = 0; way < 4; way++) {
        qsort(t[way], rounds, sizeof(double), cmp);
        double m = t[way][rounds / 2];
        printf("%-16s median %.1f ms CPU, %.2f GB/s, %ld faults\n", names[way], m * 1e3,
               len / m / 1e9, faults[way]);
    }
    return 0;
}
