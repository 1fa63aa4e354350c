"""weft's world and tensor-parallel operators for PyTorch.

Each operator object owns its weft operator (symmetric workspace sized by its max_* arguments,
allocated collectively at construction: construct them in the same order on every rank). Under
torch.compile a call is a torch custom op (torch.ops.weft.ag_gemm / ag_gemm_gathered / all_gather /
gemm_rs / gemm_ar) whose fake
implementation gives the output's shape and which looks the operator up by a handle; eager calls
skip the custom-op dispatch (~35 µs of host time a call on the lent machines) and run directly.
The handle is a constant of each compiled graph, so every operator object compiles its own graph
(torch.compile's cache limit counts them).
"""

from __future__ import annotations

import atexit
import itertools
import os
import sys
import weakref
from typing import Optional

import torch

from . import _C

_world: Optional[_C.World] = None


def init(heap_bytes: int = 0) -> _C.World:
    """Joins the job the environment describes (torchrun, weft run, MPI, Slurm) once per process.

    Collective. Makes the rank's GPU (LOCAL_RANK's) torch's current device. heap_bytes: the
    symmetric heap per rank (0: WEFT_HEAP_BYTES, else 1 GiB); operators take their workspaces
    from it."""
    global _world
    if _world is None:
        _world = _C.World.create(heap_bytes)
        torch.cuda.set_device(_world.device)
        sys.excepthook = _note_failure(sys.excepthook)
    elif heap_bytes:
        raise _C.InvalidArgument("weft.init: the world exists already; heap_bytes applies only to its first call")
    return _world


_failed = False


def _note_failure(previous):
    def hook(kind, value, traceback):
        global _failed
        _failed = True
        previous(kind, value, traceback)

    return hook


@atexit.register
def _release_world():
    global _world
    if _failed and _world is not None:
        # An uncaught exception ends this rank while its peers may still run: the World's
        # collective teardown could wait for them forever. Leave at once (the driver frees the
        # GPU's resources), so that the launcher sees the failure and stops the others.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    # Otherwise drop the package's reference before the interpreter tears modules down, so the
    # World (its NCCL communicator, its heap) is destroyed in order once no operator holds it.
    _world = None


# Operators by handle, for the custom ops (they take plain ints, which torch.compile can trace).
# Weak: an operator the program drops is freed.
_operators: "weakref.WeakValueDictionary[int, object]" = weakref.WeakValueDictionary()
_handles = itertools.count(1)


def _register(op) -> int:
    handle = next(_handles)
    _operators[handle] = op
    return handle


def _operator(handle: int, kind: type):
    op = _operators.get(handle)
    if not isinstance(op, kind):
        raise _C.InvalidArgument(f"weft: no {kind.__name__} with handle {handle} (was it deleted?)")
    return op


def _stream() -> int:
    return torch.cuda.current_stream().cuda_stream


def _input(t: torch.Tensor) -> torch.Tensor:
    # The operators themselves have no backward (weft.nn's layers give AG-GEMM and GEMM-RS one):
    # say so rather than cut the graph silently. (DLPack also refuses tensors that require grad,
    # hence the detach under no_grad / inference and inside weft.nn's autograd functions.)
    if t.requires_grad:
        if torch.is_grad_enabled():
            raise _C.InvalidArgument("weft: the operators have no backward; use weft.nn's "
                                     "ColumnParallelLinear / RowParallelLinear for autograd, or call "
                                     "them under torch.no_grad() or on tensors that do not require grad")
        return t.detach()
    return t


class _checks_or_abandon:  # a context manager, named as one uses it (like contextlib.suppress)
    """Around the Python layer's own checks of one collective call (an input that requires grad,
    an output it allocates), made before the binding's, which abandon the call by themselves:
    where one raises on this rank, abandon() lets the peers end the call at once, naming this
    rank, instead of waiting for it until WEFT_WAIT_TIMEOUT_MS; then the error goes on (abandon
    is best effort: an error of its own is dropped). A class rather than a generator: it is on
    every eager call's path (~0.3 µs instead of ~0.8)."""

    __slots__ = ("_abandon",)

    def __init__(self, abandon):
        self._abandon = abandon

    def __enter__(self):
        return self

    def __exit__(self, kind, error, trace):
        if kind is not None and issubclass(kind, Exception):
            try:
                self._abandon()
            except Exception:
                pass
        return False


class _Operator:
    def __init__(self, world: _C.World):
        self.world = world
        # A plain int for the compiled calls (dynamo cannot call into the World binding).
        self.world_size = world.size
        self.handle = _register(self)

    def close(self):
        """Frees the operator now (after its last eager call; not while a graph holding its calls
        can still replay). Dropping the last reference does the same. Every rank closes its
        operators in the same order (their workspaces are symmetric)."""
        _operators.pop(self.handle, None)
        self._op = None

    def _live(self):
        if self._op is None:
            raise _C.Error(f"weft.{type(self).__name__}: the operator was closed")
        return self._op

    def _checks(self):
        """_checks_or_abandon with the tensor-parallel operators' abandon."""
        op = self._live()
        return _checks_or_abandon(lambda: op.abandon(self.world, _stream()))


