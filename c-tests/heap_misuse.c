/* heap_misuse.c — misuse of the heap is caught on every DRAM path, as glibc catches it: one
 * line on stderr naming the call, the pointer and the problem, then abort(). Each case runs in a
 * fork()ed child (check.h's EXPECT_ABORT):
 *  - double free of a small block of several classes, of a large block (cached mapping and
 *    unmapped one), of an aligned block, and a double free from another thread (the first free
 *    by the owner, the second remote: OpenBSD's malloc_threaderr), and of a block another thread
 *    freed and still holds gathered (freed twice by that thread, or again by the owner);
 *  - a free of a pointer inside a block (small, large, aligned), and of a block start never
 *    carved: at the free, at the default level and under TIERMALLOC_SECURE=1 (re-executed), by
 *    the owner and by another thread; a malloc right after such a free never hands out a block
 *    overlapping a live one;
 *  - a free of the stack, of static data, of the program's own mmap, of an unmapped far
 *    address (mimalloc-bench's invalid_free*);
 *  - realloc of a freed block and of an interior pointer;
 *  - free_sized with a size the block cannot have been allocated with; correct sizes pass.
 * A freed block's overwritten link: free_list_links.c (default level) and secure_mode.c.
 * Then, re-executed with TIERMALLOC_ON_ERROR=ignore: each misuse prints one line and the
 * program goes on with a consistent heap: no block is ever handed out twice (before the
 * checks, a double free made every later malloc(64) return the same pointer).
 */
#include "check.h"

static int static_thing = 7;

static void double_free_of(void *arg)
{
    size_t size = (size_t)arg;
    void *p = malloc(size);
    void *other = malloc(size); /* the block is not alone on its page's free list */
    free(p);
    free(other);
    free(p);
}

static void double_free_aligned(void *arg)
{
    (void)arg;
    void *p = NULL;
    if (posix_memalign(&p, 4096, 100) != 0)
        return;
    free(p);
    free(p);
}

static void interior_free_of(void *arg)
{
    size_t size = (size_t)arg;
    char *p = malloc(size);
    free(p + 8); /* + 16 would be the next block of the 16-byte class */
}

/* An interior (or never-carved) pointer freed, then a malloc of the same size: reported at the
 * free, or at the latest where the block would be handed out (a build measuring the cost of
 * the owner's at-free test, tiermalloc_no_block_start_check, still reports blocks over 1 KiB
 * there). Never handed out overlapping p. */
struct bad_free {
    size_t size, offset; /* offset 0: the first block start never carved */
};

static void bad_free_then_malloc(void *arg)
{
    struct bad_free *b = arg;
    char *p = malloc(b->size);
    free(p + (b->offset ? b->offset : 4096 * ((b->size + 4095) / 4096) * 8));
    char *q = malloc(b->size);
    printf("%p %p\n", (void *)p, (void *)q);
}

/* A block start of the same page that was never carved (mimalloc-bench's invalid_free_close). */
static void free_uncarved_block(void *arg)
{
    size_t size = (size_t)arg;
    char *p = malloc(size);
    free(p + 4096 * ((size + 4095) / 4096) * 8);
}

/* An address in the first slice of a small block's segment (its header), where no page of
 * blocks lies: the owner's free counts it against no page in use and reports it, without
 * reading it as a block. */
static void free_segment_header(void *arg)
{
    (void)arg;
    char *p = malloc(64);
    free((void *)(((uintptr_t)p & ~(uintptr_t)((4 << 20) - 1)) + 4096));
}

static void interior_free_aligned(void *arg)
{
    (void)arg;
    char *p = memalign(256, 1000);
    free(p + 64);
}

static void free_stack(void *arg)
{
    (void)arg;
    char buf[64];
    memset(buf, 1, sizeof buf);
    free(opaque_ptr(buf + 16));
}

static void free_static(void *arg)
{
    (void)arg;
    free(opaque_ptr(&static_thing));
}

static void free_own_mmap(void *arg)
{
    (void)arg;
    char *m = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    free(m + 4096);
}

static void free_far(void *arg)
{
    free(arg);
}

static void realloc_freed(void *arg)
{
    size_t size = (size_t)arg;
    void *p = malloc(size);
    free(p);
    p = realloc(p, size / 2 + 1);
}

static void realloc_interior(void *arg)
{
    size_t size = (size_t)arg;
    char *p = malloc(size);
    p = realloc(p + 8, size);
}

static void *remote_free(void *p)
{
    free(p);
    return NULL;
}

/* A pointer inside a block (or a block start never carved), freed by a thread that does not
 * own the block: its free takes the remote path, whose block-start test is the one its
 * `free` ran before it learnt the block is another thread's (Page::suspect for a one-slice
 * page, free_suspect's exact test for a longer one). */
static void interior_free_from_another_thread(void *arg)
{
    struct bad_free *b = arg;
    char *p = malloc(b->size);
    pthread_t t;
    void *bad = p + (b->offset ? b->offset : 4096 * ((b->size + 4095) / 4096) * 8);
    if (pthread_create(&t, NULL, remote_free, bad) == 0)
        pthread_join(t, NULL);
}

