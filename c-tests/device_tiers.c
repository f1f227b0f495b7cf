/* mode: link-only */
/* device_tiers.c — CXL, CMB and PMR tiers backed by files in /dev/shm, through the same mapping
 * path as a /dev/dax device or a PCI BAR resource file.
 *
 * The program re-executes itself with TIERMALLOC_TIERS / TIERMALLOC_PLACE set (the library
 * reads them when it starts), then checks:
 * - each kind: tm_malloc(kind) lands there (tm_kind_of), the 16-byte header before the block
 *   says size == tm_usable_size >= request, magic "TMHB", kind, state allocated, and the block
 *   lies inside the tier's file (a pattern written to it is found in the file);
 * - exact best fit and worst fit (seed 002: an exact-size hole first, else the largest) on a
 *   crafted pattern of holes (8K, 16K, 32K);
 * - freeing everything coalesces back to one extent of the tier's whole capacity;
 * - explicit tm_malloc beyond a tier's capacity or limit fails with ENOMEM and never spills;
 * - plain malloc routed by TIERMALLOC_PLACE spills past a full tier (limit=), counted in
 *   spilled_out / spilled_in;
 * - `dram:limit=` caps DRAM: plain malloc spills the rest to the next tier, tm_malloc(TM_DRAM)
 *   past the cap fails with ENOMEM, and DRAM serves again once its blocks are freed;
 * - realloc keeps a block on its tier with its contents; it grows a block into the free space
 *   right behind it and shrinks it where it lies (same address, header and in_use follow), and
 *   moves it when that space is taken;
 * - a tier whose path is broken gets one line on stderr naming it, and the program runs on;
 * - blocks freed by other threads, contents checked first;
 * - a forked child gets a private copy of the tiers, as of DRAM: it can free the parent's
 *   blocks, allocate and write anywhere on the tier, and the parent's blocks and headers stay
 *   as they were; a child that cannot map that copy (address space capped) allocates nothing
 *   on the tier and its frees write no header;
 * - another program started with the same TIERMALLOC_TIERS finds the tier's file in use: one
 *   line naming the tier and path, and it runs without the tier;
 * - a double free and a free of a pointer into a block are caught from host metadata: one
 *   line on stderr and SIGABRT.
 */
#define _GNU_SOURCE 1
#include "tiermalloc.h"
#include "check.h"

static char cxl_path[128], pmr_path[128], cmb_path[128];

static const tm_block_header *header_of(const void *p) { return (const tm_block_header *)p - 1; }

static tm_stats stats_of(tm_kind kind)
{
    tm_stats s;
    memset(&s, 0, sizeof s);
    CHECK(tm_get_stats(kind, &s) == 0, "tm_get_stats(%d) failed: errno %d", (int)kind, errno);
    return s;
}

/* Whether `len` bytes of `pattern` occur in the file at `path`. */
static int file_contains(const char *path, const unsigned char *pattern, size_t len)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    struct stat st;
    fstat(fd, &st);
    unsigned char *data = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (data == MAP_FAILED) return 0;
    int found = memmem(data, (size_t)st.st_size, pattern, len) != NULL;
    munmap(data, (size_t)st.st_size);
    return found;
}

