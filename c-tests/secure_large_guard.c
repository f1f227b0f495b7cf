/* secure_large_guard.c — under TIERMALLOC_SECURE=1 every large block (above the 512 KiB size
 * classes) is followed by a PROT_NONE page: a write one byte past its usable size faults
 * (SIGSEGV), for a fresh mapping, one taken from the large cache after a free, an aligned
 * block, and a block grown and shrunk by realloc (the guard moves to the new end). All of a
 * block's usable bytes stay writable, and realloc keeps the contents. Without the variable
 * the same one-byte overflow runs through (which shows the guard is what stops it).
 * Re-executes itself with and without the variable, since the configuration is read at start.
 */
#include "check.h"

enum how { FRESH, FROM_CACHE, ALIGNED, GROWN, SHRUNK, CASES };
static const char *const names[CASES] = {"fresh", "from the cache", "aligned", "grown", "shrunk"};

/* A large block as `how` says, every usable byte written (and, after realloc, checked). */
static char *block(enum how how, size_t size)
{
    char *p = NULL;
    switch (how) {
    case FRESH:
        p = malloc(size);
        break;
    case FROM_CACHE:
        free(malloc(size));
        p = malloc(size);
        break;
    case ALIGNED:
        if (posix_memalign((void **)&p, 1 << 21, size) != 0) p = NULL;
        break;
    case GROWN:
    case SHRUNK: {
        size_t first = how == GROWN ? size / 2 + 600000 : size * 3;
        p = malloc(first);
        memset(p, 0x33, first);
        p = realloc(p, size);
        size_t kept = first < size ? first : size;
        for (size_t i = 0; i < kept; i += 4096)
            if (p[i] != 0x33) _exit(3);
        break;
    }
    default:
        break;
    }
    if (!p) _exit(2);
    memset(p, 0x44, malloc_usable_size(p));
    return p;
}

static void overflow_by_one(void *arg)
{
    uintptr_t v = (uintptr_t)arg;
    char *p = block((enum how)(v & 7), v >> 3);
    *(volatile char *)(p + malloc_usable_size(p)) = 0x41;
}

static int guard_checks(int secure)
{
    static const size_t sizes[] = {600000, 1000000, 5 << 20,
                                   (4 << 20) - 4096 -
                                       64}; /* the last: its guard is the chunk's last page */
    for (int how = 0; how < CASES; how++)
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            char err[1024];
            int st = in_child(overflow_by_one, (void *)(uintptr_t)(sizes[i] << 3 | (size_t)how),
                              err, sizeof err);
            if (secure)
                CHECK(
                    WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV,
                    "%s block of %zu: a write one byte past its end did not fault (status %#x) %s",
                    names[how], sizes[i], st, err);
            else
                CHECK(
                    WIFEXITED(st) && WEXITSTATUS(st) == 0,
                    "%s block of %zu: without TIERMALLOC_SECURE the write runs on (status %#x) %s",
                    names[how], sizes[i], st, err);
        }
    /* Many guarded blocks at once, freed in another order, then reused: nothing faults. */
    char *live[64];
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 64; i++)
            live[i] = block((enum how)(i % CASES), 600000 + (size_t)i * 70000);
        for (int i = 0; i < 64; i += 2) free(live[i]);
        for (int i = 1; i < 64; i += 2) free(live[i]);
    }
    return check_done();
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--guard") == 0)
        return guard_checks(getenv("TIERMALLOC_SECURE") != NULL);
    CHECK(rerun_self_with("TIERMALLOC_SECURE", "1", "--guard") == 0, "secure level: see above");
    CHECK(rerun_self_with("TIERMALLOC_SECURE", NULL, "--guard") == 0, "default level: see above");
    return check_done();
}