class AGGemm(_Operator):
    """AllGather + GEMM (column-parallel): rank r holds a_r [M/W, K] and b_r [N/W, K] and gets
    allgather(a) @ b_r.T, [M, N/W]; optionally also the gathered a [M, K].

    max_m (gathered rows) and max_k size the gather workspace: M x K <= max_m x max_k."""

    def __init__(self, world: _C.World, max_m: int, max_k: int, max_n: int = 65536, strategy: str = ""):
        super().__init__(world)
        self._op = _C.AgGemm(world, max_m, max_k, max_n, strategy)

    def __call__(self, a: torch.Tensor, b: torch.Tensor, gather_a: bool = False, strategy: str = ""):
        if torch.compiler.is_compiling():
            if gather_a:
                return torch.ops.weft.ag_gemm_gathered(a, b, self.handle, self.world_size, strategy)
            return torch.ops.weft.ag_gemm(a, b, self.handle, self.world_size, strategy)
        return self._call_eager(a, b, gather_a, strategy)

    def _call_eager(self, a, b, gather_a, strategy):
        """__call__ run now, its outputs allocated (the custom ops' body too)."""
        with self._checks():
            rows = a.shape[0] * self.world_size
            out = a.new_empty((rows, b.shape[0]))
            gathered = a.new_empty((rows, a.shape[1])) if gather_a else None
        self.run(a, b, out, gathered, strategy)
        return (out, gathered) if gather_a else out

    def run(self, a, b, out, gathered_a=None, strategy: str = "") -> str:
        """Eager call into given outputs; returns the strategy it ran."""
        op = self._live()
        with self._checks():
            a, b = _input(a), _input(b)
        return op.run(self.world, a, b, out, gathered_a, strategy, _stream())

    def all_gather(self, a: torch.Tensor) -> torch.Tensor:
        """allgather(a) alone, [M, K] from every rank's a [M/W, K], without a GEMM (copy engines,
        or one push kernel for small a): e.g. to gather an input again in a backward pass."""
        if torch.compiler.is_compiling():
            return torch.ops.weft.all_gather(a, self.handle, self.world_size)
        return self._all_gather_eager(a)

    def _all_gather_eager(self, a):
        """all_gather run now, its output allocated (the custom ops' body too)."""
        with self._checks():
            out = a.new_empty(_gathered_shape(a, self.world_size))
        self.gather_into(a, out)
        return out

    def gather_into(self, a, out) -> str:
        """Eager all_gather into a given output; returns how it gathered (push_gather,
        copy_engine, or local_copy on one rank)."""
        op = self._live()
        with self._checks():
            a = _input(a)
        return op.all_gather(self.world, a, out, _stream())


