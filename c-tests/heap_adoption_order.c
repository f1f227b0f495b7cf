/* heap_adoption_order.c — a new thread adopts the pooled heap that waited longest.
 *
 * Threads A and B run at once, each keeping blocks alive from its own heap; A exits, then B,
 * so both heaps wait in the pool of exited threads' heaps, B's on top. A new thread C must
 * allocate from A's heap, the one that waited longest. In a program whose threads start their
 * successor before they exit (mimalloc-bench's larson), the heap pooled last still holds the
 * blocks its thread handed on, which the successor frees block by block: a thread adopting it
 * fills its free room with a second set (heaps of up to twice the live set), while the heap
 * that waited longest has had its blocks freed already.
 *
 * Which heap a block comes from is read from its 4 MiB segment (each heap cuts its pages from
 * segments of its own).
 */
#include "check.h"

#define SEGMENT(p) ((uintptr_t)(p) >> 22)
enum { KEEP = 8, SIZE = 48 };

static pthread_barrier_t both_allocated;
static pthread_mutex_t gate = PTHREAD_MUTEX_INITIALIZER;

struct job {
    void *kept[KEEP];
};

static void *a_body(void *arg)
{
    struct job *j = arg;
    for (int i = 0; i < KEEP; i++)
        j->kept[i] = malloc(SIZE);
    pthread_barrier_wait(&both_allocated);
    return NULL;
}

static void *b_body(void *arg)
{
    struct job *j = arg;
    for (int i = 0; i < KEEP; i++)
        j->kept[i] = malloc(SIZE);
    pthread_barrier_wait(&both_allocated);
    /* B exits only after A has (main holds the gate until A is joined). */
    pthread_mutex_lock(&gate);
    pthread_mutex_unlock(&gate);
    return NULL;
}

static void *c_body(void *arg)
{
    struct job *j = arg;
    j->kept[0] = malloc(SIZE);
    return NULL;
}

int main(void)
{
    struct job a = {{0}}, b = {{0}}, c = {{0}};
    pthread_t ta, tb, tc;
    pthread_barrier_init(&both_allocated, NULL, 3);
    pthread_mutex_lock(&gate);
    CHECK(pthread_create(&ta, NULL, a_body, &a) == 0, "create A");
    CHECK(pthread_create(&tb, NULL, b_body, &b) == 0, "create B");
    pthread_barrier_wait(&both_allocated);
    pthread_join(ta, NULL);
    pthread_mutex_unlock(&gate);
    pthread_join(tb, NULL);
    CHECK(a.kept[0] && b.kept[0], "A and B allocated");
    CHECK(SEGMENT(a.kept[0]) != SEGMENT(b.kept[0]),
          "A and B ran at once, so each had a heap of its own (%p, %p)", a.kept[0], b.kept[0]);

    CHECK(pthread_create(&tc, NULL, c_body, &c) == 0, "create C");
    pthread_join(tc, NULL);
    CHECK(c.kept[0] != NULL, "C allocated");
    CHECK(SEGMENT(c.kept[0]) == SEGMENT(a.kept[0]),
          "C allocates from the heap of A, which exited first (C %p, A %p, B %p)", c.kept[0],
          a.kept[0], b.kept[0]);

    for (int i = 0; i < KEEP; i++) {
        free(a.kept[i]);
        free(b.kept[i]);
    }
    free(c.kept[0]);
    return check_done();
}
