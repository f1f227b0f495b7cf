// cxx_operators.cpp — C++ `operator new` and `operator delete`, every form, are the library's
// own, and a `new` that fails still behaves as C++ says (tests/cxx_operators.rs runs it linked
// with the library and under LD_PRELOAD).
//
// - each of the 8 news and 12 deletes resolves to the library (dladdr names its file);
// - each new form takes one block from the DRAM tier (its `allocations` count moves by one and
//   `in_use` by the block's usable size), aligned forms honour the alignment, `new` of 0 bytes
//   gives distinct non-null blocks; each delete form gives the block back (`frees` by one);
// - a `new` the library cannot serve reaches libstdc++'s operator: the program's new_handler is
//   called, then `std::bad_alloc` is thrown and caught here (the exception passes the library's
//   stub: nothing of ours is on the stack when it is thrown); the `nothrow` forms return null.
// The library's tm_* API is found with dlsym, so the program needs no link with it.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <initializer_list>
#include <malloc.h>
#include <new>

#include "tiermalloc.h"

static int failures = 0;
#define CHECK(cond, ...)                                                                       \
    ((cond) ? true                                                                             \
            : (std::fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__),                        \
               std::fprintf(stderr, __VA_ARGS__), std::fputc('\n', stderr), ++failures, false))

static int (*get_stats)(tm_kind, tm_stats *);

static tm_stats now() {
    tm_stats s;
    std::memset(&s, 0, sizeof s);
    CHECK(get_stats(TM_DRAM, &s) == 0, "tm_get_stats");
    return s;
}

static const char *const NEWS[] = {
    "_Znwm", "_Znam", "_ZnwmRKSt9nothrow_t", "_ZnamRKSt9nothrow_t", "_ZnwmSt11align_val_t",
    "_ZnamSt11align_val_t", "_ZnwmSt11align_val_tRKSt9nothrow_t",
    "_ZnamSt11align_val_tRKSt9nothrow_t"};
static const char *const DELETES[] = {
    "_ZdlPv", "_ZdaPv", "_ZdlPvm", "_ZdaPvm", "_ZdlPvSt11align_val_t", "_ZdaPvSt11align_val_t",
    "_ZdlPvmSt11align_val_t", "_ZdaPvmSt11align_val_t", "_ZdlPvRKSt9nothrow_t",
    "_ZdaPvRKSt9nothrow_t", "_ZdlPvSt11align_val_tRKSt9nothrow_t",
    "_ZdaPvSt11align_val_tRKSt9nothrow_t"};

static void defined_in_library(const char *name) {
    void *fn = dlsym(RTLD_DEFAULT, name);
    if (!CHECK(fn != nullptr, "%s is not defined", name))
        return;
    Dl_info info;
    if (CHECK(dladdr(fn, &info) != 0 && info.dli_fname != nullptr, "dladdr(%s) failed", name))
        CHECK(std::strstr(info.dli_fname, "tiermalloc") != nullptr,
              "%s is defined in %s, not the library", name, info.dli_fname);
}

// One new form (0-7, NEWS order) of `size` bytes at `align` (aligned forms only).
static void *new_form(int form, std::size_t size, std::size_t align) {
    std::align_val_t al = static_cast<std::align_val_t>(align);
    switch (form) {
    case 0: return ::operator new(size);
    case 1: return ::operator new[](size);
    case 2: return ::operator new(size, std::nothrow);
    case 3: return ::operator new[](size, std::nothrow);
    case 4: return ::operator new(size, al);
    case 5: return ::operator new[](size, al);
    case 6: return ::operator new(size, al, std::nothrow);
    default: return ::operator new[](size, al, std::nothrow);
    }
}

// One delete form (0-11, DELETES order).
static void delete_form(int form, void *p, std::size_t size, std::size_t align) {
    std::align_val_t al = static_cast<std::align_val_t>(align);
    switch (form) {
    case 0: ::operator delete(p); break;
    case 1: ::operator delete[](p); break;
    case 2: ::operator delete(p, size); break;
    case 3: ::operator delete[](p, size); break;
    case 4: ::operator delete(p, al); break;
    case 5: ::operator delete[](p, al); break;
    case 6: ::operator delete(p, size, al); break;
    case 7: ::operator delete[](p, size, al); break;
    case 8: ::operator delete(p, std::nothrow); break;
    case 9: ::operator delete[](p, std::nothrow); break;
    case 10: ::operator delete(p, al, std::nothrow); break;
    default: ::operator delete[](p, al, std::nothrow); break;
    }
}

