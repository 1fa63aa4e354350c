#!/usr/bin/env bash
# The test command: builds if needed, runs the CPU tests, then — on a machine with GPUs — every GPU
# test (tests/gpu/run_gpu_tests.sh). Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
if [ ! -f "$BUILD/build.ninja" ]; then cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release; fi
cmake --build "$BUILD"
ctest --test-dir "$BUILD" -L cpu --output-on-failure -j "$(nproc)"
if command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
  BUILD="$BUILD" bash tests/gpu/run_gpu_tests.sh
else
  echo "no GPU here: GPU tests not run (they run with tests/gpu/run_gpu_tests.sh on a GPU machine)"
fi
