/* realloc_in_place.c — how often tm_realloc grows a block in place on a persistent (PMR) tier,
 * whose blocks are cut from the end of free space (src/device/persist).
 *
 * usage: realloc_in_place LIB FILE   (LIB: path of libtiermalloc.so; FILE: the tier's file,
 *        made here, 1 GiB, removed at the end)
 *
 * Three patterns; for each, the number of grows and how many returned their argument:
 * 1. one block doubled from 4 KiB to 64 MiB, alone in the tier;
 * 2. 256 blocks grown x1.5 round-robin from 4 KiB to about 1 MiB;
 * 3. 1000 live blocks of 4..64 KiB; at each step a random one grows by 1..8 KiB (past
 *    256 KiB it is replaced by a new 4 KiB block), every fourth step one is freed and replaced.
 */
#define _GNU_SOURCE 1
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

typedef void *(*malloc_fn)(int, size_t);
typedef void *(*realloc_fn)(void *, size_t);
typedef void (*free_fn)(void *);

static malloc_fn tm_malloc;
static realloc_fn tm_realloc;
static free_fn tm_free;
static long grows, in_place;

enum { TM_PMR = 3 };

static void *checked(void *p)
{
    if (!p) {
        fprintf(stderr, "the tier is full\n");
        exit(2);
    }
    return p;
}

static void *grow(void *p, size_t n)
{
    void *q = checked(tm_realloc(p, n));
    grows++;
    in_place += q == p;
    return q;
}

static void report(const char *what)
{
    printf("%-62s %6ld grows, %6ld in place (%.1f %%)\n", what, grows, in_place,
           100.0 * (double)in_place / (double)grows);
    grows = in_place = 0;
}

static unsigned long next(unsigned long *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: realloc_in_place LIB FILE\n");
        return 2;
    }
    char tiers[512];
    unlink(argv[2]);
    snprintf(tiers, sizeof tiers, "dram;pmr:path=%s,size=1G,create,fresh", argv[2]);
    setenv("TIERMALLOC_TIERS", tiers, 1);
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 2;
    }
    tm_malloc = (malloc_fn)dlsym(h, "tm_malloc");
    tm_realloc = (realloc_fn)dlsym(h, "tm_realloc");
    tm_free = (free_fn)dlsym(h, "tm_free");

    void *p = checked(tm_malloc(TM_PMR, 4096));
    for (size_t n = 8192; n <= (size_t)64 << 20; n *= 2) p = grow(p, n);
    tm_free(p);
    report("one block doubled 4 KiB -> 64 MiB, alone");

    static void *v[1000];
    static size_t size[1000];
    for (int i = 0; i < 256; i++) v[i] = checked(tm_malloc(TM_PMR, size[i] = 4096));
    for (int k = 0; k < 14; k++)
        for (int i = 0; i < 256; i++) v[i] = grow(v[i], size[i] = size[i] * 3 / 2);
    for (int i = 0; i < 256; i++) tm_free(v[i]);
    report("256 blocks x1.5 round-robin, 4 KiB -> 1 MiB");

    unsigned long x = 88172645463325252UL;
    for (int i = 0; i < 1000; i++)
        v[i] = checked(tm_malloc(TM_PMR, size[i] = 4096 + next(&x) % 61440));
    for (int step = 0; step < 20000; step++) {
        unsigned long r = next(&x);
        int i = (int)(r % 1000);
        if (step % 4 == 3 || size[i] + 8192 > 256 << 10) {
            tm_free(v[i]);
            v[i] = checked(tm_malloc(TM_PMR, size[i] = 4096 + (r >> 20) % 61440));
            continue;
        }
        v[i] = grow(v[i], size[i] += 1024 + (r >> 20) % 7168);
    }
    report("1000 live 4..64 KiB blocks, random +1..8 KiB, frees between");
    unlink(argv[2]);
    return 0;
}
