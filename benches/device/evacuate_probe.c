/* evacuate_probe.c — which kernel mechanisms for a live move work on which backing, here.
 *
 * usage: evacuate_probe SHMEM_DIR DISK_DIR     (e.g. /dev/shm /var/tmp)
 *
 * For each backing (a shmem file, a regular file on a disk file system, anonymous memory) it
 * maps 64 pages MAP_SHARED (anonymous: MAP_PRIVATE) and tries:
 * - uffd-wp sync: UFFDIO_REGISTER_MODE_WP + UFFDIO_WRITEPROTECT (holds every writer; what
 *   tm_evacuate uses), and whether a read(2) into a protected page waits instead of failing;
 * - uffd-wp async + PAGEMAP_SCAN (PM_SCAN_WP_MATCHING): dirty tracking for pre-copy rounds:
 *   write 3 pages, the scan must report exactly those 3, then 0;
 * - whether that dirty tracking can hand a chunk over to a synchronous hold for a last pass:
 *   (i) a write-protecting scan of a synchronously registered range, (ii) a synchronous
 *   userfaultfd registered over the async one, (iii) the written-page marks after the async
 *   one unregisters and a synchronous one takes the range (3 pages written);
 * - soft-dirty: clear_refs 4, write 3 pages, count pagemap bit 55 (the older dirty tracking);
 * - UFFDIO_MOVE of one page into a registered range (Linux 6.8);
 * - move_pages to node 0 (what a numa= tier would use; one node here).
 * Prints one line per backing and mechanism: "yes", or "no (errno text)".
 */
#define _GNU_SOURCE 1
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define PAGES 64
#define PG 4096

#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE (1 << 16)
#endif
#ifndef UFFDIO_MOVE
struct uffdio_move { uint64_t dst, src, len, mode; int64_t move; };
#define UFFDIO_MOVE _IOWR(UFFDIO, 0x05, struct uffdio_move)
#endif

struct pm_scan_arg_ {
    uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages, category_inverted,
        category_mask, category_anyof_mask, return_mask;
};
struct page_region_ { uint64_t start, end, categories; };
#define PAGEMAP_SCAN_ _IOWR('f', 16, struct pm_scan_arg_)
#define PM_SCAN_WP_MATCHING (1 << 0)
#define PM_SCAN_CHECK_WPASYNC (1 << 1)
#define PAGE_IS_WRITTEN (1 << 1)

