"""Tensor-parallel linear layers with autograd, on weft's fused operators.

The layout is sequence parallelism's (as in Megatron-LM): between the layers, activations are
split by rows (tokens) over the W ranks. A column-parallel layer gathers its input's rows while it
multiplies; a row-parallel layer reduce-scatters its product back to rows. Each layer's backward
runs the other fused operator, so the backward pass overlaps its communication too:

    ColumnParallelLinear   forward   y   = allgather(x_r) @ w_r^T            AG-GEMM, gathered x kept (*)
                           backward  dx_r = rows_r(sum_q dy_q @ w_q)          GEMM-RS(dy, w_r^T)
                                     dw_r = dy^T @ allgather(x_r)             torch.matmul
    RowParallelLinear      forward   y_r = rows_r(sum_q x_q @ w_q^T)          GEMM-RS
                           backward  dx_r = allgather(dy_r) @ w_r             AG-GEMM(dy_r, w_r^T)
                                     dw_r = allgather(dy_r)^T @ x_r           torch.matmul

    (*) or, with keep_gathered_input=False, x_r kept and gathered again in the backward.

    world = weft.init()
    up = weft.nn.ColumnParallelLinear(world, 4096, 14336, max_tokens=8192)    # w_r [14336/W, 4096]
    down = weft.nn.RowParallelLinear(world, 14336, 4096, max_tokens=8192)     # w_r [4096, 14336/W]
    y = down(torch.nn.functional.gelu(up(x)))   # x, y: this rank's [M/W, 4096] rows; M <= 8192

A column-parallel layer's output is [M, out/W] (every row, this rank's columns), which is what
the row-parallel layer takes. Every K the operators see (in and out/W for the column layer, in/W
and out for the row layer) must be a multiple of 8. No double backward (create_graph=True). The
weight's gradient is this rank's shard's: no further reduction is needed. With bias=True a layer
adds a bias after its product: the column layer this rank's [out/W] shard (its gradient, the
output gradient's column sums, is complete on the rank, which holds every row), the row layer a
bias [out] that every rank holds whole; its gradient is the sum over all M rows, which the
backward takes from the output gradient the AG-GEMM gathers anyway (no extra communication, the
same bits on every rank, so the copies stay equal). Biases start at zero (Megatron-LM's choice;
a replicated bias drawn per rank would differ between ranks). The backward passes the weight's
transpose as a view (`weight.t()`, no copy): the operators read such a B in place with their
cuBLAS strategies (their fused strategies, on weft's own GEMM, take [n, k] B only, so the planner
does not pick them there). The column-parallel layer keeps the gathered input [M, in] for its
weight gradient, or with keep_gathered_input=False only its own rows [M/W, in], gathering them
again in the backward (AGGemm.all_gather: copy engines, or one push kernel for small inputs;
not overlapped with the backward's GEMM-RS). Under torch.compile the operators are custom ops and the
backward is traced like the forward (the second gathering takes the output gradient as an unread
input, so the compiled graph keeps it in the backward instead of saving its result). Under no_grad
or inference_mode the layers call their forward operator alone: nothing is kept for a backward.
Weights start as nn.Linear's default over the whole layer: every rank draws the W shards from
torch's default generator in rank order and keeps its own, so ranks seeded alike hold different
shards of one initialization.
"""

from __future__ import annotations

import contextlib
import math
from typing import Optional

import torch

from . import _C
from .tensor_parallel import AGGemm, GemmRS, _operator


# The operators by handle: under torch.compile straight to their custom ops (the handle and the
# world size are constants of the traced graph; no lookup for dynamo to trace), eagerly through
# the objects.
def _ag_gemm_gathered(a: torch.Tensor, b: torch.Tensor, handle: int, world: int):
    if torch.compiler.is_compiling():
        return torch.ops.weft.ag_gemm_gathered(a, b, handle, world, "")
    return _operator(handle, AGGemm)(a, b, gather_a=True)


