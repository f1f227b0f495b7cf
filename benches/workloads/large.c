/* large: big blocks, page faults, and realloc growth.
 *
 * Phase 1 keeps `slots` large blocks alive; each step replaces a random one with a new block
 * of 64 KiB .. 32 MiB (log-uniform), touches every page of it and, before freeing the old
 * one, checks the words it wrote. Phase 2 grows a buffer from 64 KiB to 32 MiB by repeated
 * realloc (x1.25 .. x2 per step, appending data after each step and checking that the old
 * contents moved with it), then shrinks it back by realloc, `rounds` times. What this measures
 * is how an allocator obtains, reuses, and returns big extents: mmap/munmap churn, page-fault
 * cost, in-place growth (mremap), and how much freed memory it keeps resident.
 *
 * usage: large [steps=1000] [slots=4] [rounds=12] [max_mib=32]
 */
#include "common.h"

#define PAGE 4096u

/* Write one word per page at the page-aligned offsets `off` with size_from < off + 8 <= size_to
 * (i.e. the words a block of size_to has and a block of size_from has not), value tag ^ off. */
static uint64_t touch(unsigned char *p, size_t size_from, size_t size_to, uint64_t tag) {
    uint64_t sum = 0;
    size_t off = size_from >= 8 ? ((size_from - 8) / PAGE + 1) * PAGE : 0;
    for (; off + 8 <= size_to; off += PAGE) {
        uint64_t v = tag ^ off;
        memcpy(p + off, &v, 8);
        sum += v;
    }
    return sum;
}

/* Check the words touch(p, 0, size, tag) wrote. */
static uint64_t verify(const unsigned char *p, size_t size, uint64_t tag) {
    uint64_t sum = 0;
    for (size_t off = 0; off + 8 <= size; off += PAGE) {
        uint64_t v;
        memcpy(&v, p + off, 8);
        CHECK(v == (tag ^ off), "large block content lost");
        sum += v;
    }
    return sum;
}

static size_t log_uniform(rng *r, size_t lo, size_t hi) {
    /* lo * 2^(u * log2(hi/lo)) without libm: pick a power-of-two band, then uniform inside */
    unsigned bands = 0;
    while ((lo << (bands + 1)) <= hi) bands++;
    unsigned b = (unsigned)rng_range(r, 0, bands - 1);
    size_t base = lo << b;
    return (size_t)rng_range(r, base, base * 2);
}

int main(int argc, char **argv) {
    uint64_t steps = arg_u64(argc, argv, 1, 1000);
    uint64_t nslots = arg_u64(argc, argv, 2, 4);
    uint64_t rounds = arg_u64(argc, argv, 3, 12);
    uint64_t max_mib = arg_u64(argc, argv, 4, 32);
    size_t lo = 64 * 1024, hi = (size_t)max_mib << 20;
    if (hi < 2 * lo) hi = 2 * lo;
    if (nslots < 1) nslots = 1;

    rng r;
    rng_seed(&r, 0x1A26E);
    uint64_t h = 0, sum = 0;

    /* phase 1: random replacement among a few live large blocks */
    unsigned char **slot = xmalloc(nslots * sizeof(*slot));
    size_t *size = xmalloc(nslots * sizeof(*size));
    uint64_t *tag = xmalloc(nslots * sizeof(*tag));
    for (uint64_t i = 0; i < nslots; i++) slot[i] = NULL;
    for (uint64_t s = 0; s < steps; s++) {
        uint64_t i = rng_range(&r, 0, nslots - 1);
        if (slot[i]) {
            sum += verify(slot[i], size[i], tag[i]);
            free(slot[i]);
        }
        size[i] = log_uniform(&r, lo, hi);
        tag[i] = rng_next(&r);
        slot[i] = xmalloc(size[i]);
        sum += touch(slot[i], 0, size[i], tag[i]);
        h = mix(h, size[i]);
    }
    for (uint64_t i = 0; i < nslots; i++)
        if (slot[i]) {
            sum += verify(slot[i], size[i], tag[i]);
            free(slot[i]);
        }
    free(slot);
    free(size);
    free(tag);
    h = mix(h, sum);

    /* phase 2: realloc growth and shrink */
    for (uint64_t round = 0; round < rounds; round++) {
        uint64_t t = rng_next(&r);
        size_t cur = lo;
        unsigned char *buf = xmalloc(cur);
        sum = touch(buf, 0, cur, t);
        while (cur < hi) {
            size_t next = cur + cur / 4 + (size_t)rng_range(&r, 0, 3 * cur / 4);
            if (next > hi) next = hi;
            buf = xrealloc(buf, next);
            /* the old part must have moved with the block */
            verify(buf, cur, t);
            /* fill the pages the block gained */
            sum += touch(buf, cur, next, t);
            cur = next;
            h = mix(h, cur);
        }
        while (cur > lo) {
            size_t next = cur / 2 < lo ? lo : cur / 2;
            buf = xrealloc(buf, next);
            verify(buf, next, t);
            cur = next;
        }
        free(buf);
        h = mix(h, sum);
    }
    printf("large checksum=%016llx\n", (unsigned long long)h);
    return 0;
}
