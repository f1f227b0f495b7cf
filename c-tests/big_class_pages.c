/* Big size classes (blocks over 8 KiB, up to 512 KiB) keep little more resident than the
 * program holds: their pages hold as few blocks as whole slices allow
 * (src/dram/fast/size_class.rs `page_slices`), so the blocks a class frees go back to the
 * segment, where every other class's pages take them.
 *
 * The pattern is mstress's (mimalloc-bench), reduced: for each of the big classes in turn,
 * 8 blocks are allocated and written through, then 7 of them freed. The program then holds one
 * block per class (about 3.6 MiB), and at most 8 blocks of one class at once. A heap whose
 * big pages held 8 blocks each kept every class's 8 written blocks resident: the resident
 * growth was 23.4 MiB (main at d078c91, session 11); with pages of one to a few blocks it is
 * 11.4 MiB. The limit: twice what is held at the end (each big class may keep one empty
 * block as its current page), 8 blocks of the largest class, the 4 MiB of free slices a heap
 * keeps resident before its decay purges them, and 2 MiB: 15.8 MiB. */
#include "check.h"

static long rss_kib(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, resident = 0;
    if (!f) return -1;
    if (fscanf(f, "%ld %ld", &size, &resident) != 2) resident = -1;
    fclose(f);
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

int main(void) {
    /* the big classes: four per power of two from 8 KiB to 512 KiB, one request each just
       over the class below (so each lands in its own class) */
    size_t sizes[32];
    int n = 0;
    for (size_t base = 8192; base < 512 * 1024; base *= 2)
        for (int q = 1; q <= 4; q++) sizes[n++] = base + (base / 4) * q - (base / 8);
    long before = rss_kib();
    CHECK(before > 0, "read /proc/self/statm");
    void *kept[32];
    size_t held = 0, largest = 0;
    for (int i = 0; i < n; i++) {
        void *blocks[8];
        for (int b = 0; b < 8; b++) {
            blocks[b] = malloc(sizes[i]);
            CHECK(blocks[b] != NULL, "malloc(%zu)", sizes[i]);
            if (blocks[b]) memset(blocks[b], 0x5a, sizes[i]);
        }
        for (int b = 1; b < 8; b++) free(blocks[b]);
        kept[i] = blocks[0];
        held += sizes[i];
        if (sizes[i] > largest) largest = sizes[i];
    }
    long grown = rss_kib() - before;
    long limit = (long)((2 * held + 8 * largest) >> 10) + 4096 + 2048;
    printf("big_class_pages: %d classes, held %zu KiB, resident growth %ld KiB, limit %ld KiB\n",
           n, held >> 10, grown, limit);
    CHECK(grown <= limit,
          "resident memory grew by %ld KiB for %zu KiB held (limit %ld KiB): big classes keep "
          "freed blocks of their pages resident, unusable by other classes",
          grown, held >> 10, limit);
    for (int i = 0; i < n; i++) free(kept[i]);
    return check_done();
}
