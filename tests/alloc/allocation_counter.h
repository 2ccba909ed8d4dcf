#pragma once
// Counts heap allocations: allocation_counter.cpp replaces every global operator new, and the C
// library's malloc family (so C libraries' allocations count too), of the test executable it is
// linked into (dsv3_alloc_tests, apart from the main suite so that the main
// suite keeps the sanitizers' own operator new checks).
#include <cstdint>

namespace dsv3::test {

// Calls of any global operator new or malloc-family function in the whole process since it started.
std::int64_t heap_allocations();

// While watching is on, every counted allocation calls watched_allocation(), an empty function to
// break on in a debugger (gdb -ex 'break dsv3::test::watched_allocation') to see where it came from.
void watch_allocations(bool on);
void watched_allocation();

}  // namespace dsv3::test
