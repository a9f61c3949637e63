#!/usr/bin/env bash
# Builds eigenkv (Release) and runs the whole test suite with ctest.
#   bash scripts/test.sh             # Release build in build/
#   bash scripts/test.sh --sanitize  # ASan+UBSan build in build-asan/
set -euo pipefail
cd "$(dirname "$0")/.."
dir=build
args=(-DCMAKE_BUILD_TYPE=Release)
if [ "${1:-}" = "--sanitize" ]; then
  dir=build-asan
  args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DEIGENKV_SANITIZE=ON -DEIGENKV_BUILD_BENCH=OFF)
fi
cmake -S . -B "$dir" -G Ninja "${args[@]}" -DEIGENKV_WERROR=ON
cmake --build "$dir" -j"$(nproc)"
ctest --test-dir "$dir" --output-on-failure -j"$(nproc)" --timeout 900
