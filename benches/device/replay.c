/* replay.c — replays an allocation trace recorded from a real program (benches/tools/trace.c)
 * on the CXL device tier, under best fit and worst fit, and reports how much of the tier each
 * policy occupies for the same live data: fragmentation = peak footprint / peak live bytes.
 *
 * usage: replay [-r REPEATS] TRACE [best|worst ...]   (default: best worst, 3 timed repeats;
 *                                                     -r 0: the measuring pass only)
 *        replay -i TRACE                              (the trace's own figures, no tier)
 * TIERMALLOC_TIERS must configure cxl, e.g. "dram;cxl:path=/dev/shm/tmr0,size=1G,create";
 * benches/device/fragmentation.py runs it.
 *
 * Every allocation of the trace becomes tm_malloc(TM_CXL, size) (calloc too: the allocator's
 * choice is the same, and zeroing would only add memset time to ns/op), aligned ones
 * tm_aligned_alloc, realloc tm_realloc (which keeps the block on its tier), free tm_free.
 * Per fit, in one process, on the same tier:
 *   1. a measuring pass: after every operation it updates
 *      - live bytes: the sum of requested sizes, of tm_usable_size, and of extents (usable +
 *        16-byte header, what the tier's heap counts as in use), and their peaks;
 *      - footprint: the highest byte any live block (header included) has reached, measured
 *        from the region's base (the start of the tier's file mapping in /proc/self/maps).
 *        The tier cannot use less than that much of its region, so footprint / peak live is
 *        the fragmentation (and header/rounding) overhead of the fit policy on this trace;
 *   2. timed passes: the same calls without the bookkeeping, ns per operation (median), and
 *      one pass that only decodes the trace, the floor to subtract.
 * After each pass every block still live is freed; the tier must then be one free extent
 * again (checked with tm_get_stats), so the next pass starts from the state a fresh tier has.
 *
 * Output: one line of key=value pairs per fit, for the driver to parse. Failed allocations
 * are counted (failures=), never fatal: the table must show them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "tiermalloc.h"

#define KIND TM_CXL

static const unsigned char *trace, *trace_end;
static uint64_t n_allocs, n_ops;
/* Reallocs of a 0-byte block, served by tm_malloc + tm_free (see run()). */
static uint64_t zero_reallocs;

/* One allocation of the trace, by id. */
struct block {
    void *p;
    uint64_t req;
};
static struct block *blocks;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static uint64_t varint(const unsigned char **pp)
{
    const unsigned char *p = *pp;
    uint64_t v = 0;
    for (unsigned shift = 0;; shift += 7) {
        unsigned char b = *p++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (b < 0x80) break;
    }
    *pp = p;
    return v;
}

static void die(const char *what)
{
    fprintf(stderr, "replay: %s\n", what);
    exit(2);
}

/* Reads one varint at *pp into *v, not past trace_end; 0 if it would run past the end. */
static int get(const unsigned char **pp, uint64_t *v)
{
    for (const unsigned char *p = *pp; p < trace_end && p - *pp < 10; p++)
        if (*p < 0x80) {
            *v = varint(pp);
            return 1;
        }
    return 0;
}

/* Maps the trace and checks it end to end: ops known, ids in range. A record cut short at the
 * end (a process killed while writing) is dropped. */
static void load(const char *path)
{
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || st.st_size < 8) die("cannot open the trace");
    void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) die("cannot map the trace");
    close(fd);
    if (memcmp(m, "TMTRACE1", 8) != 0) die("not a TMTRACE1 file");
    trace = (const unsigned char *)m + 8;
    trace_end = (const unsigned char *)m + st.st_size;
    uint64_t next = 1;
    const unsigned char *p = trace;
    while (p < trace_end) {
        const unsigned char *rec = p;
        char op = (char)*p++;
        int whole;
        uint64_t delta = 0, size;
        switch (op) {
        case 'm': case 'c': whole = get(&p, &size); break;
        case 'a': whole = p++ < trace_end && get(&p, &size); break;
        case 'f': whole = get(&p, &delta); break;
        case 'r': whole = get(&p, &delta) && get(&p, &size); break;
        default: die("unknown op in the trace");
        }
        if (!whole) {
            trace_end = rec;
            break;
        }
        if ((op == 'f' || op == 'r') && (delta == 0 || delta >= next))
            die("free or realloc of an id not yet allocated");
        if (op != 'f') next++;
        n_ops++;
    }
    n_allocs = next - 1;
    blocks = calloc(next, sizeof *blocks);
    if (!blocks) die("no memory for the id table");
}

/* The start of the file mapping that holds address a (the tier's region base). */
static uintptr_t region_base(uintptr_t a)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    uintptr_t base = 0;
    while (f && fgets(line, sizeof line, f)) {
        unsigned long lo, hi, off;
        if (sscanf(line, "%lx-%lx %*s %lx", &lo, &hi, &off) == 3 && lo <= a && a < hi) {
            if (off != 0) die("the tier's mapping does not start at file offset 0");
            base = lo;
        }
    }
    if (f) fclose(f);
    if (!base) die("no mapping holds the first block");
    return base;
}