static void each_kind(void)
{
    struct { tm_kind kind; const char *path; } tiers[] = {
        {TM_CXL, cxl_path}, {TM_CMB, cmb_path}, {TM_PMR, pmr_path}};
    for (int i = 0; i < 3; i++) {
        unsigned char *p = tm_malloc(tiers[i].kind, 1000);
        if (!CHECK(p != NULL, "tm_malloc(%d, 1000) failed", (int)tiers[i].kind)) continue;
        const tm_block_header *h = header_of(p);
        CHECK(tm_kind_of(p) == (int)tiers[i].kind, "kind %d", tm_kind_of(p));
        CHECK(h->size == tm_usable_size(p), "header size %llu, usable %zu",
              (unsigned long long)h->size, tm_usable_size(p));
        CHECK(h->size >= 1000, "header size %llu", (unsigned long long)h->size);
        CHECK(h->magic == 0x42484d54u, "magic %#x", h->magic);
        CHECK(h->kind == tiers[i].kind && h->state == 1, "kind %u state %u", h->kind, h->state);
        CHECK(((uintptr_t)p & 15) == 0, "alignment %p", (void *)p);
        unsigned char pattern[64];
        for (int k = 0; k < 64; k++) pattern[k] = (unsigned char)(0xA5 ^ (k * 7) ^ i);
        memcpy(p + 100, pattern, sizeof pattern);
        CHECK(file_contains(tiers[i].path, pattern, sizeof pattern),
              "block of tier %d not found in %s", (int)tiers[i].kind, tiers[i].path);
        for (size_t size = 1; size < 200000; size = size * 3 + 7) {
            void *q = tm_malloc(tiers[i].kind, size);
            if (!CHECK(q != NULL, "tm_malloc(%d, %zu)", (int)tiers[i].kind, size)) break;
            CHECK(header_of(q)->size == tm_usable_size(q) && tm_usable_size(q) >= size,
                  "size %zu: header %llu usable %zu", size,
                  (unsigned long long)header_of(q)->size, tm_usable_size(q));
            tm_free(q);
        }
        unsigned char *r = tm_realloc(p, 5000);
        CHECK(r != NULL && tm_kind_of(r) == (int)tiers[i].kind, "realloc left the tier");
        if (r) {
            CHECK(memcmp(r + 100, pattern, sizeof pattern) == 0, "realloc lost the contents");
            tm_free(r);
        } else {
            tm_free(p);
        }
    }
}

static int all_bytes_are(const unsigned char *p, size_t n, unsigned char v)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != v) return 0;
    return 1;
}

static void realloc_in_place(void)
{
    /* A block is cut from the end of a free extent (so that the extent keeps its header on the
     * device, see src/device/persist): free space behind p is made by freeing what was cut
     * right after it from the same extent. */
    CHECK(tm_set_fit(TM_CMB, TM_WORST_FIT) == 0, "tm_set_fit: errno %d", errno);
    unsigned char *spacer = tm_malloc(TM_CMB, 128 * 1024);
    unsigned char *p = tm_malloc(TM_CMB, 4096);
    if (!CHECK(p != NULL && spacer != NULL, "tm_malloc(TM_CMB): errno %d", errno)) return;
    CHECK(p + 4096 + 16 == spacer, "p %p is not right in front of the spacer %p", (void *)p,
          (void *)spacer);
    unsigned char *spacer_end = spacer + tm_usable_size(spacer);
    tm_free(spacer);
    memset(p, 0x5a, 4096);
    tm_stats s0 = stats_of(TM_CMB);
    unsigned char *q = tm_realloc(p, 65536);
    CHECK(q == p, "growing into the free space behind moved the block: %p -> %p", (void *)p,
          (void *)q);
    if (!q) return;
    CHECK(header_of(q)->size == tm_usable_size(q) && tm_usable_size(q) >= 65536,
          "grown: header %llu, usable %zu", (unsigned long long)header_of(q)->size,
          tm_usable_size(q));
    tm_stats s1 = stats_of(TM_CMB);
    CHECK(s1.in_use - s0.in_use == tm_usable_size(q) - 4096, "in_use grew by %llu",
          (unsigned long long)(s1.in_use - s0.in_use));
    CHECK(all_bytes_are(q, 4096, 0x5a), "growing in place lost the contents");
    memset(q, 0x3c, 65536);
    unsigned char *r = tm_realloc(q, 1000);
    CHECK(r == q && tm_usable_size(r) >= 1000 && tm_usable_size(r) < 2048 &&
              header_of(r)->size == tm_usable_size(r),
          "shrunk: %p -> %p, usable %zu", (void *)q, (void *)r, tm_usable_size(r));
    CHECK(stats_of(TM_CMB).in_use == s0.in_use - 4096 + tm_usable_size(r),
          "shrinking in place gave back the wrong number of bytes");
    CHECK(all_bytes_are(r, 1000, 0x3c), "shrinking in place lost the contents");
    /* Worst fit takes a free extent of exactly the size asked for: the one right behind r. */
    size_t behind_len = (size_t)(spacer_end - (r + tm_usable_size(r))) - 16;
    unsigned char *behind = tm_malloc(TM_CMB, behind_len);
    CHECK(behind == r + tm_usable_size(r) + 16, "the next block is not right behind: %p, %p",
          (void *)r, (void *)behind);
    unsigned char *moved = tm_realloc(r, 8192);
    CHECK(moved != NULL && moved != r && all_bytes_are(moved, 1000, 0x3c),
          "a block with no free space behind it must move, contents and all");
    tm_free(behind);
    tm_free(moved ? moved : r);
    CHECK(tm_set_fit(TM_CMB, TM_BEST_FIT) == 0, "tm_set_fit: errno %d", errno);
}

