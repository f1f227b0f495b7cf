/* sliding_window: the instruction-count workload. Single thread, almost no work of its own.
 *
 * A FIFO window of W live blocks of 8..1024 bytes (skewed small); each operation frees the
 * oldest block and allocates a new one, writing one word into it (and reading it back when
 * the block is freed). Every object lives exactly W operations, so after warm-up the live set
 * and its size mix are constant. Nearly all instructions executed are malloc and free, which
 * makes `valgrind --tool=callgrind` totals on this program a direct, noise-free comparison of
 * allocator fast paths.
 *
 * usage: sliding_window [ops=30000000] [window=10000]
 */
#include "common.h"

int main(int argc, char **argv) {
    uint64_t ops = arg_u64(argc, argv, 1, 30000000);
    uint64_t window = arg_u64(argc, argv, 2, 10000);
    if (window < 1) window = 1;

    rng r;
    rng_seed(&r, 0x5117);
    uint64_t **ring = xmalloc(window * sizeof(*ring));
    uint64_t h = 0;
    for (uint64_t i = 0; i < window; i++) {
        size_t size = size_skewed_8_1024(&r);
        ring[i] = xmalloc(size);
        ring[i][0] = (i << 11) | size;
    }
    uint64_t k = 0;
    for (uint64_t op = 0; op < ops; op++) {
        uint64_t *p = ring[k];
        h += p[0];
        free(p);
        size_t size = size_skewed_8_1024(&r);
        p = xmalloc(size);
        p[0] = ((window + op) << 11) | size;
        ring[k] = p;
        if (++k == window) k = 0;
    }
    for (uint64_t i = 0; i < window; i++) {
        h += ring[i][0];
        free(ring[i]);
    }
    free(ring);
    /* h is the sum of all tags: sum over n of (n << 11) plus all sizes */
    printf("sliding_window checksum=%016llx ops=%llu\n", (unsigned long long)h,
           (unsigned long long)ops);
    return 0;
}
