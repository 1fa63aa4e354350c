"""The PyTorch layer's tensor-parallel operators on GPUs, against torch.distributed (NCCL) and
torch.matmul in fp32. Run one process per GPU:

    torchrun --nproc-per-node 4 python/tests/test_tp_torch.py

Checks, per operator and dtype: fresh random inputs (the seed changes every run and is printed),
outputs poisoned with NaN before each eager call, odd row counts and one row per rank, a column
slice as input (leading dimension > width), the gathered A of AG-GEMM, repeated calls giving the
same bits, CUDA graph capture then replays with changing inputs, torch.compile(fullgraph=True),
b as a transposed view (read in place by the cuBLAS strategies), AGGemm.all_gather alone, and
arguments the operators must reject. Exits non-zero on any rank's failure.
"""

import sys

import torch
import torch.distributed as dist

import weft
from torch_harness import Run

DTYPES = (torch.bfloat16, torch.float16)


def close(name, got, want, dtype, rounded_terms):
    # The output is rounded once to dtype, and GEMM-RS / GEMM-AR also sum W partials each rounded
    # to dtype: a bound of twice the unit roundoff per rounding, relative to the largest value.
    u = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11
    tol = 2 * u * (rounded_terms + 1) * max(want.abs().max().item(), 1e-3)
    err = (got.float() - want).abs().max().item() if got.numel() else 0.0
    if not err <= tol:  # also catches NaN (poison left in place)
        raise AssertionError(f"{name}: max |error| {err:.4g} > {tol:.4g}")


def rand(rows, cols, dtype, gen, scale):
    return (torch.randn(rows, cols, generator=gen, device="cuda") * scale).to(dtype)


def all_gather_rows(x):
    out = x.new_empty((x.shape[0] * dist.get_world_size(), x.shape[1]))
    dist.all_gather_into_tensor(out, x.contiguous())
    return out