/* Blocks sized so their extents (size + 16-byte header) are exactly these many bytes. */
static void *extent(tm_kind kind, size_t bytes) { return tm_malloc(kind, bytes - 16); }

static void fit_policies(void)
{
    tm_stats before = stats_of(TM_CXL);
    CHECK(before.in_use == 0, "CXL not empty: %llu in use", (unsigned long long)before.in_use);
    void *a = extent(TM_CXL, 65536), *b = extent(TM_CXL, 16384), *c = extent(TM_CXL, 65536);
    void *d = extent(TM_CXL, 32768), *e = extent(TM_CXL, 65536), *f = extent(TM_CXL, 8192);
    void *g = extent(TM_CXL, 65536);
    tm_stats s = stats_of(TM_CXL);
    void *rest = tm_malloc(TM_CXL, s.largest_free);
    CHECK(a && b && c && d && e && f && g && rest, "setting up the holes failed");
    CHECK(stats_of(TM_CXL).free_bytes == 0, "tier not full");
    tm_free(b);
    tm_free(d);
    tm_free(f);
    /* Holes now: 16K at b, 32K at d, 8K at f. */
    /* A block is cut from the end of the hole chosen: it lies inside [hole, hole + len). */
#define IN_HOLE(x, hole, len)                                                                      \
    ((char *)(x) >= (char *)(hole) && (char *)(x) < (char *)(hole) + (len))
    void *best = tm_malloc(TM_CXL, 6000);
    CHECK(IN_HOLE(best, f, 8192), "best fit chose %p, want the 8K hole at %p", best, f);
    tm_free(best);
    void *best_big = tm_malloc(TM_CXL, 12000);
    CHECK(IN_HOLE(best_big, b, 16384), "best fit chose %p, want the 16K hole at %p", best_big, b);
    tm_free(best_big);
    CHECK(tm_set_fit(TM_CXL, TM_WORST_FIT) == 0, "tm_set_fit(worst)");
    void *worst = tm_malloc(TM_CXL, 6000);
    CHECK(IN_HOLE(worst, d, 32768), "worst fit chose %p, want the 32K hole at %p", worst, d);
    tm_free(worst);
    /* Seed 002's worst fit: a hole of exactly the size asked for beats the largest. */
    void *exact = extent(TM_CXL, 8192);
    CHECK(exact == f, "worst fit chose %p for exactly 8K, want the 8K hole at %p", exact, f);
    tm_free(exact);
    CHECK(tm_set_fit(TM_CXL, TM_BEST_FIT) == 0, "tm_set_fit(best)");
    void *all[] = {a, c, e, g, rest};
    for (int i = 0; i < 5; i++) tm_free(all[i]);
    tm_stats after = stats_of(TM_CXL);
    CHECK(after.in_use == 0 && after.free_bytes == after.capacity,
          "in_use %llu free %llu capacity %llu", (unsigned long long)after.in_use,
          (unsigned long long)after.free_bytes, (unsigned long long)after.capacity);
    CHECK(after.largest_free == after.capacity - 16, "not coalesced: largest_free %llu of %llu",
          (unsigned long long)after.largest_free, (unsigned long long)after.capacity);
    errno = 0;
    CHECK(tm_malloc(TM_CXL, (size_t)after.capacity) == NULL && errno == ENOMEM,
          "tm_malloc beyond capacity: errno %d", errno);
    CHECK(stats_of(TM_CXL).in_use == 0, "a failed tm_malloc left something behind");
}

