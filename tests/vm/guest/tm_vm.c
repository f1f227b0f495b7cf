/* tm_vm.c — the test program the VM guests run, linked statically against libtiermalloc.a.
 * The tier comes from TIERMALLOC_TIERS, set by the guest script; the program checks what it
 * was asked to and prints `TM-CHECK key=value` lines the host test reads, then the summary of
 * check.h. Commands:
 *
 *   tm_vm contract KIND DEVICE CAPACITY
 *       The device-tier contract on a real device (the checks of c-tests/device_tiers.c that
 *       need no second file): tm_malloc lands on KIND, the header says size == usable >=
 *       request, magic "TMHB", kind, allocated; a pattern written to a block is seen through a
 *       second, independent mapping of DEVICE; the tier's capacity is CAPACITY bytes (what
 *       sysfs says the BAR or device holds, less at most 64 KiB); filling the tier until ENOMEM
 *       and freeing it all coalesces back to one extent; tm_malloc beyond the capacity fails
 *       with ENOMEM and does not spill; realloc keeps contents and tier; blocks freed by other
 *       threads.
 *   tm_vm find DEVICE SIZE LABEL
 *                              finds a header with magic "TMHB" followed by SIZE bytes of the
 *                              proof pattern in DEVICE (mapped read-only) and prints
 *                              `TM-CHECK LABEL=OFFSET` (-1: not there)
 *   tm_vm root_write KIND SIZE writes SIZE bytes of the proof into a block of KIND, names it
 *                              by the root "vm-proof" and makes it durable (tm_persist)
 *   tm_vm root_verify KIND SIZE
 *                              finds the root "vm-proof" on KIND (a persistent tier opened by
 *                              a new process, in a new boot) and its SIZE bytes of proof
 *   tm_vm headers DEVICE LABEL prints `TM-CHECK LABEL=N`: the allocated block headers (magic
 *                              "TMHB", state 1) in DEVICE, mapped read-only
 *   tm_vm numa NODE SIZE       a cxl tier (numa=NODE): move_pages says every page of a block
 *                              of SIZE bytes is on NODE
 *   tm_vm numa_evacuate FROM TO
 *                              a cxl tier (numa=FROM) with 2 000 blocks, all of whose pages
 *                              move_pages finds on FROM, is moved with tm_evacuate(TM_CXL,
 *                              "numa=TO") while two threads increment counters in every block:
 *                              afterwards every page of every block is on TO, every count is
 *                              exact, every pattern and tm_kind_of intact
 *   tm_vm skipped KIND         KIND was refused (tm_get_stats fails), and malloc still works
 *   tm_vm touches LOG LO HI MARKER
 *                              counts the bytes a `valgrind --tool=lackey --trace-mem=yes` log
 *                              shows loaded and stored in [LO, HI) between the two stores to
 *                              MARKER (benches/device/touches.c prints the three, in hex), as
 *                              tests/device_touches.rs does on the host
 *   tm_vm host_a DEVICE        two hosts on one device (a BAR both VMs map; the cxl tier is its
 *   tm_vm wait_a DEVICE        first 8 MiB, a mailbox its last page): A writes the proof into a
 *   tm_vm host_b DEVICE        cxl block and posts "A holds"; B (wait_a, no tier) waits for that
 *                              and finds A's proof through its own mapping; B (host_b, with the
 *                              same tier) opens the tier while A holds it, allocates and marks a
 *                              block, and posts "B done"; A then checks whether its proof is
 *                              intact. Prints what each saw; the host test judges.
 *   tm_vm wait_beat DEVICE     B, before host_b: waits until A's tier's heartbeat (the owner
 *                              record's word, offset 104 of the BAR) changes, so that host_b
 *                              opens the tier right after A beat: A is live by the lease then,
 *                              however long A's VM was held up before (a loaded host)
 *   tm_vm pool_a DEVICE        the same two hosts through the shared pool (TIERMALLOC_POOL on
 *   tm_vm pool_b DEVICE        the first 8 MiB): A publishes a space, B opens it, reads it and
 *                              republishes it changed, A reads B's
 */
#define _GNU_SOURCE 1
#include "tiermalloc.h"
#include "check.h"
#include <sys/syscall.h>
#include <sys/sysmacros.h>