def check_gemm_rs(op, W, dtype, gen, m, n, k):
    a = rand(m, k, dtype, gen, k**-0.5 / W**0.5)
    b = rand(n, k, dtype, gen, 1.0)
    full = a.float() @ b.float().T
    want = torch.empty(m // W, n, device="cuda")
    dist.reduce_scatter_tensor(want, full)
    out = torch.full((m // W, n), float("nan"), dtype=dtype, device="cuda")
    strategy = op.run(a, b, out)
    close(f"gemm_rs {dtype} {m}x{n}x{k} ({strategy})", out, want, dtype, W)
    again = op(a, b)
    assert torch.equal(again, out), f"gemm_rs {m}x{n}x{k}: a repeated call gave other bits"
    return strategy


def check_ag_gemm(op, W, dtype, gen, m_local, n, k):
    a = rand(m_local, k, dtype, gen, k**-0.5)
    b = rand(n, k, dtype, gen, 1.0)
    gathered_ref = all_gather_rows(a)
    want = gathered_ref.float() @ b.float().T
    out = torch.full((m_local * W, n), float("nan"), dtype=dtype, device="cuda")
    gathered = torch.full((m_local * W, k), float("nan"), dtype=dtype, device="cuda")
    strategy = op.run(a, b, out, gathered)
    close(f"ag_gemm {dtype} {m_local}x{n}x{k} ({strategy})", out, want, dtype, 0)
    assert torch.equal(gathered, gathered_ref), f"ag_gemm {m_local}x{n}x{k}: gathered A differs"
    out2, gathered2 = op(a, b, gather_a=True)
    assert torch.equal(out2, out) and torch.equal(gathered2, gathered_ref)
    return strategy


def check_gemm_ar(op, W, dtype, gen, m, n, k):
    a = rand(m, k, dtype, gen, k**-0.5 / W**0.5)
    b = rand(n, k, dtype, gen, 1.0)
    want = a.float() @ b.float().T
    dist.all_reduce(want)
    out = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")
    strategy = op.run(a, b, out)
    close(f"gemm_ar {dtype} {m}x{n}x{k} ({strategy})", out, want, dtype, W)
    everyone = all_gather_rows(out)
    for r in range(W):
        assert torch.equal(everyone[r * m : (r + 1) * m], out), "gemm_ar: ranks hold different bits"
    return strategy


def check_gemm_rs_named(op, W, gen, strategy):
    m, n, k, dtype = 256 * W, 384, 256, torch.bfloat16
    a = rand(m, k, dtype, gen, k**-0.5 / W**0.5)
    b = rand(n, k, dtype, gen, 1.0)
    want = torch.empty(m // W, n, device="cuda")
    dist.reduce_scatter_tensor(want, a.float() @ b.float().T)
    out = torch.full((m // W, n), float("nan"), dtype=dtype, device="cuda")
    ran = op.run(a, b, out, strategy)
    close(f"gemm_rs {strategy}", out, want, dtype, W)
    return ran


def check_ag_gemm_named(op, W, gen, strategy):
    m_local, n, k, dtype = 256, 384, 256, torch.bfloat16
    a = rand(m_local, k, dtype, gen, k**-0.5)
    b = rand(n, k, dtype, gen, 1.0)
    want = all_gather_rows(a).float() @ b.float().T
    out = torch.full((m_local * W, n), float("nan"), dtype=dtype, device="cuda")
    ran = op.run(a, b, out, None, strategy)
    close(f"ag_gemm {strategy}", out, want, dtype, 0)
    return ran


def check_gemm_ar_named(op, W, gen, strategy):
    m, n, k, dtype = 64, 1024, 256, torch.bfloat16
    a = rand(m, k, dtype, gen, k**-0.5 / W**0.5)
    b = rand(n, k, dtype, gen, 1.0)
    want = a.float() @ b.float().T
    dist.all_reduce(want)
    out = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")
    ran = op.run(a, b, out, strategy)
    close(f"gemm_ar {strategy}", out, want, dtype, W)
    return ran


def check_ag_gemm_strided(op, W, gen):
    # b, out and gathered_a as column slices of wider tensors (leading dimension > width, 16-byte
    # aligned); the padding columns must keep their sentinel.
    m_local, n, k, dtype = 96, 200, 128, torch.bfloat16
    a = rand(m_local, k, dtype, gen, k**-0.5)
    b_wide = rand(n, k + 64, dtype, gen, 1.0)
    b = b_wide[:, 64:]
    out_wide = torch.full((m_local * W, n + 56), 7.0, dtype=dtype, device="cuda")
    out = out_wide[:, :n]
    g_wide = torch.full((m_local * W, k + 24), 7.0, dtype=dtype, device="cuda")
    gathered = g_wide[:, 8 : 8 + k]
    out.fill_(float("nan"))
    gathered.fill_(float("nan"))
    for strategy in ("", "decomposed_per_chunk", "push_gather"):
        ran = op.run(a, b, out, gathered, strategy)
        gathered_ref = all_gather_rows(a)
        close(f"ag_gemm strided ({ran})", out, gathered_ref.float() @ b.float().T, dtype, 0)
        assert torch.equal(gathered, gathered_ref), f"ag_gemm strided ({ran}): gathered A differs"
        assert (out_wide[:, n:] == 7.0).all() and (g_wide[:, :8] == 7.0).all() and (g_wide[:, 8 + k :] == 7.0).all(), \
            f"ag_gemm strided ({ran}): wrote outside the slices"
    return None


def check_all_gather(ag, ag_ce, W, gen):
    # AGGemm.all_gather alone, both ways it gathers (push_gather fits every size the first
    # operator holds; the second's default strategy sends the copy engines), bit for bit against
    # NCCL: every dtype, odd and one-row shapes, a column slice as input, under torch.compile.
    for op, want in ((ag, "push_gather"), (ag_ce, "copy_engine")):
        for d in DTYPES:
            for m_local, k in ((333, 200), (1, 64)):
                a = rand(m_local, k, d, gen, 1.0)
                out = torch.full((m_local * W, k), float("nan"), dtype=d, device="cuda")
                ran = op.gather_into(a, out)
                assert ran == want, f"all_gather ran {ran}, expected {want}"
                assert torch.equal(out, all_gather_rows(a)), f"all_gather ({ran}, {d}, {m_local}x{k}) differs"
        a = rand(96, 256, torch.bfloat16, gen, 1.0)[:, 64:192]
        assert torch.equal(op.all_gather(a), all_gather_rows(a)), f"all_gather ({want}) of a column slice differs"
        compiled = torch.compile(lambda x: op.all_gather(x) * 2, fullgraph=True)
        assert torch.equal(compiled(a), all_gather_rows(a) * 2), f"compiled all_gather ({want}) differs"
    return None


def check_graph(rs, W, gen):
    # Capture once after an eager call (operators tune on their first call), replay with new
    # inputs copied into the captured ones.
    m, n, k, dtype = 64 * W, 256, 128, torch.bfloat16
    a = rand(m, k, dtype, gen, k**-0.5)
    b = rand(n, k, dtype, gen, 1.0)
    rs(a, b)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = rs(a, b)
    rs(a, b, strategy="decomposed")
    torch.cuda.synchronize()
    graph_ce = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph_ce):
        out_ce = rs(a, b, strategy="decomposed")
    for i in range(20):
        a.copy_(rand(m, k, dtype, gen, k**-0.5))
        b.copy_(rand(n, k, dtype, gen, 1.0))
        out.fill_(float("nan"))
        out_ce.fill_(float("nan"))
        graph.replay()
        graph_ce.replay()
        want = torch.empty(m // W, n, device="cuda")
        dist.reduce_scatter_tensor(want, a.float() @ b.float().T)
        close(f"gemm_rs graph replay {i}", out, want, dtype, W)
        close(f"gemm_rs graph replay {i} (decomposed)", out_ce, want, dtype, W)


def check_compile(rs, ar, W, gen):
    def layer(x, w1, w2):
        return ar(torch.relu(rs(x, w1)) * 0.5, w2)

    m, n, k, dtype = 32 * W, 64, 96, torch.bfloat16
    x = rand(m, k, dtype, gen, k**-0.5)
    w1 = rand(n, k, dtype, gen, 1.0)
    w2 = rand(n, n, dtype, gen, n**-0.5)
    eager = layer(x, w1, w2)
    compiled = torch.compile(layer, fullgraph=True)(x, w1, w2)
    assert torch.equal(compiled, eager), "torch.compile changed the result"


def check_rejects(run, rs, ag, ar, W):
    bad = [
        ("fp32 input", lambda: rs(torch.ones(8 * W, 16, device="cuda"), torch.ones(8, 16, device="cuda"))),
        ("rows not divisible by W", lambda: rs(torch.ones(8 * W + 1, 16, device="cuda", dtype=torch.bfloat16),
                                                torch.ones(8, 16, device="cuda", dtype=torch.bfloat16))),
        ("K mismatch", lambda: ag(torch.ones(8, 16, device="cuda", dtype=torch.bfloat16),
                                  torch.ones(8, 32, device="cuda", dtype=torch.bfloat16))),
        ("host tensor", lambda: ag(torch.ones(8, 16, dtype=torch.bfloat16),
                                   torch.ones(8, 16, dtype=torch.bfloat16))),
        ("over max_m", lambda: rs(torch.ones(4096 * W, 16, device="cuda", dtype=torch.bfloat16),
                                  torch.ones(8, 16, device="cuda", dtype=torch.bfloat16))),
    ]
    bf = dict(device="cuda", dtype=torch.bfloat16)
    bad += [
        ("a broadcast (row stride 0)", lambda: rs(torch.ones(1, 16, **bf).expand(8 * W, 16), torch.ones(8, 16, **bf))),
        ("a transposed b for a fused strategy", lambda: ag(torch.ones(8, 16, **bf), torch.ones(16, 8, **bf).T,
                                                           strategy="fused_ce")),
        ("a transposed b for gather_inputs", lambda: rs(torch.ones(8 * W, 16, **bf), torch.ones(16, 8, **bf).T,
                                                        strategy="gather_inputs")),
        ("a column-major b whose columns overlap", lambda: rs(torch.ones(8 * W, 16, **bf),
                                                              torch.ones(200, **bf).as_strided((8, 16), (1, 4)))),
        ("a transposed b for GEMM-AR", lambda: ar(torch.ones(8, 16, **bf), torch.ones(16, 8, **bf).T)),
        ("inputs that require grad", lambda: rs(torch.ones(8 * W, 16, **bf, requires_grad=True),
                                                torch.ones(8, 16, **bf))),
        # (the binding takes tensors as objects, so that what is none is its check too)
        ("no output", lambda: ag.run(torch.ones(8, 16, **bf), torch.ones(8, 16, **bf), None)),
    ]
    # A gathered_a over the output or over b (N = K = 16 here, so the shapes allow it): the
    # gathered rows, copied out after the GEMM, would overwrite them.
    a16, out16 = torch.ones(8, 16, **bf), torch.empty(8 * W, 16, **bf)
    buf = torch.ones(8 * W + 16, 16, **bf)
    bad += [
        ("a gathered_a that is the output", lambda: ag.run(a16, torch.ones(16, 16, **bf), out16, out16)),
        ("a gathered_a over b", lambda: ag.run(a16, buf[8 * W:], out16, buf[16:16 + 8 * W])),
    ]
    for what, call in bad:
        run.expect_rejected(what, call)


def check_fail_at_different_layers(run, rs, ag, ar, W, rank, gen):
    """Every rank fails one call, neighbours at different layers: the Python layer's own check
    (an input that requires grad), the binding's (K differs between a and b) or the operator's (a
    shape over its workspace), rotating from call to call so that each pair of layers meets. All
    abandon the call alike, so the operator stays usable: a checked call of it follows. For each
    operator and the all-gather."""
    bf = dict(device="cuda", dtype=torch.bfloat16)
    layers = ("python", "binding", "operator")
    calls = iter(range(4))

    def bad(python, binding, operator):
        layer = layers[(rank + next(calls)) % 3]
        run.expect_rejected(f"a call failing at the {layer} layer",
                            {"python": python, "binding": binding, "operator": operator}[layer])

    def grad(rows, cols):
        return torch.ones(rows, cols, **bf, requires_grad=True)

    ones = lambda rows, cols: torch.ones(rows, cols, **bf)
    bad(lambda: rs(grad(8 * W, 16), ones(8, 16)), lambda: rs(ones(8 * W, 16), ones(8, 32)),
        lambda: rs(ones(4096 * W, 16), ones(8, 16)))
    check_gemm_rs(rs, W, torch.bfloat16, gen, 64 * W, 72, 64)
    bad(lambda: ag(grad(8, 16), ones(8, 16)), lambda: ag(ones(8, 16), ones(8, 32)),
        lambda: ag(ones(4096, 1024), ones(8, 1024)))
    check_ag_gemm(ag, W, torch.bfloat16, gen, 64, 72, 64)
    bad(lambda: ag.all_gather(grad(8, 16)), lambda: ag.gather_into(ones(8, 16), ones(8, 16)),
        lambda: ag.all_gather(ones(4096, 1024)))
    a = rand(64, 64, torch.bfloat16, gen, 1.0)
    assert torch.equal(ag.all_gather(a), all_gather_rows(a)), "all_gather after the abandoned one differs"
    bad(lambda: ar(grad(8, 16), ones(8, 16)), lambda: ar(ones(8, 16), ones(8, 32)),
        lambda: ar(ones(300, 16), ones(2048, 16)))  # m x n over max_m x max_n
    check_gemm_ar(ar, W, torch.bfloat16, gen, 16, 72, 64)
    return None


def check_transposed_b(rs, ag, W, gen):
    """b as the transpose of a row-major [k, n] tensor (as weft.nn's backward passes weight.t()):
    read in place by every strategy that takes it and by the automatic choice."""
    strategies = []
    for dtype in DTYPES:
        m_local, n, k = 64, 264, 128
        w = rand(k, n, dtype, gen, 1.0)
        b = w.t()  # [n, k], column-major
        assert b.stride() == (1, n)
        a = rand(m_local * W, k, dtype, gen, k**-0.5 / W**0.5)
        want = torch.empty(m_local, n, device="cuda")
        dist.reduce_scatter_tensor(want, a.float() @ b.float().T)
        for s in ("", "decomposed", "decomposed_cols", "push_reduce"):
            out = torch.full((m_local, n), float("nan"), dtype=dtype, device="cuda")
            ran = rs.run(a, b, out, s)
            assert s in ("", ran), f"asked for {s}, ran {ran}"
            close(f"gemm_rs transposed b {dtype} ({ran})", out, want, dtype, W)
            strategies.append(ran)
        a = rand(m_local, k, dtype, gen, k**-0.5)
        want = all_gather_rows(a).float() @ b.float().T
        for s in ("", "decomposed_local_first", "decomposed_per_chunk", "push_gather"):
            out = torch.full((m_local * W, n), float("nan"), dtype=dtype, device="cuda")
            ran = ag.run(a, b, out, None, s)
            assert s in ("", ran), f"asked for {s}, ran {ran}"
            close(f"ag_gemm transposed b {dtype} ({ran})", out, want, dtype, 1)
            strategies.append(ran)
    return ", ".join(sorted(set(strategies)))


def column_slice(rs, W, gen):
    # A column slice of a wider tensor (leading dimension > width, 16-byte aligned) as GEMM-RS's a.
    wide = rand(64 * W, 384, torch.bfloat16, gen, 128**-0.5 / W**0.5)
    a, b = wide[:, 128:256], rand(256, 128, torch.bfloat16, gen, 1.0)
    want = torch.empty(64, 256, device="cuda")
    dist.reduce_scatter_tensor(want, a.float() @ b.float().T)
    close("gemm_rs column slice", rs(a, b), want, torch.bfloat16, W)


def check_world_sync(world, ar, W, gen):
    # weft's own wait for the current stream (deadlines, fault reports) after an operator call; on
    # one host every multi-rank World shares an abort board.
    x = rand(16, 64, torch.bfloat16, gen, 0.125)
    w = rand(72, 64, torch.bfloat16, gen, 1.0)
    out = ar(x, w)
    world.synchronize(torch.cuda.current_stream().cuda_stream)
    assert torch.isfinite(out.float()).all(), "gemm_ar output after World.synchronize"
    assert world.has_abort_board == (W > 1), f"has_abort_board is {world.has_abort_board} with {W} ranks"
    return f"abort board: {world.has_abort_board}"


def main() -> int:
    run = Run("weft python test")
    world, W, gen = run.world, run.W, run.gen
    rs = weft.GemmRS(world, max_m=4096, max_n=2048)
    ag = weft.AGGemm(world, max_m=4096, max_k=1024)
    ar = weft.GemmAR(world, max_m=256, max_n=2048)
    ag_ce = weft.AGGemm(world, max_m=4096, max_k=1024, strategy="decomposed_local_first")
    steps = [
        ("gemm_rs", lambda d: [check_gemm_rs(rs, W, d, gen, *s)
                               for s in ((1024 * W, 512, 256), (W, 72, 64), (100 * W, 520, 200))]),
        ("ag_gemm", lambda d: [check_ag_gemm(ag, W, d, gen, *s)
                               for s in ((1024, 512, 256), (1, 72, 64), (333, 520, 200))]),
        ("gemm_ar", lambda d: [check_gemm_ar(ar, W, d, gen, *s)
                               for s in ((16, 2048, 512), (64, 1024, 256), (1, 72, 64))]),
    ]
    for name, step in steps:
        for d in DTYPES:
            run.step(f"{name} {d}", lambda: ", ".join(step(d)))

    # Every strategy by name through the per-call override, on one shape each can take (the
    # copy-engine ones run on a side stream that joins torch's current stream).
    named = (
        (rs, ("fused_ce", "fused_push", "decomposed", "decomposed_cols", "push_reduce", "gather_inputs"),
         lambda s: check_gemm_rs_named(rs, W, gen, s)),
        (ag, ("fused_ce", "fused_push", "decomposed_local_first", "decomposed_per_chunk", "push_gather"),
         lambda s: check_ag_gemm_named(ag, W, gen, s)),
        (ar, ("oneshot", "twoshot", "oneshot_weft", "twoshot_weft"), lambda s: check_gemm_ar_named(ar, W, gen, s)),
    )

    def by_name(check, name):
        ran = check(name)
        assert ran == name, f"asked for {name}, ran {ran}"

    for op, names, check in named:
        for name in names:
            run.step(f"{type(op).__name__} strategy {name}", lambda: by_name(check, name))

    run.step("column slice", lambda: column_slice(rs, W, gen))
    run.step("AG-GEMM strided b, out, gathered_a", lambda: check_ag_gemm_strided(ag, W, gen))
    run.step("AGGemm.all_gather alone", lambda: check_all_gather(ag, ag_ce, W, gen))
    run.step("graph replay", lambda: check_graph(rs, W, gen))
    run.step("torch.compile", lambda: check_compile(rs, ar, W, gen))
    run.step("transposed b (read in place)", lambda: check_transposed_b(rs, ag, W, gen))
    run.step("bad arguments", lambda: check_rejects(run, rs, ag, ar, W))
    if W > 1:
        run.step("a call every rank fails, at different layers",
                 lambda: check_fail_at_different_layers(run, rs, ag, ar, W, run.rank, gen))
    run.step("World.synchronize, abort board", lambda: check_world_sync(world, ar, W, gen))
    return run.finish(rs, ag, ar, ag_ce)


if __name__ == "__main__":
    sys.exit(main())
