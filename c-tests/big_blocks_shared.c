/* big_blocks_shared.c — the big size classes (blocks over 8 KiB) share the memory of a larger
 * class's freed blocks instead of each keeping its own high water
 * (src/dram/fast/lent_blocks.rs, "Big classes").
 *
 * Three phases, as a program working through sizes one after another does (espresso): three
 * blocks of 40 KiB (one page of that class) written and freed, then three of 28 000 bytes,
 * then three of 24 000. Each later block is lent from the 40 KiB class's page (its freed
 * blocks are carved, resident, and at most 1.75 times the request's class): it is one of the
 * first phase's addresses, and writing it takes no page fault. Without lending, each phase cuts
 * a page of its own class and writes 84 and 72 KiB of fresh memory (46 minor faults with
 * main's library at `825a260`; the heap's look at idle pages then gives the 40 KiB page's
 * memory back, so the resident total does not tell the two apart, the faults do). Bound: 10
 * minor faults over the two phases (getrusage; measured 5: the library's code of the lending
 * path runs for the first time there, and its pages fault in). Every block keeps its contents
 * while the others are written.
 */
#include "check.h"

#define PER_PHASE 3

/* The process's minor page faults so far. */
static long minor_faults(void)
{
    struct rusage usage;
    if (getrusage(RUSAGE_SELF, &usage) != 0)
        return -1;
    return usage.ru_minflt;
}

/* Writes `n` blocks of `size` bytes with their own values, checks them all, frees them. */
static void fill_check_free(unsigned char **blocks, size_t size, int phase)
{
    for (int i = 0; i < PER_PHASE; i++)
        memset(blocks[i], phase * PER_PHASE + i + 1, size);
    for (int i = 0; i < PER_PHASE; i++) {
        for (size_t b = 0; b < size; b += 97) {
            if (blocks[i][b] != (unsigned char)(phase * PER_PHASE + i + 1)) {
                CHECK(0, "phase %d block %d: byte %zu changed to %#x", phase, i, b, blocks[i][b]);
                break;
            }
        }
    }
    for (int i = 0; i < PER_PHASE; i++)
        free(blocks[i]);
}

int main(void)
{
    static const size_t sizes[] = {40960, 28000, 24000};
    unsigned char *first[PER_PHASE], *blocks[PER_PHASE];

    for (int i = 0; i < PER_PHASE; i++) {
        first[i] = malloc(sizes[0]);
        if (!CHECK(first[i] != NULL, "malloc(%zu) failed", sizes[0]))
            return check_done();
    }
    /* Every function the phases call has run once (the loader binds each at its first call,
     * which may fault pages in): only the heap's memory moves the count below. */
    CHECK(malloc_usable_size(first[0]) >= sizes[0], "usable size %zu < %zu",
          malloc_usable_size(first[0]), sizes[0]);
    fill_check_free(first, sizes[0], 0);
    long before = minor_faults();
    CHECK(before >= 0, "getrusage: %s", strerror(errno));

    for (int phase = 1; phase < 3; phase++) {
        for (int i = 0; i < PER_PHASE; i++) {
            blocks[i] = malloc(sizes[phase]);
            if (!CHECK(blocks[i] != NULL, "malloc(%zu) failed", sizes[phase]))
                return check_done();
            int reused = 0;
            for (int j = 0; j < PER_PHASE; j++)
                reused |= blocks[i] == first[j];
            CHECK(reused, "malloc(%zu) = %p is not one of the freed 40 KiB blocks (%p %p %p)",
                  sizes[phase], (void *)blocks[i], (void *)first[0], (void *)first[1],
                  (void *)first[2]);
            CHECK(malloc_usable_size(blocks[i]) >= sizes[phase], "usable size %zu < %zu",
                  malloc_usable_size(blocks[i]), sizes[phase]);
        }
        fill_check_free(blocks, sizes[phase], phase);
    }
    long after = minor_faults();
    if (before >= 0 && after >= 0)
        CHECK(after - before <= 10,
              "two phases of smaller big blocks took %ld minor faults (their own pages: 46; "
              "bound 10)",
              after - before);
    return check_done();
}
