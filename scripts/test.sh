#!/usr/bin/env bash
# Runs every dsv3 test (unit, fixture parity, bad-file and fuzz). Expects scripts/setup.sh to have run.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake --build build -j"$(nproc)"
ctest --test-dir build --output-on-failure -j"$(nproc)" --timeout 900