static void spill_and_limits(void)
{
    /* PMR: limit=2M, and the rule sends plain requests of 64K..1M there. */
    void *blocks[8];
    int on_pmr = 0;
    tm_stats pmr0 = stats_of(TM_PMR), cmb0 = stats_of(TM_CMB);
    for (int i = 0; i < 8; i++) {
        blocks[i] = malloc(512 * 1024);
        CHECK(blocks[i] != NULL, "malloc(512K) #%d", i);
        on_pmr += tm_kind_of(blocks[i]) == TM_PMR;
    }
    CHECK(on_pmr == 3, "%d of 8 blocks on PMR, want 3 under its 2M limit", on_pmr);
    CHECK(tm_kind_of(blocks[3]) == TM_CMB, "the 4th block spilled to %d, want CMB (next listed)",
          tm_kind_of(blocks[3]));
    tm_stats pmr1 = stats_of(TM_PMR), cmb1 = stats_of(TM_CMB);
    CHECK(pmr1.spilled_out >= pmr0.spilled_out + 5, "pmr spilled_out %llu",
          (unsigned long long)pmr1.spilled_out);
    CHECK(cmb1.spilled_in > cmb0.spilled_in, "cmb spilled_in %llu",
          (unsigned long long)cmb1.spilled_in);
    CHECK(pmr1.in_use <= 2 * 1024 * 1024, "pmr in_use %llu over its limit",
          (unsigned long long)pmr1.in_use);
    errno = 0;
    CHECK(tm_malloc(TM_PMR, 512 * 1024) == NULL && errno == ENOMEM,
          "explicit tm_malloc past the limit: errno %d", errno);
    for (int i = 0; i < 8; i++) free(blocks[i]);
    void *small = malloc(100);
    CHECK(tm_kind_of(small) == TM_DRAM, "malloc(100) on %d, want DRAM (first listed)",
          tm_kind_of(small));
    free(small);
}

#define RING 64
static void *ring[RING];
static pthread_mutex_t ring_lock = PTHREAD_MUTEX_INITIALIZER;

static void *producer(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg;
    for (int i = 0; i < 3000; i++) {
        seed = seed * 1103515245u + 12345u;
        size_t size = 16 + seed % 3000;
        unsigned char *p = tm_malloc(TM_CXL, size);
        if (!CHECK(p != NULL, "tm_malloc in thread")) return NULL;
        memset(p, (int)(size & 0xff), size);
        pthread_mutex_lock(&ring_lock);
        unsigned char *old = ring[seed % RING];
        ring[seed % RING] = p;
        pthread_mutex_unlock(&ring_lock);
        if (old) {
            size_t old_size = tm_usable_size(old);
            size_t want = header_of(old)->size;
            CHECK(old_size == want, "usable %zu header %zu", old_size, want);
            int ok = 1;
            unsigned char v = old[0];
            for (size_t k = 0; k < 16; k++) ok &= old[k] == v;
            CHECK(ok, "contents of a block from another thread changed");
            tm_free(old);
        }
    }
    return NULL;
}

static void cross_thread_frees(void)
{
    pthread_t t[4];
    for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, producer, (void *)(uintptr_t)(i + 1));
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < RING; i++) tm_free(ring[i]);
    CHECK(stats_of(TM_CXL).in_use == 0, "CXL in_use %llu after all frees",
          (unsigned long long)stats_of(TM_CXL).in_use);
}

