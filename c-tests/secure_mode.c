/* secure_mode.c — what TIERMALLOC_SECURE=1 adds to the default checks:
 *  - a page's blocks are carved in a random order: consecutive mallocs of one size are rarely
 *    neighbours (without it, a fresh page hands them out front to back, which this test also
 *    checks, so that it can tell the two apart);
 *  - a freed block's link overwritten (a use after free, glibc's tst-safe-linking idea) is
 *    caught before it is followed, whatever the bytes written, and a double free is still
 *    caught though every free takes the encoded (remote) path.
 * Delayed reuse and guard pages, the rest of the level, are tested in secure_reuse.c.
 * Re-executes itself with and without the variable, since the configuration is read at start.
 */
#include "check.h"

/* Of 200 consecutive malloc(1008) (a class the start-up leaves alone), how many come right
 * after the previous block. */
static int neighbours(void)
{
    char *p[200];
    int n = 0;
    for (int i = 0; i < 200; i++) {
        p[i] = malloc(1008);
        if (i > 0 && p[i] == p[i - 1] + 1024)
            n++;
    }
    for (int i = 0; i < 200; i++)
        free(p[i]);
    return n;
}

struct corrupt {
    size_t size;
    int byte;
};

/* Frees 64 blocks, then 64 more so that the first 64 leave the quarantine (delayed reuse,
 * secure_reuse.c), writes over the last of them, frees 64 more so that the blocks of its
 * page's chain of gathered frees reach the page, then allocates until its link is read. */
static void corrupt_then_malloc(void *arg)
{
    struct corrupt *c = arg;
    char *p[64], *later[64], *last[64];
    for (int i = 0; i < 64; i++)
        p[i] = malloc(c->size);
    for (int i = 0; i < 64; i++)
        later[i] = malloc(c->size);
    for (int i = 0; i < 64; i++)
        last[i] = malloc(c->size);
    for (int i = 0; i < 64; i++)
        free(p[i]);
    for (int i = 0; i < 64; i++)
        free(later[i]);
    memset(p[63], c->byte, 16); /* a use after free over the block's link and mark */
    for (int i = 0; i < 64; i++)
        free(last[i]);
    for (int i = 0; i < 100000; i++)
        if (!malloc(c->size))
            break;
}

static void double_free(void *arg)
{
    char *p = malloc((size_t)arg), *q = malloc((size_t)arg);
    free(p);
    free(q);
    free(p);
}

static int secure_checks(void)
{
    static const size_t sizes[] = {16, 48, 128, 1000, 20000};
    static const int bytes[] = {0x00, 0x41, 0xff, 0x5a, 0x13};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        for (size_t j = 0; j < sizeof bytes / sizeof bytes[0]; j++) {
            struct corrupt c = {sizes[i], bytes[j]};
            EXPECT_ABORT(corrupt_then_malloc, &c, "corrupted free list", NULL);
        }
        EXPECT_ABORT(double_free, (void *)sizes[i], "double free", NULL);
    }
    return check_done();
}

static int run_with(const char *secure, const char *mode)
{
    return rerun_self_with("TIERMALLOC_SECURE", secure, mode);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--checks") == 0)
        return secure_checks();
    if (argc > 1)
        return neighbours();
    int plain = run_with(NULL, "--count"), secure = run_with("1", "--count");
    CHECK(run_with("1", "--checks") == 0, "checks of the secure level failed (see above)");
    CHECK(plain >= 150, "without TIERMALLOC_SECURE only %d of 199 were neighbours", plain);
    CHECK(secure >= 0 && secure <= 20, "with TIERMALLOC_SECURE=1 %d of 199 were neighbours",
          secure);
    return check_done();
}
