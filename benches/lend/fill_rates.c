/* How fast memory is made resident, four ways, interleaved round by round, medians
 * (BENCHMARKS.md, "Filling the reserve without faults"):
 *   touch     a loop writing one byte per 4 KiB page of fresh memory (what a workload without
 *             a reserve pays: one fault per page);
 *   populate  MADV_POPULATE_WRITE in 8 MiB steps on small pages (MADV_NOHUGEPAGE);
 *   huge      the same with MADV_HUGEPAGE (2 MiB-aligned range);
 *   copy      UFFDIO_COPY of 64 KiB of zeros at a time into a userfaultfd-registered range
 *             (user-mode faults only), what the profile's reserve does by default.
 * Wall ms, the thread's CPU ms and the process's minor faults of each; GB/s from wall.
 * cc -O2 -o /tmp/fill_rates benches/lend/fill_rates.c && /tmp/fill_rates 320 7 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#define STEP (8UL << 20)
#define PIECE (64UL << 10)
static double ms(clockid_t c)
{
  struct timespec t;
  clock_gettime(c, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}
static long minflt(void) { struct rusage r; getrusage(RUSAGE_SELF, &r); return r.ru_minflt; }
static int cmp(const void *a, const void *b)
{
  double x = *(double *)a, y = *(double *)b;
  return (x > y) - (x < y);
}
static char *zeros;

static void fill(int how, char *q, size_t len) {
  if (how == 0) { for (size_t o = 0; o < len; o += 4096) q[o] = 1; return; }
  if (how == 1 || how == 2) {
    madvise(q, len, how == 2 ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
    for (size_t o = 0; o < len; o += STEP)
      if (madvise(q + o, len - o < STEP ? len - o : STEP, MADV_POPULATE_WRITE)) {
        perror("populate");
        exit(1);
      }
    return;
  }
  int fd = syscall(SYS_userfaultfd, O_CLOEXEC | 1 /* UFFD_USER_MODE_ONLY */);
  struct uffdio_api api = {.api = UFFD_API};
  if (fd < 0 || ioctl(fd, UFFDIO_API, &api)) { perror("userfaultfd"); exit(1); }
  for (size_t o = 0; o < len; o += STEP) {
    size_t n = len - o < STEP ? len - o : STEP;
    struct uffdio_register r = {.range = {(unsigned long)q + o, n},
                                .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (ioctl(fd, UFFDIO_REGISTER, &r)) { perror("register"); exit(1); }
    for (size_t p = 0; p < n; p += PIECE) {
      struct uffdio_copy c = {
        .dst = (unsigned long)q + o + p, .src = (unsigned long)zeros, .len = PIECE};
      if (ioctl(fd, UFFDIO_COPY, &c)) { perror("copy"); exit(1); }
    }
    struct uffdio_range u = {(unsigned long)q + o, n};
    ioctl(fd, UFFDIO_UNREGISTER, &u);
  }
  close(fd);
}

int main(int argc, char **argv) {
  size_t len = (size_t)(argc > 1 ? atoi(argv[1]) : 320) << 20;
  int rounds = argc > 2 ? atoi(argv[2]) : 7;
  const char *name[] = {"touch", "populate", "huge", "copy"};
  double wall[4][64], cpu[4][64]; long faults[4] = {0};
  zeros = mmap(0, PIECE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  for (int r = 0; r < rounds; r++)
    for (int how = 0; how < 4; how++) {
      char *p =
        mmap(0, len + (2 << 20), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      char *q = (char *)(((unsigned long)p + (2 << 20) - 1) & ~((2UL << 20) - 1));
      long f = minflt(); double w = ms(CLOCK_MONOTONIC), c = ms(CLOCK_THREAD_CPUTIME_ID);
      fill(how, q, len);
      wall[how][r] = ms(CLOCK_MONOTONIC) - w; cpu[how][r] = ms(CLOCK_THREAD_CPUTIME_ID) - c;
      faults[how] = minflt() - f;
      munmap(p, len + (2 << 20));
    }
  printf("| way | wall ms | CPU ms | GB/s (wall) | GB/s (CPU) | minor faults "
         "|\n|---|---:|---:|---:|---:|---:|\n");
  for (int how = 0; how < 4; how++) {
    qsort(wall[how], rounds, sizeof(double), cmp); qsort(cpu[how], rounds, sizeof(double), cmp);
    double w = wall[how][rounds / 2], c = cpu[how][rounds / 2];
    printf("| %s | %.1f | %.1f | %.2f | %.2f | %ld |\n", name[how], w, c, len / 1e6 / w,
           len / 1e6 / c, faults[how]);
  }
  return 0;
}