static void double_free_from_another_thread(void *arg)
{
    size_t size = (size_t)arg;
    void *p = malloc(size);
    free(p);
    pthread_t t;
    if (pthread_create(&t, NULL, remote_free, p) == 0)
        pthread_join(t, NULL);
}

static void double_free_after_remote_free(void *arg)
{
    size_t size = (size_t)arg;
    void *p = malloc(size);
    pthread_t t;
    if (pthread_create(&t, NULL, remote_free, p) == 0)
        pthread_join(t, NULL);
    free(p);
}

/* Blocks another thread frees wait gathered in that thread's heap before they go to their
 * page (dram/fast/remote_batch.rs): a second free must be caught while they wait. */
static void *remote_free_twice(void *p)
{
    free(malloc(16)); /* a thread with a heap of its own gathers its remote frees */
    free(p);
    free(p);
    return NULL;
}

static void double_free_twice_remote(void *arg)
{
    size_t size = (size_t)arg;
    void *p = malloc(size);
    pthread_t t;
    if (pthread_create(&t, NULL, remote_free_twice, p) == 0)
        pthread_join(t, NULL);
}

static pthread_mutex_t gathered_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gathered_cond = PTHREAD_COND_INITIALIZER;
static int gathered_state;

static void *remote_free_and_stay(void *p)
{
    free(malloc(16));
    free(p);
    pthread_mutex_lock(&gathered_lock);
    gathered_state = 1;
    pthread_cond_broadcast(&gathered_cond);
    while (gathered_state != 2)
        pthread_cond_wait(&gathered_cond, &gathered_lock);
    pthread_mutex_unlock(&gathered_lock);
    return NULL;
}

/* The owner frees a block that a live thread freed first and still holds gathered. */
static void double_free_while_gathered(void *arg)
{
    size_t size = (size_t)arg;
    void *p = malloc(size);
    pthread_t t;
    if (pthread_create(&t, NULL, remote_free_and_stay, p) != 0)
        return;
    pthread_mutex_lock(&gathered_lock);
    while (gathered_state != 1)
        pthread_cond_wait(&gathered_cond, &gathered_lock);
    pthread_mutex_unlock(&gathered_lock);
    free(p);
    pthread_mutex_lock(&gathered_lock);
    gathered_state = 2;
    pthread_cond_broadcast(&gathered_cond);
    pthread_mutex_unlock(&gathered_lock);
    pthread_join(t, NULL);
}

typedef void (*free_sized_fn)(void *, size_t);

static void free_sized_wrong(void *arg)
{
    size_t size = (size_t)arg;
    free_sized_fn fs = (free_sized_fn)dlsym(RTLD_DEFAULT, "free_sized");
    void *p = malloc(100);
    fs(p, size);
}

static void ignored_misuse_keeps_the_heap_consistent(void)
{
    char err_probe[8];
    (void)err_probe;
    /* Double free, interior free, foreign free: each one line, then on. */
    void *p = malloc(64);
    free(p);
    free(p);
    char *q = malloc(8 << 20); /* a large block: its interior free is caught at the free */
    free(q + 16);
    int on_stack = 0;
    free(opaque_ptr(&on_stack));
    free(q);
    /* No aliasing afterwards: 100 live blocks of 64 bytes are distinct. */
    void *blocks[100];
    for (int i = 0; i < 100; i++) {
        blocks[i] = malloc(64);
        memset(blocks[i], i, 64);
    }
    int aliased = 0;
    for (int i = 0; i < 100; i++)
        for (int j = i + 1; j < 100; j++)
            aliased += blocks[i] == blocks[j];
    CHECK(aliased == 0, "%d aliased pairs among 100 malloc(64) after an ignored double free",
          aliased);
    for (int i = 0; i < 100; i++)
        free(blocks[i]);
    void *big = malloc(1 << 20);
    free(big);
    free(big);
    void *a = malloc(1 << 20), *b = malloc(1 << 20);
    CHECK(a != b, "two live 1 MiB blocks are the same after an ignored double free");
    free(a);
    free(b);
}

/* TIERMALLOC_SECURE=1 tests every free exactly (its frees take the remote path): interior and
 * never-carved pointers of every size are reported at the free itself. */