static tm_kind kind_named(const char *name)
{
    if (!strcmp(name, "cxl")) return TM_CXL;
    if (!strcmp(name, "cmb")) return TM_CMB;
    if (!strcmp(name, "pmr")) return TM_PMR;
    return TM_DRAM;
}

static tm_stats stats_of(tm_kind kind)
{
    tm_stats s;
    memset(&s, 0, sizeof s);
    CHECK(tm_get_stats(kind, &s) == 0, "tm_get_stats(%d): errno %d", (int)kind, errno);
    return s;
}

/* A device mapped read-only, its length rounded down to 2 MiB for device DAX. */
static const unsigned char *map_device(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY);
    if (!CHECK(fd >= 0, "open %s: %s", path, strerror(errno))) return NULL;
    struct stat st;
    fstat(fd, &st);
    size_t size = (size_t)st.st_size;
    if (S_ISCHR(st.st_mode)) {
        char sysfs[128];
        snprintf(sysfs, sizeof sysfs, "/sys/dev/char/%u:%u/size", major(st.st_rdev),
                 minor(st.st_rdev));
        FILE *f = fopen(sysfs, "r");
        unsigned long long v = 0;
        if (f) { if (fscanf(f, "%llu", &v) != 1) v = 0; fclose(f); }
        size = (size_t)v & ~(size_t)((2 << 20) - 1);
    }
    const unsigned char *p = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (!CHECK(p != MAP_FAILED, "mmap %s (%zu bytes): %s", path, size, strerror(errno)))
        return NULL;
    *len = size;
    return p;
}

static unsigned char proof_byte(size_t i)
{
    return (unsigned char)("tiermalloc-proof:"[i % 17] ^ (i >> 12));
}

static void *free_thread(void *arg)
{
    void **blocks = arg;
    for (int i = 0; i < 64; i++) {
        unsigned char *p = blocks[i];
        for (int k = 0; k < 256; k++)
            if (p[k] != (unsigned char)(i + k)) {
                CHECK(0, "block %d byte %d changed before its free in another thread", i, k);
                break;
            }
        free(p);
    }
    return NULL;
}

