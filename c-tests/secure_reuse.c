/* secure_reuse.c — delayed reuse and guard pages under TIERMALLOC_SECURE=1:
 *  - a freed block is not handed out again before QUARANTINE_BLOCKS (64) other frees of the
 *    thread, and is handed out again later (it is delayed, not leaked);
 *  - a write into a block after its free (at its first word, its second, the middle, the last
 *    byte checked) is found when the block leaves the quarantine: the child aborts with one
 *    line naming the block;
 *  - a double free of a block still in the quarantine is still "double free";
 *  - a linear overflow from a block of a one-slice page (blocks up to 8 KiB) to the end of
 *    the page's 64 KiB slice hits the page's PROT_NONE tail: SIGSEGV. Without the variable the
 *    same write runs through (which shows the guard is what stops it).
 * Re-executes itself with and without the variable, since the configuration is read at start.
 */
#include "check.h"

#define QUARANTINE_BLOCKS 64
#define SLICE (64 * 1024)
#define CHECKED_BYTES 64 /* quarantine.rs: bytes of a freed block filled and checked */

/* Frees p, then counts the malloc/free pairs of the same size until p comes back (at most
 * `limit`; -1 if it never did). */
static int pairs_until_reuse(size_t size, int limit)
{
    char *p = malloc(size);
    free(p);
    for (int i = 0; i < limit; i++) {
        char *q = malloc(size);
        free(q);
        if (q == p)
            return i;
    }
    return -1;
}

static int reuse_checks(void)
{
    static const size_t sizes[] = {16, 48, 200, 1000, 5000};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        int n = pairs_until_reuse(sizes[i], 200000);
        CHECK(n >= QUARANTINE_BLOCKS - 1, "size %zu: a freed block came back after %d other frees",
              sizes[i], n);
        CHECK(n >= 0, "size %zu: a freed block never came back in 200000 pairs", sizes[i]);
    }
    return check_done();
}

struct uaf {
    size_t size;
    size_t offset;
};

static void *uaf_block;

/* Frees a block, writes one byte into it, then frees QUARANTINE_BLOCKS others so that it
 * leaves the quarantine. */
static void write_after_free(void *arg)
{
    struct uaf *u = arg;
    char *others[QUARANTINE_BLOCKS];
    for (int i = 0; i < QUARANTINE_BLOCKS; i++)
        others[i] = malloc(u->size);
    char *p = uaf_block;
    free(p);
    p[u->offset] ^= 0x01;
    for (int i = 0; i < QUARANTINE_BLOCKS; i++)
        free(others[i]);
}

static void double_free_in_quarantine(void *arg)
{
    char *p = malloc((size_t)arg);
    free(p);
    free(p);
}

static int uaf_checks(void)
{
    static const size_t sizes[] = {16, 48, 200, 1000, 5000};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t last = (sizes[i] < CHECKED_BYTES ? sizes[i] : CHECKED_BYTES) - 1;
        size_t offsets[] = {0, 8, last / 2, last};
        for (size_t j = 0; j < 4; j++) {
            struct uaf u = {sizes[i], offsets[j]};
            uaf_block = malloc(sizes[i]);
            EXPECT_ABORT(write_after_free, &u, "written after free", uaf_block);
            free(uaf_block);
        }
        void *p = malloc(sizes[i]);
        free(p); /* the next malloc of this size in the child does not return p */
        EXPECT_ABORT(double_free_in_quarantine, (void *)sizes[i], "double free", NULL);
    }
    /* A block written to before its free, and freed once, is no misuse. */
    for (int i = 0; i < 1000; i++) {
        char *p = malloc(100);
        memset(p, 0x5a, 100);
        free(p);
    }
    return check_done();
}

/* Writes from a block of `size` bytes (a one-slice page) to the end of its slice. */
static void overflow_to_slice_end(void *arg)
{
    size_t size = (size_t)arg;
    char *p = malloc(size);
    char *end = (char *)(((uintptr_t)p | (SLICE - 1)) + 1);
    for (char *c = p; c < end; c++)
        *(volatile char *)c = 0x41;
}

static int overflow_status(size_t size)
{
    char err[1024];
    return in_child(overflow_to_slice_end, (void *)size, err, sizeof err);
}

static int guard_checks(int secure)
{
    static const size_t sizes[] = {16, 100, 1000, 4000, 8000};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        int st = overflow_status(sizes[i]);
        if (secure)
            CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV,
                  "size %zu: the overflow to the slice's end did not fault (status %#x)", sizes[i],
                  st);
        else
            CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
                  "size %zu: without TIERMALLOC_SECURE the overflow stays in the page (status %#x)",
                  sizes[i], st);
    }
    return check_done();
}

static int run_with(const char *secure, const char *mode)
{
    return rerun_self_with("TIERMALLOC_SECURE", secure, mode);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--reuse") == 0)
        return reuse_checks();
    if (argc > 1 && strcmp(argv[1], "--uaf") == 0)
        return uaf_checks();
    if (argc > 1 && strcmp(argv[1], "--guard") == 0)
        return guard_checks(getenv("TIERMALLOC_SECURE") != NULL);
    CHECK(run_with("1", "--reuse") == 0, "delayed reuse failed (see above)");
    CHECK(run_with("1", "--uaf") == 0, "writes after free were not all caught (see above)");
    CHECK(run_with("1", "--guard") == 0, "guard pages failed (see above)");
    CHECK(run_with(NULL, "--guard") == 0, "the default level's overflow check failed (see above)");
    return check_done();
}
