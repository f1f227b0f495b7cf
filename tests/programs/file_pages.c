/* file_pages.c: how much of the allocator library's first read-only window stays resident.
 *
 * Makes the few allocations a small program makes (three sizes, freed), then prints one line
 * "window KIB mappings N": the resident KiB of the read-only, non-executable mappings of the
 * file named by $TIERMALLOC_FOOTPRINT_LIB at file offsets below 64 KiB (the first fault-around
 * window of the library's headers and read-only data: the dynamic symbols, the relocations,
 * the start of .rodata), and how many mappings hold them. Run by tests/file_pages.rs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void)
{
    static const size_t sizes[] = {16, 100, 1000};
    void *volatile blocks[3];
    for (int i = 0; i < 3; i++) {
        blocks[i] = malloc(sizes[i]);
        if (!blocks[i])
            return 2;
        memset(blocks[i], 1, sizes[i]);
    }
    for (int i = 0; i < 3; i++)
        free(blocks[i]);

    const char *lib = getenv("TIERMALLOC_FOOTPRINT_LIB");
    FILE *smaps = fopen("/proc/self/smaps", "r");
    if (!lib || !smaps)
        return 3;
    char line[1024], perms[8];
    unsigned long kib, lo, hi, offset, window_kib = 0, mappings = 0;
    int in_window = 0;
    while (fgets(line, sizeof line, smaps)) {
        if (sscanf(line, "%lx-%lx %7s %lx ", &lo, &hi, perms, &offset) == 4) {
            /* A mapping's header: its path is the line's last field. */
            char *path = strchr(line, '/');
            if (path)
                path[strcspn(path, "\n")] = 0;
            in_window = path && !strcmp(path, lib) && !strcmp(perms, "r--p") && offset < 65536;
            mappings += in_window;
        } else if (!strncmp(line, "Rss:", 4) && sscanf(line + 4, "%lu", &kib) == 1) {
            if (in_window)
                window_kib += kib;
        }
    }
    fclose(smaps);
    printf("window %lu mappings %lu\n", window_kib, mappings);
    return 0;
}
