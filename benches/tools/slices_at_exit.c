/* slices_at_exit: which 64 KiB slices of a process's anonymous memory are resident, read as it
 * exits.
 *
 * A shared library to preload *after* the allocator under test; its destructor writes one line
 * per anonymous mapping to $SLICES_AT_EXIT.PID: its range, protection, resident KiB of its size,
 * then "OFFSET:PAGES" for every 64 KiB slice holding resident pages, where OFFSET is the slice's
 * address within its 4 MiB chunk (a tiermalloc segment's slice index times 0x10000) and PAGES
 * its resident 4 KiB pages (mincore). Inaccessible mappings (a segment's unused slices) are
 * listed with their size. `smaps_at_exit.c` says which mappings hold the memory; this says how
 * full each size class's page is (BENCHMARKS.md "Session 10, branch rss"):
 *
 *   cc -O2 -shared -fPIC -o /tmp/slices_at_exit.so benches/tools/slices_at_exit.c
 *   SLICES_AT_EXIT=/tmp/ours-espresso LD_PRELOAD=LIB:/tmp/slices_at_exit.so PROG ARGS
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096UL
#define SLICE_PAGES 16UL
/* The longest stretch of a mapping read at once: 4 GiB of address space. */
#define MAX_PAGES (1UL << 20)

__attribute__((destructor)) static void slices_at_exit(void) {
    const char *base = getenv("SLICES_AT_EXIT");
    if (!base) return;
    char path[512];
    snprintf(path, sizeof path, "%s.%d", base, (int)getpid());
    FILE *out = fopen(path, "w");
    FILE *in = fopen("/proc/self/maps", "r");
    if (!out || !in) return;
    static unsigned char resident[MAX_PAGES];
    char line[1024], perms[8], dev[16];
    unsigned long lo, hi, offset, inode;
    while (fgets(line, sizeof line, in)) {
        /* Anonymous mappings only (inode 0), not the kernel's own ([stack] is the program's). */
        if (sscanf(line, "%lx-%lx %7s %lx %15s %lu", &lo, &hi, perms, &offset, dev, &inode) != 6
            || inode != 0 || strchr(line, '['))
            continue;
        if (perms[0] != 'r') {
            fprintf(out, "%lx-%lx %s inaccessible %lu KiB\n", lo, hi, perms, (hi - lo) >> 10);
            continue;
        }
        unsigned long pages = (hi - lo) / PAGE;
        if (pages > MAX_PAGES) pages = MAX_PAGES;
        if (mincore((void *)lo, pages * PAGE, resident)) continue;
        unsigned long total = 0;
        for (unsigned long i = 0; i < pages; i++) total += resident[i] & 1;
        fprintf(out, "%lx-%lx %s resident %lu KiB of %lu:", lo, hi, perms, total * 4,
                (hi - lo) >> 10);
        /* Slices are counted on the 64 KiB grid of addresses, as a segment lays them out. */
        unsigned long first = lo & ~(SLICE_PAGES * PAGE - 1);
        for (unsigned long slice = first; slice < lo + pages * PAGE; slice += SLICE_PAGES * PAGE) {
            unsigned long count = 0;
            for (unsigned long a = slice < lo ? lo : slice;
                 a < slice + SLICE_PAGES * PAGE && a < lo + pages * PAGE; a += PAGE)
                count += resident[(a - lo) / PAGE] & 1;
            if (count) fprintf(out, " %lx:%lu", slice & 0x3fffffUL, count);
        }
        fputc('\n', out);
    }
    fclose(in);
    fclose(out);
}