static int contract(tm_kind kind, const char *device, unsigned long long capacity)
{
    size_t dev_len = 0;
    const unsigned char *dev = map_device(device, &dev_len);
    tm_stats s0 = stats_of(kind);
    printf("TM-CHECK capacity=%llu device=%llu\n", (unsigned long long)s0.capacity, capacity);
    /* The whole device, less at most 64 KiB of the tier's own (a persistent tier's superblock). */
    CHECK(s0.capacity <= capacity && s0.capacity + 65536 >= capacity,
          "tier capacity %llu, device says %llu", (unsigned long long)s0.capacity, capacity);

    /* One block: header, tier, pattern seen through the second mapping. */
    unsigned char *p = tm_malloc(kind, 1000);
    if (CHECK(p != NULL, "tm_malloc(%d, 1000): errno %d", (int)kind, errno)) {
        const tm_block_header *h = (const tm_block_header *)p - 1;
        CHECK(tm_kind_of(p) == (int)kind, "tm_kind_of %d", tm_kind_of(p));
        CHECK(h->size == tm_usable_size(p) && h->size >= 1000, "header size %llu usable %zu",
              (unsigned long long)h->size, tm_usable_size(p));
        CHECK(h->magic == 0x42484d54u && h->kind == kind && h->state == 1,
              "magic %#x kind %u state %u", h->magic, h->kind, h->state);
        unsigned char pattern[64];
        for (int k = 0; k < 64; k++) pattern[k] = (unsigned char)(0x5A ^ (k * 13));
        memcpy(p + 200, pattern, sizeof pattern);
        int seen = dev && memmem(dev, dev_len, pattern, sizeof pattern) != NULL;
        CHECK(seen, "pattern written to the block not found through a second mapping of %s",
              device);
        printf("TM-CHECK second_mapping_sees_block=%d\n", seen);
        tm_free(p);
    }

    /* Fill the tier with mixed sizes until ENOMEM, verify, free all: one extent again. */
    enum { MAX_BLOCKS = 4096 };
    static unsigned char *blocks[MAX_BLOCKS];
    static size_t sizes[MAX_BLOCKS];
    int n = 0;
    unsigned long long filled = 0;
    size_t unit = (size_t)(capacity / 600);
    while (n < MAX_BLOCKS) {
        size_t size = 16 + (size_t)(n * 7919 % 97) * (unit / 64 + 1);
        unsigned char *b = tm_malloc(kind, size);
        if (!b) {
            CHECK(errno == ENOMEM, "tm_malloc failure errno %d", errno);
            break;
        }
        for (size_t k = 0; k < size; k += 512) b[k] = (unsigned char)(n + k / 512);
        blocks[n] = b;
        sizes[n++] = size;
        filled += size;
    }
    tm_stats full = stats_of(kind);
    printf("TM-CHECK filled_blocks=%d filled_bytes=%llu in_use=%llu\n", n, filled,
           (unsigned long long)full.in_use);
    CHECK(n > 100 && n < MAX_BLOCKS, "filled the tier with %d blocks", n);
    CHECK(full.in_use >= filled && full.in_use <= full.capacity, "in_use %llu",
          (unsigned long long)full.in_use);
    int bad = 0;
    for (int i = 0; i < n; i++)
        for (size_t k = 0; k < sizes[i]; k += 512)
            if (blocks[i][k] != (unsigned char)(i + k / 512)) bad++;
    CHECK(bad == 0, "%d bytes changed in a full tier", bad);
    for (int i = 0; i < n; i += 2) tm_free(blocks[i]);
    for (int i = 1; i < n; i += 2) tm_free(blocks[i]);
    tm_stats empty = stats_of(kind);
    CHECK(empty.in_use == 0 && empty.free_bytes == empty.capacity &&
              empty.largest_free == empty.capacity - 16,
          "after freeing all: in_use %llu free %llu largest %llu capacity %llu",
          (unsigned long long)empty.in_use, (unsigned long long)empty.free_bytes,
          (unsigned long long)empty.largest_free, (unsigned long long)empty.capacity);
    errno = 0;
    tm_stats before = stats_of(TM_DRAM);
    CHECK(tm_malloc(kind, (size_t)capacity) == NULL && errno == ENOMEM,
          "tm_malloc beyond capacity: errno %d", errno);
    tm_stats after = stats_of(TM_DRAM);
    CHECK(after.allocations == before.allocations, "an explicit tm_malloc spilled to DRAM");

    /* realloc keeps the tier and the contents. */
    unsigned char *r = tm_malloc(kind, 3000);
    if (CHECK(r != NULL, "tm_malloc 3000")) {
        for (int k = 0; k < 3000; k++) r[k] = (unsigned char)(k * 3);
        unsigned char *g = tm_realloc(r, 300000);
        if (CHECK(g != NULL, "realloc to 300000")) {
            int same = 1;
            for (int k = 0; k < 3000; k++) same &= g[k] == (unsigned char)(k * 3);
            CHECK(same && tm_kind_of(g) == (int)kind, "realloc lost contents or tier");
            tm_free(g);
        }
    }

    /* Blocks freed by another thread. */
    static void *shared_blocks[64];
    for (int i = 0; i < 64; i++) {
        unsigned char *b = tm_malloc(kind, 256 + i * 100);
        if (!CHECK(b != NULL, "tm_malloc for the other thread")) return check_done();
        for (int k = 0; k < 256; k++) b[k] = (unsigned char)(i + k);
        shared_blocks[i] = b;
    }
    pthread_t t;
    pthread_create(&t, NULL, free_thread, shared_blocks);
    pthread_join(t, NULL);
    tm_stats last = stats_of(kind);
    CHECK(last.in_use == 0, "in_use %llu after the other thread freed all",
          (unsigned long long)last.in_use);
    printf("TM-CHECK allocations=%llu frees=%llu\n", (unsigned long long)last.allocations,
           (unsigned long long)last.frees);
    return check_done();
}

static int find_proof(const char *device, size_t size, const char *label)
{
    size_t len = 0;
    const unsigned char *dev = map_device(device, &len);
    if (!dev) return check_done();
    long found = -1;
    for (size_t at = 0; at + 16 + size <= len; at += 16) {
        const tm_block_header *h = (const tm_block_header *)(dev + at);
        if (h->magic != 0x42484d54u || h->state != 1 || h->size < size) continue;
        size_t i = 0;
        while (i < size && dev[at + 16 + i] == proof_byte(i)) i++;
        if (i == size) { found = (long)at; break; }
    }
    printf("TM-CHECK %s=%ld\n", label, found);
    return check_done();
}