static void fork_keeps_parent_blocks(void)
{
    enum { N = 64, SIZE = 1000 };
    unsigned char *blocks[N];
    for (int i = 0; i < N; i++) {
        blocks[i] = tm_malloc(TM_CXL, SIZE);
        if (!CHECK(blocks[i] != NULL, "tm_malloc(TM_CXL, %d)", SIZE)) return;
        memset(blocks[i], 0xa0 + i % 16, SIZE);
    }
    pid_t pid = fork();
    if (pid == 0) {
        int bad = 0;
        for (int i = 0; i < N; i++) {
            int intact = 1;
            for (int k = 0; k < SIZE; k++) intact &= blocks[i][k] == 0xa0 + i % 16;
            if (!intact) bad |= 1;
            tm_free(blocks[i]);
        }
        for (int i = 0; i < 4 * N; i++) {
            unsigned char *p = tm_malloc(TM_CXL, SIZE);
            if (p == NULL || tm_kind_of(p) != TM_CXL) bad |= 2;
            else memset(p - TM_HEADER_SIZE, 0x55, SIZE + TM_HEADER_SIZE);
        }
        _exit(bad);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "forked child: status %#x (1: inherited blocks differ, 2: no block on its tier)",
          status);
    for (int i = 0; i < N; i++) {
        int intact = header_of(blocks[i])->state == 1;
        for (int k = 0; k < SIZE; k++) intact &= blocks[i][k] == 0xa0 + i % 16;
        CHECK(intact, "block %d changed by the forked child", i);
    }
    unsigned char *zero = tm_malloc(TM_CXL, 0);
    CHECK(zero != NULL && tm_usable_size(zero) > 0, "tm_malloc(TM_CXL, 0): %p, usable %zu",
          (void *)zero, zero ? tm_usable_size(zero) : 0);
    zero = tm_realloc(zero, 59);
    CHECK(zero != NULL && tm_kind_of(zero) == TM_CXL && tm_usable_size(zero) >= 59,
          "tm_realloc of a 0-byte CXL block to 59 bytes failed: errno %d", errno);
    tm_free(zero);
    unsigned char *again = tm_malloc(TM_CXL, SIZE);
    CHECK(again != NULL, "the parent can still allocate on its tier");
    tm_free(again);
    for (int i = 0; i < N; i++) tm_free(blocks[i]);
}

/* Bytes of address space this process has mapped (VmSize), or -1. */
static long long vm_size(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    long long kib = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmSize: %lld kB", &kib) == 1) break;
    fclose(f);
    return kib < 0 ? -1 : kib * 1024;
}

static void fork_without_room_for_a_copy(void)
{
    enum { SIZE = 1000 };
    unsigned char *p = tm_malloc(TM_CXL, SIZE);
    if (!CHECK(p != NULL, "tm_malloc(TM_CXL, %d)", SIZE)) return;
    memset(p, 0x77, SIZE);
    struct rlimit old;
    long long vm = vm_size();
    if (!CHECK(getrlimit(RLIMIT_AS, &old) == 0 && vm > 0, "getrlimit / VmSize")) return;
    /* 2 MiB to spare: less than the 8 MiB copy of the CXL tier the child would need. */
    struct rlimit tight = {(rlim_t)vm + (2 << 20), old.rlim_max};
    if (!CHECK(setrlimit(RLIMIT_AS, &tight) == 0, "setrlimit: errno %d", errno)) return;
    pid_t pid = fork();
    if (pid == 0) {
        int bad = 0;
        errno = 0;
        if (tm_malloc(TM_CXL, 100) != NULL || errno != ENOMEM) bad |= 1;
        tm_free(p); /* known to the child's metadata: accepted, but nothing is written */
        /* (The region is still shared: what the child itself writes into blocks reaches the
         * parent. The fallback keeps the allocator from handing out or marking the parent's
         * blocks; it cannot make the bytes private.) */
        _exit(bad);
    }
    setrlimit(RLIMIT_AS, &old);
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "child without room for a private copy: status %#x (1: it could allocate on the "
          "shared tier)", status);
    CHECK(header_of(p)->state == 1, "the child's free reached the parent's header");
    tm_free(p);
}

/* Runs `argv` with `env` added, returns its wait status and up to `cap` bytes of stderr. */
static int run_child(char *const argv[], const char *tiers, char *err, size_t cap)
{
    int fds[2];
    if (pipe(fds) != 0) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        setenv("TIERMALLOC_TIERS", tiers, 1);
        unsetenv("TIERMALLOC_PLACE");
        execv("/proc/self/exe", argv);
        _exit(127);
    }
    close(fds[1]);
    size_t n = 0;
    ssize_t r;
    while (n + 1 < cap && (r = read(fds[0], err + n, cap - 1 - n)) > 0) n += (size_t)r;
    err[n] = 0;
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    return status;
}

