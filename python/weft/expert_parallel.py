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
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from . import _C
from .tensor_parallel import _input, _stream


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


class ExpertParallel:
    """MoE expert-parallel dispatch and combine over the ranks of one node.

    mode "low_latency" (decode: max_tokens <= 256, every SM, graph-capturable) or "throughput"
    (prefill: a layout step, then num_sms SMs of which send_sms send; host_counts() gives the
    receive counts). num_experts is divisible by the world size; rank r owns experts
    [r E/W, (r+1) E/W). Collective: allocates its staging from the world's symmetric heap."""

    def __init__(self, world: _C.World, num_experts: int = 256, hidden: int = 7168, topk: int = 8,
                 max_tokens: int = 128, mode: str = "low_latency", num_sms: int = 0,
                 send_sms: int = 0, max_recv_pairs: int = 0):
        self.world = world
        self._op = _C.ExpertParallel(world, mode, num_experts, hidden, topk, max_tokens, num_sms,
                                     send_sms, max_recv_pairs)
        self.hidden = hidden
        self._views = {}  # fp8 -> Dispatched: the buffers are the same on every call

    @property
    def capacity(self) -> int:
        """Rows of the receive buffers (and of combine's expert_out)."""
        return self._live().capacity

    def dispatch(self, x: torch.Tensor, topk_idx: torch.Tensor, topk_weights: torch.Tensor,
                 fp8: bool = False) -> Dispatched:
        """x [T, hidden] bfloat16, topk_idx [T, topk] int32 or int64 in [-1, num_experts) (-1: no
        expert), topk_weights [T, topk] float32; all contiguous on this rank's GPU. Every rank
        passes the same fp8."""
        op = self._live()
        op.dispatch(self.world, _input(x), topk_idx, _input(topk_weights), fp8, _stream())
        views = self._views.get(fp8)
        if views is None:
            r = op.results(self.world)
            rows = r["x"].view(torch.float8_e4m3fn) if fp8 else r["x"]
            sources = r["sources"]
            views = Dispatched(rows, r["scales"], sources[:, :3], sources.view(torch.float32)[:, 3],
                               r["expert_counts"], r["expert_offsets"], r["source_rows"])
            self._views[fp8] = views
        return views

    def combine(self, expert_out: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """expert_out: one bfloat16 row per row of the last dispatch, [capacity, hidden] like the
        dispatched x (rows past expert_offsets[-1] are not read), contiguous. Returns out [T of the
        last dispatch, hidden], each token's expert rows summed with its top-k weights in a fixed
        order."""
        op = self._live()
        if out is None:
            out = expert_out.new_empty((op.last_num_tokens, self.hidden))
        op.combine(self.world, _input(expert_out), out, _stream())
        return out

    def host_counts(self) -> dict:
        """The last dispatch's receive counts on the host (expert_counts, expert_offsets,
        source_rows, total_rows): throughput mode; waits for the copy that dispatch enqueued."""
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
        self._op = None

    def _live(self):
        if self._op is None:
            raise _C.Error("weft.ExpertParallel: the operator was closed")
        return self._op
