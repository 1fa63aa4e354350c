"""weft.nn's tensor-parallel linear layers on GPUs: the forward and every gradient against torch
in fp32 on the full matrices (the same on every rank, sharded as the layers shard them), for each
layer alone, for an MLP (column-parallel, GELU, row-parallel) eager and under
torch.compile(fullgraph=True), with an odd row count and one row per rank. Run one process per GPU:

    torchrun --nproc-per-node 4 python/tests/test_nn_torch.py

Exits non-zero on any rank's failure.
"""

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


def check_column(run, layer, m):
    W, r, gen = run.W, run.rank, run.gen
    K, N = layer.in_features, layer.out_features
    X, Wt, G = shared(m, K, gen, K**-0.5), shared(N, K, gen, 1.0), shared(m, N, gen, 1.0)
    with torch.no_grad():
        layer.weight.copy_(rows_of(Wt, W, r))
    layer.weight.grad = None
    x = rows_of(X, W, r).clone().requires_grad_()
    y = layer(x)
    y.backward(cols_of(G, W, r))
    Xf, Wf, Gf = X.float(), Wt.float(), G.float()
    close(f"column y M={m}", y, cols_of(Xf @ Wf.T, W, r), REL["layer"])
    close(f"column dx M={m}", x.grad, rows_of(Gf @ Wf, W, r), REL["layer"])
    close(f"column dw M={m}", layer.weight.grad, rows_of(Gf.T @ Xf, W, r), REL["layer"])


def check_row(run, layer, m):
    W, r, gen = run.W, run.rank, run.gen
    K, N = layer.in_features, layer.out_features
    X, Wt, G = shared(m, K, gen, K**-0.5), shared(N, K, gen, 1.0), shared(m, N, gen, 1.0)
    with torch.no_grad():
        layer.weight.copy_(cols_of(Wt, W, r))
    layer.weight.grad = None
    x = cols_of(X, W, r).contiguous().requires_grad_()
    y = layer(x)
    y.backward(rows_of(G, W, r))
    Xf, Wf, Gf = X.float(), Wt.float(), G.float()
    close(f"row y M={m}", y, rows_of(Xf @ Wf.T, W, r), REL["layer"])
    close(f"row dx M={m}", x.grad, cols_of(Gf @ Wf, W, r), REL["layer"])
    close(f"row dw M={m}", layer.weight.grad, cols_of(Gf.T @ Xf, W, r), REL["layer"])


class Mlp(torch.nn.Module):
    def __init__(self, world, hidden, inner, max_tokens):
        super().__init__()
        self.up = weft.nn.ColumnParallelLinear(world, hidden, inner, max_tokens)
        self.down = weft.nn.RowParallelLinear(world, inner, hidden, max_tokens)

    def forward(self, x):
        return self.down(torch.nn.functional.gelu(self.up(x)))


def mlp_case(run, mlp, m):
    """Shared full inputs and the fp32 reference of y's rows and every gradient on this rank."""
    W, r, gen = run.W, run.rank, run.gen
    H, I = mlp.up.in_features, mlp.up.out_features
    X, W1, W2, G = shared(m, H, gen, H**-0.5), shared(I, H, gen, 1.0), shared(H, I, gen, I**-0.5), shared(m, H, gen, 1.0)
    with torch.no_grad():
        mlp.up.weight.copy_(rows_of(W1, W, r))
        mlp.down.weight.copy_(cols_of(W2, W, r))
    ref = [t.float().requires_grad_() for t in (X, W1, W2)]
    y_ref = torch.nn.functional.gelu(ref[0] @ ref[1].T) @ ref[2].T
    y_ref.backward(G.float())
    want = {"y": rows_of(y_ref.detach(), W, r), "dx": rows_of(ref[0].grad, W, r),
            "dw_up": rows_of(ref[1].grad, W, r), "dw_down": cols_of(ref[2].grad, W, r)}
    return rows_of(X, W, r), rows_of(G, W, r), want


def run_mlp(mlp, fn, x_rows, g_rows):
    for p in mlp.parameters():
        p.grad = None
    x = x_rows.clone().requires_grad_()
    y = fn(x)
    y.backward(g_rows)
    return {"y": y.detach(), "dx": x.grad, "dw_up": mlp.up.weight.grad.clone(), "dw_down": mlp.down.weight.grad.clone()}


def check_mlp(run, mlp, m, compiled=None):
    x_rows, g_rows, want = mlp_case(run, mlp, m)
    got = run_mlp(mlp, mlp, x_rows, g_rows)
    for k in want:
        close(f"mlp {k} M={m}", got[k], want[k], REL["mlp"])
    if compiled is not None:
        again = run_mlp(mlp, compiled, x_rows, g_rows)
        for k in want:
            close(f"compiled mlp {k} M={m}", again[k], want[k], REL["mlp"])


def check_rejects(run):
    run.expect_rejected("out_features not divisible by W",
                        lambda: weft.nn.ColumnParallelLinear(run.world, 64, 8 * run.W + 1, 64))
    run.expect_rejected("in_features not divisible by W",
                        lambda: weft.nn.RowParallelLinear(run.world, 8 * run.W + 1, 64, 64))


def main() -> int:
    run = Run("weft python nn test")
    world, W = run.world, run.W
    max_tokens = 256 * W
    col = weft.nn.ColumnParallelLinear(world, 256, 128 * W, max_tokens)
    row = weft.nn.RowParallelLinear(world, 64 * W, 384, max_tokens)
    mlp = Mlp(world, 256, 96 * W, max_tokens)
    for m in (128 * W, 37 * W, W):
        run.step(f"ColumnParallelLinear M={m}", lambda: check_column(run, col, m))
        run.step(f"RowParallelLinear M={m}", lambda: check_row(run, row, m))
        run.step(f"MLP M={m}", lambda: check_mlp(run, mlp, m))
    compiled = torch.compile(mlp, fullgraph=True)
    run.step("MLP under torch.compile(fullgraph=True)", lambda: check_mlp(run, mlp, 64 * W, compiled))
    run.step("bad arguments", lambda: check_rejects(run))
    return run.finish(col.ag, col.rs, row.rs, row.ag, mlp.up.ag, mlp.up.rs, mlp.down.rs, mlp.down.ag)


if __name__ == "__main__":
    sys.exit(main())
