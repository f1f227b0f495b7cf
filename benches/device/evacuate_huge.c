/* Moves a small hugetlbfs tier onto a file and checks its bytes (BENCHMARKS.md, "hugetlbfs
   sources").
   cc -O1 -I include benches/device/evacuate_huge.c -Ltarget/release -ltiermalloc \
       -Wl,-rpath,$PWD/target/release -o /tmp/evac-huge
   TIERMALLOC_VERBOSE=1 TIERMALLOC_TIERS="dram;cxl:path=HUGETLBFS_DIR/src,size=8M,create" \
       /tmp/evac-huge /dev/shm/evac-huge-dst */
#include <stdio.h>
#include <string.h>
#include <errno.h>
#include "tiermalloc.h"
int main(int argc, char **argv) {
    char *p[100];
    for (int i = 0; i < 100; i++) {
       p[i] = tm_malloc(TM_CXL, 10000);
       if (!p[i]) {
          printf("alloc failed %d\n", i);
          return 1;
       }
       memset(p[i], i, 10000);
    }
    int r = tm_evacuate(TM_CXL, argv[1]);
    printf("evacuate: %d errno %d (%s)\n", r, r ? errno : 0, r ? strerror(errno) : "");
    for (int i = 0; i < 100; i++)
       for (int j = 0; j < 10000; j++)
          if ((unsigned char)p[i][j] != i) {
             printf("bad %d %d\n", i, j);
             return 1;
          }
    printf("patterns intact\n");
    return 0;
}
