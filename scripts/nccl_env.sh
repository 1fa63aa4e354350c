# Source this before running weft binaries on a machine whose system NCCL differs from the one weft
# was built against: it puts the NCCL of PyTorch's nvidia-nccl-cu13 package (2.28.9 with PyTorch
# 2.11) first on LD_LIBRARY_PATH and keeps NVLink multicast off (weft never uses it).
_weft_nccl_lib=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null)
if [ -n "${_weft_nccl_lib}" ] && [ -d "${_weft_nccl_lib}" ]; then
  export LD_LIBRARY_PATH="${_weft_nccl_lib}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
unset _weft_nccl_lib
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
