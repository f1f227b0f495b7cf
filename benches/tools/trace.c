/* trace.c — an LD_PRELOAD shim that records a real program's allocation calls to a file, so
 * that benches/device/replay.c can replay them on a device tier (fragmentation of best and
 * worst fit on a real allocation pattern, not a synthetic one).
 *
 * build: cc -O2 -shared -fPIC -o libtmtrace.so benches/tools/trace.c -lpthread
 * usage: TM_TRACE=/tmp/dir/name LD_PRELOAD=$PWD/libtmtrace.so program args...
 *
 * Each traced process writes its own file, TM_TRACE.<pid> (TM_TRACE.<pid>.<n> if that exists
 * already, e.g. after an exec that kept the pid). A forked child stops tracing: the heap it
 * inherited is not its own history; if it execs, the new program traces afresh. Unset
 * TM_TRACE: calls are forwarded and nothing is written.
 *
 * Every call is forwarded to glibc's own entry points (__libc_malloc, __libc_free, ...), so
 * the shim never calls back into itself, and the program's behaviour and output are glibc's.
 * The trace file sits on a high, close-on-exec descriptor so it shifts none of the program's
 * descriptor numbers. Pointers become ids: the n-th allocation gets id n, and a free or
 * realloc names the id of the allocation that returned the pointer, so a replay does not
 * depend on addresses. One mutex serialises the pointer -> id map and the output buffer.
 *
 * Trace format: the 8 bytes "TMTRACE1", then records of one op byte followed by unsigned
 * LEB128 varints. `next` is the id the next allocation will get (starting at 1); a freed or
 * reallocated id is written as `next - id` (small for short-lived blocks).
 *   'm' size              malloc                         -> new id
 *   'c' size              calloc (count * size)          -> new id
 *   'a' log2(align) size  memalign, posix_memalign, aligned_alloc, valloc, pvalloc -> new id
 *   'f' delta             free of id next - delta
 *   'r' delta size        realloc of id next - delta to size: that id ends -> new id
 * realloc(NULL, n) is recorded as 'm', realloc(p, 0) (glibc frees p) as 'f'; a failed call
 * records nothing; a free of a pointer the shim never saw (allocated before it was loaded,
 * or by a path it does not wrap) records nothing.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void __libc_free(void *);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void *__libc_valloc(size_t);
extern void *__libc_pvalloc(size_t);

#define EXPORT __attribute__((visibility("default")))

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
/* 0 before the first call, 1 tracing, -1 not tracing (no TM_TRACE, open failed, forked child). */
static int state;
static int fd = -1;
static uint64_t next_id = 1;
/* Set while this thread is inside the shim: a nested call (none is expected, as only glibc's
 * internal entry points are called) is forwarded unrecorded. initial-exec: no allocation to
 * reach the variable. */
static __thread int busy __attribute__((tls_model("initial-exec")));

/* ---- output buffer ---- */

static unsigned char buf[1 << 20];
static size_t used;
/* After the destructor has flushed, records still come (other destructors free): each one is
 * written at once. */
static int unbuffered;

static void flush(void)
{
    size_t off = 0;
    while (off < used) {
        ssize_t n = write(fd, buf + off, used - off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) { state = -1; break; } /* descriptor closed by the program, disk full */
        off += (size_t)n;
    }
    used = 0;
}

