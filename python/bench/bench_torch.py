"""weft's operators called from PyTorch, beside what a PyTorch program would do without weft
(torch.matmul and torch.distributed's NCCL collectives), in the same run. One process per GPU:

    torchrun --nproc-per-node 4 python/bench/bench_torch.py [--out bench/results/python.jsonl] [--only tp,ep,nn]

Parts: tp (the tensor-parallel operators), ep (the MoE dispatch and combine), nn (a training step,
forward and backward, of an MLP of weft.nn's layers against the same math on torch.distributed's
collectives; also with the up layer's input gathered again in the backward instead of kept, on
both sides).

Two figures per variant, slowest rank, median of three rounds in which weft and the baseline
alternate (inputs random, the same for both sides):
- the main one ("weft_us", "baselines"): the host runs ahead, as in a model's loop: iterations
  of (device barrier, one eager call) queue back to back on torch's current stream, events around
  them all, time per iteration;
- "synced_us": one call at a time (barrier, events around the call, wait), so each call's host
  time (Python, the binding, the operator's own host work) shows wherever it exceeds the GPU's.
Graph replays, where given, leave host time out altogether. weft's calls allocate their outputs,
the baselines write preallocated ones. The MoE baseline moves T k H elements per rank (the
issue's definition; weft moves each token once per destination rank).

Before a row is timed, weft's result is compared with the baseline's on every rank (relative
Frobenius error of the output, or of every gradient for the MLP steps); a row whose comparison
fails is not written, and the run exits 1. The MoE rows are not compared here (the baseline
moves other bytes; python/tests/test_ep_torch.py checks the dispatch and combine) and say so.
"""

import argparse
import json
import os
import statistics
import subprocess
import time

import torch
import torch.distributed as dist

import weft


def timed(world, fn, iters, warmup):
    stream = torch.cuda.current_stream()
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        world.barrier(stream.cuda_stream)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    median = torch.tensor([statistics.median(times)], device="cuda")
    dist.all_reduce(median, op=dist.ReduceOp.MAX)
    return median.item()


def ahead(world, fn, iters, warmup):
    stream = torch.cuda.current_stream()
    for _ in range(warmup):
        fn()
    world.barrier(stream.cuda_stream)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        world.barrier(stream.cuda_stream)
        fn()
    end.record()
    end.synchronize()
    per_iter = torch.tensor([start.elapsed_time(end) * 1e3 / iters], device="cuda")
    dist.all_reduce(per_iter, op=dist.ReduceOp.MAX)
    return per_iter.item()


def graph_of(fn):
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


def head_to_head(world, variants, iters, warmup, rounds=3, how=None):
    how = how or ahead
    best = {name: [] for name in variants}
    for r in range(rounds):
        for name, fn in (variants.items() if r % 2 == 0 else reversed(variants.items())):
            best[name].append(how(world, fn, iters, warmup))
    return {name: statistics.median(v) for name, v in best.items()}


