/* smaps_at_exit: where a process's resident pages are, per mapping, read as it exits.
 *
 * A shared library to preload *after* the allocator under test; its destructor writes one line
 * per mapping with resident pages, "RSS_KIB ANONYMOUS_KIB <smaps header>", then "maxrss KIB"
 * (getrusage), to $SMAPS_AT_EXIT.PID. Used for BENCHMARKS.md "Session 9, branch rss":
 *
 *   cc -O2 -shared -fPIC -o /tmp/smaps_at_exit.so benches/tools/smaps_at_exit.c
 *   SMAPS_AT_EXIT=/tmp/ours-cfrac LD_PRELOAD=LIB:/tmp/smaps_at_exit.so PROG ARGS
 *   SMAPS_AT_EXIT=/tmp/glibc-cfrac LD_PRELOAD=/tmp/smaps_at_exit.so PROG ARGS
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

static void flush(FILE *o, const char *header, unsigned long rss, unsigned long anon) {
    if (header[0] && rss) fprintf(o, "%6lu %6lu %s", rss, anon, header);
}

__attribute__((destructor)) static void smaps_at_exit(void) {
    const char *base = getenv("SMAPS_AT_EXIT");
    if (!base) return;
    char path[512];
    snprintf(path, sizeof path, "%s.%d", base, (int)getpid());
    FILE *out = fopen(path, "w");
    FILE *in = fopen("/proc/self/smaps", "r");
    if (!out || !in) return;
    char line[1024], header[1024] = "";
    unsigned long rss = 0, anon = 0, a, b;
    while (fgets(line, sizeof line, in)) {
        /* A mapping's header starts with its address range "lo-hi"; a field line starts with
         * its name and a colon, which never scans as two numbers around a dash. */
        if (sscanf(line, "%lx-%lx ", &a, &b) == 2) {
            flush(out, header, rss, anon);
            snprintf(header, sizeof header, "%s", line);
            rss = anon = 0;
        } else if (!strncmp(line, "Rss:", 4)) {
            sscanf(line + 4, "%lu", &rss);
        } else if (!strncmp(line, "Anonymous:", 10)) {
            sscanf(line + 10, "%lu", &anon);
        }
    }
    flush(out, header, rss, anon);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    fprintf(out, "maxrss %ld\n", ru.ru_maxrss);
    fclose(in);
    fclose(out);
}