static void put_varint(uint64_t v)
{
    while (v >= 0x80) {
        buf[used++] = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    buf[used++] = (unsigned char)v;
}

/* Starts a record; at most 1 + 1 + 2 * 10 bytes follow. */
static void put_op(char op)
{
    if (used > sizeof buf - 32) flush();
    buf[used++] = (unsigned char)op;
}

static void end_record(void)
{
    if (unbuffered) flush();
}

/* Stops tracing for good (no memory for the map); what was recorded stays a valid trace. */
static void give_up(void)
{
    flush();
    state = -1;
}

/* ---- pointer -> id map: open addressing, linear probing, backward-shift deletion ---- */

struct slot { uintptr_t key; uint64_t id; }; /* key 0: empty */
static struct slot *table;
static size_t cap, count; /* cap a power of two; count <= cap / 2 */

static struct slot *map_alloc(size_t n)
{
    void *p = mmap(NULL, n * sizeof(struct slot), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static size_t hash(uintptr_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return (size_t)k;
}

static void raw_insert(struct slot *t, size_t c, uintptr_t key, uint64_t id)
{
    size_t i = hash(key) & (c - 1);
    while (t[i].key && t[i].key != key) i = (i + 1) & (c - 1);
    if (!t[i].key) count++;
    t[i].key = key;
    t[i].id = id;
}

static int map_put(void *p, uint64_t id)
{
    if (2 * (count + 1) > cap) {
        size_t c = cap ? 2 * cap : 1 << 16;
        struct slot *t = map_alloc(c);
        if (!t) return -1;
        count = 0;
        for (size_t i = 0; i < cap; i++)
            if (table[i].key) raw_insert(t, c, table[i].key, table[i].id);
        if (table) munmap(table, cap * sizeof(struct slot));
        table = t;
        cap = c;
    }
    raw_insert(table, cap, (uintptr_t)p, id);
    return 0;
}

/* Removes p; its id, or 0 if p is not in the map. */
static uint64_t map_take(void *p)
{
    if (!cap) return 0;
    uintptr_t key = (uintptr_t)p;
    size_t i = hash(key) & (cap - 1);
    while (table[i].key != key) {
        if (!table[i].key) return 0;
        i = (i + 1) & (cap - 1);
    }
    uint64_t id = table[i].id;
    /* Backward shift: move later entries of the probe run into the hole when their home
     * slot does not lie cyclically within (hole, j]. */
    size_t hole = i, j = i;
    for (;;) {
        j = (j + 1) & (cap - 1);
        if (!table[j].key) break;
        size_t home = hash(table[j].key) & (cap - 1);
        int in_between = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
        if (in_between) continue;
        table[hole] = table[j];
        hole = j;
    }
    table[hole].key = 0;
    count--;
    return id;
}

/* ---- set-up ---- */

static void stop_in_child(void) { state = -1; }

__attribute__((constructor)) static void register_fork(void)
{
    busy = 1; /* pthread_atfork may allocate */
    pthread_atfork(NULL, NULL, stop_in_child);
    busy = 0;
}

__attribute__((destructor)) static void finish(void)
{
    pthread_mutex_lock(&lock);
    if (state > 0) flush();
    unbuffered = 1;
    pthread_mutex_unlock(&lock);
}

static char *put_dec(char *s, unsigned long v)
{
    char tmp[24];
    int n = 0;
    do tmp[n++] = (char)('0' + v % 10); while ((v /= 10) != 0);
    while (n) *s++ = tmp[--n];
    return s;
}

/* Opens the trace file; called with the lock held, on the first call. */
static void start(void)
{
    state = -1;
    const char *base = getenv("TM_TRACE");
    if (!base || !*base || strlen(base) > 4000) return;
    char path[4096 + 64];
    for (unsigned n = 0; n < 1000; n++) {
        char *s = stpcpy(path, base);
        *s++ = '.';
        s = put_dec(s, (unsigned long)getpid());
        if (n) { *s++ = '.'; s = put_dec(s, n); }
        *s = 0;
        int f = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (f < 0 && errno == EEXIST) continue;
        if (f < 0) return;
        fd = fcntl(f, F_DUPFD_CLOEXEC, 900);
        close(f);
        if (fd < 0) return;
        state = 1;
        memcpy(buf, "TMTRACE1", 8);
        used = 8;
        return;
    }
}

/* Takes the lock if this call is to be recorded; 0 if it is to be forwarded only. */
static int enter(void)
{
    if (busy || state < 0) return 0;
    busy = 1;
    pthread_mutex_lock(&lock);
    if (state == 0) start();
    if (state < 0) {
        pthread_mutex_unlock(&lock);
        busy = 0;
        return 0;
    }
    return 1;
}

static void leave(void)
{
    pthread_mutex_unlock(&lock);
    busy = 0;
}

/* Records a new block (lock held). */
static void born(void *p, char op, unsigned align_log2, size_t size)
{
    if (!p) return;
    put_op(op);
    if (op == 'a') buf[used++] = (unsigned char)align_log2;
    put_varint(size);
    end_record();
    if (map_put(p, next_id++) != 0) give_up();
}

static unsigned log2_of(size_t a)
{
    unsigned l = 0;
    while (((size_t)1 << l) < a) l++;
    return l;
}

/* ---- the malloc family ---- */

EXPORT void *malloc(size_t size)
{
    void *p = __libc_malloc(size);
    if (enter()) {
        born(p, 'm', 0, size);
        leave();
    }
    return p;
}

EXPORT void *calloc(size_t n, size_t size)
{
    void *p = __libc_calloc(n, size);
    if (enter()) {
        born(p, 'c', 0, n * size); /* non-null: the product did not overflow */
        leave();
    }
    return p;
}

EXPORT void free(void *p)
{
    if (!p) return;
    /* Recorded before the block goes back to glibc, so another thread cannot be handed the
     * same address and record it first. */
    if (enter()) {
        uint64_t id = map_take(p);
        if (id) {
            put_op('f');
            put_varint(next_id - id);
            end_record();
        }
        leave();
    }
    __libc_free(p);
}

EXPORT void *realloc(void *old, size_t size)
{
    if (!old) return malloc(size);
    if (size == 0) {
        free(old); /* what glibc's realloc(p, 0) does */
        return NULL;
    }
    if (!enter()) return __libc_realloc(old, size);
    /* The lock is held across the call: once glibc has released the old block another thread
     * may get its address, and must not record that before this realloc is recorded. */
    void *p = __libc_realloc(old, size);
    if (p) {
        uint64_t id = map_take(old);
        if (id) {
            put_op('r');
            put_varint(next_id - id);
            put_varint(size);
            end_record();
            if (map_put(p, next_id++) != 0) give_up();
        } else {
            born(p, 'm', 0, size); /* a block the shim never saw: its new life starts here */
        }
    }
    leave();
    return p;
}

EXPORT void *reallocarray(void *old, size_t n, size_t size)
{
    size_t total;
    if (__builtin_mul_overflow(n, size, &total)) {
        errno = ENOMEM;
        return NULL;
    }
    return realloc(old, total);
}

static void *aligned(size_t align, size_t size)
{
    void *p = __libc_memalign(align, size);
    if (enter()) {
        born(p, 'a', log2_of(align < 16 ? 16 : align), size);
        leave();
    }
    return p;
}

EXPORT void *memalign(size_t align, size_t size) { return aligned(align, size); }

EXPORT void *aligned_alloc(size_t align, size_t size) { return aligned(align, size); }

EXPORT int posix_memalign(void **out, size_t align, size_t size)
{
    if (align == 0 || align % sizeof(void *) != 0 || (align & (align - 1)) != 0) return EINVAL;
    int saved = errno;
    void *p = aligned(align, size);
    if (!p) return ENOMEM;
    errno = saved;
    *out = p;
    return 0;
}

EXPORT void *valloc(size_t size)
{
    void *p = __libc_valloc(size);
    if (enter()) {
        born(p, 'a', log2_of((size_t)sysconf(_SC_PAGESIZE)), size);
        leave();
    }
    return p;
}

EXPORT void *pvalloc(size_t size)
{
    void *p = __libc_pvalloc(size);
    if (enter()) {
        size_t page = (size_t)sysconf(_SC_PAGESIZE);
        born(p, 'a', log2_of(page), (size + page - 1) & ~(page - 1));
        leave();
    }
    return p;
}