def _ag_gemm(a: torch.Tensor, b: torch.Tensor, handle: int, world: int) -> torch.Tensor:
    if torch.compiler.is_compiling():
        return torch.ops.weft.ag_gemm(a, b, handle, world, "")
    return _operator(handle, AGGemm)(a, b)


def _all_gather_after(a: torch.Tensor, after: torch.Tensor, handle: int, world: int) -> torch.Tensor:
    # Traced, the gather takes `after` (unread) as an input, so it stays after it: see
    # weft::all_gather_after. Eagerly there is nothing to reorder.
    if torch.compiler.is_compiling():
        return torch.ops.weft.all_gather_after(a, after, handle, world)
    return _operator(handle, AGGemm).all_gather(a)


def _gemm_rs(a: torch.Tensor, b: torch.Tensor, handle: int, world: int) -> torch.Tensor:
    if torch.compiler.is_compiling():
        return torch.ops.weft.gemm_rs(a, b, handle, world, "")
    return _operator(handle, GemmRS)(a, b)


def _layer_checks(first_call: Optional[tuple]):
    """Around a layer's own checks ahead of its first collective call, first_call = (handle,
    operator class), or None where no collective call follows: where a check raises on this rank,
    that call is abandoned, so peers already in it end at once and name this rank instead of
    waiting until WEFT_WAIT_TIMEOUT_MS (tensor_parallel._checks_or_abandon). Traced by
    torch.compile, the checks run before any call is made: nothing to abandon."""
    if first_call is None or torch.compiler.is_compiling():
        return contextlib.nullcontext()
    handle, kind = first_call
    return _operator(handle, kind)._checks()


def _check_k(what: str, k: int) -> None:
    # An operator of the layer takes k as its K (the backward's too, which the forward alone would
    # not reject).
    if k % 8 != 0:
        raise _C.InvalidArgument(f"weft.nn: {what} ({k}) must be a multiple of 8: an operator of "
                                 "the layer takes it as K (16-byte rows)")


def _no_double_backward() -> None:
    # backward(create_graph=True) runs backward with grad mode on; the fused operators have no
    # backward of their own, so a second derivative cannot be taken through them.
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        raise _C.InvalidArgument("weft.nn: no double backward (create_graph=True): the fused "
                                 "operators have no backward of their own")


class _ColumnParallel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, ag_handle: int, rs_handle: int, world: int, keep_gathered: bool):
        if ctx.needs_input_grad[0]:
            with _layer_checks((ag_handle, AGGemm)):
                _check_k("the column-parallel layer's output features on a rank", weight.shape[0])
        # The weight's gradient needs the gathered input: kept from the forward's AG-GEMM, or (to
        # save its memory) this rank's rows kept and gathered again in the backward.
        if ctx.needs_input_grad[1] and keep_gathered:
            y, gathered = _ag_gemm_gathered(x, weight, ag_handle, world)
            ctx.save_for_backward(gathered, weight)
        else:
            y = _ag_gemm(x, weight, ag_handle, world)
            ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, weight)
        ctx.ag_handle, ctx.rs_handle, ctx.world = ag_handle, rs_handle, world
        ctx.keep_gathered = keep_gathered
        return y

    @staticmethod
    def backward(ctx, dy):
        # What comes before the first collective call can fail on one rank only (the checks, the
        # saved tensors' version check, dy's contiguous copy): that call is abandoned then.
        first_call = ((ctx.rs_handle, GemmRS) if ctx.needs_input_grad[0] else
                      None if ctx.keep_gathered else (ctx.ag_handle, AGGemm))
        with _layer_checks(first_call):
            _no_double_backward()
            saved, weight = ctx.saved_tensors
            dy = dy.contiguous()
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = _gemm_rs(dy, weight.t(), ctx.rs_handle, ctx.world)
        if ctx.needs_input_grad[1]:
            # Gathered again after dy exists, so that a compiled graph keeps it in the backward.
            gathered = saved if ctx.keep_gathered else _all_gather_after(saved, dy, ctx.ag_handle,
                                                                         ctx.world)
            dw = dy.t() @ gathered
        return dx, dw, None, None, None, None


