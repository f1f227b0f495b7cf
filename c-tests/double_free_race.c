/* double_free_race.c — an incorrect program's double free from another thread, racing the
 * release of the segment that held the block, is reported (TIERMALLOC_ON_ERROR=ignore: one
 * line, then on), never a fault.
 *
 * Each round the owner thread allocates blocks spread over several segments and frees them
 * all; then, while the owner calls malloc_trim(0), which releases the emptied segments, a
 * second thread frees every block of the round again. Its frees meet retired pages and
 * segments being released: they read the page map, then the segment's descriptors, after the
 * release. A released segment's chunk stays mapped with its descriptors on the empty page
 * (src/dram/fast/segment.rs); the unit test
 * `a_released_segment_stays_readable_and_holds_no_block` shows the same reads fault on an
 * unmapped chunk. The owner waits for the second thread before the next round, so that no
 * stale pointer meets a block handed out again (that is a use after free of the program's,
 * which no allocator can tell from a correct free).
 *
 * The racing part runs in a child re-executed with TIERMALLOC_ON_ERROR=ignore (it prints one
 * line per double free); the parent wants it to exit 0, having reported double frees or
 * invalid pointers (blocks of retired pages and released segments) and nothing else.
 */
#include "check.h"
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>

#define BLOCKS 400
#define ROUNDS 300

static void *blocks[BLOCKS];
static sem_t go, done;
static atomic_int stop;

static void *second_freer(void *arg) {
    (void)arg;
    free(malloc(16)); /* a heap of its own: its frees of the owner's blocks are remote */
    for (;;) {
        sem_wait(&go);
        if (atomic_load(&stop)) return NULL;
        for (int i = 0; i < BLOCKS; i++) free(blocks[i]); /* freed already by the owner */
        sem_post(&done);
    }
}

static int child(void) {
    sem_init(&go, 0, 0);
    sem_init(&done, 0, 0);
    pthread_t t;
    if (pthread_create(&t, NULL, second_freer, NULL) != 0) return 2;
    for (int r = 0; r < ROUNDS; r++) {
        for (int i = 0; i < BLOCKS; i++)
            blocks[i] = malloc(i % 2 ? 100000 : 2000 + (size_t)(i % 7) * 1000);
        for (int i = 0; i < BLOCKS; i++) free(blocks[i]);
        sem_post(&go);
        malloc_trim(0); /* releases the emptied segments while the second thread frees */
        sem_wait(&done);
    }
    atomic_store(&stop, 1);
    sem_post(&go);
    pthread_join(t, NULL);
    return 0;
}

struct line_counts {
    long double_frees, invalid, other;
};

/* Sorts one of the child's lines: a double free, a pointer into a page or segment no longer in
 * use, or any other. */
static void count_line(const char *line, void *ctx) {
    struct line_counts *c = ctx;
    if (strstr(line, "double free; ignored")) c->double_frees++;
    else if (strstr(line, "invalid pointer (not the start of a live block); ignored")) c->invalid++;
    else if (c->other++ < 3) fprintf(stderr, "unexpected line: %s\n", line);
}

int main(int argc, char **argv) {
    (void)argc;
    if (getenv("DOUBLE_FREE_RACE_CHILD")) return child();
    watchdog(120, "double_free_race");
    int fd = -1;
    pid_t pid = rerun_ignoring(argv[0], "DOUBLE_FREE_RACE_CHILD", "1", NULL, NULL, &fd);
    CHECK(pid > 0, "pipe or fork");
    /* Count the child's lines as they come (there are many): those of a double free, those of
     * a pointer into a page or segment no longer in use, and any other. */
    struct line_counts counts = {0, 0, 0};
    for_each_line(fd, count_line, &counts);
    long double_frees = counts.double_frees, invalid = counts.invalid, other = counts.other;
    int st = 0;
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the racing child: %s %d",
          WIFSIGNALED(st) ? "killed by signal" : "exit status",
          WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
    CHECK(double_frees + invalid == ROUNDS * BLOCKS,
          "%ld double frees and %ld invalid pointers reported", double_frees, invalid);
    CHECK(other == 0, "%ld other lines", other);
    printf("double frees reported %ld, invalid pointers %ld\n", double_frees, invalid);
    return check_done();
}
