#!/usr/bin/env bash
# Builds the Python package `weft` (weft._C + python/weft/*.py) for this machine's python3 from
# the static libraries of a build tree made elsewhere, without configuring CMake here.
#
#   scripts/build_python_ext.sh BUILD_DIR OUT_DIR      # then: PYTHONPATH=OUT_DIR python3 ...
#
# For a GPU machine whose Python differs from the build machine's (the extension is tied to one
# Python version) but whose toolchain can link what that machine built: g++, nanobind for this
# python3 (pip install nanobind), the CUDA toolkit (CUDA_HOME, default /usr/local/cuda), NCCL
# (NCCL_HOME, default: the nvidia-nccl-cu13 package of this python3) and fmt's headers
# (FMT_INCLUDE, default /usr/include). Where CMake configures, -DWEFT_PYTHON=ON (the default)
# builds the same package into <build>/python.
set -euo pipefail
BUILD=$(cd "${1:?usage: $0 BUILD_DIR OUT_DIR}" && pwd)
OUT=${2:?usage: $0 BUILD_DIR OUT_DIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
FMT_INCLUDE=${FMT_INCLUDE:-/usr/include}
NCCL_HOME=${NCCL_HOME:-$(python3 -c 'import nvidia.nccl, os; print(list(nvidia.nccl.__path__)[0])')}
NB_INCLUDE=$(python3 -m nanobind --include_dir)
NB_ROOT=$(dirname "$NB_INCLUDE")
PY_INCLUDE=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
SUFFIX=$(python3 -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')

mkdir -p "$OUT/weft"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# The flags nanobind's CMake gives its static library and a module (size-optimized glue).
common=(-std=c++20 -fPIC -fvisibility=hidden -fno-strict-aliasing -Os -I"$NB_INCLUDE"
        -I"$NB_ROOT/ext/robin_map/include" -I"$PY_INCLUDE")
# (A system directory given again with -isystem would break libstdc++'s #include_next.)
fmt=(); [ "$FMT_INCLUDE" = /usr/include ] || fmt=(-isystem "$FMT_INCLUDE")
g++ "${common[@]}" -DNB_BUILD -c "$NB_ROOT/src/nb_combined.cpp" -o "$TMP/nanobind.o" &
nb_pid=$!
objects=("$TMP/nanobind.o")
pids=("$nb_pid")
for src in module tensor_parallel expert_parallel; do
  g++ "${common[@]}" -O2 -Wno-stringop-overflow -DFMT_HEADER_ONLY=1 -DFMT_CONSTEVAL= -DFMT_USE_CONSTEXPR=1 -I"$ROOT" \
      "${fmt[@]}" -isystem "$CUDA_HOME/include" -isystem "$NCCL_HOME/include" \
      -c "$ROOT/python/src/$src.cc" -o "$TMP/$src.o" &
  pids+=($!)
  objects+=("$TMP/$src.o")
done
for pid in "${pids[@]}"; do wait "$pid"; done
libs=(weft/ops/tensor_parallel/libweft_tp_ops.a weft/ops/tensor_parallel/libweft_tp_plan.a
      weft/ops/expert_parallel/libweft_ep.a weft/ops/expert_parallel/libweft_ep_plan.a
      weft/gemm/libweft_gemm.a weft/runtime/libweft_runtime.a weft/runtime/libweft_core.a)
g++ -shared -o "$OUT/weft/_C$SUFFIX" "${objects[@]}" \
    -Wl,--start-group "${libs[@]/#/$BUILD/}" -Wl,--end-group \
    -L"$CUDA_HOME/lib64" -L"$CUDA_HOME/lib" -L"$NCCL_HOME/lib" \
    -lcublasLt -lcudart_static -l:libnccl.so.2 -lrt -ldl -lpthread \
    -Wl,-rpath,"$NCCL_HOME/lib:$CUDA_HOME/lib64:$CUDA_HOME/lib"
cp "$ROOT"/python/weft/*.py "$OUT/weft/"
echo "built $OUT/weft/_C$SUFFIX"
