/* mode: link-only */
/* evacuate.c — the tm_evacuate contract from C (DESIGN.md, "Live evacuation").
 *
 * The program re-executes itself with a CXL tier on a file in /dev/shm that names a spare
 * (`spare=`), then checks:
 * - bad calls get -1 + errno and leave the tier as it was: TM_DRAM (EINVAL), an unknown kind
 *   (EINVAL), a kind not configured (ENODEV), a missing directory (ENOENT), a directory
 *   (EISDIR);
 * - while two threads increment counters in a thousand blocks and a third read(2)s from a pipe
 *   into a block, tm_evacuate(TM_CXL, NULL) moves the tier onto its spare, which did not exist
 *   before: the counts are exact, the piped bytes all arrived, every block keeps its address,
 *   tm_kind_of, tm_usable_size, header and pattern, and /proc/self/maps shows the spare behind
 *   the blocks;
 * - the old file is truncated and removed without a SIGBUS, and a second move onto a third
 *   file works the same way; byte k of the region is byte k of that file.
 */
#define _GNU_SOURCE 1
#include "tiermalloc.h"
#include "check.h"

#define BLOCKS 1000
#define PIPED (4 << 20)

static char dev_path[128], spare_path[128], third_path[128];
static unsigned char *blocks[BLOCKS];
static size_t sizes[BLOCKS];
static tm_block_header headers[BLOCKS];
static volatile int stop;

static const tm_block_header *header_of(const void *p) { return (const tm_block_header *)p - 1; }

/* The file /proc/self/maps shows at address `p` (empty if none) into `out`. */
static void mapped_file(const void *p, char *out, size_t cap)
{
    out[0] = 0;
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        int at = 0;
        if (sscanf(line, "%lx-%lx %*s %*s %*s %*s %n", &lo, &hi, &at) < 2) continue;
        if ((uintptr_t)p >= lo && (uintptr_t)p < hi) {
            snprintf(out, cap, "%s", line + at);
            out[strcspn(out, "\n")] = 0;
            break;
        }
    }
    fclose(f);
}

static void check_blocks(int skip_counter)
{
    for (int i = 0; i < BLOCKS; i++) {
        unsigned char *p = blocks[i];
        CHECK(tm_kind_of(p) == TM_CXL, "block %d: kind %d", i, tm_kind_of(p));
        CHECK(tm_usable_size(p) == headers[i].size, "block %d: usable size changed", i);
        CHECK(memcmp(header_of(p), &headers[i], sizeof headers[i]) == 0, "block %d: header", i);
        for (size_t k = skip_counter ? 8 : 0; k < sizes[i]; k++)
            if (p[k] != (unsigned char)(i + 1)) {
                CHECK(0, "block %d lost its pattern at byte %zu", i, k);
                break;
            }
    }
}

static void *writer(void *arg)
{
    long t = (long)arg;
    uint64_t rounds = 0;
    for (int i = (int)t; i < BLOCKS; i += 2) *(volatile uint64_t *)blocks[i] = 0;
    while (!__atomic_load_n(&stop, __ATOMIC_RELAXED)) {
        for (int i = (int)t; i < BLOCKS; i += 2) (*(volatile uint64_t *)blocks[i])++;
        rounds++;
    }
    return (void *)(uintptr_t)rounds;
}

static int pipe_fds[2];
static unsigned char *piped;

static void *feeder(void *arg)
{
    (void)arg;
    unsigned char buf[4096];
    for (size_t sent = 0; sent < PIPED; sent += sizeof buf) {
        for (size_t k = 0; k < sizeof buf; k++) buf[k] = (unsigned char)((sent + k) % 251);
        CHECK(write(pipe_fds[1], buf, sizeof buf) == (ssize_t)sizeof buf, "pipe write");
    }
    close(pipe_fds[1]);
    return NULL;
}

static void *reader(void *arg)
{
    (void)arg;
    size_t got = 0;
    for (;;) {
        ssize_t n = read(pipe_fds[0], piped + got, PIPED - got);
        if (!CHECK(n >= 0, "read(2) into the tier failed: errno %d", errno)) break;
        if (n == 0) break;
        got += (size_t)n;
    }
    return (void *)got;
}

static void bad_calls(void)
{
    char before[256], after[256];
    mapped_file(blocks[0], before, sizeof before);
    errno = 0;
    CHECK(tm_evacuate(TM_DRAM, third_path) == -1 && errno == EINVAL, "TM_DRAM: errno %d", errno);
    errno = 0;
    CHECK(tm_evacuate((tm_kind)7, third_path) == -1 && errno == EINVAL, "kind 7: errno %d", errno);
    errno = 0;
    CHECK(tm_evacuate(TM_PMR, third_path) == -1 && errno == ENODEV, "TM_PMR: errno %d", errno);
    errno = 0;
    CHECK(tm_evacuate(TM_CXL, "/dev/shm/tiermalloc-ct-no-such-dir/x") == -1 && errno == ENOENT,
          "missing directory: errno %d", errno);
    errno = 0;
    CHECK(tm_evacuate(TM_CXL, "/dev/shm") == -1 && errno == EISDIR, "directory: errno %d", errno);
    mapped_file(blocks[0], after, sizeof after);
    CHECK(strcmp(before, after) == 0 && strcmp(after, dev_path) == 0, "the tier moved: %s", after);
    CHECK(access(spare_path, F_OK) != 0, "the spare exists before it is needed");
    check_blocks(0);
}