static int numa(int node, size_t size)
{
    unsigned char *p = tm_malloc(TM_CXL, size);
    if (!CHECK(p != NULL, "tm_malloc(TM_CXL, %zu): errno %d", size, errno)) return check_done();
    memset(p, 0x77, size);
    enum { MAXP = 16384 };
    static void *pages[MAXP];
    static int status[MAXP];
    size_t first = ((uintptr_t)p + 4095) & ~(uintptr_t)4095, count = 0;
    for (size_t a = first; a + 4096 <= (uintptr_t)p + size && count < MAXP; a += 4096)
        pages[count++] = (void *)a;
    long rc = syscall(SYS_move_pages, 0, count, pages, NULL, status, 0);
    CHECK(rc == 0, "move_pages: %s", strerror(errno));
    size_t on_node = 0;
    for (size_t i = 0; i < count; i++) on_node += status[i] == node;
    printf("TM-CHECK pages=%zu on_node_%d=%zu\n", count, node, on_node);
    CHECK(count > 0 && on_node == count, "%zu of %zu pages on node %d (first status %d)", on_node,
          count, node, count ? status[0] : 0);
    return check_done();
}

/* numa_evacuate: the blocks, their counters (first word) and pattern (the rest). */
enum { NUMA_BLOCKS = 2000, NUMA_WRITERS = 2 };
static unsigned char *numa_block[NUMA_BLOCKS];
static size_t numa_size[NUMA_BLOCKS];
static volatile int numa_stop;
static uint64_t numa_rounds[NUMA_WRITERS];

static void *numa_writer(void *arg)
{
    size_t w = (size_t)arg;
    uint64_t rounds = 0;
    while (!numa_stop) {
        for (size_t i = w; i < NUMA_BLOCKS; i += NUMA_WRITERS) {
            volatile uint64_t *c = (volatile uint64_t *)numa_block[i];
            *c = *c + 1;
        }
        rounds++;
    }
    numa_rounds[w] = rounds;
    return NULL;
}

/* How many pages of the blocks move_pages finds on `node`, of *pages (all of them). */
static size_t numa_pages_on(int node, size_t *pages)
{
    enum { MAXP = 1 << 16 };
    static void *addr[MAXP];
    static int status[MAXP];
    size_t count = 0, on = 0;
    for (size_t i = 0; i < NUMA_BLOCKS; i++) {
        uintptr_t first = (uintptr_t)numa_block[i] & ~(uintptr_t)4095;
        for (uintptr_t a = first; a < (uintptr_t)numa_block[i] + numa_size[i] && count < MAXP;
             a += 4096)
            if (count == 0 || addr[count - 1] != (void *)a) addr[count++] = (void *)a;
    }
    long rc = syscall(SYS_move_pages, 0, count, addr, NULL, status, 0);
    CHECK(rc == 0, "move_pages query: %s", strerror(errno));
    for (size_t i = 0; i < count; i++) on += status[i] == node;
    *pages = count;
    return on;
}

