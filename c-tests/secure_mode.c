/* secure_mode.c — TIERMALLOC_SECURE=1 carves a page's blocks in a random order: consecutive
 * mallocs of one size are rarely neighbours (without it, a fresh page hands them out front to
 * back, which this test also checks, so that it can tell the two apart). Re-executes itself
 * with and without the variable, since the configuration is read at start.
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

static int run_with(const char *secure)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        if (secure)
            setenv("TIERMALLOC_SECURE", secure, 1);
        else
            unsetenv("TIERMALLOC_SECURE");
        execl("/proc/self/exe", "secure_mode", "--count", (char *)NULL);
        _exit(255);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int main(int argc, char **argv)
{
    (void)argv;
    if (argc > 1)
        return neighbours();
    int plain = run_with(NULL), secure = run_with("1");
    CHECK(plain >= 150, "without TIERMALLOC_SECURE only %d of 199 were neighbours", plain);
    CHECK(secure >= 0 && secure <= 20, "with TIERMALLOC_SECURE=1 %d of 199 were neighbours", secure);
    return check_done();
}
