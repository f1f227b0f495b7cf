/* mode: link-only */
/* cxx_delete.c — C++ `operator delete` in its four plain forms is the library's own.
 *
 * The library exports _ZdlPv, _ZdaPv, _ZdlPvm and _ZdaPvm (`delete p`, `delete[] p` and their
 * sized forms) so that a C++ program's delete reaches free in one call instead of through
 * libstdc++'s. This program (C: it finds them by their mangled names) checks that:
 * - each of the four resolves to the library (dladdr names the file that defines it);
 * - each frees: the DRAM tier's free count goes up by one per call and in_use goes back down
 *   by the block's usable size, for small and large blocks; the sized forms accept a size
 *   smaller than the block (the page map knows it);
 * - deleting NULL does nothing (no count moves).
 */
#define _GNU_SOURCE 1
#include "tiermalloc.h"
#include "check.h"
#include <dlfcn.h>

/* Looked up at run time: a program run under LD_PRELOAD is not linked with the library. */
static void (*_ZdlPv)(void *p);
static void (*_ZdaPv)(void *p);
static void (*_ZdlPvm)(void *p, size_t size);
static void (*_ZdaPvm)(void *p, size_t size);

static tm_stats now(void) {
    tm_stats s;
    CHECK(tm_get_stats(TM_DRAM, &s) == 0, "tm_get_stats");
    return s;
}

static void *defined_here(const char *name) {
    void *fn = dlsym(RTLD_DEFAULT, name);
    if (!CHECK(fn != NULL, "%s is not defined", name))
        return NULL;
    Dl_info info;
    CHECK(dladdr(fn, &info) != 0 && info.dli_fname != NULL, "dladdr(%s) failed", name);
    if (info.dli_fname)
        CHECK(strstr(info.dli_fname, "tiermalloc") != NULL, "%s is defined in %s, not the library",
              name, info.dli_fname);
    return fn;
}

static void frees_one(int which, size_t size) {
    void *p = malloc(size);
    if (!CHECK(p != NULL, "malloc(%zu)", size))
        return;
    memset(p, 0x5a, size);
    size_t usable = malloc_usable_size(p);
    tm_stats a = now();
    switch (which) {
    case 0: _ZdlPv(p); break;
    case 1: _ZdaPv(p); break;
    case 2: _ZdlPvm(p, size); break;
    default: _ZdaPvm(p, size / 2 + 1); break;
    }
    tm_stats b = now();
    CHECK(b.frees - a.frees == 1, "form %d, %zu bytes: frees +%llu, want 1", which, size,
          (unsigned long long)(b.frees - a.frees));
    CHECK(a.in_use - b.in_use == usable, "form %d, %zu bytes: in_use -%llu, want %zu", which, size,
          (unsigned long long)(a.in_use - b.in_use), usable);
}

int main(void) {
    *(void **)&_ZdlPv = defined_here("_ZdlPv");
    *(void **)&_ZdaPv = defined_here("_ZdaPv");
    *(void **)&_ZdlPvm = defined_here("_ZdlPvm");
    *(void **)&_ZdaPvm = defined_here("_ZdaPvm");
    if (!_ZdlPv || !_ZdaPv || !_ZdlPvm || !_ZdaPvm)
        return check_done();
    free(malloc(16)); /* this thread's heap exists before the counts are read */
    static const size_t sizes[] = {1, 16, 100, 1000, 4000, 30000, 300000, 5u << 20};
    for (int which = 0; which < 4; which++)
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
            frees_one(which, sizes[i]);
    tm_stats a = now();
    _ZdlPv(NULL);
    _ZdaPv(NULL);
    _ZdlPvm(NULL, 8);
    _ZdaPvm(NULL, 8);
    tm_stats b = now();
    CHECK(b.frees == a.frees && b.in_use == a.in_use, "delete of NULL moved the counts");
    return check_done();
}