static int numa_evacuate(int from, int to)
{
    for (size_t i = 0; i < NUMA_BLOCKS; i++) {
        numa_size[i] = i % 10 == 0 ? 8192 + (i * 7919) % 40000 : 16 + (i * 104729) % 3000;
        numa_block[i] = tm_malloc(TM_CXL, numa_size[i]);
        if (!CHECK(numa_block[i] != NULL, "tm_malloc(TM_CXL, %zu): errno %d", numa_size[i], errno))
            return check_done();
        memset(numa_block[i], (int)(i % 251) + 1, numa_size[i]);
        memset(numa_block[i], 0, 8);
    }
    size_t pages, on = numa_pages_on(from, &pages);
    printf("TM-CHECK numa_pages=%zu before_on_from=%zu\n", pages, on);
    CHECK(on == pages, "%zu of %zu pages on node %d before the move", on, pages, from);
    pthread_t t[NUMA_WRITERS];
    for (size_t w = 0; w < NUMA_WRITERS; w++)
        pthread_create(&t[w], NULL, numa_writer, (void *)w);
    usleep(100000);
    char target[32];
    snprintf(target, sizeof target, "numa=%d", to);
    int rc = tm_evacuate(TM_CXL, target);
    int saved = errno;
    usleep(100000);
    numa_stop = 1;
    for (size_t w = 0; w < NUMA_WRITERS; w++) pthread_join(t[w], NULL);
    CHECK(rc == 0, "tm_evacuate(TM_CXL, %s): errno %d", target, saved);
    size_t lost = 0, broken = 0;
    for (size_t i = 0; i < NUMA_BLOCKS; i++) {
        lost += *(uint64_t *)numa_block[i] != numa_rounds[i % NUMA_WRITERS];
        for (size_t b = 8; b < numa_size[i]; b++)
            if (numa_block[i][b] != (unsigned char)(i % 251 + 1)) { broken++; break; }
        CHECK(tm_kind_of(numa_block[i]) == TM_CXL, "block %zu changed tier", i);
    }
    on = numa_pages_on(to, &pages);
    printf("TM-CHECK after_on_to=%zu rounds=%llu lost_counts=%zu broken_patterns=%zu\n", on,
           (unsigned long long)(numa_rounds[0] + numa_rounds[1]), lost, broken);
    CHECK(on == pages, "%zu of %zu pages on node %d after the move", on, pages, to);
    CHECK(lost == 0 && broken == 0, "%zu counts lost, %zu patterns broken", lost, broken);
    CHECK(numa_rounds[0] > 0 && numa_rounds[1] > 0, "the writers ran");
    return check_done();
}

static int skipped(tm_kind kind)
{
    tm_stats s;
    CHECK(tm_get_stats(kind, &s) == -1, "tier %d is configured; it should have been refused",
          (int)kind);
    errno = 0;
    CHECK(tm_malloc(kind, 64) == NULL, "tm_malloc on a refused tier succeeded");
    char *p = malloc(100000);
    CHECK(p != NULL && tm_kind_of(p) == TM_DRAM, "malloc after a refused tier (ours: %d)",
          tm_kind_of(p));
    memset(p, 1, 100000);
    free(p);
    printf("TM-CHECK runs_on=1\n");
    return check_done();
}

/* ------------------------------------------------------------ roots (persistent tiers) */

/* Writes SIZE bytes of the proof into a block of KIND, names it by the root "vm-proof" and makes
 * it durable (tm_persist). */
static int root_write(tm_kind kind, size_t size)
{
    unsigned char *p = tm_malloc(kind, size);
    if (!CHECK(p != NULL, "tm_malloc(%d, %zu): errno %d", (int)kind, size, errno))
        return check_done();
    for (size_t i = 0; i < size; i++) p[i] = proof_byte(i);
    CHECK(tm_root_set(kind, "vm-proof", p) == 0, "tm_root_set: errno %d", errno);
    CHECK(tm_persist(p, size) == 0, "tm_persist: errno %d", errno);
    printf("TM-CHECK root_wrote=%zu root_offset=%llu\n", size,
           (unsigned long long)tm_offset_of(p));
    return check_done();
}

/* A new process (a new boot) finds the root "vm-proof" on KIND and its SIZE bytes of proof. */
static int root_verify(tm_kind kind, size_t size)
{
    unsigned char *p = tm_root_get(kind, "vm-proof");
    if (!CHECK(p != NULL, "tm_root_get(vm-proof): errno %d", errno)) return check_done();
    size_t same = 0;
    while (same < size && p[same] == proof_byte(same)) same++;
    CHECK(same == size, "the proof differs at byte %zu of %zu", same, size);
    CHECK(tm_usable_size(p) >= size && tm_kind_of(p) == (int)kind, "usable %zu kind %d",
          tm_usable_size(p), tm_kind_of(p));
    printf("TM-CHECK root_found_bytes=%zu root_offset=%llu\n", same,
           (unsigned long long)tm_offset_of(p));
    return check_done();
}

/* Counts the allocated block headers (magic "TMHB", state 1) in DEVICE mapped read-only. */
static int count_headers(const char *device, const char *label)
{
    size_t len = 0;
    const unsigned char *dev = map_device(device, &len);
    if (!dev) return check_done();
    long headers = 0;
    for (size_t at = 0; at + 16 <= len; at += 16) {
        const tm_block_header *h = (const tm_block_header *)(dev + at);
        headers += h->magic == 0x42484d54u && h->state == 1;
    }
    printf("TM-CHECK %s=%ld\n", label, headers);
    return check_done();
}