static int secure_block_starts(void)
{
    static const size_t sizes[] = {16, 64, 200, 1000, 4000, 70000, 300000};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        EXPECT_ABORT(interior_free_of, (void *)sizes[i], "not the start of a live block", NULL);
    /* (Of 4096-byte blocks, this level carves 256 at once: the address is a free block.) */
    EXPECT_ABORT(free_uncarved_block, (void *)16, "not the start of a live block", NULL);
    EXPECT_ABORT(interior_free_aligned, NULL, "not the start of a live block", NULL);
    return check_done();
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--ignore") == 0) {
        ignored_misuse_keeps_the_heap_consistent();
        return check_done();
    }
    if (argc > 1 && strcmp(argv[1], "--secure") == 0)
        return secure_block_starts();
    watchdog(60, "heap_misuse");
    CHECK(rerun_self_with("TIERMALLOC_SECURE", "1", "--secure") == 0,
          "interior frees under TIERMALLOC_SECURE=1 (see above)");
    static const size_t sizes[] = {16, 64, 200, 4000, 70000, 300000, 600000, 8 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        void *s = (void *)sizes[i];
        EXPECT_ABORT(double_free_of, s, "double free", NULL);
        EXPECT_ABORT(interior_free_of, s, "not the start of a live block", NULL);
        struct bad_free interior = {sizes[i], 8};
        EXPECT_ABORT(bad_free_then_malloc, &interior, "not the start of a live block", NULL);
        EXPECT_ABORT(realloc_freed, s, "freed already", NULL);
        EXPECT_ABORT(realloc_interior, s, "not the start of a live block", NULL);
        EXPECT_ABORT(interior_free_from_another_thread, &interior, "not the start of a live block",
                     NULL);
        EXPECT_ABORT(double_free_from_another_thread, s, "double free", NULL);
        EXPECT_ABORT(double_free_after_remote_free, s, "double free", NULL);
        EXPECT_ABORT(double_free_twice_remote, s, "double free", NULL);
        EXPECT_ABORT(double_free_while_gathered, s, "double free", NULL);
    }
    EXPECT_ABORT(free_uncarved_block, (void *)16, "not the start of a live block", NULL);
    EXPECT_ABORT(free_uncarved_block, (void *)4096, "not the start of a live block", NULL);
    EXPECT_ABORT(interior_free_aligned, NULL, "not the start of a live block", NULL);
    struct bad_free uncarved = {4096, 0};
    EXPECT_ABORT(bad_free_then_malloc, &uncarved, "not the start of a live block", NULL);
    EXPECT_ABORT(interior_free_from_another_thread, &uncarved, "not the start of a live block",
                 NULL);
    struct bad_free uncarved_small = {16, 0};
    EXPECT_ABORT(interior_free_from_another_thread, &uncarved_small,
                 "not the start of a live block", NULL);
    EXPECT_ABORT(free_segment_header, NULL, "not the start of a live block", NULL);
    EXPECT_ABORT(double_free_aligned, NULL, "double free", NULL);
    EXPECT_ABORT(free_stack, NULL, "not allocated by tiermalloc", NULL);
    EXPECT_ABORT(free_static, NULL, "not allocated by tiermalloc", &static_thing);
    EXPECT_ABORT(free_own_mmap, NULL, "not allocated by tiermalloc", NULL);
    void *far[] = {(void *)0x12345670, (void *)0x7ffffff0000, (void *)(uintptr_t)0x5555deadbee0ULL};
    for (size_t i = 0; i < sizeof far / sizeof far[0]; i++)
        EXPECT_ABORT(free_far, far[i], "not allocated by tiermalloc", far[i]);

    free_sized_fn fs = (free_sized_fn)dlsym(RTLD_DEFAULT, "free_sized");
    if (CHECK(fs != NULL, "free_sized is not exported")) {
        EXPECT_ABORT(free_sized_wrong, (void *)5000, "size mismatch", NULL);
        EXPECT_ABORT(free_sized_wrong, (void *)20, "size mismatch", NULL);
        /* Right sizes pass, realloc-kept blocks included. */
        static const size_t ok[] = {0, 1, 16, 17, 100, 128, 129, 4000, 70000, 1 << 20};
        for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
            void *p = malloc(ok[i]);
            fs(p, ok[i]);
            char *r = malloc(1000);
            char *s = realloc(r, 600); /* kept in place: its block holds 1024 */
            fs(s, 600);
        }
    }

    /* With TIERMALLOC_ON_ERROR=ignore each misuse is one line and the program runs on. */
    if (!getenv("HEAP_MISUSE_CHILD")) {
        int fds[2];
        if (CHECK(pipe(fds) == 0, "pipe")) {
            fflush(stdout);
            pid_t pid = fork();
            if (pid == 0) {
                dup2(fds[1], 2);
                dup2(fds[1], 1);
                setenv("TIERMALLOC_ON_ERROR", "ignore", 1);
                setenv("HEAP_MISUSE_CHILD", "1", 1);
                execl("/proc/self/exe", argv[0], "--ignore", (char *)NULL);
                _exit(127);
            }
            close(fds[1]);
            char out[8192];
            size_t got = 0;
            ssize_t n;
            while ((n = read(fds[0], out + got, sizeof out - 1 - got)) > 0)
                got += (size_t)n;
            out[got] = 0;
            int st = 0;
            waitpid(pid, &st, 0);
            CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "ignore child: status %#x, output: %s", st,
                  out);
            int ignored = 0;
            for (const char *s = out; (s = strstr(s, "; ignored")) != NULL; s++)
                ignored++;
            CHECK(ignored == 4, "want 4 'ignored' lines, got %d: %s", ignored, out);
        }
    }
    return check_done();
}
