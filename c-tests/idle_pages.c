/* idle_pages.c — a size class's empty current page that nothing was taken from since the heap's
 * previous page cut gives its memory back when the heap cuts a page of fresh memory
 * (src/dram/fast/idle_pages.rs), and its class works on as before.
 *
 * Three phases, as glibc's bench-malloc-simple runs them: 1 600 blocks of 16 bytes allocated,
 * written and freed, then of 32, then of 64. The 16-byte page is its class's current page, empty
 * after its phase: it kept the ~7 OS pages its blocks touched. The 32-byte phase's first cut
 * notes it; the 64-byte phase's cut finds it unchanged and discards its memory. Counted with
 * mincore(2) over the 16-byte page's 64 KiB slice: at least 4 OS pages before, at most 1 after.
 * Without the feature the slice keeps all of them (the 16-byte phase's high water stays).
 * Then the 16-byte class is used again: every block keeps its contents while its neighbours
 * are written, and comes from the same page, carved again from its start.
 */
#include "check.h"

#define BLOCKS 1600
#define SLICE ((uintptr_t)64 << 10)
#define OS_PAGE 4096u

static unsigned char *blocks[BLOCKS];

/* Resident OS pages of the slice at `slice`, or SIZE_MAX if mincore failed. */
static size_t resident_pages(uintptr_t slice)
{
    unsigned char vec[SLICE / OS_PAGE];
    if (mincore((void *)slice, SLICE, vec) != 0)
        return SIZE_MAX;
    size_t n = 0;
    for (size_t i = 0; i < sizeof vec; i++)
        n += vec[i] & 1;
    return n;
}

/* Allocates BLOCKS blocks of `size`, writes each, checks each, frees them (half first to last,
 * half last to first, as the benchmark does). Returns 0 if an allocation failed. */
static int phase(size_t size)
{
    for (int i = 0; i < BLOCKS; i++) {
        blocks[i] = malloc(size);
        if (!CHECK(blocks[i] != NULL, "malloc(%zu) failed", size))
            return 0;
        memset(blocks[i], i & 0xff, size);
    }
    for (int i = 0; i < BLOCKS; i++)
        for (size_t b = 0; b < size; b++)
            if (!CHECK(blocks[i][b] == (i & 0xff), "block %d of %zu bytes lost its contents", i,
                       size))
                return 0;
    for (int i = 0; i < BLOCKS / 2; i++)
        free(blocks[i]);
    for (int i = BLOCKS - 1; i >= BLOCKS / 2; i--)
        free(blocks[i]);
    return 1;
}

int main(void)
{
    if (!phase(16))
        return check_done();
    /* A block from the middle of the phase lies in the class's own page (the first few may be
     * lent by a larger class's page); the page is one 64 KiB-aligned slice. */
    uintptr_t slice = (uintptr_t)blocks[BLOCKS / 2] & ~(SLICE - 1);
    size_t before = resident_pages(slice);
    CHECK(before != SIZE_MAX && before >= 4,
          "the 16-byte page's slice %#" PRIxPTR " holds %zu resident pages after its phase "
          "(expected the 7 its blocks touched)", slice, before);

    if (!phase(32) || !phase(64))
        return check_done();
    size_t after = resident_pages(slice);
    CHECK(after <= 1,
          "the idle 16-byte page still holds %zu resident OS pages (of %zu) after two page cuts "
          "of other classes", after, before);

    if (!phase(16))
        return check_done();
    CHECK(((uintptr_t)blocks[BLOCKS / 2] & ~(SLICE - 1)) == slice,
          "after its memory was given back, the 16-byte class moved to another page "
          "(%p, not in %#" PRIxPTR ")", (void *)blocks[BLOCKS / 2], slice);
    return check_done();
}