/* ------------------------------------------------------------ device touches */

static int touches(const char *log, const char *lo_s, const char *hi_s, const char *marker_s)
{
    unsigned long long lo = strtoull(lo_s, NULL, 16), hi = strtoull(hi_s, NULL, 16),
                       marker = strtoull(marker_s, NULL, 16);
    FILE *f = fopen(log, "r");
    if (!CHECK(f != NULL, "open %s", log)) return check_done();
    char line[256];
    int inside = 0;
    unsigned long long loads = 0, stores = 0, store_ops = 0;
    while (fgets(line, sizeof line, f)) {
        char kind;
        unsigned long long addr, size;
        if (sscanf(line, " %c %llx,%llu", &kind, &addr, &size) != 3) continue;
        if (kind != 'L' && kind != 'S' && kind != 'M') continue;
        if (addr == marker && kind == 'S') { inside++; continue; }
        if (inside != 1 || addr < lo || addr >= hi) continue;
        if (kind != 'S') loads += size;
        if (kind != 'L') { stores += size; store_ops++; }
    }
    fclose(f);
    CHECK(inside == 2, "the two marker stores were seen %d times", inside);
    printf("TM-CHECK touch_loads=%llu touch_stores=%llu touch_store_ops=%llu\n", loads, stores,
           store_ops);
    return check_done();
}

/* ------------------------------------------------------------ two hosts */

#define TIER_BYTES (8u << 20)
#define MAILBOX_AT (15u << 20)
#define A_HOLDS 0x41484f4c44534121ull
#define B_DONE 0x42444f4e45424221ull

/* The last page of the 16 MiB BAR, mapped read-write outside any tier. */
static uint64_t *mailbox(const char *device)
{
    int fd = open(device, O_RDWR);
    if (!CHECK(fd >= 0, "open %s: %s", device, strerror(errno))) return NULL;
    void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, MAILBOX_AT);
    close(fd);
    return CHECK(p != MAP_FAILED, "mmap mailbox: %s", strerror(errno)) ? p : NULL;
}

/* How long one VM waits for the other: they boot at once, but under TCG on a loaded host one
 * can boot minutes after the other. Well inside the host test's wall limit for a VM (900 s),
 * which ends a broken run. */
#define MAILBOX_WAIT_S 600

/* The owner record's heartbeat word (device/persist/owner.rs: offset 104 of the superblock,
 * which is the tier's first bytes, the BAR's). */
#define HEARTBEAT_AT 104

static int wait_for(uint64_t *word, uint64_t value, int seconds)
{
    for (int i = 0; i < seconds * 100; i++) {
        if (__atomic_load_n(word, __ATOMIC_ACQUIRE) == value) return 1;
        usleep(10000);
    }
    return 0;
}

static long find_in(const unsigned char *dev, size_t len, size_t size)
{
    for (size_t at = 0; at + 16 + size <= len; at += 16) {
        const tm_block_header *h = (const tm_block_header *)(dev + at);
        if (h->magic != 0x42484d54u || h->state != 1 || h->size < size) continue;
        size_t i = 0;
        while (i < size && dev[at + 16 + i] == proof_byte(i)) i++;
        if (i == size) return (long)at;
    }
    return -1;
}

static int host_a(const char *device)
{
    uint64_t *box = mailbox(device);
    tm_stats s;
    if (!CHECK(box && tm_get_stats(TM_CXL, &s) == 0, "A: no cxl tier")) return check_done();
    size_t size = 1 << 20;
    unsigned char *p = tm_malloc(TM_CXL, size);
    if (!CHECK(p != NULL, "A: tm_malloc")) return check_done();
    for (size_t i = 0; i < size; i++) p[i] = proof_byte(i);
    __atomic_store_n(&box[0], A_HOLDS, __ATOMIC_RELEASE);
    printf("TM-CHECK a_holds=1\n");
    int saw_b = wait_for(&box[1], B_DONE, MAILBOX_WAIT_S);
    printf("TM-CHECK a_saw_b=%d\n", saw_b);
    CHECK(saw_b, "A: B never reported");
    size_t intact = 0;
    while (intact < size && p[intact] == proof_byte(intact)) intact++;
    printf("TM-CHECK a_proof_intact=%d\n", intact == size);
    return check_done();
}

