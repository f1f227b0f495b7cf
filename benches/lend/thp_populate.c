/* MADV_POPULATE_WRITE of an anonymous range with small pages (arg 2) or MADV_HUGEPAGE (arg 1):
 * time and minor faults (BENCHMARKS.md, "Process-wide faults with huge pages").
 * cc -O2 -o /tmp/thp benches/lend/thp_populate.c && /tmp/thp 1 320 && /tmp/thp 2 320 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
static double now(void)
{
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}
int main(int argc, char **argv)
{
  int huge = atoi(argv[1]);
  size_t len = (size_t)atoi(argv[2]) << 20;
  struct rusage a, b;
  getrusage(RUSAGE_SELF, &a);
  double t0 = now();
  char *p = mmap(0, len + (2 << 20), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  char *q = (char *)(((unsigned long)p + (2 << 20) - 1) & ~((2UL << 20) - 1));
  if (huge == 1)
    madvise(q, len, MADV_HUGEPAGE);
  if (huge == 2)
    madvise(q, len, MADV_NOHUGEPAGE);
  for (size_t o = 0; o < len; o += 8 << 20)
    if (madvise(q + o, (len - o) < (8 << 20) ? len - o : (8 << 20), MADV_POPULATE_WRITE)) {
      perror("populate");
      return 1;
    }
  double t1 = now();
  getrusage(RUSAGE_SELF, &b);
  /* touch like the workload would */
  for (size_t o = 0; o < len; o += 4096)
    q[o] = 1;
  struct rusage c;
  getrusage(RUSAGE_SELF, &c);
  FILE *f = fopen("/proc/self/smaps_rollup", "r");
  char l[256];
  unsigned long ah = 0;
  while (f && fgets(l, 256, f))
    if (!strncmp(l, "AnonHugePages:", 14))
      ah = strtoul(l + 14, 0, 10);
  printf(
    "huge=%d populate %.1f ms (%.2f GB/s) minflt %ld, then touch minflt %ld, AnonHuge %lu kB\n",
    huge, t1 - t0, len / 1e6 / (t1 - t0), b.ru_minflt - a.ru_minflt, c.ru_minflt - b.ru_minflt, ah);
  return 0;
}
