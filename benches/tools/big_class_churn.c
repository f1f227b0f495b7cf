/* big_class_churn.c: the allocator's own cost on blocks of the big size classes.
 *
 * usage: big_class_churn WINDOW OPS
 * OPS times: free a random one of WINDOW slots and put there a block of a random size in
 * (8 KiB, 512 KiB), writing one byte in each of its 4 KiB pages. Run under callgrind with the
 * library preloaded to count the allocator's instructions (the writes cost every allocator the
 * same), or under `/usr/bin/time -f %M` for its peak RSS:
 *   LD_PRELOAD=LIB valgrind --tool=callgrind --callgrind-out-file=/dev/null \
 *       ./big_class_churn 64 100000
 * The worst case for pages of few blocks: every request of a class without an empty block
 * cuts a page (BENCHMARKS.md, session 11, branch rsswork).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    int window = argc > 1 ? atoi(argv[1]) : 16, ops = argc > 2 ? atoi(argv[2]) : 100000;
    if (window < 1 || window > 1024 || ops < 1) {
        fprintf(stderr, "usage: big_class_churn WINDOW(1..1024) OPS\n");
        return 2;
    }
    static void *slots[1024];
    uint64_t x = 88172645463325252ull, sum = 0;
    for (int i = 0; i < ops; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        int k = (int)(x % (uint64_t)window);
        free(slots[k]);
        size_t size = 8193 + (x >> 20) % (512 * 1024 - 8193);
        char *p = malloc(size);
        if (!p) {
            fprintf(stderr, "big_class_churn: malloc(%zu) failed\n", size);
            return 1;
        }
        for (size_t o = 0; o < size; o += 4096) p[o] = (char)i;
        sum += (uintptr_t)p & 0xff;
        slots[k] = p;
    }
    for (int k = 0; k < window; k++) free(slots[k]);
    printf("%llu\n", (unsigned long long)sum);
    return 0;
}