static int wait_a(const char *device)
{
    uint64_t *box = mailbox(device);
    int held = box && wait_for(&box[0], A_HOLDS, MAILBOX_WAIT_S);
    printf("TM-CHECK b_saw_a_hold=%d\n", held);
    CHECK(held, "B: A never posted");
    int fd = open(device, O_RDONLY);
    const unsigned char *dev = mmap(NULL, TIER_BYTES, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (!CHECK(dev != MAP_FAILED, "B: mmap")) return check_done();
    printf("TM-CHECK b_sees_a_proof_at=%ld\n", find_in(dev, TIER_BYTES, 1 << 20));
    return check_done();
}

static int wait_beat(const char *device)
{
    int fd = open(device, O_RDONLY);
    if (!CHECK(fd >= 0, "open %s: %s", device, strerror(errno))) return check_done();
    const unsigned char *dev = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (!CHECK(dev != MAP_FAILED, "B: mmap")) return check_done();
    const uint64_t *beat = (const uint64_t *)(dev + HEARTBEAT_AT);
    uint64_t first = __atomic_load_n(beat, __ATOMIC_ACQUIRE);
    int beat_seen = 0;
    /* A beats every 2.5 s of its own time. */
    for (int i = 0; i < MAILBOX_WAIT_S * 1000 && !beat_seen; i++) {
        beat_seen = __atomic_load_n(beat, __ATOMIC_ACQUIRE) != first;
        if (!beat_seen) usleep(1000);
    }
    printf("TM-CHECK b_saw_a_beat=%d\n", beat_seen);
    CHECK(beat_seen, "B: A's heartbeat never changed");
    return check_done();
}

static int host_b(const char *device)
{
    uint64_t *box = mailbox(device);
    if (!box) return check_done();
    tm_stats s;
    int open_ = tm_get_stats(TM_CXL, &s) == 0;
    printf("TM-CHECK b_tier_open=%d\n", open_);
    if (open_) {
        /* A marked block: where does B's tier put it? */
        unsigned char *q = tm_malloc(TM_CXL, 4096);
        if (CHECK(q != NULL, "B: tm_malloc")) {
            memset(q, 0xB5, 4096);
            int fd = open(device, O_RDONLY);
            const unsigned char *dev = mmap(NULL, TIER_BYTES, PROT_READ, MAP_SHARED, fd, 0);
            close(fd);
            long at = -1;
            for (size_t k = 0; dev != MAP_FAILED && k + 4096 <= TIER_BYTES; k += 16)
                if (dev[k] == 0xB5 && dev[k + 4095] == 0xB5 && dev[k + 2048] == 0xB5) {
                    at = (long)k;
                    break;
                }
            printf("TM-CHECK b_block_at=%ld\n", at);
        }
    }
    __atomic_store_n(&box[1], B_DONE, __ATOMIC_RELEASE);
    return check_done();
}

/* The shared pool across two hosts (TIERMALLOC_POOL on the BAR's first 8 MiB): A creates the
 * space "vm-a", writes the proof, publishes it and posts "A holds"; B (after wait_a) opens it
 * PRIVATE, reads the proof, changes its first page and republishes it as "vm-b", and posts
 * "B done"; A opens "vm-b" READ and finds B's change over its own proof. */
static int pool_a(const char *device)
{
    uint64_t *box = mailbox(device);
    size_t size = 1 << 20;
    unsigned char *p = tm_space_create("vm-a", size);
    if (!CHECK(box && p != NULL, "A: tm_space_create: errno %d", errno)) return check_done();
    for (size_t i = 0; i < size; i++) p[i] = proof_byte(i);
    CHECK(tm_space_publish(p) == 0, "A: tm_space_publish: errno %d", errno);
    __atomic_store_n(&box[0], A_HOLDS, __ATOMIC_RELEASE);
    printf("TM-CHECK a_published=%zu\n", size);
    int saw_b = wait_for(&box[1], B_DONE, MAILBOX_WAIT_S);
    printf("TM-CHECK a_saw_b=%d\n", saw_b);
    if (!CHECK(saw_b, "A: B never reported")) return check_done();
    size_t got = 0;
    const unsigned char *q = tm_space_open("vm-b", TM_MAP_READ, &got);
    if (!CHECK(q != NULL && got == size, "A: tm_space_open(vm-b): errno %d, size %zu", errno, got))
        return check_done();
    size_t same = 0;
    for (size_t i = 0; i < size; i++)
        same += q[i] == (unsigned char)(i < 4096 ? ~proof_byte(i) : proof_byte(i));
    printf("TM-CHECK a_reads_b_republished=%zu\n", same);
    CHECK(same == size, "A: %zu of %zu bytes of vm-b as B left them", same, size);
    size_t mine = 0;
    for (size_t i = 0; i < size; i++) mine += p[i] == proof_byte(i);
    printf("TM-CHECK a_space_unchanged=%zu\n", mine);
    return check_done();
}

static int pool_b(const char *device)
{
    uint64_t *box = mailbox(device);
    size_t size = 0;
    unsigned char *p = tm_space_open("vm-a", TM_MAP_PRIVATE, &size);
    if (!CHECK(box && p != NULL, "B: tm_space_open(vm-a): errno %d", errno)) return check_done();
    size_t same = 0;
    for (size_t i = 0; i < size; i++) same += p[i] == proof_byte(i);
    printf("TM-CHECK b_read_a_space=%zu of=%zu\n", same, size);
    CHECK(same == size && size == 1 << 20, "B: %zu of %zu bytes of A's proof", same, size);
    for (size_t i = 0; i < 4096 && i < size; i++) p[i] = (unsigned char)~p[i];
    void *q = tm_space_republish(p, "vm-b");
    CHECK(q != NULL, "B: tm_space_republish: errno %d", errno);
    printf("TM-CHECK b_republished=%d\n", q != NULL);
    __atomic_store_n(&box[1], B_DONE, __ATOMIC_RELEASE);
    return check_done();
}

int main(int argc, char **argv)
{
    /* The guest's clock is the host's: on a loaded host a starved VM sees minutes pass while
     * tm_vm has had seconds of CPU (the numa step of cxl_restart took 102 s of guest time at
     * load average 27). A livelock is caught by the host first (tests/vm.rs: QEMU's CPU time);
     * this catches a deadlock, which leaves the VM idle, before the host's wall-clock limit
     * (900 s), with a line naming tm_vm. */
    watchdog(600, "tm_vm");
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 5 && !strcmp(argv[1], "contract"))
        return contract(kind_named(argv[2]), argv[3], strtoull(argv[4], NULL, 0));
    if (argc == 5 && !strcmp(argv[1], "find"))
        return find_proof(argv[2], strtoull(argv[3], NULL, 0), argv[4]);
    if (argc == 4 && !strcmp(argv[1], "numa"))
        return numa(atoi(argv[2]), strtoull(argv[3], NULL, 0));
    if (argc == 4 && !strcmp(argv[1], "root_write"))
        return root_write(kind_named(argv[2]), strtoull(argv[3], NULL, 0));
    if (argc == 4 && !strcmp(argv[1], "root_verify"))
        return root_verify(kind_named(argv[2]), strtoull(argv[3], NULL, 0));
    if (argc == 4 && !strcmp(argv[1], "headers")) return count_headers(argv[2], argv[3]);
    if (argc == 4 && !strcmp(argv[1], "numa_evacuate"))
        return numa_evacuate(atoi(argv[2]), atoi(argv[3]));
    if (argc == 3 && !strcmp(argv[1], "skipped")) return skipped(kind_named(argv[2]));
    if (argc == 6 && !strcmp(argv[1], "touches"))
        return touches(argv[2], argv[3], argv[4], argv[5]);
    if (argc == 3 && !strcmp(argv[1], "host_a")) return host_a(argv[2]);
    if (argc == 3 && !strcmp(argv[1], "pool_a")) return pool_a(argv[2]);
    if (argc == 3 && !strcmp(argv[1], "pool_b")) return pool_b(argv[2]);
    if (argc == 3 && !strcmp(argv[1], "wait_a")) return wait_a(argv[2]);
    if (argc == 3 && !strcmp(argv[1], "host_b")) return host_b(argv[2]);
    if (argc == 3 && !strcmp(argv[1], "wait_beat")) return wait_beat(argv[2]);
    fprintf(stderr, "usage: tm_vm contract|root_write|root_verify|find|headers|numa|skipped|"
                    "touches|host_a|wait_a|wait_beat|host_b|pool_a|pool_b ...\n");
    return 2;
}
