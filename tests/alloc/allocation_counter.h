#pragma once
// Counts heap allocations: allocation_counter.cpp replaces every global operator new of the test
// executable it is linked into (dsv3_alloc_tests, apart from the main suite so that the main
// suite keeps the sanitizers' own operator new checks).
#include <cstdint>

namespace dsv3::test {

// Calls of any global operator new in the whole process since it started.
std::int64_t heap_allocations();

}  // namespace dsv3::test