struct measure {
    uint64_t live_req, live_usable, live_blocks, peak_req, peak_usable, peak_extent, peak_blocks;
    uint64_t footprint, failures, unmatched;
    uintptr_t base;
};

static void grew(struct measure *m, void *p, uint64_t req)
{
    if (!m->base) m->base = region_base((uintptr_t)p);
    uint64_t usable = tm_usable_size(p);
    uint64_t end = (uint64_t)((uintptr_t)p - m->base) + usable;
    if (end > m->footprint) m->footprint = end;
    m->live_req += req;
    m->live_usable += usable;
    m->live_blocks++;
}

static void shrank(struct measure *m, void *p, uint64_t req)
{
    m->live_req -= req;
    m->live_usable -= tm_usable_size(p);
    m->live_blocks--;
}

/* Replays the whole trace. m == NULL: timed run, no bookkeeping. dry: decode only. */
static void run(struct measure *m, int dry)
{
    const unsigned char *p = trace;
    uint64_t next = 1, failures = 0, unmatched = 0;
    while (p < trace_end) {
        char op = (char)*p++;
        void *q = NULL;
        uint64_t size, id;
        switch (op) {
        case 'm': case 'c': case 'a': {
            unsigned lg = op == 'a' ? *p++ : 4;
            size = varint(&p);
            if (!dry) {
                q = op == 'a' ? tm_aligned_alloc(KIND, (size_t)1 << lg, size)
                              : tm_malloc(KIND, size);
                if (!q) failures++;
                else if (m) grew(m, q, size);
            } else {
                q = (void *)blocks; /* any non-null marker: live */
                if (m) m->live_req += size;
            }
            blocks[next++] = (struct block){ q, size };
            break;
        }
        case 'f': {
            id = next - varint(&p);
            struct block *b = &blocks[id];
            if (!dry) {
                if (!b->p) unmatched++;
                else {
                    if (m) shrank(m, b->p, b->req);
                    tm_free(b->p);
                }
            } else if (m && b->p) {
                m->live_req -= b->req;
            }
            b->p = NULL;
            break;
        }
        case 'r': {
            id = next - varint(&p);
            size = varint(&p);
            struct block *b = &blocks[id];
            if (!dry) {
                if (!b->p) {
                    unmatched++;
                    q = tm_malloc(KIND, size);
                    if (q && m) grew(m, q, size);
                    if (!q) failures++;
                } else if (b->req == 0) {
                    /* tm_realloc refuses a device block of 0 usable bytes (what tm_malloc(kind,
                     * 0) returns) with ENOMEM: it takes usable size 0 for "not ours". A
                     * realloc of an empty block copies nothing, so allocating the new block
                     * and freeing the old one is the same operation. */
                    zero_reallocs++;
                    if (m) shrank(m, b->p, 0);
                    q = tm_malloc(KIND, size);
                    if (!q) {
                        failures++;
                        q = b->p;
                        size = 0;
                    } else {
                        tm_free(b->p);
                    }
                    if (m) grew(m, q, size);
                } else {
                    if (m) shrank(m, b->p, b->req);
                    q = tm_realloc(b->p, size);
                    if (!q) { /* the old block stays live: keep it under the new id */
                        failures++;
                        q = b->p;
                        size = b->req;
                    }
                    if (m) grew(m, q, size);
                }
            } else {
                if (m && b->p) m->live_req -= b->req;
                q = (void *)blocks;
                if (m) m->live_req += size;
            }
            b->p = NULL;
            blocks[next++] = (struct block){ q, size };
            break;
        }
        }
        if (m) {
            if (m->live_req > m->peak_req) m->peak_req = m->live_req;
            if (m->live_usable > m->peak_usable) m->peak_usable = m->live_usable;
            /* What the tier's heap counts as in use: usable bytes plus one header each. */
            uint64_t extent = m->live_usable + TM_HEADER_SIZE * m->live_blocks;
            if (extent > m->peak_extent) m->peak_extent = extent;
            if (m->live_blocks > m->peak_blocks) m->peak_blocks = m->live_blocks;
        }
    }
    if (m) {
        m->failures = failures;
        m->unmatched = unmatched;
    } else if (failures || unmatched) {
        fprintf(stderr, "replay: timed pass: %llu failures, %llu unmatched\n",
                (unsigned long long)failures, (unsigned long long)unmatched);
    }
}

