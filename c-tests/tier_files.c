/* mode: link-only */
/* tier_files.c — tier files are left behind only when asked:
 *  - a `%p` tier file (one per process) is unlinked as soon as it is mapped, so nothing is left
 *    however its process ends (`exit`, `_exit` as dash's `sh -c` ends, an `exec`); with `keep`
 *    it stays;
 *  - a tier file truncated under the running program: the SIGBUS at the next touch of a block
 *    kills it as before, after one line naming the tier and its file;
 *  - a file created for a tier that then fails (here: larger than the file system's free
 *    space) is removed at once, and the tier is refused in one line naming the path, the size
 *    and the free space; the program runs on DRAM.
 * Each case runs this program again (re-executed with TIERMALLOC_TIERS set, so the library's
 * constructor opens the tiers).
 */
#define _GNU_SOURCE 1 /* before any system header, including those tiermalloc.h pulls in */
#include "tiermalloc.h"

#include "check.h"

/* A child of a %p tier: its tier serves tm_malloc; its own file, base-PID, is there while
 * it runs only with `keep` (`want_file`). Ends with `_exit` when asked (no exit hook runs). */
static int child(const char *base, int want_file, int quick_exit)
{
    char own[160];
    snprintf(own, sizeof own, "%s-%d", base, (int)getpid());
    void *p = tm_malloc(TM_CXL, 1000);
    struct stat st;
    int exists = stat(own, &st) == 0;
    tm_free(p);
    int status = p != NULL && exists == want_file ? 0 : 1;
    if (quick_exit)
        _exit(status);
    return status;
}

/* A %p child that execs (as `sh -c 'cmd; exec prog'` and make's shells do): the old image
 * leaves a block on its pmr tier, and never exits. */
static int child_exec(const char *base)
{
    void *p = tm_malloc(TM_PMR, 5000);
    if (!p)
        return 2;
    execl("/proc/self/exe", "tier_files", "--child-after-exec", base, (char *)NULL);
    return 3;
}

/* The exec'd image, same pid: an empty heap. */
static int child_after_exec(const char *base)
{
    (void)base;
    tm_stats s;
    if (tm_get_stats(TM_PMR, &s) != 0)
        return 4;
    if (s.in_use != 0 || tm_next_block(TM_PMR, NULL) != NULL)
        return 5; /* the old image's block recovered */
    void *p = tm_malloc(TM_PMR, 1000);
    tm_free(p);
    return p ? 0 : 6;
}

static int child_refused(void)
{
    errno = 0;
    void *p = tm_malloc(TM_CXL, 1000);
    void *q = malloc(1000);
    free(q);
    return p == NULL && q != NULL ? 0 : 1;
}

static int child_truncate(const char *path)
{
    char *p = tm_malloc(TM_CXL, 100000);
    if (!p)
        return 2;
    if (truncate(path, 0) != 0)
        return 3;
    memset(p, 1, 100000); /* SIGBUS */
    return 4;
}

/* Runs this program with TIERMALLOC_TIERS=tiers and the given mode; stderr into err, the wait
 * status into *status. Returns the child's pid. */
static int run(const char *tiers, const char *mode, const char *arg, char *err, size_t size,
               int *status)
{
    int fds[2];
    if (pipe(fds) != 0)
        return -1;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 2);
        setenv("TIERMALLOC_TIERS", tiers, 1);
        execl("/proc/self/exe", "tier_files", mode, arg, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    size_t got = 0;
    ssize_t n;
    while (got < size - 1 && (n = read(fds[0], err + got, size - 1 - got)) > 0)
        got += (size_t)n;
    err[got] = 0;
    close(fds[0]);
    waitpid(pid, status, 0);
    return pid;
}

/* Runs this program as `mode` on a `%p` tier (`kind`, no `keep`) under `base`: it must exit
 * 0 with an empty stderr and leave no file, however it ended (`how`). */
