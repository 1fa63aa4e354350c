"""weft.nn's tensor-parallel linear layers on GPUs: the forward and every gradient against torch
in fp32 on the full matrices (the same on every rank, sharded as the layers shard them), for each
layer alone, without and with bias (also with a frozen weight, with an input that needs no
gradient, and with the bias the only thing that trains), for an MLP with and without biases
(column-parallel, GELU, row-parallel) eager, with fused forward operators (whose backward falls
back to the decomposed strategies) and under torch.compile(fullgraph=True), with an odd row count
and one row per rank; a column layer that gathers its input again in the backward (the same bits
as one that keeps it, and less saved); and the layers' argument errors, a double backward among them. Run one process per GPU:

    torchrun --nproc-per-node 4 python/tests/test_nn_torch.py

Exits non-zero on any rank's failure.
"""

import math
import sys

import torch
import torch.distributed as dist

import weft
import weft.nn
from torch_harness import Run

# bf16: the outputs are rounded once, GEMM-RS sums W partials each rounded, and the MLP rounds its
# hidden activations too; errors relative to the largest reference value.
REL = {"layer": 3e-2, "mlp": 6e-2}


def close(name, got, want, rel):
    err = (got.float() - want).abs().max().item() if got.numel() else 0.0
    scale = max(want.abs().max().item(), 1e-6)
    if not err <= rel * scale:  # also catches NaN
        raise AssertionError(f"{name}: max |error| {err:.4g} > {rel} x {scale:.4g}")


def shared(rows, cols, gen, scale):
    """A bf16 matrix drawn on rank 0 and broadcast: the same full tensor on every rank."""
    t = (torch.randn(rows, cols, generator=gen, device="cuda") * scale).to(torch.bfloat16)
    dist.broadcast(t, 0)
    return t


def rows_of(t, W, r):
    n = t.shape[0] // W
    return t[r * n:(r + 1) * n]


def cols_of(t, W, r):
    n = t.shape[1] // W
    return t[:, r * n:(r + 1) * n]


def check_layer(run, layer, m, x_grad=True, w_grad=True):
    """One layer's output and the gradients asked for (x_grad: the input's, w_grad: the weight's;
    the other must stay None; the bias's, where the layer has one, always) against fp32 torch on
    the full matrices."""
    W, r, gen = run.W, run.rank, run.gen
    column = isinstance(layer, weft.nn.ColumnParallelLinear)
    has_bias = layer.bias is not None
    name = (f"{'column' if column else 'row'}{' bias' if has_bias else ''} M={m}"
            f"{'' if x_grad else ' frozen x'}{'' if w_grad else ' frozen w'}")
    K, N = layer.in_features, layer.out_features
    X, Wt, G = shared(m, K, gen, K**-0.5), shared(N, K, gen, 1.0), shared(m, N, gen, 1.0)
    Bias = shared(1, N, gen, 1.0)[0]
    # The column layer shards the weight's rows and the activations' rows (and the bias); the row
    # layer the weight's columns and the input's columns, its output by rows (the bias is whole).
    w_part, x_part, y_part, dx_part, dw_part = (
        (rows_of, rows_of, cols_of, rows_of, rows_of) if column else (cols_of, cols_of, rows_of, cols_of, cols_of))
    b_part = (lambda b: rows_of(b, W, r)) if column else (lambda b: b)
    with torch.no_grad():
        layer.weight.copy_(w_part(Wt, W, r))
        if has_bias:
            layer.bias.copy_(b_part(Bias))
    layer.weight.grad = None
    if has_bias:
        layer.bias.grad = None
    layer.weight.requires_grad_(w_grad)
    try:
        x = x_part(X, W, r).contiguous().requires_grad_(x_grad)
        y = layer(x)
        y.backward(y_part(G, W, r))
        Xf, Wf, Gf = X.float(), Wt.float(), G.float()
        close(f"{name} y", y, y_part(Xf @ Wf.T + (Bias.float() if has_bias else 0), W, r), REL["layer"])
        if has_bias:
            close(f"{name} db", layer.bias.grad, b_part(Gf.sum(0)), REL["layer"])
        if x_grad:
            close(f"{name} dx", x.grad, dx_part(Gf @ Wf, W, r), REL["layer"])
        else:
            assert x.grad is None, f"{name}: x got a gradient"
        if w_grad:
            close(f"{name} dw", layer.weight.grad, dw_part(Gf.T @ Xf, W, r), REL["layer"])
        else:
            assert layer.weight.grad is None, f"{name}: the frozen weight got a gradient"
    finally:
        layer.weight.requires_grad_(True)