class _RowParallel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, rs_handle: int, ag_handle: int, world: int):
        if any(ctx.needs_input_grad[:3]):  # the backward's AG-GEMM takes them as K
            with _layer_checks((rs_handle, GemmRS)):
                _check_k("the row-parallel layer's output features", weight.shape[0])
        y = _gemm_rs(x, weight, rs_handle, world)
        if bias is not None:
            y = y + bias
        ctx.save_for_backward(x, weight)
        ctx.ag_handle, ctx.world = ag_handle, world
        return y

    @staticmethod
    def backward(ctx, dy):
        with _layer_checks((ctx.ag_handle, AGGemm)):  # as in _ColumnParallel.backward
            _no_double_backward()
            x, weight = ctx.saved_tensors
            dy = dy.contiguous()
        # (Also where only the weight or the bias needs a gradient: the AG-GEMM gathers dy for
        # them and its product is then unused.)
        dx, dy_all = _ag_gemm_gathered(dy, weight.t(), ctx.ag_handle, ctx.world)
        dw = dy_all.t() @ x if ctx.needs_input_grad[1] else None
        # The bias is added to every rank's rows: its gradient sums all M rows of dy, here from
        # the gathered copy, the same on every rank.
        db = dy_all.sum(0) if ctx.needs_input_grad[2] else None
        return (dx if ctx.needs_input_grad[0] else None), dw, db, None, None, None


def column_parallel_linear(x: torch.Tensor, weight: torch.Tensor, ag: AGGemm, rs: GemmRS,
                           bias: Optional[torch.Tensor] = None, *,
                           keep_gathered_input: bool = True) -> torch.Tensor:
    """allgather(x) @ weight.T (+ bias) with autograd: x [M/W, in] (this rank's rows), weight
    [out/W, in] (this rank's output features), bias [out/W] (this rank's shard); returns
    [M, out/W]. ag runs the forward, rs the input's gradient (GEMM-RS of [M, out/W] by
    [in, out/W]): size them for M, in and out/W. keep_gathered_input=False keeps only x for the
    weight's gradient and gathers it again (ag.all_gather) in the backward: W times less memory
    held between the passes, one more all-gather. x itself is then saved: an in-place change to it
    before the backward is an error (autograd's version check), and one that check cannot see (a
    buffer rewritten by a CUDA graph replay or through DLPack) would change the weight's
    gradient."""
    if torch.is_grad_enabled():
        y = _ColumnParallel.apply(x, weight, ag.handle, rs.handle, ag.world_size, keep_gathered_input)
    else:  # no backward can follow (no_grad, inference_mode): nothing to gather or keep
        y = _ag_gemm(x, weight, ag.handle, ag.world_size)
    # Every row of the output is on this rank, so autograd's column sums of dy are the bias's
    # whole gradient.
    return y if bias is None else y + bias


