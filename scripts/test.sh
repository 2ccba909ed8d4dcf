#!/usr/bin/env bash
# Runs every dsv3 test (unit, fixture parity, bad-file, fuzz, the server with the openai client, the
# chat page in Chromium). Runs scripts/setup.sh first (it skips what is done), so it works on a fresh clone.
#
#   scripts/test.sh                               the normal build in build/
#   scripts/test.sh --sanitize address,undefined  an ASan+UBSan build in build-asan/ (dsv3, the tests)
#   scripts/test.sh --sanitize thread             a ThreadSanitizer build in build-tsan/
# Any further arguments go to ctest (e.g. -R ThreadPool).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
if [[ "${1:-}" != "--sanitize" ]]; then
  cmake --build build -j"$(nproc)"
  ctest --test-dir build --output-on-failure -j"$(nproc)" --timeout 900 "$@"
  exit 0
fi

sanitizers="${2:?--sanitize needs a list, e.g. address,undefined or thread}"
shift 2
case "$sanitizers" in
  *thread*) dir=build-tsan ;;
  *address*) dir=build-asan ;;
  *) dir="build-${sanitizers//,/-}" ;;
esac
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDSV3_SANITIZE="$sanitizers" -DDSV3_BENCH=OFF >/dev/null
# Instrumented builds are slow and the machine may be shared: only what the suite runs, niced.
nice -n 10 cmake --build "$dir" -j"$(nproc)" --target dsv3 dsv3_tests dsv3_alloc_tests dsv3_serve_tests

# A finding ends the process that made it, with a non-zero exit, so ctest reports it as a failure;
# the child dsv3 processes of the CLI tests inherit these settings.
suppressions="$PWD/scripts/sanitizer"
export ASAN_OPTIONS="abort_on_error=0:halt_on_error=1:detect_leaks=1:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
export LSAN_OPTIONS="suppressions=$suppressions/lsan.supp:${LSAN_OPTIONS:-}"
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$suppressions/tsan.supp:${TSAN_OPTIONS:-}"
ctest --test-dir "$dir" --output-on-failure -j"$(nproc)" "$@"