def check_regather(run, keep, regather, m):
    """A column layer that gathers its input again in the backward against one that keeps the
    forward's gathered copy (same weights, inputs and operators): the same bits everywhere, and
    W times less input held between the passes."""
    W, r, gen = run.W, run.rank, run.gen
    K, N = keep.in_features, keep.out_features
    X, G = shared(m, K, gen, K**-0.5), shared(m, N, gen, 1.0)
    with torch.no_grad():
        regather.weight.copy_(keep.weight)
    got = []
    for layer in (keep, regather):
        layer.weight.grad = None
        saved = []

        def pack(t):
            saved.append(t.numel() * t.element_size())
            return t

        x = rows_of(X, W, r).contiguous().requires_grad_()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = layer(x)
        y.backward(cols_of(G, W, r))
        got.append((y.detach(), x.grad, layer.weight.grad.clone(), sum(saved)))
    for name, a, b in zip(("y", "dx", "dw"), got[0], got[1]):
        assert torch.equal(a, b), f"gathered again, M={m}: {name} differs from the kept gathered input's"
    want = (m - m // W) * K * 2  # the gathered input's bytes beyond this rank's rows
    assert got[0][3] - got[1][3] == want, \
        f"M={m}: saved {got[0][3]} bytes keeping the gathered input, {got[1][3]} gathering again; expected {want} less"


def check_regather_compiled(run, layer, m):
    """Under torch.compile a column layer with keep_gathered_input=False still keeps only its own
    rows for the backward: no [M, in] tensor among what the compiled forward saves (torch's
    partitioner would otherwise move the backward's gather into the forward and save its result).
    Pick m with m != out/W and m/W != out/W, so that no shape there is the weight's."""
    W, r, gen = run.W, run.rank, run.gen
    K, N = layer.in_features, layer.out_features
    assert m != N // W and m // W != N // W, "m must tell the saved tensors apart from the weight"
    X, G = shared(m, K, gen, K**-0.5), shared(m, N, gen, 1.0)
    compiled = torch.compile(layer, fullgraph=True)
    layer.weight.grad = None
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    x = rows_of(X, W, r).contiguous().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = compiled(x)
    y.backward(cols_of(G, W, r))
    assert (m // W, K) in shapes, f"M={m}: the compiled forward saved {shapes}, not the input's rows"
    assert (m, K) not in shapes, f"M={m}: the compiled forward saved the gathered input: {shapes}"
    close(f"compiled regathered dw M={m}", layer.weight.grad,
          rows_of(G.float().T @ X.float(), W, r), REL["layer"])
    layer.weight.grad = None


def check_no_grad(run, col, row, m):
    """Under no_grad and inference_mode the layers give the grad-enabled forward's result (through
    the plain operator: no gathered input kept, no backward checks)."""
    W, r, gen = run.W, run.rank, run.gen
    xc = rows_of(shared(m, col.in_features, gen, col.in_features**-0.5), W, r).contiguous()
    xr = cols_of(shared(m, row.in_features, gen, row.in_features**-0.5), W, r).contiguous()
    want_c, want_r = col(xc).detach(), row(xr).detach()
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            got_c, got_r = col(xc), row(xr)
        close(f"column layer under {mode.__name__} M={m}", got_c, want_c, REL["layer"])
        close(f"row layer under {mode.__name__} M={m}", got_r, want_r, REL["layer"])


def check_init(run):
    """Seeded alike on every rank, a layer's shards differ and together are one initialization:
    W blocks drawn in rank order from torch's default generator."""
    W = run.W
    torch.manual_seed(1234)
    layer = weft.nn.ColumnParallelLinear(run.world, 64, 16 * W, 64 * W)
    after = torch.rand(4, device="cuda")  # the generators stay in step across ranks
    full = layer.ag.all_gather(layer.weight.detach())
    torch.manual_seed(1234)
    bound = 1.0 / math.sqrt(64)
    blocks = torch.empty(W, 16, 64, dtype=torch.bfloat16, device="cuda")
    for q in range(W):
        blocks[q].uniform_(-bound, bound)
    assert torch.equal(full, blocks.reshape(16 * W, 64)), "the shards are not the W blocks in rank order"
    assert torch.equal(after, torch.rand(4, device="cuda")), "the layer left the generator out of step"
    for q in range(1, W):
        assert not torch.equal(blocks[q], blocks[0]), f"rank {q}'s shard equals rank 0's"
    layer.ag.close()
    layer.rs.close()


class Mlp(torch.nn.Module):
    def __init__(self, world, hidden, inner, max_tokens, strategy="", bias=False, keep_gathered_input=True):
        super().__init__()
        W = world.size
        ops = {}
        if strategy:  # operators of that default strategy, sized as the layers size their own
            ops = {"up": dict(ag=weft.AGGemm(world, max_tokens, hidden, inner // W, strategy),
                              rs=weft.GemmRS(world, max_tokens, hidden, strategy)),
                   "down": dict(rs=weft.GemmRS(world, max_tokens, hidden, strategy),
                                ag=weft.AGGemm(world, max_tokens, hidden, inner // W, strategy))}
        self.up = weft.nn.ColumnParallelLinear(world, hidden, inner, max_tokens, bias=bias,
                                               keep_gathered_input=keep_gathered_input, **ops.get("up", {}))
        self.down = weft.nn.RowParallelLinear(world, inner, hidden, max_tokens, bias=bias, **ops.get("down", {}))

    def forward(self, x):
        return self.down(torch.nn.functional.gelu(self.up(x)))


def mlp_case(run, mlp, m):
    """Shared full inputs and the fp32 reference of y's rows and every gradient on this rank."""
    W, r, gen = run.W, run.rank, run.gen
    H, I = mlp.up.in_features, mlp.up.out_features
    X, W1, W2, G = shared(m, H, gen, H**-0.5), shared(I, H, gen, 1.0), shared(H, I, gen, I**-0.5), shared(m, H, gen, 1.0)
    B1, B2 = shared(1, I, gen, 0.5)[0], shared(1, H, gen, 0.5)[0]
    bias = mlp.up.bias is not None
    with torch.no_grad():
        mlp.up.weight.copy_(rows_of(W1, W, r))
        mlp.down.weight.copy_(cols_of(W2, W, r))
        if bias:
            mlp.up.bias.copy_(rows_of(B1, W, r))
            mlp.down.bias.copy_(B2)
    ref = [t.float().requires_grad_() for t in (X, W1, W2, B1, B2)]
    b1, b2 = (ref[3], ref[4]) if bias else (0, 0)
    y_ref = torch.nn.functional.gelu(ref[0] @ ref[1].T + b1) @ ref[2].T + b2
    y_ref.backward(G.float())
    want = {"y": rows_of(y_ref.detach(), W, r), "dx": rows_of(ref[0].grad, W, r),
            "dw_up": rows_of(ref[1].grad, W, r), "dw_down": cols_of(ref[2].grad, W, r)}
    if bias:
        want.update(db_up=rows_of(ref[3].grad, W, r), db_down=ref[4].grad)
    return rows_of(X, W, r), rows_of(G, W, r), want


def run_mlp(mlp, fn, x_rows, g_rows):
    for p in mlp.parameters():
        p.grad = None
    x = x_rows.clone().requires_grad_()
    y = fn(x)
    y.backward(g_rows)
    got = {"y": y.detach(), "dx": x.grad, "dw_up": mlp.up.weight.grad.clone(), "dw_down": mlp.down.weight.grad.clone()}
    if mlp.up.bias is not None:
        got.update(db_up=mlp.up.bias.grad.clone(), db_down=mlp.down.bias.grad.clone())
    return got


def check_mlp(run, mlp, m, compiled=None):
    x_rows, g_rows, want = mlp_case(run, mlp, m)
    got = run_mlp(mlp, mlp, x_rows, g_rows)
    for k in want:
        close(f"mlp {k} M={m}", got[k], want[k], REL["mlp"])
    if compiled is not None:
        again = run_mlp(mlp, compiled, x_rows, g_rows)
        for k in want:
            close(f"compiled mlp {k} M={m}", again[k], want[k], REL["mlp"])


def check_rejects(run, col):
    W = run.W
    run.expect_rejected("out_features not divisible by W",
                        lambda: weft.nn.ColumnParallelLinear(run.world, 64, 8 * W + 1, 64))
    run.expect_rejected("in_features not divisible by W",
                        lambda: weft.nn.RowParallelLinear(run.world, 8 * W + 1, 64, 64))
    run.expect_rejected("out_features / W not a multiple of 8 (the backward's K)",
                        lambda: weft.nn.ColumnParallelLinear(run.world, 64, 12 * W, 64))
    run.expect_rejected("a row layer's out_features not a multiple of 8",
                        lambda: weft.nn.RowParallelLinear(run.world, 8 * W, 60, 64))
    # The two checks below are the layers' own, made with their first collective call due (the
    # forward's AG-GEMM, the backward's GEMM-RS): each rank abandons that call as it raises.
    x = torch.randn(4, col.in_features, device="cuda").to(torch.bfloat16).requires_grad_()
    w12 = torch.randn(12, col.in_features, device="cuda").to(torch.bfloat16).requires_grad_()
    run.expect_rejected("a weight whose rows (the backward's K) are not a multiple of 8",
                        lambda: weft.nn.column_parallel_linear(x, w12, col.ag, col.rs))
    y = col(x)
    run.expect_rejected("a double backward", lambda: torch.autograd.grad(y.float().sum(), x, create_graph=True))
    # Every rank abandoned both calls alike: the operators stay in step and usable.
    check_layer(run, col, 16 * run.W)


def main() -> int:
    run = Run("weft python nn test")
    world, W = run.world, run.W
    max_tokens = 256 * W
    col = weft.nn.ColumnParallelLinear(world, 256, 128 * W, max_tokens)
    row = weft.nn.RowParallelLinear(world, 64 * W, 384, max_tokens)
    mlp = Mlp(world, 256, 96 * W, max_tokens)
    for m in (128 * W, 37 * W, W):
        run.step(f"ColumnParallelLinear M={m}", lambda: check_layer(run, col, m))
        run.step(f"RowParallelLinear M={m}", lambda: check_layer(run, row, m))
        run.step(f"MLP M={m}", lambda: check_mlp(run, mlp, m))
    def frozen(layer):
        check_layer(run, layer, 64 * W, w_grad=False)
        check_layer(run, layer, 64 * W, x_grad=False)

    for layer in (col, row):
        run.step(f"{type(layer).__name__}: frozen weight, then an input without grad", lambda: frozen(layer))
    col_b = weft.nn.ColumnParallelLinear(world, 256, 128 * W, max_tokens, bias=True, ag=col.ag, rs=col.rs)
    row_b = weft.nn.RowParallelLinear(world, 64 * W, 384, max_tokens, bias=True, rs=row.rs, ag=row.ag)
    for layer in (col_b, row_b):
        for m in (128 * W, 37 * W):
            run.step(f"{type(layer).__name__}(bias=True) M={m}", lambda: check_layer(run, layer, m))
        run.step(f"{type(layer).__name__}(bias=True): only the bias trains",
                 lambda: check_layer(run, layer, 64 * W, x_grad=False, w_grad=False))
    col_g = weft.nn.ColumnParallelLinear(world, 256, 128 * W, max_tokens, keep_gathered_input=False,
                                         ag=col.ag, rs=col.rs)
    def regathered(m):
        check_layer(run, col_g, m)
        check_regather(run, col, col_g, m)

    for m in (128 * W, 37 * W, W):
        run.step(f"ColumnParallelLinear(keep_gathered_input=False) M={m}", lambda: regathered(m))
    run.step("ColumnParallelLinear(keep_gathered_input=False): frozen weight, then an input without grad",
             lambda: frozen(col_g))
    run.step("ColumnParallelLinear(keep_gathered_input=False) under torch.compile keeps only its rows",
             lambda: check_regather_compiled(run, col_g, 72 * W))
    run.step("the layers under no_grad and inference_mode", lambda: check_no_grad(run, col, row, 64 * W))
    run.step("seeded alike, the ranks get different shards of one initialization", lambda: check_init(run))
    mlp_g = Mlp(world, 256, 96 * W, max_tokens, keep_gathered_input=False)
    run.step("MLP, input gathered again in the backward, eager and under torch.compile(fullgraph=True)",
             lambda: check_mlp(run, mlp_g, 64 * W, torch.compile(mlp_g, fullgraph=True)))
    # Operators whose default strategy is fused_ce: the backward's all_gather then takes the copy
    # engines (the shapes above fit push_gather).
    mlp_gf = Mlp(world, 256, 96 * W, max_tokens, strategy="fused_ce", keep_gathered_input=False)
    run.step("MLP, fused forward, input gathered again by copy engines, eager and compiled",
             lambda: check_mlp(run, mlp_gf, 128 * W, torch.compile(mlp_gf, fullgraph=True)))
    mlp_b = Mlp(world, 256, 96 * W, max_tokens, bias=True)
    run.step("MLP with biases", lambda: check_mlp(run, mlp_b, 64 * W))
    run.step("MLP with biases under torch.compile(fullgraph=True)",
             lambda: check_mlp(run, mlp_b, 37 * W, torch.compile(mlp_b, fullgraph=True)))
    # Operators whose default strategy is fused_ce: the forward runs it, the backward (B as
    # weight.t(), which the fused strategies cannot read) falls back to the decomposed ones.
    fused = Mlp(world, 256, 96 * W, max_tokens, strategy="fused_ce")
    run.step("MLP, fused forward and decomposed backward", lambda: check_mlp(run, fused, 128 * W))
    compiled = torch.compile(mlp, fullgraph=True)
    run.step("MLP under torch.compile(fullgraph=True)", lambda: check_mlp(run, mlp, 64 * W, compiled))
    run.step("bad arguments", lambda: check_rejects(run, col))
    return run.finish(col.ag, col.rs, row.rs, row.ag, mlp.up.ag, mlp.up.rs, mlp.down.rs, mlp.down.ag,
                      fused.up.ag, fused.up.rs, fused.down.rs, fused.down.ag, mlp_b.up.ag, mlp_b.up.rs,
                      mlp_b.down.rs, mlp_b.down.ag, mlp_g.up.ag, mlp_g.up.rs, mlp_g.down.rs, mlp_g.down.ag,
                      mlp_gf.up.ag, mlp_gf.up.rs, mlp_gf.down.rs, mlp_gf.down.ag)


if __name__ == "__main__":
    sys.exit(main())
