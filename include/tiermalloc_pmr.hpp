/* tiermalloc_pmr.hpp — a C++17 std::pmr::memory_resource on one tiermalloc tier (header-only).
 *
 *     #include <tiermalloc_pmr.hpp>
 *     tiermalloc::memory_resource pmr_tier(TM_PMR);
 *     std::pmr::vector<int> v(&pmr_tier);          // its elements live on PMR
 *
 * Requests go to that tier only (tm_malloc, tm_aligned_alloc: no spilling); a tier that cannot
 * serve one throws std::bad_alloc, as memory resources do. Two resources compare equal when
 * they name the same tier: blocks of either may be freed through the other.
 *
 * The namespace is `tiermalloc`, not `tm`: <ctime> declares `struct tm` in the global
 * namespace, and a namespace of the same name would not compile beside it.
 *
 * Plain `new` and `delete` need nothing from here: under LD_PRELOAD or when linked, libstdc++'s
 * operator new (aligned and sized forms included) calls malloc/aligned_alloc/free, which are
 * tiermalloc's. */
#ifndef TIERMALLOC_PMR_HPP
#define TIERMALLOC_PMR_HPP

#include <cstddef>
#include <memory_resource>
#include <new>

#include "tiermalloc.h"

namespace tiermalloc {

class memory_resource final : public std::pmr::memory_resource {
public:
    explicit memory_resource(tm_kind kind) noexcept : kind_(kind) {}

    /* The tier this resource allocates on. */
    tm_kind kind() const noexcept { return kind_; }

private:
    void *do_allocate(std::size_t bytes, std::size_t alignment) override {
        void *p = alignment <= 16 ? tm_malloc(kind_, bytes)
                                  : tm_aligned_alloc(kind_, alignment, bytes);
        if (p == nullptr) throw std::bad_alloc();
        return p;
    }

    void do_deallocate(void *p, std::size_t, std::size_t) override { tm_free(p); }

    bool do_is_equal(const std::pmr::memory_resource &other) const noexcept override {
        const memory_resource *o = dynamic_cast<const memory_resource *>(&other);
        return o != nullptr && o->kind_ == kind_;
    }

    tm_kind kind_;
};

} /* namespace tiermalloc */

#endif /* TIERMALLOC_PMR_HPP */