static int count_lines(const char *s)
{
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

enum { DRAM_CAP = 4 << 20 };

/* The child of dram_limit(), run with TIERMALLOC_TIERS="dram:limit=4M;cxl:...": 16 MiB of
 * 4 KiB blocks against a 4 MiB cap on DRAM. */
static int child_dram_limit(void)
{
    enum { N = 4096, SIZE = 4096 };
    static char *blocks[N];
    tm_stats d0 = stats_of(TM_DRAM), c0 = stats_of(TM_CXL);
    CHECK(d0.capacity == DRAM_CAP, "dram capacity %llu, want the limit",
          (unsigned long long)d0.capacity);
    int on_dram = 0, on_cxl = 0;
    for (int i = 0; i < N; i++) {
        blocks[i] = malloc(SIZE);
        if (!CHECK(blocks[i] != NULL, "malloc #%d failed: errno %d", i, errno)) return check_done();
        memset(blocks[i], i & 0xff, SIZE);
        on_dram += tm_kind_of(blocks[i]) == TM_DRAM;
        on_cxl += tm_kind_of(blocks[i]) == TM_CXL;
    }
    tm_stats d1 = stats_of(TM_DRAM), c1 = stats_of(TM_CXL);
    CHECK(on_dram > 0 && on_cxl > 0 && on_dram + on_cxl == N, "%d blocks on dram, %d on cxl",
          on_dram, on_cxl);
    CHECK((long)on_dram * SIZE <= DRAM_CAP && d1.in_use <= DRAM_CAP,
          "%d blocks on dram, in_use %llu: past the cap", on_dram, (unsigned long long)d1.in_use);
    CHECK(d1.spilled_out - d0.spilled_out >= (unsigned long long)on_cxl &&
              c1.spilled_in - c0.spilled_in >= (unsigned long long)on_cxl,
          "spilled_out %llu, spilled_in %llu for %d blocks on cxl",
          (unsigned long long)(d1.spilled_out - d0.spilled_out),
          (unsigned long long)(c1.spilled_in - c0.spilled_in), on_cxl);
    errno = 0;
    void *explicit = tm_malloc(TM_DRAM, 8 << 20);
    CHECK(explicit == NULL && errno == ENOMEM, "tm_malloc(TM_DRAM, 8M) past the cap: %p, errno %d",
          explicit, errno);
    void *plain = malloc(8 << 20);
    CHECK(plain && tm_kind_of(plain) == TM_CXL, "malloc(8M) past the cap on kind %d",
          tm_kind_of(plain));
    free(plain);
    for (int i = 0; i < N; i++) {
        CHECK(blocks[i][0] == (char)(i & 0xff) && blocks[i][SIZE - 1] == (char)(i & 0xff),
              "block %d lost its contents", i);
        free(blocks[i]);
    }
    void *back = malloc(1 << 20);
    CHECK(back && tm_kind_of(back) == TM_DRAM, "after the frees, malloc(1M) on kind %d",
          tm_kind_of(back));
    free(back);
    return check_done();
}

static void dram_limit(void)
{
    char path[160], tiers[256], err[4096];
    snprintf(path, sizeof path, "%s-dram-limit", cxl_path);
    snprintf(tiers, sizeof tiers, "dram:limit=%d;cxl:path=%s,size=64M,create", DRAM_CAP, path);
    char *argv[] = {"device_tiers", "--child-dram-limit", NULL};
    int st = run_child(argv, tiers, err, sizeof err);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "dram limit= child: status %#x, stderr: %s", st,
          err);
    unlink(path);
}