static void one_pair(int new_kind, int delete_kind, std::size_t size) {
    std::size_t align = new_kind >= 4 ? 4096 : 16;
    tm_stats a = now();
    void *p = new_form(new_kind, size, align);
    tm_stats b = now();
    if (!CHECK(p != nullptr, "%s(%zu) gave null", NEWS[new_kind], size))
        return;
    std::size_t usable = malloc_usable_size(p);
    CHECK(b.allocations - a.allocations == 1, "%s(%zu): allocations +%llu, want 1",
          NEWS[new_kind], size, (unsigned long long)(b.allocations - a.allocations));
    CHECK(b.in_use - a.in_use == usable, "%s(%zu): in_use +%llu, want %zu", NEWS[new_kind],
          size, (unsigned long long)(b.in_use - a.in_use), usable);
    CHECK(reinterpret_cast<std::uintptr_t>(p) % align == 0, "%s(%zu): %p not %zu-aligned",
          NEWS[new_kind], size, p, align);
    CHECK(usable >= size, "%s(%zu): usable %zu", NEWS[new_kind], size, usable);
    std::memset(p, 0x5a, size);
    delete_form(delete_kind, p, size, align);
    tm_stats c = now();
    CHECK(c.frees - b.frees == 1, "%s: frees +%llu, want 1", DELETES[delete_kind],
          (unsigned long long)(c.frees - b.frees));
    CHECK(b.in_use - c.in_use == usable, "%s: in_use -%llu, want %zu", DELETES[delete_kind],
          (unsigned long long)(b.in_use - c.in_use), usable);
}

static int handler_calls = 0;
static void give_up() {
    ++handler_calls;
    std::set_new_handler(nullptr); // the next failure throws
}

// A request no allocator can serve: libstdc++'s operator calls the handler, then throws.
static void huge_new_throws(int form) {
    const std::size_t huge = SIZE_MAX / 4;
    handler_calls = 0;
    std::set_new_handler(give_up);
    bool threw = false;
    try {
        void *p = new_form(form, huge, 64);
        CHECK(false, "%s(huge) returned %p instead of throwing", NEWS[form], p);
    } catch (const std::bad_alloc &) {
        threw = true;
    }
    CHECK(threw, "%s(huge): no std::bad_alloc", NEWS[form]);
    CHECK(handler_calls == 1, "%s(huge): new_handler called %d times, want 1", NEWS[form],
          handler_calls);
    std::set_new_handler(nullptr);
}

static void huge_nothrow_is_null(int form) {
    void *p = new_form(form, SIZE_MAX / 4, 64);
    CHECK(p == nullptr, "%s(huge) gave %p, want null", NEWS[form], p);
}

int main() {
    *(void **)&get_stats = dlsym(RTLD_DEFAULT, "tm_get_stats");
    if (!CHECK(get_stats != nullptr, "tm_get_stats not found: is the library loaded?"))
        return 1;
    for (const char *n : NEWS)
        defined_in_library(n);
    for (const char *n : DELETES)
        defined_in_library(n);
    ::operator delete(::operator new(16)); // this thread's heap exists before counts are read

    static const std::size_t sizes[] = {1, 24, 100, 1000, 5000, 300000};
    for (int d = 0; d < 12; d++)
        for (int n = 0; n < 8; n++)
            // a new form and a delete form that belong together (aligned with aligned)
            if ((n >= 4) == ((d >= 4 && d <= 7) || d >= 10))
                for (std::size_t s : sizes)
                    one_pair(n, d, s);

    void *z1 = ::operator new(0), *z2 = ::operator new(0);
    CHECK(z1 != nullptr && z2 != nullptr && z1 != z2, "new(0) gave %p and %p", z1, z2);
    ::operator delete(z1);
    ::operator delete(z2);

    for (int form : {0, 1, 4, 5})
        huge_new_throws(form);
    for (int form : {2, 3, 6, 7})
        huge_nothrow_is_null(form);

    // a thrown-and-caught new leaves the library usable
    int *v = new int[1000];
    v[999] = 7;
    CHECK(v[999] == 7, "write after a failed new");
    delete[] v;

    if (failures == 0)
        std::puts("ok");
    return failures == 0 ? 0 : 1;
}