static void leaves_no_file(const char *kind, const char *mode, const char *base, const char *how)
{
    char tiers[512], path[160], err[4096];
    int status = 0;
    snprintf(tiers, sizeof tiers, "dram;%s:path=%s-%%p,size=4M,create", kind, base);
    int pid = run(tiers, mode, base, err, sizeof err, &status);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s child: status %#x, stderr: %s",
          how, status, err);
    snprintf(path, sizeof path, "%s-%d", base, pid);
    struct stat st;
    CHECK(stat(path, &st) != 0, "%%p tier file %s left after its process %s", path, how);
    CHECK(strlen(err) == 0, "stderr of the %s child: %s", how, err);
    unlink(path);
}

int main(int argc, char **argv)
{
    if (argc > 2 && strcmp(argv[1], "--child") == 0)
        return child(argv[2], 0, 0);
    if (argc > 2 && strcmp(argv[1], "--child-keep") == 0)
        return child(argv[2], 1, 0);
    if (argc > 2 && strcmp(argv[1], "--child-quick-exit") == 0)
        return child(argv[2], 0, 1);
    if (argc > 2 && strcmp(argv[1], "--child-exec") == 0)
        return child_exec(argv[2]);
    if (argc > 2 && strcmp(argv[1], "--child-after-exec") == 0)
        return child_after_exec(argv[2]);
    if (argc > 1 && strcmp(argv[1], "--child-refused") == 0)
        return child_refused();
    if (argc > 2 && strcmp(argv[1], "--child-truncate") == 0)
        return child_truncate(argv[2]);
    watchdog(30, "tier_files");
    char base[128], tiers[512], path[160], err[4096];
    snprintf(base, sizeof base, "/dev/shm/tiermalloc-ct-files-%d", (int)getpid());

    /* %p: the child's own file exists while it runs, and none is left however it ends. */
    leaves_no_file("cxl", "--child", base, "exited");
    /* Ended with _exit, as dash's `sh -c` ends. */
    leaves_no_file("cxl", "--child-quick-exit", base, "ended with _exit");
    /* Across an exec: the exec'd image (same pid) starts afresh. */
    leaves_no_file("pmr", "--child-exec", base, "exec'd and exited");

    int status = 0, pid;
    struct stat st;

    /* keep: it stays. */
    snprintf(tiers, sizeof tiers, "dram;cxl:path=%s-%%p,size=4M,create,keep", base);
    pid = run(tiers, "--child-keep", base, err, sizeof err, &status);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "keep child: status %#x, stderr: %s",
          status, err);
    snprintf(path, sizeof path, "%s-%d", base, pid);
    CHECK(stat(path, &st) == 0, "%%p tier file %s with keep is gone", path);
    unlink(path);

    /* Truncated under the program: one line, then death by SIGBUS. */
    snprintf(path, sizeof path, "%s-truncated", base);
    snprintf(tiers, sizeof tiers, "dram;cxl:path=%s,size=4M,create", path);
    run(tiers, "--child-truncate", path, err, sizeof err, &status);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGBUS,
          "truncated tier: status %#x, stderr: %s", status, err);
    CHECK(strstr(err, "SIGBUS") && strstr(err, "'cxl'") && strstr(err, path) &&
              line_count(err) == 1,
          "want one line naming the tier and %s: %s", path, err);
    unlink(path);

    /* No room: refused in one line, the created file removed. */
    snprintf(path, sizeof path, "%s-huge", base);
    snprintf(tiers, sizeof tiers, "dram;cxl:path=%s,size=64T,create", path);
    run(tiers, "--child-refused", NULL, err, sizeof err, &status);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "refused-tier child: status %#x", status);
    CHECK(strstr(err, path) && strstr(err, "no room") && strstr(err, "bytes free") &&
              line_count(err) == 1,
          "want one line naming %s, the size and the free space: %s", path, err);
    CHECK(stat(path, &st) != 0, "the file %s created for the refused tier is left behind", path);
    unlink(path);

    return check_done();
}
