#!/usr/bin/env bash
# Runs every GPU test on this machine: the multi-rank suites on 2 and on 4 GPUs (as many of those as
# the machine has; RANKS picks others), the single-GPU suites on one. Builds first if needed. Prints a summary table;
# exits non-zero if any suite failed. A configuration the machine cannot run is listed as SKIPPED,
# never as passed.
#
#   bash tests/gpu/run_gpu_tests.sh            # BUILD=build by default
#   BUILD=/path/to/build bash tests/gpu/run_gpu_tests.sh
#   RANKS=4 bash tests/gpu/run_gpu_tests.sh    # the multi-rank suites on 4 GPUs only (default "2 4")
#
# The Python package's suites (torchrun) import `weft` from PYTHON_PACKAGE (default
# $BUILD/python); where that package was not built for this python3, or torch is missing, they
# are SKIPPED with the reason (scripts/build_python_ext.sh builds it from BUILD's libraries).
set -uo pipefail
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
LOGS=${LOGS:-$BUILD/gpu-test-logs}
SUITE_TIMEOUT=${SUITE_TIMEOUT:-900}  # seconds one suite may take before every rank is stopped
RANKS=${RANKS:-2 4}                  # rank counts of the multi-rank and torch suites
for n in $RANKS; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "RANKS must be rank counts separated by spaces, got '$RANKS'" >&2; exit 2; }
done
PYTHON_PACKAGE=${PYTHON_PACKAGE:-$BUILD/python}
source scripts/nccl_env.sh

if [ ! -x "$BUILD/tools/weft/weft" ]; then
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release && cmake --build "$BUILD" || exit 2
fi
mkdir -p "$LOGS"
WEFT="$BUILD/tools/weft/weft"
ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
echo "GPUs: $ngpu"

# name | ranks | command (after the launcher)
suites=(
  "ring_exchange|multi|$BUILD/examples/ring_exchange/weft_ring_exchange"
  "primitives|multi|$BUILD/tests/gpu/weft_primitives_test"
  "ll_all_to_all|multi|$BUILD/examples/ll_all_to_all/weft_ll_all_to_all_test"
  "gemm|single|$BUILD/tests/gemm/weft_gemm_tests"
  "ag_gemm|multi|$BUILD/weft/ops/tensor_parallel/weft_ag_gemm_test"
  "gemm_rs|multi|$BUILD/weft/ops/tensor_parallel/weft_gemm_rs_test"
  "gemm_ar|multi|$BUILD/weft/ops/tensor_parallel/weft_gemm_ar_test"
  "ep|multi|$BUILD/weft/ops/expert_parallel/weft_ep_test"
  "python_tp|torch|python/tests/test_tp_torch.py"
  "python_ep|torch|python/tests/test_ep_torch.py"
  "python_nn|torch|python/tests/test_nn_torch.py"
)
# SKIPPED where the package was not built or torch is missing; an extension that exists but does
# not import is a failure (python_broken), not a skip.
python_problem="" python_broken=""
if ! python3 -c 'import torch' 2>/dev/null; then python_problem="torch is not installed"
elif ! compgen -G "$PYTHON_PACKAGE/weft/_C*.so" >/dev/null; then
  python_problem="no weft/_C*.so under $PYTHON_PACKAGE (scripts/build_python_ext.sh builds it)"
elif ! err=$(PYTHONPATH="$PYTHON_PACKAGE" python3 -c 'import weft._C' 2>&1); then
  python_broken=$(echo "$err" | tail -1)
fi

rows=()
failed=0
run_one() {  # name ranks binary-or-script [torch]
  local name=$1 n=$2 bin=$3 kind=${4:-} log="$LOGS/$1-$2gpu.log" start rc secs
  if [ -z "$kind" ] && [ ! -x "$bin" ]; then rows+=("$name|$n|MISSING|0|$bin not built"); failed=1; return; fi
  start=$(date +%s)
  if [ "$kind" = torch ]; then
    PYTHONPATH="$PYTHON_PACKAGE" timeout "$SUITE_TIMEOUT" torchrun --nproc-per-node "$n" "$bin" >"$log" 2>&1; rc=$?
  elif [ "$n" = 1 ]; then
    timeout "$SUITE_TIMEOUT" "$bin" >"$log" 2>&1; rc=$?
  else
    "$WEFT" run -n "$n" --timeout "$SUITE_TIMEOUT" -- "$bin" >"$log" 2>&1; rc=$?
  fi
  secs=$(( $(date +%s) - start ))
  local summary
  summary=$(grep -E '^\[  (PASSED|FAILED)  \]|tests? ran|weft run:|^weft python .*test: (ok|[0-9]+ failures)' "$log" | tr '\n' ' ' | cut -c1-90)
  if [ $rc = 0 ]; then rows+=("$name|$n|PASS|$secs|$summary"); else rows+=("$name|$n|FAIL($rc)|$secs|$summary"); failed=1; fi
}

for s in "${suites[@]}"; do
  IFS='|' read -r name kind bin <<<"$s"
  if [ "$kind" = single ]; then
    if ((ngpu >= 1)); then run_one "$name" 1 "$bin"; else rows+=("$name|1|SKIPPED|0|no GPU"); fi
  elif [ "$kind" = torch ]; then
    for n in $RANKS; do
      if [ -n "$python_broken" ]; then rows+=("$name|$n|FAIL|0|import weft._C: ${python_broken:0:70}"); failed=1
      elif [ -n "$python_problem" ]; then rows+=("$name|$n|SKIPPED|0|${python_problem:0:80}")
      elif ((ngpu >= n)); then run_one "$name" "$n" "$bin" torch
      else rows+=("$name|$n|SKIPPED|0|only $ngpu GPU(s)"); fi
    done
  else
    for n in $RANKS; do
      if ((ngpu >= n)); then run_one "$name" "$n" "$bin"; else rows+=("$name|$n|SKIPPED|0|only $ngpu GPU(s)"); fi
    done
  fi
done

echo
printf '%-16s %-5s %-10s %6s  %s\n' suite GPUs result seconds summary
for r in "${rows[@]}"; do
  IFS='|' read -r a b c d e <<<"$r"
  printf '%-16s %-5s %-10s %6s  %s\n' "$a" "$b" "$c" "$d" "$e"
done
echo "logs: $LOGS"
exit $failed
