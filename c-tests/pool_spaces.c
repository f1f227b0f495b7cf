/* mode: link-only */
/* pool_spaces.c — the shared pool's C interface (DESIGN.md "The shared pool"), as README shows
 * it: one process publishes a data set, three others open it read-only and one privately (and
 * republishes its modified copy). The pool is a file in /dev/shm named after this process.
 *
 * - tm_space_create/publish: a private read-write space, filled, then shared read-only;
 * - tm_space_open(TM_MAP_READ) in three children: the same bytes, no copy; a write faults;
 * - tm_space_open(TM_MAP_PRIVATE) in a fourth: its writes stay its own; tm_space_republish
 *   makes them a new space;
 * - tm_space_stat: refs count the live mappings, and the children's go when they exit;
 * - tm_space_collect deletes what nobody maps; tm_space_list counts spaces.
 */
#define _GNU_SOURCE 1
#include "tiermalloc.h"
#include "check.h"

#include <sys/wait.h>

#define SIZE (1u << 20)

static int reader(int private_copy) {
    size_t size = 0;
    unsigned char *data =
        tm_space_open("dataset", private_copy ? TM_MAP_PRIVATE : TM_MAP_READ, &size);
    if (!data || size != SIZE) return 10;
    for (size_t i = 0; i < SIZE; i += 4096)
        if (data[i] != (unsigned char)(i / 4096)) return 11;
    if (private_copy) {
        data[0] = 0xee;                                   /* copied into this process only */
        unsigned char *v2 = tm_space_republish(data, "dataset-v2");
        if (!v2 || v2[0] != 0xee || v2[4096] != 1) return 12;
    } else if (fork() == 0) {
        data[0] = 1;                                      /* must fault: READ is read-only */
        _exit(13);
    } else {
        int st;
        wait(&st);
        if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGSEGV) return 14;
    }
    return 0;   /* exiting without tm_space_close: the pool gives the reference back */
}

int main(void) {
    watchdog(60, "pool_spaces");
    char spec[128];
    char path[64];
    snprintf(path, sizeof path, "/dev/shm/tm-pool-c-%d", (int)getpid());
    snprintf(spec, sizeof spec, "path=%s,size=16M,create", path);
    setenv("TIERMALLOC_POOL", spec, 1);

    unsigned char *data = tm_space_create("dataset", SIZE);
    CHECK(data != NULL, "tm_space_create: %s", strerror(errno));
    if (!data) return check_done();
    for (size_t i = 0; i < SIZE; i++) data[i] = (unsigned char)(i / 4096);
    CHECK(tm_space_publish(data) == 0, "publish: %s", strerror(errno));

    pid_t kids[4];
    for (int k = 0; k < 4; k++)
        if ((kids[k] = fork()) == 0) _exit(reader(k == 3));
    for (int k = 0; k < 4; k++) {
        int st;
        waitpid(kids[k], &st, 0);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child %d: status %#x", k, st);
    }

    tm_space_info info;
    CHECK(tm_space_stat("dataset", &info) == 0, "stat: %s", strerror(errno));
    CHECK(info.refs == 1 && info.state == TM_SPACE_SHARED && info.size == SIZE,
          "refs %u state %u size %llu", info.refs, info.state, (unsigned long long)info.size);
    CHECK(data[0] == 0, "the private write stayed private");
    size_t size;
    unsigned char *v2 = tm_space_open("dataset-v2", TM_MAP_READ, &size);
    CHECK(v2 && v2[0] == 0xee && v2[SIZE - 1] == data[SIZE - 1], "republished copy");
    CHECK(tm_space_list(NULL, 0) == 2, "two spaces");
    CHECK(tm_space_close(v2) == 0 && tm_space_close(data) == 0, "close");
    CHECK(tm_space_collect(0) == 2, "both deleted once nobody maps them");
    CHECK(tm_space_stat("dataset", &info) == -1 && errno == ENOENT, "gone");
    unlink(path);
    return check_done();
}