static int uffd_open(uint64_t features)
{
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return -1;
    struct uffdio_api api = {.api = UFFD_API, .features = features};
    if (ioctl(fd, UFFDIO_API, &api) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

static int uffd_register(int fd, void *p, size_t len, uint64_t mode)
{
    struct uffdio_register r = {.range = {(uintptr_t)p, len}, .mode = mode};
    return ioctl(fd, UFFDIO_REGISTER, &r);
}

static void say(const char *backing, const char *what, int ok, int err)
{
    if (ok)
        printf("%-10s %-34s yes\n", backing, what);
    else
        printf("%-10s %-34s no (%s)\n", backing, what, strerror(err));
}

static char *map(const char *kind, const char *dir, int *fd_out)
{
    *fd_out = -1;
    if (strcmp(kind, "anonymous") == 0)
        return mmap(NULL, PAGES * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char path[256];
    snprintf(path, sizeof path, "%s/evacuate-probe-%d", dir, (int)getpid());
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    unlink(path);
    if (fd < 0 || ftruncate(fd, PAGES * PG) != 0) return MAP_FAILED;
    *fd_out = fd;
    return mmap(NULL, PAGES * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
}

struct reader_arg { int pipe_fd; char *dst; ssize_t got; int err; };
static void *reader(void *a)
{
    struct reader_arg *r = a;
    r->got = read(r->pipe_fd, r->dst, 100);
    r->err = errno;
    return NULL;
}

static void probe(const char *kind, const char *dir)
{
    int fd;
    char *p = map(kind, dir, &fd);
    if (p == MAP_FAILED) {
        printf("%-10s cannot map: %s\n", kind, strerror(errno));
        return;
    }
    memset(p, 1, PAGES * PG);

    /* 1. synchronous write-protection, and a read(2) into a protected page. */
    int u = uffd_open(UFFD_FEATURE_WP_HUGETLBFS_SHMEM | UFFD_FEATURE_WP_UNPOPULATED);
    int ok = u >= 0 && uffd_register(u, p, PAGES * PG, UFFDIO_REGISTER_MODE_WP) == 0;
    struct uffdio_writeprotect wp = {.range = {(uintptr_t)p, PAGES * PG},
                                     .mode = UFFDIO_WRITEPROTECT_MODE_WP};
    ok = ok && ioctl(u, UFFDIO_WRITEPROTECT, &wp) == 0;
    say(kind, "uffd-wp sync (holds all writers)", ok, errno);
    if (ok) {
        int pfd[2];
        pipe(pfd);
        write(pfd[1], "hello", 5);
        struct reader_arg r = {.pipe_fd = pfd[0], .dst = p + 5 * PG, .got = -2};
        pthread_t t;
        pthread_create(&t, NULL, reader, &r);
        usleep(50000);
        int waited = __atomic_load_n(&r.got, __ATOMIC_SEQ_CST) == -2;
        wp.mode = 0; /* un-protect: wakes the reader */
        ioctl(u, UFFDIO_WRITEPROTECT, &wp);
        pthread_join(t, NULL);
        printf("%-10s %-34s %s\n", kind, "  read(2) into a protected page",
               waited && r.got == 5 && memcmp(p + 5 * PG, "hello", 5) == 0
                   ? "waits, then completes"
                   : (r.got < 0 ? strerror(r.err) : "did not wait"));
        close(pfd[0]);
        close(pfd[1]);
    }
    if (u >= 0) close(u);

    /* 2. asynchronous write-protection + PAGEMAP_SCAN. */
    u = uffd_open(UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED |
                  UFFD_FEATURE_WP_HUGETLBFS_SHMEM);
    ok = u >= 0 && uffd_register(u, p, PAGES * PG, UFFDIO_REGISTER_MODE_WP) == 0;
    int pm = open("/proc/self/pagemap", O_RDONLY);
    struct page_region_ regions[PAGES];
    struct pm_scan_arg_ scan = {.size = sizeof scan,
                                .flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
                                .start = (uintptr_t)p,
                                .end = (uintptr_t)p + PAGES * PG,
                                .vec = (uintptr_t)regions,
                                .vec_len = PAGES,
                                .category_mask = PAGE_IS_WRITTEN,
                                .return_mask = PAGE_IS_WRITTEN};
    long n0 = ok ? ioctl(pm, PAGEMAP_SCAN_, &scan) : -1; /* protects everything */
    int err = errno;
    p[3 * PG] = 2, p[7 * PG] = 2, p[9 * PG] = 2;
    long n1 = ok ? ioctl(pm, PAGEMAP_SCAN_, &scan) : -1;
    long pages1 = 0;
    for (long i = 0; i < n1; i++) pages1 += (long)((regions[i].end - regions[i].start) / PG);
    long n2 = ok ? ioctl(pm, PAGEMAP_SCAN_, &scan) : -1;
    say(kind, "uffd-wp async + PAGEMAP_SCAN", ok && n0 >= 0 && pages1 == 3 && n2 == 0,
        ok ? err : errno);
    close(pm);
    if (u >= 0) close(u);

    /* 2b. Can async dirty tracking hand a chunk over to a synchronous hold for its last pass?
     * (i) a PAGEMAP_SCAN that write-protects (WP_MATCHING) on a range registered synchronously;
     * (ii) a second, synchronous userfaultfd on a range the async one holds;
     * (iii) the async one's written-page marks after it lets go (unregister) and a synchronous
     * one takes the range: how many of the 64 pages look written, when 3 were. */
    {
        int us = uffd_open(UFFD_FEATURE_WP_HUGETLBFS_SHMEM | UFFD_FEATURE_WP_UNPOPULATED);
        int okr = us >= 0 && uffd_register(us, p, PAGES * PG, UFFDIO_REGISTER_MODE_WP) == 0;
        int pmf = open("/proc/self/pagemap", O_RDONLY);
        struct pm_scan_arg_ s1 = scan;
        s1.flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC;
        long r1 = okr ? ioctl(pmf, PAGEMAP_SCAN_, &s1) : -1;
        printf("%-10s %-34s %s\n", kind, "  (i) WP-scan of a sync range",
               !okr ? "not registered" : r1 >= 0 ? "works" : strerror(errno));
        if (us >= 0) close(us);
        int ua = uffd_open(UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED |
                           UFFD_FEATURE_WP_HUGETLBFS_SHMEM);
        okr = ua >= 0 && uffd_register(ua, p, PAGES * PG, UFFDIO_REGISTER_MODE_WP) == 0;
        long r0 = okr ? ioctl(pmf, PAGEMAP_SCAN_, &s1) : -1; /* protect all (async: allowed) */
        p[3 * PG] = 4, p[7 * PG] = 4, p[9 * PG] = 4;
        us = uffd_open(UFFD_FEATURE_WP_HUGETLBFS_SHMEM | UFFD_FEATURE_WP_UNPOPULATED);
        int second = us >= 0 && uffd_register(us, p, PAGES * PG, UFFDIO_REGISTER_MODE_WP) == 0;
        printf("%-10s %-34s %s\n", kind, "  (ii) sync uffd over the async one",
               !okr || r0 < 0 ? "async not set up" : second ? "registers" : strerror(errno));
        struct uffdio_range whole = {(uintptr_t)p, PAGES * PG};
        ioctl(ua, UFFDIO_UNREGISTER, &whole);
        second = us >= 0 && uffd_register(us, p, PAGES * PG, UFFDIO_REGISTER_MODE_WP) == 0;
        struct pm_scan_arg_ s2 = scan;
        s2.flags = 0;
        long r2 = second ? ioctl(pmf, PAGEMAP_SCAN_, &s2) : -1;
        long written = 0;
        for (long i = 0; i < r2; i++) written += (long)((regions[i].end - regions[i].start) / PG);
        printf("%-10s %-34s %s (%ld of 64 pages look written)\n", kind,
               "  (iii) marks after the handover", second && r2 >= 0 ? "scanned" : strerror(errno),
               written);
        if (us >= 0) close(us);
        if (ua >= 0) close(ua);
        close(pmf);
    }

    /* 3. soft-dirty. */
    int cr = open("/proc/self/clear_refs", O_WRONLY);
    ok = cr >= 0 && write(cr, "4", 1) == 1;
    err = errno;
    if (cr >= 0) close(cr);
    p[1 * PG] = 3, p[2 * PG] = 3, p[4 * PG] = 3;
    pm = open("/proc/self/pagemap", O_RDONLY);
    uint64_t entries[PAGES];
    int soft = 0;
    if (ok && pread(pm, entries, sizeof entries, (off_t)((uintptr_t)p / PG * 8)) == sizeof entries)
        for (int i = 0; i < PAGES; i++) soft += (int)((entries[i] >> 55) & 1);
    close(pm);
    printf("%-10s %-34s %s (%d of 64 pages marked after writing 3)\n", kind, "soft-dirty",
           ok && soft == 3 ? "yes" : "no", soft);

    /* 4. UFFDIO_MOVE of one page into a registered range. */
    u = uffd_open(UFFD_FEATURE_MOVE);
    char *dst = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ok = u >= 0 && uffd_register(u, dst, PG, UFFDIO_REGISTER_MODE_MISSING) == 0;
    struct uffdio_move mv = {.dst = (uintptr_t)dst, .src = (uintptr_t)p, .len = PG};
    ok = ok && ioctl(u, UFFDIO_MOVE, &mv) == 0;
    say(kind, "UFFDIO_MOVE (page to another range)", ok, errno);
    if (u >= 0) close(u);
    munmap(dst, PG);

    /* 5. move_pages to node 0. */
    void *pages[1] = {p + 8 * PG};
    int nodes[1] = {0}, status[1] = {-1};
    long rc = syscall(SYS_move_pages, 0, 1UL, pages, nodes, status, 2 /* MPOL_MF_MOVE */);
    say(kind, "move_pages (to node 0)", rc == 0 && status[0] == 0, rc ? errno : -status[0]);

    munmap(p, PAGES * PG);
    if (fd >= 0) close(fd);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: evacuate_probe SHMEM_DIR DISK_DIR\n");
        return 2;
    }
    probe("shmem", argv[1]);
    probe("disk-file", argv[2]);
    probe("anonymous", NULL);
    return 0;
}