def rand(*shape, dtype=torch.bfloat16, scale=1.0):
    return (torch.randn(*shape, device="cuda") * scale).to(dtype)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="", help="append JSON rows here (rank 0)")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--only", default="tp,ep,nn", help="comma-separated parts: tp, ep, nn")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    local = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    world = weft.init()
    W, rank = world.size, world.rank
    card = torch.cuda.get_device_name()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    commit = os.environ.get("WEFT_COMMIT", commit)
    rows = []
    torch.manual_seed(1000 + rank)  # each rank its own inputs (and, for the MoE rows, routing)

    def emit(op, shape, weft_us, baselines, main, extra=None, synced=None):
        row = {"op": op, "shape": shape, "dtype": "bf16", "world": W, "device": card,
               "weft_us": round(weft_us, 3), "baselines": {k: round(v, 3) for k, v in baselines.items()},
               "ratio": round(baselines[main] / weft_us, 4), "main_baseline": main, "via": "python",
               "commit": commit, "date": time.strftime("%Y-%m-%d")}
        row.update(extra or {})
        if synced:
            row["synced_us"] = {k: round(v, 3) for k, v in synced.items()}
        rows.append(row)
        if rank == 0:
            base = "  ".join(f"{k} {v:9.1f} us" for k, v in baselines.items())
            sync = f"  synced: {', '.join(f'{k} {v:.1f}' for k, v in (synced or {}).items())}" if synced else ""
            print(f"{op:<12} {str(shape):<34} weft {weft_us:9.1f} us  {base}  ({row['ratio']:.2f}x){sync}", flush=True)

    failures = []

    def compare(op, shape, weft_fn, base_fn, base, short="torch", iters=args.iters, graphs=False,
                check=None):
        """One row: weft_fn against base_fn (the row's baseline `base`; `short` in synced_us), host
        ahead (the main figure) and one call at a time, in alternating rounds; with graphs, also
        both replayed from CUDA graphs. `check()` (collective) returns (ok, text) for this rank:
        the row is written only when it holds on every rank."""
        if check is None:
            verdict = "not compared (the baseline moves other bytes)"
        else:
            ok, text = check()
            bad = torch.tensor([0 if ok else 1], device="cuda")
            dist.all_reduce(bad)
            if bad.item():
                failures.append(op)
                if rank == 0 or not ok:
                    print(f"{op:<12} {str(shape):<34} CHECK FAILED on {bad.item()} rank(s); rank {rank}: {text}", flush=True)
                return
            verdict = f"ok ({text}, rank {rank})"
        variants = {"weft": weft_fn, short: base_fn}
        t = head_to_head(world, variants, iters, args.warmup)
        ts = head_to_head(world, variants, iters, args.warmup, how=timed)
        extra = None
        if graphs:
            g = head_to_head(world, {name: graph_of(fn) for name, fn in variants.items()}, iters, args.warmup)
            extra = {"graph_us": {"weft": round(g["weft"], 3), base: round(g[short], 3)}}
        extra = dict(extra or {}, check=verdict, iters=iters,
                     timing="host ahead, mean per iteration; median of 3 rounds")
        emit(op, shape, t["weft"], {base: t[short]}, base, extra, synced=ts)

    if "tp" in parts:
        tensor_parallel_rows(world, W, compare)
    if "ep" in parts:
        expert_parallel_rows(world, compare, args.iters)
    if "nn" in parts:
        mlp_rows(world, W, compare)

    if rank == 0 and args.out:
        with open(args.out, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    dist.destroy_process_group()
    if failures and rank == 0:
        print(f"checks failed, no rows for: {', '.join(failures)}")
    return 1 if failures else 0


def relative_error(got, want):
    return ((got.float() - want.float()).norm() / want.float().norm().clamp_min(1e-30)).item()


def outputs_close(weft_fn, base_fn, base_out, tol=2e-2):
    """A check for compare(): weft_fn()'s result against base_out after base_fn()."""
    def check():
        base_fn()
        err = relative_error(weft_fn(), base_out)
        return err <= tol, f"relative error {err:.1e}"
    return check


def tensor_parallel_rows(world, W, compare):
    rs = weft.GemmRS(world, max_m=8192, max_n=8192)
    for m, n, k in ((8192, 8192, 8192), (1024, 8192, 28672), (4096, 8192, 28672), (8192, 8192, 28672)):
        a, b = rand(m, k // W, scale=0.02), rand(n, k // W, scale=0.02)
        part = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
        out = torch.empty(m // W, n, dtype=torch.bfloat16, device="cuda")

        def torch_seq():
            torch.matmul(a, b.T, out=part)
            dist.reduce_scatter_tensor(out, part)

        compare("gemm_rs", {"M": m, "N": n, "K": k}, lambda: rs(a, b), torch_seq,
                "torch_matmul_then_reduce_scatter", check=outputs_close(lambda: rs(a, b), torch_seq, out))
    rs.close()

    ag = weft.AGGemm(world, max_m=8192, max_k=8192)
    for m, n, k in ((8192, 8192, 8192), (1024, 28672, 8192), (4096, 28672, 8192), (8192, 28672, 8192)):
        a, b = rand(m // W, k, scale=0.02), rand(n // W, k, scale=0.02)
        gathered = torch.empty(m, k, dtype=torch.bfloat16, device="cuda")
        out = torch.empty(m, n // W, dtype=torch.bfloat16, device="cuda")

        def torch_seq():
            dist.all_gather_into_tensor(gathered, a)
            torch.matmul(gathered, b.T, out=out)

        compare("ag_gemm", {"M": m, "N": n, "K": k}, lambda: ag(a, b), torch_seq,
                "torch_all_gather_then_matmul", check=outputs_close(lambda: ag(a, b), torch_seq, out))
    ag.close()

    ar = weft.GemmAR(world, max_m=256, max_n=8192)
    for m in (16, 64, 256):
        n = k = 8192
        a, b = rand(m, k // W, scale=0.02), rand(n, k // W, scale=0.02)
        out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")

        def torch_seq():
            torch.matmul(a, b.T, out=out)
            dist.all_reduce(out)

        compare("gemm_ar", {"M": m, "N": n, "K": k}, lambda: ar(a, b), torch_seq,
                "torch_matmul_then_all_reduce", graphs=True,
                check=outputs_close(lambda: ar(a, b), torch_seq, out))
    ar.close()


def expert_parallel_rows(world, compare, iters):
    # MoE low latency: T = 128, H = 7168, k = 8, E = 256; NCCL all_to_all_single of T k H
    # elements (the baseline), eager and as graph replays.
    T, H, K, E = 128, 7168, 8, 256
    ep = weft.ExpertParallel(world, num_experts=E, hidden=H, topk=K, max_tokens=T)
    x = rand(T, H)
    ids = torch.stack([torch.randperm(E, device="cuda")[:K] for _ in range(T)]).to(torch.int32)
    w = torch.rand(T, K, device="cuda")
    for fp8 in (True, False):
        send = torch.empty(T * K * H * (1 if fp8 else 2), dtype=torch.uint8, device="cuda")
        recv = torch.empty_like(send)
        dispatch = lambda: ep.dispatch(x, ids, w, fp8=fp8)
        a2a = lambda: dist.all_to_all_single(recv, send)
        compare("ep_dispatch", {"T": T, "H": H, "topk": K, "E": E, "mode": "low_latency", "fp8": fp8},
                dispatch, a2a, "torch_nccl_all_to_all_single", "nccl", iters=iters * 3, graphs=True)
    d = ep.dispatch(x, ids, w)
    y = d.x.clone()
    send = torch.empty(T * K * H * 2, dtype=torch.uint8, device="cuda")
    recv = torch.empty_like(send)
    combine = lambda: ep.combine(y)
    a2a = lambda: dist.all_to_all_single(recv, send)
    compare("ep_combine", {"T": T, "H": H, "topk": K, "E": E, "mode": "low_latency"}, combine, a2a,
            "torch_nccl_all_to_all_single", "nccl", iters=iters * 3, graphs=True)
    ep.close()


class _TorchColumn(torch.autograd.Function):
    """The column-parallel layer as a PyTorch program writes it without weft (Megatron-LM's
    sequence parallelism, no overlap): all-gather, then matmul; backward matmul, then
    reduce-scatter. With keep=False it keeps only the input's rows and gathers them again in the
    backward for the weight's gradient (after the reduce-scatter)."""

    @staticmethod
    def forward(ctx, x, w, keep=True):
        full = x.new_empty((x.shape[0] * dist.get_world_size(), x.shape[1]))
        dist.all_gather_into_tensor(full, x)
        ctx.save_for_backward(full if keep else x, w)
        ctx.keep = keep
        return full @ w.t()

    @staticmethod
    def backward(ctx, dy):
        saved, w = ctx.saved_tensors
        dfull = dy @ w
        dx = dfull.new_empty((dfull.shape[0] // dist.get_world_size(), dfull.shape[1]))
        dist.reduce_scatter_tensor(dx, dfull)
        full = saved
        if not ctx.keep:
            full = saved.new_empty((saved.shape[0] * dist.get_world_size(), saved.shape[1]))
            dist.all_gather_into_tensor(full, saved)
        return dx, dy.t() @ full, None


class _TorchRow(torch.autograd.Function):
    """The row-parallel layer likewise: matmul, then reduce-scatter; backward all-gather, then
    matmul."""

    @staticmethod
    def forward(ctx, x, w):
        part = x @ w.t()
        y = part.new_empty((part.shape[0] // dist.get_world_size(), part.shape[1]))
        dist.reduce_scatter_tensor(y, part)
        ctx.save_for_backward(x, w)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        full = dy.new_empty((dy.shape[0] * dist.get_world_size(), dy.shape[1]))
        dist.all_gather_into_tensor(full, dy.contiguous())
        return full @ w, full.t() @ x


def mlp_rows(world, W, compare):
    """A training step of a tensor-parallel MLP (column-parallel up, GELU, row-parallel down;
    sequence-parallel rows in and out): weft.nn's layers against the same math on
    torch.distributed's collectives, forward and backward."""
    import weft.nn

    for m, h, inner in ((4096, 8192, 28672), (8192, 8192, 28672)):
        up = weft.nn.ColumnParallelLinear(world, h, inner, max_tokens=m)
        down = weft.nn.RowParallelLinear(world, inner, h, max_tokens=m)
        with torch.no_grad():
            up.weight.mul_(0.5)
            down.weight.mul_(0.5)
        x = rand(m // W, h, scale=0.5).requires_grad_()
        g = rand(m // W, h)

        def step(forward):
            def run():
                x.grad = up.weight.grad = down.weight.grad = None
                forward().backward(g)
            return run

        def same_gradients(a_step, b_step, tol=3e-2):
            def check():
                grads = []
                for fn in (a_step, b_step):
                    fn()
                    grads.append([t.grad.clone() for t in (x, up.weight, down.weight)])
                errs = [relative_error(got, want) for got, want in zip(*grads)]
                return max(errs) <= tol, "gradient relative errors " + ", ".join(f"{e:.1e}" for e in errs)
            return check

        weft_step = step(lambda: down(torch.nn.functional.gelu(up(x))))
        torch_step = step(lambda: _TorchRow.apply(torch.nn.functional.gelu(_TorchColumn.apply(x, up.weight)), down.weight))
        compare("mlp_train_step", {"M": m, "hidden": h, "inner": inner}, weft_step, torch_step,
                "torch_sequence_parallel_nccl", iters=10, check=same_gradients(weft_step, torch_step))
        # The same step keeping only the up layer's input rows (gathered again in the backward),
        # against torch doing the same.
        up.keep_gathered_input = False
        torch_regather = step(lambda: _TorchRow.apply(
            torch.nn.functional.gelu(_TorchColumn.apply(x, up.weight, False)), down.weight))
        compare("mlp_train_step_regather", {"M": m, "hidden": h, "inner": inner}, weft_step,
                torch_regather, "torch_sequence_parallel_nccl_regather", iters=10,
                check=same_gradients(weft_step, torch_regather))
        for op in (up.ag, up.rs, down.rs, down.ag):
            op.close()


if __name__ == "__main__":
    raise SystemExit(main())
