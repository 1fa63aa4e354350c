"""weft: fused kernels that overlap computation with communication across GPUs (PyTorch layer).

    import torch, weft
    world = weft.init()                       # under torchrun (or weft run / MPI / Slurm)
    rs = weft.GemmRS(world, max_m=8192, max_n=8192)
    out = rs(a, b)                            # a [M, K/W], b [N, K/W] -> this rank's [M/W, N]
    up = weft.nn.ColumnParallelLinear(world, 4096, 14336, max_tokens=8192)   # layers with autograd
    ep = weft.ExpertParallel(world, num_experts=256, hidden=7168, topk=8, max_tokens=128)
    d = ep.dispatch(x, topk_idx, topk_weights, fp8=True); out = ep.combine(expert_out)

Operators take torch tensors on this rank's GPU and run on torch's current stream, so they
order with the rest of the program and capture into CUDA graphs (after one eager call that lets
them tune); under torch.compile every call is a custom op (torch.ops.weft.*).
Errors are weft.InvalidArgument (a bad argument, named), weft.Timeout (a peer that never came)
or weft.Error.
"""

from ._C import Error, InvalidArgument, Timeout  # noqa: F401
from ._C import __version__  # noqa: F401

__all__ = ["Error", "InvalidArgument", "Timeout", "init", "AGGemm", "GemmRS", "GemmAR",
           "ExpertParallel", "Dispatched", "nn"]

_TORCH_LAYER = {"init": "tensor_parallel", "AGGemm": "tensor_parallel", "GemmRS": "tensor_parallel",
                "GemmAR": "tensor_parallel", "ExpertParallel": "expert_parallel",
                "Dispatched": "expert_parallel"}


def __getattr__(name):
    # The torch layer loads on first use, so that `import weft` (and weft._C's checks) work
    # where torch is not installed.
    import importlib

    if name in _TORCH_LAYER:
        return getattr(importlib.import_module(f".{_TORCH_LAYER[name]}", __name__), name)
    if name == "nn":  # weft.nn: the tensor-parallel linear layers with autograd
        return importlib.import_module(".nn", __name__)
    raise AttributeError(f"module 'weft' has no attribute {name!r}")