static void move_while_threads_write(const char *target, const char *expect)
{
    CHECK(pipe(pipe_fds) == 0, "pipe");
    stop = 0;
    pthread_t w[2], f, r;
    for (long t = 0; t < 2; t++) pthread_create(&w[t], NULL, writer, (void *)t);
    pthread_create(&f, NULL, feeder, NULL);
    pthread_create(&r, NULL, reader, NULL);
    usleep(10000);
    CHECK(tm_evacuate(TM_CXL, target) == 0, "tm_evacuate onto %s: errno %d", expect, errno);
    usleep(10000);
    __atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
    void *rounds[2], *got;
    for (int t = 0; t < 2; t++) pthread_join(w[t], &rounds[t]);
    pthread_join(f, NULL);
    pthread_join(r, &got);
    close(pipe_fds[0]);
    for (int i = 0; i < BLOCKS; i++)
        CHECK(*(uint64_t *)blocks[i] == (uint64_t)(uintptr_t)rounds[i % 2],
              "block %d counted %" PRIu64 " of %" PRIu64 " increments", i, *(uint64_t *)blocks[i],
              (uint64_t)(uintptr_t)rounds[i % 2]);
    CHECK((size_t)got == PIPED, "read %zu of %d piped bytes", (size_t)got, PIPED);
    for (size_t k = 0; k < PIPED; k++)
        if (piped[k] != (unsigned char)(k % 251)) {
            CHECK(0, "piped byte %zu differs", k);
            break;
        }
    check_blocks(1);
    char now[256];
    mapped_file(blocks[0], now, sizeof now);
    CHECK(strcmp(now, expect) == 0, "maps shows '%s', expected '%s'", now, expect);
    mapped_file(piped, now, sizeof now);
    CHECK(strcmp(now, expect) == 0, "maps shows '%s' at the piped block", now);
}

/* Truncates and removes `path`, then touches every block: no SIGBUS. */
static void drop_file(const char *path)
{
    CHECK(truncate(path, 0) == 0, "truncate %s: errno %d", path, errno);
    CHECK(unlink(path) == 0, "unlink %s: errno %d", path, errno);
    for (int i = 0; i < BLOCKS; i++) blocks[i][sizes[i] - 1] ^= 0;
}

int main(int argc, char **argv)
{
    (void)argc;
    const char *tag = getenv("EVACUATE_TAG");
    char own[32];
    if (!tag) {
        snprintf(own, sizeof own, "%d", (int)getpid());
        tag = own;
    }
    snprintf(dev_path, sizeof dev_path, "/dev/shm/tiermalloc-ct-evac-%s-dev", tag);
    snprintf(spare_path, sizeof spare_path, "/dev/shm/tiermalloc-ct-evac-%s-spare", tag);
    snprintf(third_path, sizeof third_path, "/dev/shm/tiermalloc-ct-evac-%s-third", tag);
    if (!getenv("EVACUATE_TAG")) {
        char tiers[512];
        snprintf(tiers, sizeof tiers, "dram;cxl:path=%s,size=32M,create,spare=%s", dev_path,
                 spare_path);
        setenv("TIERMALLOC_TIERS", tiers, 1);
        setenv("EVACUATE_TAG", tag, 1);
        execv("/proc/self/exe", argv);
        CHECK(0, "re-exec failed: errno %d", errno);
        return check_done();
    }
    watchdog(60, "evacuate");
    for (int i = 0; i < BLOCKS; i++) {
        sizes[i] = i % 10 == 0 ? 5000 + (size_t)i * 7 : 8 + (size_t)(i * 37) % 2000;
        blocks[i] = tm_malloc(TM_CXL, sizes[i]);
        if (!CHECK(blocks[i] != NULL, "tm_malloc(%zu)", sizes[i])) return check_done();
        memset(blocks[i], i + 1, sizes[i]);
        headers[i] = *header_of(blocks[i]);
    }
    piped = tm_malloc(TM_CXL, PIPED);
    CHECK(piped != NULL, "tm_malloc(PIPED)");
    tm_stats before, after;
    tm_get_stats(TM_CXL, &before);
    bad_calls();
    move_while_threads_write(NULL, spare_path);
    drop_file(dev_path);
    move_while_threads_write(third_path, third_path);
    drop_file(spare_path);
    tm_get_stats(TM_CXL, &after);
    CHECK(after.in_use == before.in_use && after.allocations == before.allocations,
          "the statistics changed: in_use %" PRIu64 " -> %" PRIu64, before.in_use, after.in_use);
    /* Byte k of the region is byte k of the file: the first block's header is in the file at
     * the offset /proc/self/maps gives for the block. */
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    unsigned long lo = 0, hi = 0, off = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "%lx-%lx %*s %lx", &lo, &hi, &off) == 3 && (uintptr_t)blocks[0] >= lo &&
            (uintptr_t)blocks[0] < hi)
            break;
    if (f) fclose(f);
    int fd = open(third_path, O_RDONLY);
    tm_block_header h;
    CHECK(fd >= 0 && pread(fd, &h, sizeof h, (off_t)((uintptr_t)blocks[0] - 16 - lo + off)) ==
                         (ssize_t)sizeof h,
          "pread of the third file");
    CHECK(memcmp(&h, &headers[0], sizeof h) == 0, "the header is not at its offset in the file");
    close(fd);
    for (int i = 0; i < BLOCKS; i++) tm_free(blocks[i]);
    tm_free(piped);
    unlink(third_path);
    return check_done();
}
