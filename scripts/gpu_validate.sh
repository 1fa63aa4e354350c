#!/usr/bin/env bash
# One-shot validation on a GPU machine, as a newcomer would do it: build from a clean tree with the
# README's command, run the main job (`weft`: self-check + primitive benchmarks), then every test
# (`bash tests/run_tests.sh`), then the benchmarks named in WEFT_BENCHES. Logs and result rows go
# to $LOGS (default build/validate-logs); a summary is printed last.
#
#   LOGS=/tmp/out WEFT_BENCHES="gemm ag-gemm" bash scripts/gpu_validate.sh
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=${LOGS:-build/validate-logs}
mkdir -p "$LOGS"
summary=()
step() {  # name, command...
  local name=$1; shift
  local start=$(date +%s)
  "$@" >"$LOGS/$name.log" 2>&1
  local rc=$?
  summary+=("$(printf '%-14s rc=%-3s %5ss' "$name" "$rc" "$(( $(date +%s) - start ))")")
  return $rc
}

nvidia-smi -L
step build bash -c 'cmake -S . -B build -G Ninja && cmake --build build' || {
  tail -30 "$LOGS/build.log"; printf '%s\n' "${summary[@]}"; exit 1; }
source scripts/nccl_env.sh
export WEFT_COMMIT=${WEFT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
step main_job build/tools/weft/weft --timeout 600
step tests env LOGS="$LOGS/gpu-tests" bash tests/run_tests.sh
for b in ${WEFT_BENCHES:-}; do
  step "bench-$b" build/tools/weft/weft bench "$b" --out "$LOGS/$b.jsonl"
done

cp bench/results/primitives.jsonl "$LOGS/" 2>/dev/null

echo
tail -25 "$LOGS/main_job.log"
tail -15 "$LOGS/tests.log"
printf '%s\n' "${summary[@]}"
