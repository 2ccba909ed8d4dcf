#include "allocation_counter.h"

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <new>

// glibc's own allocator entry points: the malloc family below replaces the C library's for the
// whole process, so allocations made by C libraries (oneDNN, OpenBLAS) are counted too. Under a
// sanitizer, which brings its own malloc, only operator new is counted.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define DSV3_COUNT_MALLOC 0
#else
#define DSV3_COUNT_MALLOC 1
#endif

#if DSV3_COUNT_MALLOC
extern "C" {
void* __libc_malloc(std::size_t size);
void* __libc_calloc(std::size_t count, std::size_t size);
void* __libc_realloc(void* p, std::size_t size);
void* __libc_memalign(std::size_t alignment, std::size_t size);
}
namespace {
void* raw_malloc(std::size_t size) { return __libc_malloc(size); }
void* raw_memalign(std::size_t alignment, std::size_t size) { return __libc_memalign(alignment, size); }
}  // namespace
#else
namespace {
void* raw_malloc(std::size_t size) { return std::malloc(size); }
void* raw_memalign(std::size_t alignment, std::size_t size) {
  return std::aligned_alloc(alignment, (size + alignment - 1) / alignment * alignment);
}
}  // namespace
#endif

namespace {
std::atomic<std::int64_t> g_allocations{0};
std::atomic<bool> g_watching{false};

void count() {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (g_watching.load(std::memory_order_relaxed)) dsv3::test::watched_allocation();
}

void* allocate(std::size_t size) {
  count();
  if (void* p = raw_malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}

void* allocate_aligned(std::size_t size, std::align_val_t alignment) {
  count();
  if (void* p = raw_memalign(static_cast<std::size_t>(alignment), size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
}  // namespace

namespace dsv3::test {
std::int64_t heap_allocations() { return g_allocations.load(std::memory_order_relaxed); }
void watch_allocations(bool on) { g_watching.store(on, std::memory_order_relaxed); }
__attribute__((noinline)) void watched_allocation() { asm volatile(""); }
}  // namespace dsv3::test

void* operator new(std::size_t size) { return allocate(size); }
void* operator new[](std::size_t size) { return allocate(size); }
void* operator new(std::size_t size, std::align_val_t alignment) { return allocate_aligned(size, alignment); }
void* operator new[](std::size_t size, std::align_val_t alignment) { return allocate_aligned(size, alignment); }
void* operator new(std::size_t size, const std::nothrow_t&) noexcept {
  try {
    return allocate(size);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t size, const std::nothrow_t&) noexcept {
  try {
    return allocate(size);
  } catch (...) {
    return nullptr;
  }
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }

#if DSV3_COUNT_MALLOC
extern "C" {
void* malloc(std::size_t size) {
  count();
  return __libc_malloc(size);
}
void* calloc(std::size_t n, std::size_t size) {
  count();
  return __libc_calloc(n, size);
}
void* realloc(void* p, std::size_t size) {
  count();
  return __libc_realloc(p, size);
}
void* aligned_alloc(std::size_t alignment, std::size_t size) {
  count();
  return __libc_memalign(alignment, size);
}
void* memalign(std::size_t alignment, std::size_t size) {
  count();
  return __libc_memalign(alignment, size);
}
int posix_memalign(void** out, std::size_t alignment, std::size_t size) {
  count();
  void* p = __libc_memalign(alignment, size);
  if (p == nullptr && size != 0) return ENOMEM;
  *out = p;
  return 0;
}
}
#endif