static void child_modes(void)
{
    char err[4096];
    char *broken[] = {"device_tiers", "--child-broken", NULL};
    int st = run_child(broken, "dram;pmr:path=/nonexistent-dir/pmr-file,size=1M", err, sizeof err);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "broken-path child: status %#x, stderr: %s", st,
          err);
    CHECK(strstr(err, "pmr") && strstr(err, "/nonexistent-dir/pmr-file"),
          "no line naming the tier and path: %s", err);
    CHECK(count_lines(err) == 1, "want exactly one line, got: %s", err);

    char tiers[256];
    snprintf(tiers, sizeof tiers, "dram;cxl:path=%s", cxl_path);
    char *busy[] = {"device_tiers", "--child-busy", NULL};
    st = run_child(busy, tiers, err, sizeof err);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
          "second user of a tier file: status %#x, stderr: %s", st, err);
    CHECK(strstr(err, "cxl") && strstr(err, cxl_path) && strstr(err, "in use by another process") &&
              count_lines(err) == 1,
          "second user of a tier file: want one line naming it, got: %s", err);
    char child_path[160];
    snprintf(child_path, sizeof child_path, "%s-child", cxl_path);
    snprintf(tiers, sizeof tiers, "dram;cxl:path=%s,size=1M,create", child_path);
    char *dbl[] = {"device_tiers", "--child-double-free", NULL};
    st = run_child(dbl, tiers, err, sizeof err);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT, "double free: status %#x", st);
    CHECK(strstr(err, "double free") && count_lines(err) == 1, "double free stderr: %s", err);
    char *mid[] = {"device_tiers", "--child-interior-free", NULL};
    st = run_child(mid, tiers, err, sizeof err);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT, "interior free: status %#x", st);
    CHECK(strstr(err, "not the start") && count_lines(err) == 1, "interior free stderr: %s", err);
    unlink(child_path);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--child-broken") == 0) {
        errno = 0;
        void *p = tm_malloc(TM_PMR, 100);
        void *q = malloc(100);
        free(q);
        return p == NULL && errno == ENOMEM && q != NULL ? 0 : 1;
    }
    if (argc > 1 && strcmp(argv[1], "--child-dram-limit") == 0) return child_dram_limit();
    if (argc > 1 && strcmp(argv[1], "--child-busy") == 0) {
        errno = 0;
        void *p = tm_malloc(TM_CXL, 100);
        return p == NULL && errno == ENOMEM ? 0 : 1;
    }
    if (argc > 1 && strcmp(argv[1], "--child-double-free") == 0) {
        void *p = tm_malloc(TM_CXL, 100);
        tm_free(p);
        tm_free(p);
        return 0; /* not reached: the second free aborts */
    }
    if (argc > 1 && strcmp(argv[1], "--child-interior-free") == 0) {
        char *p = tm_malloc(TM_CXL, 1000);
        tm_free(p + 64);
        return 0;
    }
    snprintf(cxl_path, sizeof cxl_path, "/dev/shm/tiermalloc-ct-cxl-%d", (int)getpid());
    snprintf(pmr_path, sizeof pmr_path, "/dev/shm/tiermalloc-ct-pmr-%d", (int)getpid());
    snprintf(cmb_path, sizeof cmb_path, "/dev/shm/tiermalloc-ct-cmb-%d", (int)getpid());
    if (!getenv("TIERMALLOC_TIERS")) {
        char tiers[512];
        snprintf(tiers, sizeof tiers,
                 "dram;cxl:path=%s,size=8M,create;pmr:path=%s,size=4M,create,limit=2M;"
                 "cmb:path=%s,size=8M,create",
                 cxl_path, pmr_path, cmb_path);
        setenv("TIERMALLOC_TIERS", tiers, 1);
        setenv("TIERMALLOC_PLACE", "pmr:min=64K,max=1M", 1);
        setenv("DEVICE_TIERS_PARENT", "1", 1);
        execv("/proc/self/exe", argv);
        CHECK(0, "re-exec failed: errno %d", errno);
        return check_done();
    }
    watchdog(60, "device_tiers");
    each_kind();
    fit_policies();
    spill_and_limits();
    dram_limit();
    realloc_in_place();
    cross_thread_frees();
    fork_keeps_parent_blocks();
    fork_without_room_for_a_copy();
    child_modes();
    unlink(cxl_path);
    unlink(pmr_path);
    unlink(cmb_path);
    return check_done();
}
