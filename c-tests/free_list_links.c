/* free_list_links.c — a freed block's link overwritten (a use after free, glibc's
 * tst-safe-linking) is caught at the default level, before the link is followed:
 *  - by the next malloc of the block's size that would follow it (the fast path follows a
 *    list head only inside its page's carved blocks; the slow path tests it exactly);
 *  - when the program's next requests are of other sizes only: a new page of another class,
 *    or a large block, tests the heads of the thread's current lists first;
 *  - for every byte pattern, zero included: written over the block's first 16 bytes, the
 *    pattern also erases its free mark (its second word), which the malloc that hands the
 *    block out tests (src/dram/fast/page.rs, `Block::take_mark`);
 *  - a link alone overwritten (8 bytes, the mark kept) with an address outside the block's
 *    page, unmapped or another object's: the mark cannot tell, the list-head range test of the
 *    fast pop does (without it the pop reads and writes at that address);
 *  - a zeroed link alone (8 bytes, the mark kept) ends the list (its blocks are leaked), and
 *    no block is handed out twice.
 * Each aborting case runs in a fork()ed child (check.h's EXPECT_ABORT).
 */
#include "check.h"

struct corrupt {
    size_t size;  /* the class whose list is corrupted */
    int byte;     /* written over the freed block's first 16 bytes */
    size_t next;  /* the request made afterwards (0: two of `size`) */
};

/* Three blocks freed in turn, the last (the list's head) written over, then requests. */
static void corrupt_then(void *arg)
{
    struct corrupt *c = arg;
    char *volatile a = malloc(c->size), *volatile b = malloc(c->size), *volatile d = malloc(c->size);
    free(a);
    free(b);
    free(d);
    memset(d, c->byte, 16);
    if (c->next == 0) {
        a = malloc(c->size); /* the head itself: its link is read, not followed */
        b = malloc(c->size); /* would follow the overwritten link */
    } else {
        a = malloc(c->next);
    }
    printf("%p %p\n", (void *)a, (void *)b);
}

/* An object outside every page of blocks, whose address a link is overwritten with. */
static size_t outside_object[4];

/* Three blocks freed in turn, the head's link alone (its first 8 bytes) overwritten with
 * `*arg`, then two requests of the size: the second would follow the link. */
static void corrupt_link_then(void *arg)
{
    size_t size = 64;
    char *volatile a = malloc(size), *volatile b = malloc(size), *volatile d = malloc(size);
    free(a);
    free(b);
    free(d);
    memcpy(d, arg, sizeof(void *));
    a = malloc(size);
    b = malloc(size);
    printf("%p %p\n", (void *)a, (void *)b);
}

int main(void)
{
    static const size_t sizes[] = {16, 48, 128, 1000, 5000, 20000};
    static const int bytes[] = {0x41, 0xff, 0x5a, 0x13, 0x80, 0x01, 0x00};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        for (size_t j = 0; j < sizeof bytes / sizeof bytes[0]; j++) {
            struct corrupt c = {sizes[i], bytes[j], 0};
            EXPECT_ABORT(corrupt_then, &c, "corrupted free list", NULL);
        }
    /* The next request of another size: a class with no page yet (its first page is cut),
     * a large block. */
    static const size_t others[] = {300 * 1024, 3 << 20};
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
        struct corrupt c = {64, 0x41, others[i]};
        EXPECT_ABORT(corrupt_then, &c, "corrupted free list", NULL);
    }
    /* The link alone, the mark kept: a non-canonical address (the pop would fault on it),
     * and the address of an object outside the heap's pages. */
    static uintptr_t links[2];
    links[0] = (uintptr_t)0x4141414141414141ull;
    links[1] = (uintptr_t)&outside_object[0];
    for (size_t i = 0; i < 2; i++)
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
