/* first_pages_shared.c — a small program's first blocks of many size classes share the memory
 * already touched, instead of touching one OS page per class (src/dram/fast/lent_blocks.rs).
 *
 * A young heap asks for one block in each of 11 small classes (224 B down to 16 B) after one of
 * 256 B. Each class's first page is a 64 KiB slice of its own, whose first carve touches 4 KiB:
 * without lending, the 11 blocks make 44 KiB resident. Lent from the 256-byte page's carved
 * blocks, they make nothing new resident. Counted with mincore(2) over the 4 MiB segment
 * holding the blocks (DRAM segments are 4 MiB chunks, aligned to their size), so nothing
 * outside the heap (the stack, stdio, the loader) moves the figure. Bound: 8 KiB.
 *
 * Also: every block keeps its contents while its neighbours are written, and the lent blocks'
 * alignment is the alignment their own class would give (a block of 64 bytes is 64-aligned,
 * 128 is 128-aligned: the lender's class is a multiple of it).
 */
#include "check.h"

#define SEGMENT_BYTES (4u << 20)
#define OS_PAGE 4096u

/* Resident OS pages of the segment starting at `segment`, or SIZE_MAX if mincore failed. */
static size_t resident_pages(uintptr_t segment)
{
    static unsigned char vec[SEGMENT_BYTES / OS_PAGE];
    if (mincore((void *)segment, SEGMENT_BYTES, vec) != 0)
        return SIZE_MAX;
    size_t n = 0;
    for (size_t i = 0; i < sizeof vec; i++)
        n += vec[i] & 1;
    return n;
}

int main(void)
{
    static const size_t sizes[] = {224, 192, 160, 128, 112, 96, 80, 64, 48, 32, 16};
    enum { COUNT = sizeof sizes / sizeof sizes[0] };
    unsigned char *blocks[COUNT];

    unsigned char *first = malloc(256);
    if (!CHECK(first != NULL, "malloc(256) failed"))
        return check_done();
    memset(first, 0xee, 256);
    uintptr_t segment = (uintptr_t)first & ~(uintptr_t)(SEGMENT_BYTES - 1);
    size_t before = resident_pages(segment);
    CHECK(before != SIZE_MAX, "mincore over the segment at %#" PRIxPTR ": %s", segment,
          strerror(errno));

    for (int i = 0; i < COUNT; i++) {
        blocks[i] = malloc(sizes[i]);
        if (!CHECK(blocks[i] != NULL, "malloc(%zu) failed", sizes[i]))
            return check_done();
        memset(blocks[i], i + 1, sizes[i]);
    }
    size_t after = resident_pages(segment);
    for (int i = 0; i < COUNT; i++) {
        CHECK(((uintptr_t)blocks[i] & ~(uintptr_t)(SEGMENT_BYTES - 1)) == segment,
              "malloc(%zu) = %p is outside the segment of the first block %p", sizes[i],
              (void *)blocks[i], (void *)first);
        size_t align = sizes[i] & -sizes[i];
        CHECK((uintptr_t)blocks[i] % align == 0, "malloc(%zu) = %p is not %zu-aligned", sizes[i],
              (void *)blocks[i], align);
    }
    if (before != SIZE_MAX && after != SIZE_MAX) {
        size_t grown = after > before ? (after - before) * OS_PAGE : 0;
        CHECK(grown <= 8192,
              "the first blocks of %d classes made %zu KiB of the heap resident (one OS page per "
              "class is %u KiB; bound 8)",
              COUNT, grown / 1024, COUNT * OS_PAGE / 1024);
    }

    for (int i = 0; i < COUNT; i++) {
        for (size_t b = 0; b < sizes[i]; b++) {
            if (blocks[i][b] != (unsigned char)(i + 1)) {
                CHECK(0, "malloc(%zu): byte %zu changed to %#x", sizes[i], b, blocks[i][b]);
                break;
            }
        }
        free(blocks[i]);
    }
    free(first);
    return check_done();
}
