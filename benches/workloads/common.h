/* Shared helpers for the tiermalloc whole-program benchmark workloads.
 *
 * Every workload is a standalone C program built with `cc -O2 -pthread`. It takes its size
 * parameters as positional argv entries (missing ones take the defaults), prints exactly one
 * line `<name> checksum=<hex> ...` on stdout whose content depends only on the parameters
 * (never on addresses, timing or thread interleaving), and exits 0. Anything else (progress,
 * diagnostics) goes to stderr. A detected content corruption aborts with exit status 3.
 */
#ifndef TM_BENCH_COMMON_H
#define TM_BENCH_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* xorshift64* generator: tiny, fast and good enough to drive allocation patterns. */
typedef struct rng {
    uint64_t s;
} rng;

static inline uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

static inline void rng_seed(rng *r, uint64_t seed) {
    r->s = splitmix64(seed) | 1; /* never zero */
}

static inline uint64_t rng_next(rng *r) {
    uint64_t x = r->s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    r->s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* Uniform in [lo, hi] (inclusive); the modulo bias is irrelevant here. */
static inline uint64_t rng_range(rng *r, uint64_t lo, uint64_t hi) {
    return lo + (rng_next(r) >> 11) % (hi - lo + 1);
}

/* Size in [8, 1024] skewed towards small blocks: pick one of the seven power-of-two bands
 * [8,16) [16,32) ... [512,1024] with equal probability, then uniformly inside the band. This
 * is roughly what allocation-heavy programs show (many small, fewer large). */
static inline size_t size_skewed_8_1024(rng *r) {
    uint64_t x = rng_next(r);
    unsigned band = (unsigned)((x >> 40) % 7); /* 0..6 */
    size_t lo = (size_t)8 << band;
    size_t span = band == 6 ? lo + 1 : lo; /* last band includes 1024 */
    return lo + (size_t)((x & 0xFFFFFFFFu) % span);
}

/* Order-dependent checksum step (FNV-1a style over 64-bit words). */
static inline uint64_t mix(uint64_t h, uint64_t v) {
    return (h ^ v) * 0x100000001B3ULL + 0x9E37;
}

/* Positional argument i (1-based) as an unsigned number, or def if absent/empty. */
static inline uint64_t arg_u64(int argc, char **argv, int i, uint64_t def) {
    if (i < argc && argv[i][0] != '\0') {
        char *end;
        unsigned long long v = strtoull(argv[i], &end, 0);
        if (*end != '\0') {
            fprintf(stderr, "bad argument %d: '%s'\n", i, argv[i]);
            exit(2);
        }
        return (uint64_t)v;
    }
    return def;
}

static inline void *xmalloc(size_t n) {
    void *p = malloc(n);
    if (!p) {
        fprintf(stderr, "malloc(%zu) failed\n", n);
        exit(4);
    }
    return p;
}

static inline void *xrealloc(void *q, size_t n) {
    void *p = realloc(q, n);
    if (!p) {
        fprintf(stderr, "realloc(%zu) failed\n", n);
        exit(4);
    }
    return p;
}

#define CHECK(cond, what)                                                          \
    do {                                                                           \
        if (!(cond)) {                                                             \
            fprintf(stderr, "%s:%d: corruption detected: %s\n", __FILE__, __LINE__, \
                    what);                                                         \
            exit(3);                                                               \
        }                                                                          \
    } while (0)

#endif
