/* Allocation churn over the paths where live statistics hook in: blocks from 16 B to 256 KiB,
 * a live set of 4096 slots replaced at random, so thread-heap pages are cut and given back and
 * large blocks mapped and unmapped throughout. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    long rounds = argc > 1 ? atol(argv[1]) : 2000000;
    static void *slot[4096];
    uint64_t x = 88172645463325252ull, sum = 0;
    for (long i = 0; i < rounds; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        unsigned k = x & 4095;
        size_t size = (x >> 12) & 1 ? 16 + ((x >> 20) & 1023) : (size_t)1 << (4 + ((x >> 32) % 15));
        free(slot[k]);
        slot[k] = malloc(size);
        if (!slot[k]) return 1;
        ((char *)slot[k])[0] = 1;
        sum += size;
    }
    printf("%llu\n", (unsigned long long)sum);
    return 0;
}