/* Frees what the trace left live; the tier must then be one free extent. */
static void clear(const char *when)
{
    for (uint64_t i = 1; i <= n_allocs; i++)
        if (blocks[i].p) {
            tm_free(blocks[i].p);
            blocks[i].p = NULL;
        }
    tm_stats s;
    if (tm_get_stats(KIND, &s) != 0) die("tm_get_stats(TM_CXL) failed: is cxl configured?");
    if (s.in_use != 0 || s.largest_free + TM_HEADER_SIZE != s.capacity)
        fprintf(stderr,
                "replay: after %s the tier is not one free extent: in_use %llu, largest_free "
                "%llu, capacity %llu\n",
                when, (unsigned long long)s.in_use, (unsigned long long)s.largest_free,
                (unsigned long long)s.capacity);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    int repeats = 3, info = 0, argi = 1;
    for (;;) {
        if (argi + 1 < argc && strcmp(argv[argi], "-r") == 0) {
            repeats = atoi(argv[argi + 1]);
            argi += 2;
        } else if (argi < argc && strcmp(argv[argi], "-i") == 0) {
            info = 1;
            argi++;
        } else {
            break;
        }
    }
    if (argi >= argc || repeats < 0 || repeats > 100) {
        fprintf(stderr, "usage: %s [-r REPEATS] TRACE [best|worst ...]\n       %s -i TRACE\n",
                argv[0], argv[0]);
        return 2;
    }
    load(argv[argi++]);

    /* The decode-only pass: the floor under ns/op, and the trace's peak of requested bytes. */
    struct measure trace_figures = { 0 };
    double t0 = now();
    run(&trace_figures, 1);
    double dry_ns = (now() - t0) * 1e9 / (double)n_ops;
    memset(blocks, 0, (n_allocs + 1) * sizeof *blocks);
    if (info) {
        printf("ops=%llu allocs=%llu peak_req=%llu\n", (unsigned long long)n_ops,
               (unsigned long long)n_allocs, (unsigned long long)trace_figures.peak_req);
        return 0;
    }
    if (repeats > 0) {
        t0 = now();
        run(NULL, 1);
        dry_ns = (now() - t0) * 1e9 / (double)n_ops;
        memset(blocks, 0, (n_allocs + 1) * sizeof *blocks);
    }

    const char *default_fits[] = { "best", "worst" };
    const char **fits = argc > argi ? (const char **)argv + argi : default_fits;
    int n_fits = argc > argi ? argc - argi : 2;

    tm_stats s0;
    if (tm_get_stats(KIND, &s0) != 0) die("tm_get_stats(TM_CXL) failed: is cxl configured?");

    for (int f = 0; f < n_fits; f++) {
        tm_fit fit;
        if (strcmp(fits[f], "best") == 0) fit = TM_BEST_FIT;
        else if (strcmp(fits[f], "worst") == 0) fit = TM_WORST_FIT;
        else die("fit must be best or worst");
        if (tm_set_fit(KIND, fit) != 0) die("tm_set_fit failed");

        struct measure m = { 0 };
        zero_reallocs = 0;
        run(&m, 0);
        uint64_t zero_reallocs_seen = zero_reallocs;
        /* At the end of the trace: the tier's own in_use against the blocks still live. */
        tm_stats end;
        tm_get_stats(KIND, &end);
        uint64_t live_blocks = 0, live_usable = 0;
        for (uint64_t i = 1; i <= n_allocs; i++)
            if (blocks[i].p) {
                live_blocks++;
                live_usable += tm_usable_size(blocks[i].p);
            }
        if (end.in_use != live_usable + TM_HEADER_SIZE * live_blocks)
            fprintf(stderr, "replay: stats in_use %llu, but live blocks hold %llu usable bytes "
                    "+ %llu headers\n", (unsigned long long)end.in_use,
                    (unsigned long long)live_usable, (unsigned long long)live_blocks);
        clear("the measuring pass");

        double times[100], ns = 0;
        for (int r = 0; r < repeats; r++) {
            t0 = now();
            run(NULL, 0);
            times[r] = (now() - t0) * 1e9 / (double)n_ops;
            clear("a timed pass");
        }
        if (repeats > 0) {
            qsort(times, (size_t)repeats, sizeof times[0], cmp_double);
            ns = times[repeats / 2];
        }

        printf("fit=%s ops=%llu allocs=%llu peak_req=%llu peak_usable=%llu peak_extent=%llu "
               "peak_blocks=%llu footprint=%llu ratio_req=%.3f ratio_usable=%.3f ratio_extent=%.3f "
               "capacity=%llu "
               "failures=%llu unmatched=%llu end_in_use=%llu end_live_usable=%llu "
               "end_live_blocks=%llu end_largest_free=%llu zero_reallocs=%llu ns_per_op=%.1f "
               "dry_ns_per_op=%.1f\n",
               fits[f], (unsigned long long)n_ops, (unsigned long long)n_allocs,
               (unsigned long long)m.peak_req, (unsigned long long)m.peak_usable,
               (unsigned long long)m.peak_extent, (unsigned long long)m.peak_blocks,
               (unsigned long long)m.footprint, (double)m.footprint / (double)m.peak_req,
               (double)m.footprint / (double)m.peak_usable,
               (double)m.footprint / (double)m.peak_extent, (unsigned long long)s0.capacity,
               (unsigned long long)m.failures, (unsigned long long)m.unmatched,
               (unsigned long long)end.in_use, (unsigned long long)live_usable,
               (unsigned long long)live_blocks, (unsigned long long)end.largest_free,
               (unsigned long long)zero_reallocs_seen, ns, dry_ns);
        fflush(stdout);
    }
    return 0;
}
