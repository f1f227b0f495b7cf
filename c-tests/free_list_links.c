/* free_list_links.c — a freed block's link overwritten (a use after free, glibc's
 * tst-safe-linking) is caught at the default level, before the link is followed:
 *  - blocks over 1 KiB, for every byte pattern, zero included: their pop follows a head only
 *    if it is a carved block start of its page, and tests the free mark of the block it hands
 *    out (its second word, which the pattern erases: src/dram/fast/page.rs, `pop_validated`);
 *  - blocks up to 1 KiB, for every pattern whose top bit is set (text and small numbers are
 *    not: BENCHMARKS.md, "Session 10, branch checks"): the fast pop follows no head with its
 *    sign bit set, the slow path tests it exactly;
 *  - when the program's next requests are of other sizes only: a new page of another class,
 *    or a large block, tests the heads of the thread's current lists first (every pattern),
 *    and the marks of the big blocks' cache, which malloc_trim tests too;
 *  - a link alone overwritten (8 bytes, the mark kept) with an address outside the block's
 *    page, unmapped or another object's (blocks over 1 KiB; up to 1 KiB only a non-canonical
 *    one with the top bit set);
 *  - a zeroed link alone (8 bytes, the mark kept) ends the list (its blocks are leaked), and
 *    no block is handed out twice.
 * Every pattern and size under TIERMALLOC_SECURE=1: secure_mode.c.
 * Each aborting case runs in a fork()ed child (check.h's EXPECT_ABORT).
 */
#include "check.h"

struct corrupt {
    size_t size;  /* the class whose list is corrupted */
    int byte;     /* written over the freed block's first 16 bytes */
    size_t next;  /* the request made afterwards (0: two of `size`) */
};

/* Three blocks of `size` freed in turn; returns the last, the head of its list. */
static char *free_three(size_t size)
{
    char *volatile a = malloc(size), *volatile b = malloc(size), *volatile d = malloc(size);
    free(a);
    free(b);
    free(d);
    return d;
}

/* Three blocks freed in turn, the last (the list's head) written over, then requests. */
static void corrupt_then(void *arg)
{
    struct corrupt *c = arg;
    char *volatile a = NULL, *volatile b = NULL;
    char *d = free_three(c->size);
    memset(d, c->byte, 16);
    if (c->next == 0) {
        a = malloc(c->size); /* the head itself: its link is read, not followed */
        b = malloc(c->size); /* would follow the overwritten link */
    } else {
        a = malloc(c->next);
    }
    printf("%p %p\n", (void *)a, (void *)b);
}

/* A freed block of `size` written over, then the heap's memory given back (`malloc_trim`):
 * a big block waiting in the cache is tested as it goes back to its page. */
static void corrupt_then_trim(void *arg)
{
    struct corrupt *c = arg;
    memset(free_three(c->size), c->byte, 16);
    malloc_trim(0);
}

/* An object outside every page of blocks, whose address a link is overwritten with. */
static size_t outside_object[4];

struct link {
    size_t size;
    uintptr_t value;
};

/* Three blocks freed in turn, the head's link alone (its first 8 bytes) overwritten with
 * `value`, then two requests of the size: the second would follow the link. */
static void corrupt_link_then(void *arg)
{
    struct link *l = arg;
    char *d = free_three(l->size);
    memcpy(d, &l->value, sizeof(void *));
    char *volatile a = malloc(l->size), *volatile b = malloc(l->size);
    printf("%p %p\n", (void *)a, (void *)b);
}

int main(void)
{
    static const size_t sizes[] = {16, 48, 128, 1000, 5000, 20000};
    static const int bytes[] = {0x41, 0xff, 0x5a, 0x13, 0x80, 0x01, 0x00};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        for (size_t j = 0; j < sizeof bytes / sizeof bytes[0]; j++) {
            if (sizes[i] <= 1024 && bytes[j] < 0x80)
                continue;
            struct corrupt c = {sizes[i], bytes[j], 0};
            EXPECT_ABORT(corrupt_then, &c, "corrupted free list", NULL);
        }
    /* The next request of another size: a class with no page yet (its first page is cut),
     * a large block; the freed block on a page's list (64 bytes) or in the big blocks' cache
     * (20 000 bytes, src/dram/fast/block_cache.rs). */
    static const size_t others[] = {300 * 1024, 3 << 20};
    static const size_t written[] = {64, 20000};
    for (size_t k = 0; k < sizeof written / sizeof written[0]; k++)
        for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
            struct corrupt c = {written[k], 0x41, others[i]};
            EXPECT_ABORT(corrupt_then, &c, "corrupted free list", NULL);
        }
    struct corrupt trimmed = {20000, 0x41, 0};
    EXPECT_ABORT(corrupt_then_trim, &trimmed, "corrupted free list", NULL);
    /* The link alone, the mark kept: a non-canonical address (the pop would fault on it),
     * and the address of an object outside the heap's pages. */
    struct link links[] = {
        {5000, (uintptr_t)0x4141414141414141ull},
        {5000, (uintptr_t)&outside_object[0]},
        {64, (uintptr_t)0xc1c1c1c1c1c1c1c1ull},
    };
    for (size_t i = 0; i < sizeof links / sizeof links[0]; i++)
        EXPECT_ABORT(corrupt_link_then, &links[i], "corrupted free list", NULL);
    /* A zeroed link, the mark kept: the list ends there; what follows is never a block
     * handed out twice. */
    char *a = malloc(96), *b = malloc(96), *d = malloc(96);
    free(a);
    free(b);
    free(d);
    memset(d, 0, 8);
    char *got[200];
    for (int i = 0; i < 200; i++) {
        got[i] = malloc(96);
        memset(got[i], 0x77, 96);
        for (int k = 0; k < i; k++)
            CHECK(got[k] != got[i], "block %p handed out twice", (void *)got[i]);
    }
    for (int i = 0; i < 200; i++)
        free(got[i]);
    return check_done();
}
