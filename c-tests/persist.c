/* mode: link-only */
/* persist.c — a PMR tier kept across processes (a file in /dev/shm standing for the device):
 * the contract of DESIGN.md "Persistent tiers", each step a process of its own:
 * - write: blocks on TM_PMR hold a linked list whose links are offsets (tm_offset_of), its
 *   head named by a root (tm_root_set), made durable (tm_persist);
 * - verify: a new process finds the list through tm_root_get, follows the offsets
 *   (tm_at_offset), checks every block's contents and header, and walks every live block
 *   (tm_next_block) in address order;
 * - kill: a process that writes and then dies by SIGKILL leaves the same, recoverable;
 * - storm: children allocating and freeing are killed with SIGKILL at random points, and each
 *   time a new process finds a consistent heap whose headers match tm_usable_size;
 * - drain: freeing every block found by the walk leaves in_use 0 and one free extent of the
 *   whole capacity;
 * - fresh: the key `fresh` formats the heap: no root, no block;
 * - foreign file: a file holding other data is refused with one line naming it and left
 *   byte for byte untouched; the key `format` overwrites it.
 */
#define _GNU_SOURCE 1
#include "tiermalloc.h"
#include "check.h"

static char path[128];
enum { NODES = 200 };

struct node {
    uint64_t next; /* offset of the next node, 0 at the end */
    uint64_t index;
    unsigned char fill[200];
};