class GemmRS(_Operator):
    """GEMM + ReduceScatter (row-parallel): rank r holds a_r [M, K/W] and b_r [N, K/W] and gets
    its [M/W, N] row slice of sum_r a_r @ b_r.T, summed in a fixed order (bitwise repeatable).

    max_m x max_n sizes the workspace."""

    def __init__(self, world: _C.World, max_m: int, max_n: int, strategy: str = ""):
        super().__init__(world)
        self._op = _C.GemmRs(world, max_m, max_n, strategy)

    def __call__(self, a: torch.Tensor, b: torch.Tensor, strategy: str = "") -> torch.Tensor:
        if torch.compiler.is_compiling():
            return torch.ops.weft.gemm_rs(a, b, self.handle, self.world_size, strategy)
        return self._call_eager(a, b, strategy)

    def _call_eager(self, a, b, strategy):
        """__call__ run now, its output allocated (the custom op's body too)."""
        with self._checks():
            out = a.new_empty((a.shape[0] // self.world_size, b.shape[0]))
        self.run(a, b, out, strategy)
        return out

    def run(self, a, b, out, strategy: str = "") -> str:
        """Eager call into a given output; returns the strategy it ran."""
        op = self._live()
        with self._checks():
            a, b = _input(a), _input(b)
        return op.run(self.world, a, b, out, strategy, _stream())


class GemmAR(_Operator):
    """GEMM + AllReduce for decode: rank r holds a_r [M, K/W] and b_r [N, K/W]; every rank gets
    sum_r a_r @ b_r.T, [M, N], the same bits everywhere.

    M x N <= max_m x max_n."""

    def __init__(self, world: _C.World, max_m: int = 256, max_n: int = 8192, strategy: str = ""):
        super().__init__(world)
        self._op = _C.GemmAr(world, max_m, max_n, strategy)

    def __call__(self, a: torch.Tensor, b: torch.Tensor, strategy: str = "") -> torch.Tensor:
        if torch.compiler.is_compiling():
            return torch.ops.weft.gemm_ar(a, b, self.handle, strategy)
        return self._call_eager(a, b, strategy)

    def _call_eager(self, a, b, strategy):
        """__call__ run now, its output allocated (the custom op's body too)."""
        with self._checks():
            out = a.new_empty((a.shape[0], b.shape[0]))
        self.run(a, b, out, strategy)
        return out

    def run(self, a, b, out, strategy: str = "") -> str:
        """Eager call into a given output; returns the strategy it ran."""
        op = self._live()
        with self._checks():
            a, b = _input(a), _input(b)
        return op.run(self.world, a, b, out, strategy, _stream())


# ---- custom ops (torch.compile sees these; eager calls run the operator) ---------------------
# The world size is an argument of the ops whose output shape depends on it, so that a fake
# (shape) function reads only its arguments: the compiled graph then carries it as a constant, and
# a graph compiled for one world size is never taken (e.g. from Inductor's on-disk cache, keyed by
# the graph) for another whose operators have the same handles.


def _world_of(handle: int, kind: type, world: int):
    op = _operator(handle, kind)
    if op.world_size != world:
        raise _C.InvalidArgument(f"weft: {kind.__name__} {handle} spans {op.world_size} ranks, the call says {world}")
    return op


@torch.library.custom_op("weft::ag_gemm", mutates_args=())
def _ag_gemm(a: torch.Tensor, b: torch.Tensor, handle: int, world: int, strategy: str) -> torch.Tensor:
    return _world_of(handle, AGGemm, world)._call_eager(a, b, False, strategy)


@_ag_gemm.register_fake
def _(a, b, handle, world, strategy):
    return a.new_empty((a.shape[0] * world, b.shape[0]))


@torch.library.custom_op("weft::ag_gemm_gathered", mutates_args=())
def _ag_gemm_gathered(a: torch.Tensor, b: torch.Tensor, handle: int, world: int, strategy: str) -> tuple[torch.Tensor, torch.Tensor]:
    return _world_of(handle, AGGemm, world)._call_eager(a, b, True, strategy)


@_ag_gemm_gathered.register_fake
def _(a, b, handle, world, strategy):
    rows = a.shape[0] * world
    return a.new_empty((rows, b.shape[0])), a.new_empty((rows, a.shape[1]))


def _gathered_shape(a: torch.Tensor, world: int) -> tuple[int, int]:
    if a.dim() != 2:
        raise _C.InvalidArgument(f"weft.AGGemm.all_gather: a must be 2-D [rows, cols], got {a.dim()}-D")
    return (a.shape[0] * world, a.shape[1])


@torch.library.custom_op("weft::all_gather", mutates_args=())
def _all_gather(a: torch.Tensor, handle: int, world: int) -> torch.Tensor:
    return _world_of(handle, AGGemm, world)._all_gather_eager(a)


@_all_gather.register_fake
def _(a, handle, world):
    return a.new_empty(_gathered_shape(a, world))


# weft::all_gather with one more input that it does not read: a gather that must stay after
# `after` in a traced graph. weft.nn's backward passes its output gradient there, so that
# torch.compile's partitioner (which moves work needing no gradient into the forward and saves
# its result) keeps the input's second gathering in the backward, where keep_gathered_input=False
# wants it.
@torch.library.custom_op("weft::all_gather_after", mutates_args=())
def _all_gather_after(a: torch.Tensor, after: torch.Tensor, handle: int, world: int) -> torch.Tensor:
    return _world_of(handle, AGGemm, world)._all_gather_eager(a)


@_all_gather_after.register_fake
def _(a, after, handle, world):
    return a.new_empty(_gathered_shape(a, world))


@torch.library.custom_op("weft::gemm_rs", mutates_args=())
def _gemm_rs(a: torch.Tensor, b: torch.Tensor, handle: int, world: int, strategy: str) -> torch.Tensor:
    return _world_of(handle, GemmRS, world)._call_eager(a, b, strategy)


@_gemm_rs.register_fake
def _(a, b, handle, world, strategy):
    return a.new_empty((a.shape[0] // world, b.shape[0]))


@torch.library.custom_op("weft::gemm_ar", mutates_args=())
def _gemm_ar(a: torch.Tensor, b: torch.Tensor, handle: int, strategy: str) -> torch.Tensor:
    return _operator(handle, GemmAR)._call_eager(a, b, strategy)


@_gemm_ar.register_fake
def _(a, b, handle, strategy):
    return a.new_empty((a.shape[0], b.shape[0]))


def _mark_collective(*ops) -> None:
    """Marks custom ops as having side effects, so that torch.compile never drops a call whose
    result goes unused: every rank must make each collective call (torch.fx.node.has_side_effect,
    where this torch has it)."""
    import torch.fx.node

    mark = getattr(torch.fx.node, "has_side_effect", None)
    if mark is not None:
        for op in ops:
            mark(op)


_mark_collective(torch.ops.weft.ag_gemm.default, torch.ops.weft.ag_gemm_gathered.default,
                 torch.ops.weft.all_gather.default, torch.ops.weft.all_gather_after.default,
                 torch.ops.weft.gemm_rs.default,
                 torch.ops.weft.gemm_ar.default)
