"""weft's MoE expert-parallel dispatch and combine for PyTorch.

    ep = weft.ExpertParallel(world, num_experts=256, hidden=7168, topk=8, max_tokens=128)
    d = ep.dispatch(x, topk_idx, topk_weights, fp8=True)   # this rank's rows, grouped by expert
    y = experts(d.x, d.scales, d.expert_offsets)           # one output row per received row
    out = ep.combine(y)                                    # [T, hidden] on every token's home rank

The dispatch's tensors are views of the operator's receive buffers (no copy): they stay valid
until the next dispatch on the operator. Both calls run on torch's current stream with no host
synchronization; in low-latency mode they capture into CUDA graphs (keep T the same across the
replays of one graph). Ranks construct and call the operator in the same order with the same
configuration; each rank's T may differ.

Under torch.compile both calls are custom ops: torch.ops.weft.ep_dispatch mutates the receive
buffers (so what reads the views is ordered after it; the views alias the buffers as in eager
code), torch.ops.weft.ep_combine reads them (so it follows its dispatch) and returns a new
[T, hidden] tensor.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from . import _C
from .tensor_parallel import _checks_or_abandon, _input, _mark_collective, _Operator, _operator, _stream


class Dispatched(NamedTuple):
    """One dispatch's result on this rank. Rows are the (token, local expert) pairs it received,
    expert e's at [expert_offsets[e], expert_offsets[e + 1]), ordered by (source rank, token,
    top-k slot); tensors hold `capacity` rows, of which expert_offsets[-1] are valid."""

    x: torch.Tensor  # [capacity, hidden] bfloat16, or float8_e4m3fn with fp8
    scales: Optional[torch.Tensor]  # [capacity, hidden / 128] float32 (fp8: x ~= x8 * scale)
    sources: torch.Tensor  # [capacity, 3] int32: home rank, token on it, top-k slot
    weights: torch.Tensor  # [capacity] float32: the token's top-k weight for this expert
    expert_counts: torch.Tensor  # [num_experts / W] int32
    expert_offsets: torch.Tensor  # [num_experts / W + 1] int32
    source_rows: torch.Tensor  # [W] int32: tokens received from each rank


class ExpertParallel(_Operator):
    """MoE expert-parallel dispatch and combine over the ranks of one node.

    mode "low_latency" (decode: max_tokens <= 256, every SM, graph-capturable) or "throughput"
    (prefill: a layout step, then num_sms SMs of which send_sms send; host_counts() gives the
    receive counts). num_experts is divisible by the world size; rank r owns experts
    [r E/W, (r+1) E/W). Collective: allocates its staging from the world's symmetric heap."""

    def __init__(self, world: _C.World, num_experts: int = 256, hidden: int = 7168, topk: int = 8,
                 max_tokens: int = 128, mode: str = "low_latency", num_sms: int = 0,
                 send_sms: int = 0, max_recv_pairs: int = 0):
        super().__init__(world)
        self._op = _C.ExpertParallel(world, mode, num_experts, hidden, topk, max_tokens, num_sms,
                                     send_sms, max_recv_pairs)
        # Plain ints (a compiled graph reads these, not the nanobind objects).
        self.hidden = hidden
        self.experts_local = num_experts // world.size
        self.world_size = world.size
        b = self._op.buffers(world)  # the receive buffers whole (each holds the operator)
        self._buffers = (b["rows"], b["scales"], b["sources"], b["counts"])
        self._views = {}  # fp8 -> Dispatched: the buffers are the same on every call
        self._num_tokens = 0  # T of the last dispatch called (traced calls included)

    @property
    def capacity(self) -> int:
        """Rows of the receive buffers (and of combine's expert_out)."""
        return self._live().capacity

    def dispatch(self, x: torch.Tensor, topk_idx: torch.Tensor, topk_weights: torch.Tensor,
                 fp8: bool = False) -> Dispatched:
        """x [T, hidden] bfloat16, topk_idx [T, topk] int32 or int64 in [-1, num_experts) (-1: no
        expert), topk_weights [T, topk] float32; all contiguous on this rank's GPU. Every rank
        passes the same fp8."""
        if torch.compiler.is_compiling():
            self._traceable()
            torch.ops.weft.ep_dispatch(x, topk_idx, topk_weights, self.handle, fp8, *self._buffers)
            self._num_tokens = x.shape[0]
            return self._slice(fp8)  # views of the mutated buffers, made inside the graph
        self._run_dispatch(x, topk_idx, topk_weights, fp8)
        self._num_tokens = x.shape[0]
        views = self._views.get(fp8)
        if views is None:
            views = self._views[fp8] = self._slice(fp8)
        return views

    def combine(self, expert_out: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """expert_out: one bfloat16 row per row of the last dispatch, [capacity, hidden] like the
        dispatched x (rows past expert_offsets[-1] are not read), contiguous. Returns out [T of the
        last dispatch, hidden], each token's expert rows summed with its top-k weights in a fixed
        order."""
        if torch.compiler.is_compiling():
            self._traceable()
            _, _, sources, counts = self._buffers
            if out is None:
                return torch.ops.weft.ep_combine(expert_out, sources, counts, self.handle,
                                                 self._num_tokens)
            torch.ops.weft.ep_combine_out(expert_out, sources, counts, self.handle, out)
            return out
        if out is None:
            return self._combine_eager(expert_out, self._live().last_num_tokens)
        self._run_combine(expert_out, out)
        return out

    def host_counts(self) -> dict:
        """The last dispatch's receive counts on the host (expert_counts, expert_offsets,
        source_rows, total_rows, and abandoned_by: bit s set where rank s abandoned that dispatch,
        which is then void): throughput mode; waits for the copy that dispatch enqueued."""
        return self._live().host_counts()

    def check_errors(self) -> None:
        """Raises weft.InvalidArgument if a finished dispatch saw bad device-resident input (an
        expert id out of range, a receive-capacity overflow). Synchronize the stream first."""
        self._live().check_errors()

    def close(self) -> None:
        """Releases the operator: it is freed once no Dispatched of it is left (the views hold
        it), after its last eager call and not while a graph holding its calls can still replay.
        Every rank releases its operators in the same order (their staging is symmetric), so drop
        the views first."""
        self._views = {}
        self._buffers = ()
        super().close()

    def _traceable(self) -> None:
        # (The nanobind operator is not traced: whether it is closed is a Python attribute.)
        if self._op is None:
            raise _C.Error("weft.ExpertParallel: the operator was closed")

    def _combine_checks(self):
        """_checks_or_abandon with the combine's abandon."""
        op = self._live()
        return _checks_or_abandon(lambda: op.abandon_combine(self.world, _stream()))

    def _run_dispatch(self, x, topk_idx, topk_weights, fp8):
        op = self._live()
        with _checks_or_abandon(lambda: op.abandon_dispatch(self.world, fp8, _stream())):
            x, topk_weights = _input(x), _input(topk_weights)
        op.dispatch(self.world, x, topk_idx, topk_weights, fp8, _stream())

    def _combine_eager(self, expert_out, num_tokens):
        """combine run now, its output allocated (the custom op's body too)."""
        with self._combine_checks():
            out = expert_out.new_empty((num_tokens, self.hidden))
        self._run_combine(expert_out, out)
        return out

    def _run_combine(self, expert_out, out):
        op = self._live()
        with self._combine_checks():
            expert_out = _input(expert_out)
        op.combine(self.world, expert_out, out, _stream())

    def _slice(self, fp8: bool) -> Dispatched:
        """The views of one format's results in the receive buffers."""
        rows, scales, sources, counts = self._buffers
        cap, el, W = rows.shape[0], self.experts_local, self.world_size
        if fp8:
            x = rows.view(-1)[: cap * self.hidden].view(cap, self.hidden).view(torch.float8_e4m3fn)
        else:
            x = rows.view(torch.bfloat16)
        return Dispatched(x, scales if fp8 else None, sources[:, :3],
                          sources.view(torch.float32)[:, 3], counts[:el], counts[el:2 * el + 1],
                          counts[2 * el + 1:2 * el + 1 + W])


# ---- custom ops (torch.compile sees these; eager calls run the operator directly) -------------
#
# The receive buffers are arguments so that torch orders the calls by them: the dispatch mutates
# them, and the combine reads sources and counts (the dispatch's bookkeeping it uses lives beside
# them in the operator). num_tokens is the dispatch's T, which sizes the combine's result.
#
# The kernels write the operator's own buffers. Inductor (torch.compile's default backend) hands
# the dispatch those very tensors; a backend that does not write in place (aot_eager, say) hands
# it copies, which it then takes as the new values of the buffers: the dispatch copies its results
# into them (correct, at a copy of the buffers per call).


@torch.library.custom_op("weft::ep_dispatch", mutates_args=("rows", "scales", "sources", "counts"))
def _ep_dispatch(x: torch.Tensor, topk_idx: torch.Tensor, topk_weights: torch.Tensor, handle: int,
                 fp8: bool, rows: torch.Tensor, scales: torch.Tensor, sources: torch.Tensor,
                 counts: torch.Tensor) -> None:
    op = _operator(handle, ExpertParallel)
    op._run_dispatch(x, topk_idx, topk_weights, fp8)
    for given, own in zip((rows, scales, sources, counts), op._buffers):
        if given.data_ptr() != own.data_ptr():
            given.copy_(own)


@_ep_dispatch.register_fake
def _(x, topk_idx, topk_weights, handle, fp8, rows, scales, sources, counts):
    return None


@torch.library.custom_op("weft::ep_combine", mutates_args=())
def _ep_combine(expert_out: torch.Tensor, sources: torch.Tensor, counts: torch.Tensor, handle: int,
                num_tokens: int) -> torch.Tensor:
    return _operator(handle, ExpertParallel)._combine_eager(expert_out, num_tokens)


@_ep_combine.register_fake
def _(expert_out, sources, counts, handle, num_tokens):
    return expert_out.new_empty((num_tokens, _operator(handle, ExpertParallel).hidden))


@torch.library.custom_op("weft::ep_combine_out", mutates_args=("out",))
def _ep_combine_out(expert_out: torch.Tensor, sources: torch.Tensor, counts: torch.Tensor,
                    handle: int, out: torch.Tensor) -> None:
    _operator(handle, ExpertParallel)._run_combine(expert_out, out)


@_ep_combine_out.register_fake
def _(expert_out, sources, counts, handle, out):
    return None


# Collective calls: never dropped from a graph when their result goes unused (a rank that skipped
# one would leave its peers waiting).
_mark_collective(torch.ops.weft.ep_dispatch.default, torch.ops.weft.ep_combine.default,
                 torch.ops.weft.ep_combine_out.default)
