/* medium_churn: a cache of variable-size buffers (a server's request bodies). Per thread, W
 * live blocks of uniform random size 16..MAX bytes; each operation frees a random one and
 * allocates a new one in its place, writing its first 64 bytes (a tag word and a fill), and
 * checking the tag before the free. With MAX 65535, seven in eight requests are over 8 KiB:
 * the big size classes, their pages of a few blocks each, and what sits in front of them.
 *
 * usage: medium_churn [threads=1] [ops_per_thread=4000000] [window=10000] [max=65535]
 */
#include "common.h"
#include <pthread.h>

static uint64_t ops, window, max_size;
static uint64_t sums[64];

#define TOUCH 64

static void fill(uint64_t *p, size_t size, uint64_t tag) {
    size_t words = (size < TOUCH ? size : TOUCH) / sizeof(uint64_t);
    p[0] = tag;
    for (size_t i = 1; i < words; i++) p[i] = tag ^ i;
}

static void *run(void *arg) {
    uint64_t id = (uint64_t)(uintptr_t)arg;
    rng r;
    rng_seed(&r, 0x3ed1 + id);
    uint64_t **slot = xmalloc(window * sizeof(*slot));
    uint64_t *tags = xmalloc(window * sizeof(*tags));
    uint64_t h = 0;
    for (uint64_t i = 0; i < window; i++) {
        size_t size = rng_range(&r, 16, max_size);
        slot[i] = xmalloc(size);
        tags[i] = (i << 17) | size;
        fill(slot[i], size, tags[i]);
    }
    for (uint64_t op = 0; op < ops; op++) {
        uint64_t k = rng_next(&r) % window;
        CHECK(slot[k][0] == tags[k], "tag changed");
        h = mix(h, tags[k]);
        free(slot[k]);
        size_t size = rng_range(&r, 16, max_size);
        slot[k] = xmalloc(size);
        tags[k] = ((window + op) << 17) | size;
        fill(slot[k], size, tags[k]);
    }
    for (uint64_t i = 0; i < window; i++) {
        CHECK(slot[i][0] == tags[i], "tag changed");
        h = mix(h, tags[i]);
        free(slot[i]);
    }
    free(slot);
    free(tags);
    sums[id] = h;
    return NULL;
}

int main(int argc, char **argv) {
    uint64_t threads = arg_u64(argc, argv, 1, 1);
    ops = arg_u64(argc, argv, 2, 4000000);
    window = arg_u64(argc, argv, 3, 10000);
    max_size = arg_u64(argc, argv, 4, 65535);
    if (threads < 1 || threads > 64 || window < 1 || max_size < 16) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    pthread_t t[64];
    for (uint64_t i = 0; i < threads; i++)
        if (pthread_create(&t[i], NULL, run, (void *)(uintptr_t)i) != 0) return 4;
    uint64_t h = 0;
    for (uint64_t i = 0; i < threads; i++) {
        pthread_join(t[i], NULL);
        h = mix(h, sums[i]);
    }
    printf("medium_churn checksum=%016llx threads=%llu ops=%llu\n", (unsigned long long)h,
           (unsigned long long)threads, (unsigned long long)ops);
    return 0;
}