static int run(const char *mode, const char *keys, char *err, size_t cap)
{
    int fds[2];
    if (pipe(fds) != 0) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        char tiers[256];
        snprintf(tiers, sizeof tiers, "dram;pmr:path=%s%s", path, keys);
        dup2(fds[1], 2);
        close(fds[0]);
        setenv("TIERMALLOC_TIERS", tiers, 1);
        execl("/proc/self/exe", "persist", mode, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    size_t n = 0;
    ssize_t r;
    while (err && n + 1 < cap && (r = read(fds[0], err + n, cap - 1 - n)) > 0) n += (size_t)r;
    if (err) err[n] = 0;
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    return status;
}

static int child_write(void)
{
    uint64_t head = 0;
    for (int i = NODES - 1; i >= 0; i--) {
        struct node *n = tm_malloc(TM_PMR, sizeof *n + (size_t)(i % 7) * 1000);
        if (!CHECK(n != NULL, "tm_malloc(TM_PMR): errno %d", errno)) return check_done();
        n->next = head;
        n->index = (uint64_t)i;
        memset(n->fill, (int)(i & 0xff), sizeof n->fill);
        head = tm_offset_of(n);
        CHECK(head != UINT64_MAX && tm_at_offset(TM_PMR, head) == n, "offset round trip");
        CHECK(tm_persist(n, sizeof *n) == 0, "tm_persist: errno %d", errno);
    }
    void *garbage = tm_malloc(TM_PMR, 5000); /* freed: must not come back */
    tm_free(garbage);
    CHECK(tm_root_set(TM_PMR, "list", tm_at_offset(TM_PMR, head)) == 0, "tm_root_set: errno %d",
          errno);
    CHECK(tm_persist(tm_at_offset(TM_PMR, head), 1) == 0, "tm_persist");
    return check_done();
}

static int child_verify(void)
{
    struct node *n = tm_root_get(TM_PMR, "list");
    if (!CHECK(n != NULL, "tm_root_get(list): errno %d", errno)) return check_done();
    int count = 0;
    for (; n; count++) {
        const tm_block_header *h = (const tm_block_header *)n - 1;
        CHECK(n->index == (uint64_t)count, "node %d says %llu", count,
              (unsigned long long)n->index);
        CHECK(h->size == tm_usable_size(n) && h->state == 1 && h->magic == 0x42484d54u,
              "node %d: header size %llu state %u, usable %zu", count,
              (unsigned long long)h->size, h->state, tm_usable_size(n));
        int same = 1;
        for (size_t i = 0; i < sizeof n->fill; i++)
            same &= n->fill[i] == (unsigned char)(count & 0xff);
        CHECK(same, "node %d lost its contents", count);
        n = n->next ? tm_at_offset(TM_PMR, n->next) : NULL;
        if (count > NODES) break;
    }
    CHECK(count == NODES, "%d nodes found, want %d", count, NODES);
    int walked = 0;
    const char *prev = NULL;
    for (char *b = tm_next_block(TM_PMR, NULL); b; b = tm_next_block(TM_PMR, b), walked++) {
        CHECK(prev == NULL || b > prev, "tm_next_block not in address order");
        prev = b;
    }
    CHECK(walked == NODES, "tm_next_block found %d blocks, want %d", walked, NODES);
    /* A prev that is not on the tier (here a stack address) is an error, not the walk's end. */
    errno = 0;
    CHECK(tm_next_block(TM_PMR, &walked) == NULL && errno == EINVAL,
          "tm_next_block after a pointer off the tier: errno %d", errno);
    errno = 0;
    CHECK(tm_root_get(TM_PMR, "nothing") == NULL && errno == ENOENT, "a missing root: errno %d",
          errno);
    return check_done();
}

/* Allocates, fills and frees until killed (or `rounds` rounds). */
static int child_storm(unsigned seed, int rounds)
{
    enum { LIVE = 300 };
    static char *live[LIVE];
    for (char *b = tm_next_block(TM_PMR, NULL); b; b = tm_next_block(TM_PMR, b)) {
        for (int i = 0; i < LIVE; i++)
            if (!live[i]) { live[i] = b; break; }
    }
    srand(seed);
    for (int r = 0; rounds == 0 || r < rounds; r++) {
        int i = rand() % LIVE;
        if (live[i]) {
            tm_free(live[i]);
            live[i] = NULL;
        } else {
            size_t size =
                rand() % 4 == 0 ? 4097 + (size_t)(rand() % 40000) : (size_t)(rand() % 3000);
            live[i] = tm_malloc(TM_PMR, size);
            if (live[i]) memset(live[i], 0x77, size);
        }
    }
    return 0;
}

/* Every live block's header matches tm_usable_size; frees them all if `drain`. */
static int child_check(int drain)
{
    enum { MAX = 4096 };
    static char *blocks[MAX];
    int n = 0;
    for (char *b = tm_next_block(TM_PMR, NULL); b && n < MAX; b = tm_next_block(TM_PMR, b)) {
        const tm_block_header *h = (const tm_block_header *)b - 1;
        CHECK(h->size == tm_usable_size(b) && h->state == 1,
              "block %p: header size %llu state %u, usable %zu", (void *)b,
              (unsigned long long)h->size, h->state, tm_usable_size(b));
        blocks[n++] = b;
    }
    if (drain) {
        for (int i = 0; i < n; i++) tm_free(blocks[i]);
        tm_stats s;
        CHECK(tm_get_stats(TM_PMR, &s) == 0, "tm_get_stats");
        CHECK(s.in_use == 0 && s.largest_free == s.capacity - 16,
              "after freeing everything: in_use %llu, largest_free %llu, capacity %llu",
              (unsigned long long)s.in_use, (unsigned long long)s.largest_free,
              (unsigned long long)s.capacity);
        CHECK(tm_next_block(TM_PMR, NULL) == NULL, "a block left after draining");
    }
    return check_done();
}

static int child_fresh(void)
{
    errno = 0;
    CHECK(tm_root_get(TM_PMR, "list") == NULL && errno == ENOENT, "a root survived fresh");
    CHECK(tm_next_block(TM_PMR, NULL) == NULL, "a block survived fresh");
    return check_done();
}

static void expect_ok(int st, const char *what, const char *err)
{
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s: status %#x, stderr: %s", what, st, err);
}

int main(int argc, char **argv)
{
    if (argc > 1) {
        const char *m = argv[1];
        if (!strcmp(m, "write")) return child_write();
        if (!strcmp(m, "verify")) return child_verify();
        if (!strcmp(m, "write-and-die")) {
            child_write();
            raise(SIGKILL);
        }
        if (!strcmp(m, "storm")) return child_storm((unsigned)getpid(), 0);
        if (!strcmp(m, "check")) return child_check(0);
        if (!strcmp(m, "drain")) return child_check(1);
        if (!strcmp(m, "fresh")) return child_fresh();
        if (!strcmp(m, "nothing")) return tm_malloc(TM_PMR, 10) == NULL ? 0 : 1;
        return 2;
    }
    watchdog(120, "persist");
    snprintf(path, sizeof path, "/dev/shm/tiermalloc-ct-persist-%d", (int)getpid());
    char err[4096];
    unlink(path);

    expect_ok(run("write", ",size=8M,create", err, sizeof err), "write", err);
    expect_ok(run("verify", "", err, sizeof err), "verify after a clean exit", err);

    expect_ok(run("drain", "", err, sizeof err), "drain", err);
    int st = run("write-and-die", "", err, sizeof err);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "write-and-die: status %#x", st);
    expect_ok(run("verify", "", err, sizeof err), "verify after SIGKILL", err);

    for (int round = 0; round < 20; round++) {
        pid_t pid = fork();
        if (pid == 0) {
            char tiers[256];
            snprintf(tiers, sizeof tiers, "dram;pmr:path=%s", path);
            setenv("TIERMALLOC_TIERS", tiers, 1);
            execl("/proc/self/exe", "persist", "storm", (char *)NULL);
            _exit(127);
        }
        usleep(20000 + (useconds_t)(rand() % 30000));
        kill(pid, SIGKILL);
        int status;
        waitpid(pid, &status, 0);
        CHECK(WIFSIGNALED(status), "storm %d ended by itself: %#x", round, status);
        expect_ok(run("check", "", err, sizeof err), "check after a killed storm", err);
    }
    expect_ok(run("drain", "", err, sizeof err), "drain after the storms", err);

    expect_ok(run("write", "", err, sizeof err), "write again", err);
    expect_ok(run("fresh", ",fresh", err, sizeof err), "fresh", err);

    /* A file of someone else's data. */
    unsigned char data[65536];
    for (size_t i = 0; i < sizeof data; i++) data[i] = (unsigned char)(i * 31 + 7);
    int fd = open(path, O_WRONLY | O_TRUNC);
    CHECK(fd >= 0 && write(fd, data, sizeof data) == (ssize_t)sizeof data,
          "writing the foreign file");
    close(fd);
    st = run("nothing", "", err, sizeof err);
    expect_ok(st, "a foreign file", err);
    CHECK(strstr(err, path) && strstr(err, "not a tiermalloc heap") &&
              strchr(err, '\n') == strrchr(err, '\n'),
          "want one line naming the file: %s", err);
    unsigned char back[sizeof data];
    fd = open(path, O_RDONLY);
    CHECK(fd >= 0 && read(fd, back, sizeof back) == (ssize_t)sizeof back &&
              !memcmp(back, data, sizeof data),
          "the foreign file was changed");
    close(fd);
    expect_ok(run("fresh", ",format", err, sizeof err), "format over the foreign file", err);
    unlink(path);
    return check_done();
}
