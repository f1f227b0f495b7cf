/* refault.c: page faults of a steady working set that is freed and taken again.
 *
 * usage: refault ROUNDS BATCH SIZE
 * ROUNDS times: allocate BATCH blocks of SIZE bytes, write one byte in each of their pages,
 * then free them all. Prints minor page faults (getrusage) and wall time per alloc+free pair.
 * An allocator that keeps the freed memory resident for the next round takes ~0 faults per
 * pair; one that unmaps or purges it takes up to SIZE / 4096.
 * Run under LD_PRELOAD; issue 16's case: `refault 500 256 65536`.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

static long minor_faults(void)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_minflt;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: refault ROUNDS BATCH SIZE\n");
        return 2;
    }
    long rounds = atol(argv[1]);
    int batch = atoi(argv[2]);
    size_t size = (size_t)atol(argv[3]);
    if (rounds < 1 || batch < 1 || size < 1) {
        fprintf(stderr, "refault: ROUNDS, BATCH and SIZE must be positive\n");
        return 2;
    }
    void **blocks = calloc((size_t)batch, sizeof *blocks);
    long f0 = minor_faults();
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long r = 0; r < rounds; r++) {
        for (int i = 0; i < batch; i++) {
            char *p = malloc(size);
            if (!p) {
                fprintf(stderr, "refault: malloc(%zu) failed\n", size);
                return 1;
            }
            for (size_t j = 0; j < size; j += 4096) p[j] = 1;
            blocks[i] = p;
        }
        for (int i = 0; i < batch; i++) free(blocks[i]);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double pairs = (double)rounds * batch;
    printf("faults/pair %.4f ns/pair %.0f\n", (double)(minor_faults() - f0) / pairs,
           ((double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec)) / pairs);
    free(blocks);
    return 0;
}
