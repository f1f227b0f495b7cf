/* startup_footprint.c: what a small program has resident at its end, from /proc/self/smaps.
 *
 * Makes the few allocations a small program makes (three sizes, freed), then prints one line
 * "lib KIB anon KIB": the resident KiB of every mapping of the file named by
 * $TIERMALLOC_FOOTPRINT_LIB (the allocator's library; 0 when unset), and the anonymous KiB of
 * the whole process but its stack (heaps, metadata, and every library's relocated data and
 * .bss). Run by tests/startup_footprint.rs with the library preloaded and without it. */
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
    if (!smaps)
        return 3;
    char line[1024];
    unsigned long lib_kib = 0, anon_kib = 0, kib, lo, hi;
    int in_lib = 0, in_stack = 0;
    while (fgets(line, sizeof line, smaps)) {
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2) {
            /* A mapping's header: its path is the line's last field. */
            char *path = strchr(line, '/');
            if (path)
                path[strcspn(path, "\n")] = 0;
            in_lib = lib && *lib && path && !strcmp(path, lib);
            in_stack = strstr(line, "[stack]") != NULL;
        } else if (!strncmp(line, "Rss:", 4) && sscanf(line + 4, "%lu", &kib) == 1) {
            if (in_lib)
                lib_kib += kib;
        } else if (!strncmp(line, "Anonymous:", 10) && sscanf(line + 10, "%lu", &kib) == 1) {
            if (!in_stack)
                anon_kib += kib;
        }
    }
    fclose(smaps);
    printf("lib %lu anon %lu\n", lib_kib, anon_kib);
    return 0;
}