def row_parallel_linear(x: torch.Tensor, weight: torch.Tensor, rs: GemmRS, ag: AGGemm,
                        bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """This rank's rows of sum_r x_r @ weight_r.T (+ bias) with autograd: x [M, in/W] (this
    rank's input features), weight [out, in/W], bias [out] (whole on every rank, kept equal: its
    gradient is the sum over all ranks' rows); returns [M/W, out]. rs runs the forward, ag the
    input's gradient (AG-GEMM of [M/W, out] rows by [in/W, out], gathering M x out)."""
    if not torch.is_grad_enabled():  # no backward can follow: nothing to check or keep for it
        y = _gemm_rs(x, weight, rs.handle, rs.world_size)
        return y if bias is None else y + bias
    return _RowParallel.apply(x, weight, bias, rs.handle, ag.handle, rs.world_size)


def _shard(what: str, features: int, world: _C.World) -> int:
    if features % world.size != 0:
        raise _C.InvalidArgument(f"weft.nn.{what}: {features} features do not split among {world.size} ranks")
    return features // world.size


def _bias(features: int, dtype: torch.dtype, bias: bool) -> Optional[torch.nn.Parameter]:
    # Zeros: the same on every rank without a broadcast (Megatron-LM initializes biases so too).
    return torch.nn.Parameter(torch.zeros(features, dtype=dtype, device="cuda")) if bias else None


def _init_shard(weight: torch.Tensor, fan_in: int, world: _C.World) -> None:
    # nn.Linear's default (uniform in +-1/sqrt(fan_in)) with the full layer's fan-in. Every rank
    # draws all W shards of the layer from torch's default generator, in rank order, and keeps its
    # own: seeded alike on every rank (as torchrun scripts usually are), the ranks hold different
    # shards of one initialization, and their generators stay in step for what follows.
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        other = torch.empty_like(weight) if world.size > 1 else None
        for q in range(world.size):
            (weight if q == world.rank else other).uniform_(-bound, bound)


class ColumnParallelLinear(torch.nn.Module):
    """y = allgather(x) @ weight.T (+ bias) over a row-split x [M/W, in_features]; weight is this
    rank's [out_features/W, in_features], bias (bias=True; zeros) its [out_features/W]; returns
    [M, out_features/W]. max_tokens bounds M (all ranks' rows together). Pass `ag` / `rs` to share
    operators between layers (calls are stream-ordered; each must be sized for every layer it
    serves). keep_gathered_input=False: the backward gathers the input again instead of keeping
    the forward's [M, in_features] gathered copy (see column_parallel_linear). Collective
    construction."""

    def __init__(self, world: _C.World, in_features: int, out_features: int, max_tokens: int, *,
                 bias: bool = False, dtype: torch.dtype = torch.bfloat16, ag: Optional[AGGemm] = None,
                 rs: Optional[GemmRS] = None, keep_gathered_input: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.keep_gathered_input = keep_gathered_input
        local = _shard("ColumnParallelLinear", out_features, world)
        _check_k("ColumnParallelLinear's out_features / world size", local)
        _check_k("ColumnParallelLinear's in_features (the forward's K)", in_features)
        self.weight = torch.nn.Parameter(torch.empty(local, in_features, dtype=dtype, device="cuda"))
        _init_shard(self.weight, in_features, world)
        self.bias = _bias(local, dtype, bias)
        self.ag = ag if ag is not None else AGGemm(world, max_m=max_tokens, max_k=in_features, max_n=local)
        self.rs = rs if rs is not None else GemmRS(world, max_m=max_tokens, max_n=in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return column_parallel_linear(x, self.weight, self.ag, self.rs, self.bias,
                                      keep_gathered_input=self.keep_gathered_input)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features} (this rank: "
                f"{self.weight.shape[0]}), bias={self.bias is not None}, "
                f"keep_gathered_input={self.keep_gathered_input}")


class RowParallelLinear(torch.nn.Module):
    """This rank's rows of x @ W.T summed over the ranks' input features (+ bias): x [M,
    in_features/W], weight this rank's [out_features, in_features/W], bias (bias=True; zeros)
    [out_features] whole on every rank; returns [M/W, out_features]. max_tokens bounds M. `rs` /
    `ag` as for ColumnParallelLinear. Collective construction."""

    def __init__(self, world: _C.World, in_features: int, out_features: int, max_tokens: int, *,
                 bias: bool = False, dtype: torch.dtype = torch.bfloat16, rs: Optional[GemmRS] = None,
                 ag: Optional[AGGemm] = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        local = _shard("RowParallelLinear", in_features, world)
        _check_k("RowParallelLinear's in_features / world size (the forward's K)", local)
        _check_k("RowParallelLinear's out_features", out_features)
        self.weight = torch.nn.Parameter(torch.empty(out_features, local, dtype=dtype, device="cuda"))
        _init_shard(self.weight, in_features, world)
        self.bias = _bias(out_features, dtype, bias)
        self.rs = rs if rs is not None else GemmRS(world, max_m=max_tokens, max_n=out_features)
        self.ag = ag if ag is not None else AGGemm(world, max_m=max_tokens, max_k=out_features, max_n=local)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return row_parallel_linear(x, self.weight, self.rs, self.ag, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features} (this rank: {self.weight.shape[1]}), "
                f"out_features={self.out_features}, bias={self.bias is not None}")
