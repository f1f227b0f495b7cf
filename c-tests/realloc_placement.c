/* mode: link-only */
/* realloc_placement.c — a plain `realloc` that must move a block puts it where `malloc` of the
 * new size would go:
 *  - DRAM at its `limit=`: the grown block spills to the next tier (it failed with ENOMEM, and
 *    python3 under `dram:limit=64M;cxl:...` raised MemoryError with the CXL tier nearly empty);
 *  - a placement rule (`cxl:min=1M`): a block grown past its `min=` follows it;
 *  - `tm_realloc` still stays on its block's tier (NULL + ENOMEM there, the block intact).
 * Each case runs this program again with TIERMALLOC_TIERS and TIERMALLOC_PLACE set (the
 * library's constructor reads them).
 */
#define _GNU_SOURCE 1 /* before any system header, including those tiermalloc.h pulls in */
#include "tiermalloc.h"

#include "check.h"

static void fill(char *p, size_t n, char seed)
{
    for (size_t i = 0; i < n; i += 512)
        p[i] = (char)(seed + i / 512);
}

static int same(const char *p, size_t n, char seed)
{
    for (size_t i = 0; i < n; i += 512)
        if (p[i] != (char)(seed + i / 512))
            return 0;
    return 1;
}

/* DRAM is capped at 8 MiB and 7 MiB of it is taken: growing a block to 32 MiB spills. */
static void at_the_limit(void)
{
    for (int i = 0; i < 7; i++) {
        char *hold = malloc(1 << 20);
        CHECK(hold && tm_kind_of(hold) == TM_DRAM, "filling DRAM: block %d", i);
        if (hold)
            fill(hold, 1 << 20, 1);
    }
    char *p = malloc(1000);
    CHECK(p && tm_kind_of(p) == TM_DRAM, "a small block on DRAM");
    fill(p, 1000, 7);
    char *q = tm_realloc(p, 32 << 20);
    CHECK(q == NULL && errno == ENOMEM, "tm_realloc beyond DRAM's limit: %p, errno %d", (void *)q,
          errno);
    CHECK(tm_kind_of(p) == TM_DRAM && same(p, 1000, 7), "tm_realloc's failure left the block");
    size_t size = 1000;
    for (size_t next = 4096; next <= (32u << 20); next *= 4) {
        q = realloc(p, next);
        if (!CHECK(q != NULL, "realloc to %zu at DRAM's limit: errno %d", next, errno))
            return;
        CHECK(same(q, size, 7), "realloc to %zu kept the bytes", next);
        fill(q, next, 7);
        p = q;
        size = next;
    }
    CHECK(tm_kind_of(p) == TM_CXL, "the grown block is on kind %d, not CXL", tm_kind_of(p));
    tm_stats s;
    CHECK(tm_get_stats(TM_CXL, &s) == 0 && s.spilled_in > 0, "spilled_in on CXL");
    free(p);
}

/* Under `cxl:min=1M`, a block grown from 100 bytes to 2 MiB is where malloc(2 MiB) puts one. */
static void past_a_rule(void)
{
    char *p = malloc(100);
    CHECK(p && tm_kind_of(p) == TM_DRAM, "100 bytes on DRAM");
    fill(p, 100, 3);
    char *q = realloc(p, 2 << 20);
    if (!CHECK(q != NULL, "realloc to 2 MiB: errno %d", errno))
        return;
    CHECK(tm_kind_of(q) == TM_CXL, "grown past the rule's min=: kind %d, not CXL", tm_kind_of(q));
    CHECK(same(q, 100, 3), "the bytes moved with it");
    char *r = reallocarray(NULL, 2, 1 << 20);
    CHECK(r && tm_kind_of(r) == TM_CXL, "reallocarray(NULL, 2, 1 MiB) on CXL");
    free(r);
    free(q);
}

static int run(const char *tiers, const char *place, const char *mode)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        setenv("TIERMALLOC_TIERS", tiers, 1);
        setenv("TIERMALLOC_PLACE", place, 1);
        execl("/proc/self/exe", "realloc_placement", mode, (char *)NULL);
        _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return status;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--at-the-limit") == 0) {
        at_the_limit();
        return check_done();
    }
    if (argc > 1 && strcmp(argv[1], "--past-a-rule") == 0) {
        past_a_rule();
        return check_done();
    }
    watchdog(60, "realloc_placement");
    int status = run("dram:limit=8M;cxl:path=/dev/shm/tiermalloc-ct-realloc-%p,size=256M,create",
                     "", "--at-the-limit");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "at DRAM's limit: status %#x", status);
    status = run("dram;cxl:path=/dev/shm/tiermalloc-ct-realloc-%p,size=256M,create", "cxl:min=1M",
                 "--past-a-rule");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "past a rule: status %#x", status);
    return check_done();
}
