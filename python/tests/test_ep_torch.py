"""The PyTorch layer's MoE dispatch and combine on GPUs, against a model built from every rank's
inputs (all-gathered with torch.distributed). Run one process per GPU:

    torchrun --nproc-per-node 4 python/tests/test_ep_torch.py

Checks, in low-latency and throughput mode, bf16 and fp8: fresh random routing (ids of -1
included, each rank's own T, one rank with T = 0), the receive layout (counts, offsets, every
row's source, weight and contents; fp8 within its quantization error), combine with identity
experts against the weighted sum, CUDA graph replays (low latency) with changing inputs,
torch.compile(fullgraph=True) against eager, the throughput mode's host counts, and rejected
inputs. Exits non-zero on any rank's failure.
"""

import sys

import torch
import torch.distributed as dist

import weft
from torch_harness import Run

E, H, K = 64, 1024, 8


def gather_inputs(x, ids, w, max_t):
    """Every rank's (T, x, ids, weights), padded to max_t rows for all_gather."""
    W = dist.get_world_size()
    t = torch.tensor([x.shape[0]], device="cuda")
    ts = [torch.zeros_like(t) for _ in range(W)]
    dist.all_gather(ts, t)

    def pad(a):
        p = a.new_zeros((max_t,) + tuple(a.shape[1:]))
        p[: a.shape[0]] = a
        return p

    ids = ids.long()  # ranks pass int32 or int64: gather one dtype
    xs, idss, ws = ([torch.empty_like(pad(a)) for _ in range(W)] for a in (x, ids, w))
    dist.all_gather(xs, pad(x))
    dist.all_gather(idss, pad(ids))
    dist.all_gather(ws, pad(w))
    return [(int(ts[r].item()), xs[r], idss[r].long().cpu(), ws[r].cpu()) for r in range(W)]


def expected_rows(everyone, rank, el):
    """(expert, source rank, token, slot, weight) of the rows this rank should receive, in order."""
    rows = []
    for e in range(rank * el, (rank + 1) * el):
        for s, (t, _, ids, w) in enumerate(everyone):
            hit = (ids[:t] == e).nonzero().tolist()
            for tok, slot in hit:
                rows.append((e, s, tok, slot, float(w[tok, slot])))
    return rows


def dequantize(d, n):
    return (d.x[:n].float().view(n, H // 128, 128) * d.scales[:n].view(n, H // 128, 1)).view(n, H)


def check_dispatch(ep, d, everyone, rank, el, fp8, where):
    rows = expected_rows(everyone, rank, el)
    n = len(rows)
    counts = torch.zeros(el, dtype=torch.int32)
    for e, *_ in rows:
        counts[e - rank * el] += 1
    assert torch.equal(d.expert_counts.cpu(), counts), f"{where}: expert counts differ"
    assert int(d.expert_offsets[-1].item()) == n, f"{where}: {d.expert_offsets[-1].item()} rows, expected {n}"
    assert torch.equal(d.expert_offsets.cpu()[:-1], torch.cumsum(counts, 0) - counts), f"{where}: offsets"
    want_src = torch.tensor([[s, t, k] for _, s, t, k, _ in rows], dtype=torch.int32).view(n, 3)
    assert torch.equal(d.sources[:n].cpu(), want_src), f"{where}: sources differ"
    want_w = torch.tensor([w for *_, w in rows], dtype=torch.float32)
    assert torch.equal(d.weights[:n].cpu(), want_w), f"{where}: weights differ"
    want_x = torch.stack([everyone[s][1][t] for _, s, t, _, _ in rows]) if n else torch.empty(0, H, device="cuda")
    if fp8:
        got = dequantize(d, n)
        amax = want_x.float().abs().view(n, H // 128, 128).amax(-1, keepdim=True)
        err = ((got - want_x.float()).view(n, H // 128, 128).abs() / amax.clamp_min(1e-30)).max().item() if n else 0
        assert err <= 2.0**-4 + 1e-3, f"{where}: fp8 rows off by {err:.4g} of their group's amax"
    else:
        assert torch.equal(d.x[:n], want_x), f"{where}: bf16 rows differ"
    return n


def identity_experts(d, n):
    y = torch.empty(d.x.shape, dtype=torch.bfloat16, device="cuda")
    y[:n] = (dequantize(d, n) if d.scales is not None else d.x[:n].float()).to(torch.bfloat16)
    return y


def expected_combine(everyone, rank, deq):
    t, x, ids, w = everyone[rank]
    valid = (ids[:t] >= 0).float().cuda() * w[:t].cuda()
    return valid.sum(1, keepdim=True) * deq[:t]


def check_combine(out, want, where):
    u = 2.0**-8
    tol = 2 * u * (dist.get_world_size() + 1) * max(want.abs().max().item() if want.numel() else 0.0, 1e-3)
    err = (out.float() - want).abs().max().item() if out.numel() else 0.0
    assert err <= tol, f"{where}: combine off by {err:.4g} > {tol:.4g}"


def fp8_roundtrip(x):
    # The dispatch's quantization (one scale per 128 channels, amax / 448), for combine's model.
    g = x.float().view(x.shape[0], H // 128, 128)
    scale = (g.abs().amax(-1, keepdim=True) / 448.0).clamp_min(1e-30)
    return ((g / scale).to(torch.float8_e4m3fn).float() * scale).view(x.shape[0], H)


def random_inputs(t, gen, rank):
    x = (torch.randn(t, H, generator=gen, device="cuda")).to(torch.bfloat16)
    ids = torch.randint(-1, E, (t, K), generator=gen, device="cuda", dtype=torch.int64)
    w = torch.rand(t, K, generator=gen, device="cuda")
    return x, ids.to(torch.int32 if rank % 2 else torch.int64), w


def one_round(ep, t, gen, rank, el, fp8, where, max_t):
    x, ids, w = random_inputs(t, gen, rank)
    d = ep.dispatch(x, ids, w, fp8=fp8)
    everyone = gather_inputs(x, ids, w, max_t)
    n = check_dispatch(ep, d, everyone, rank, el, fp8, where)
    out = ep.combine(identity_experts(d, n))
    deq = fp8_roundtrip(x) if fp8 else x.float()
    if fp8:
        # The model's quantization may differ from the kernel's by one fp8 step where x / scale
        # lands on a rounding boundary: allow the fp8 half step beside the bf16 bound.
        # Per element: each of a token's rows is its own dequantized x (within one fp8 step of
        # the model's, 2^-3 of the group's amax), weighted and summed; the W partials and the sum
        # are rounded to bf16 (all of one sign, so each within |want|).
        want = expected_combine(everyone, rank, deq)
        if t:
            _, _, ids_h, w_h = everyone[rank]
            wsum = ((ids_h[:t] >= 0).float() * w_h[:t]).sum(1, keepdim=True).cuda()
            amax = x.float().abs().view(t, H // 128, 128).amax(-1, keepdim=True).expand(t, H // 128, 128).reshape(t, H)
            bound = wsum * amax * 2.0**-3 + 2.0**-8 * (dist.get_world_size() + 1) * want.abs() + 1e-6
            worst = ((out.float() - want).abs() - bound).max().item()
            assert worst <= 0, f"{where}: fp8 combine exceeds its per-element bound by {worst:.4g}"
    else:
        check_combine(out, expected_combine(everyone, rank, deq), where)
    return n


def check_graph(ep, gen, rank, el, max_t):
    t = 96 if rank != 1 else 17
    x, ids, w = random_inputs(t, gen, rank)
    d = ep.dispatch(x, ids, w)
    n_cap = d.x.shape[0]
    y = torch.zeros(n_cap, H, dtype=torch.bfloat16, device="cuda")
    ep.combine(y)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        d = ep.dispatch(x, ids, w)
        y.copy_(d.x)  # identity experts (bf16 rows; rows past the valid ones are ignored)
        out = ep.combine(y)
    for i in range(10):
        nx, nids, nw = random_inputs(t, gen, rank)
        x.copy_(nx)
        ids.copy_(nids)
        w.copy_(nw)
        out.fill_(float("nan"))
        graph.replay()
        everyone = gather_inputs(x, ids, w, max_t)
        check_dispatch(ep, d, everyone, rank, el, False, f"graph replay {i}")
        check_combine(out, expected_combine(everyone, rank, x.float()), f"graph replay {i}")


def check_replay_with_more_tokens(run, ep, gen, rank):
    """Against combine()'s contract: a graph replays a dispatch of 32 tokens after an eager one
    of 4, and the combine that follows (of the replayed dispatch) gets an out of 4 rows. It must
    write no row past them and report it; the next calls are right again."""
    bf = dict(dtype=torch.bfloat16, device="cuda")
    x, ids, w = random_inputs(32, gen, rank)
    d = ep.dispatch(x, ids, w)
    y = torch.zeros(d.x.shape[0], H, **bf)
    ep.combine(y)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ep.dispatch(x, ids, w)
    ep.dispatch(*random_inputs(4, gen, rank))
    ep.combine(y)
    graph.replay()
    guard = torch.full((36, H), 7.0, **bf)
    ep.combine(y, out=guard[:4])
    torch.cuda.synchronize()
    assert bool((guard[4:] == 7.0).all()), "the combine wrote past out's rows"
    run.expect_rejected("a combine of a replayed dispatch with more tokens than out has rows",
                        ep.check_errors)
    return f"{one_round(ep, 96, gen, rank, E // run.W, False, 'after it', 128)} rows"


def check_compile(ep, gen, rank, fp8, sizes, backend="inductor", out_arg=False):
    """dispatch -> elementwise experts -> combine under torch.compile(fullgraph=True), against the
    same function run eagerly on the same inputs (dynamic T: a later size recompiles). aot_eager
    hands the dispatch copies of the buffers it mutates (Inductor the buffers themselves);
    out_arg: combine into a given tensor."""
    def layer(x, ids, w):
        d = ep.dispatch(x, ids, w, fp8=fp8)
        cap = d.x.shape[0]
        rows = d.x.float()
        if fp8:
            rows = (rows.view(cap, H // 128, 128) * d.scales.view(cap, H // 128, 1)).view(cap, H)
        y = (rows * 0.5).to(torch.bfloat16)
        if out_arg:
            out = x.new_empty((x.shape[0], H))
            ep.combine(y, out=out)
        else:
            out = ep.combine(y)
        return out, d.expert_counts * 1

    compiled = torch.compile(layer, fullgraph=True, backend=backend)
    for t in sizes:
        x, ids, w = random_inputs(t, gen, rank)
        want, want_counts = layer(x, ids, w)
        got, got_counts = compiled(x, ids, w)
        assert torch.equal(got_counts, want_counts), f"T = {t}: compiled expert counts differ"
        assert got.shape == (t, H) and torch.equal(got, want), f"T = {t}: compiled combine differs"
    return f"T = {', '.join(map(str, sizes))}"


def check_rejects(run, ep, max_t):
    good = lambda t: (torch.zeros(t, H, dtype=torch.bfloat16, device="cuda"),
                      torch.zeros(t, K, dtype=torch.int32, device="cuda"),
                      torch.zeros(t, K, device="cuda"))
    x, ids, w = good(max_t + 1)
    run.expect_rejected("T above max_tokens", lambda: ep.dispatch(x, ids, w))
    run.expect_rejected("float32 x", lambda: ep.dispatch(torch.zeros(4, H, device="cuda"), *good(4)[1:]))
    run.expect_rejected("weights of another T",
                        lambda: ep.dispatch(*good(4)[:2], torch.zeros(5, K, device="cuda")))
    run.expect_rejected("x with a wrong hidden size",
                        lambda: ep.dispatch(torch.zeros(4, H + 128, dtype=torch.bfloat16, device="cuda"),
                                            *good(4)[1:]))
    d = ep.dispatch(*good(4))
    run.expect_rejected("a short expert_out",
                        lambda: ep.combine(torch.zeros(d.x.shape[0] - 1, H, dtype=torch.bfloat16,
                                                       device="cuda")))
    y = torch.zeros(d.x.shape[0] + 4, H, dtype=torch.bfloat16, device="cuda")
    run.expect_rejected("an out inside expert_out (not at its start)",
                        lambda: ep.combine(y[:d.x.shape[0]], out=y[1:5]))
    # An expert id out of range is found on the device: the call completes, check_errors raises.
    x, ids, w = good(4)
    ids[0, 0] = E
    ep.dispatch(x, ids, w)
    torch.cuda.synchronize()
    run.expect_rejected(f"expert id {E} (reported after the call)", ep.check_errors)


def check_one_rank_rejects(run, ep, gen, rank, el):
    """The last rank's x has a wrong hidden size (a binding check) while the others dispatch: it
    abandons the call, so theirs ends at once, void, and their check_errors() names it (instead of
    waiting for it until WEFT_WAIT_TIMEOUT_MS). Then its expert_out is short (a combine check):
    the others' combine ends, and names it. The same again for the Python layer's own check,
    made before the binding's (an x, then an expert_out, that requires grad). A checked round on
    every rank follows."""
    last = run.W - 1
    x, ids, w = random_inputs(48, gen, rank)

    def peers_report(call):
        call()
        torch.cuda.synchronize()
        try:
            ep.check_errors()
        except weft.InvalidArgument as e:
            assert f"rank {last} abandoned it" in str(e), f"unexpected report: {e}"
            return
        raise AssertionError(f"rank {last}'s abandoned call was not reported")

    def one_rank_fails(what, bad_call, good_call):
        if rank == last:
            run.expect_rejected(f"{what} on one rank", bad_call)
        else:
            peers_report(good_call)

    bf = dict(dtype=torch.bfloat16, device="cuda")
    # (a binding's check, then the Python layer's own)
    bad_x = (("x with a wrong hidden size", lambda: torch.zeros(48, H + 128, **bf)),
             ("an x that requires grad", lambda: x.clone().requires_grad_()))
    bad_out = (("a short expert_out", lambda d, n: torch.zeros(d.x.shape[0] - 1, H, **bf)),
               ("an expert_out that requires grad",
                lambda d, n: identity_experts(d, n).requires_grad_()))
    for (x_what, make_x), (out_what, make_out) in zip(bad_x, bad_out):
        one_rank_fails(x_what, lambda: ep.dispatch(make_x(), ids, w), lambda: ep.dispatch(x, ids, w))
        d = ep.dispatch(x, ids, w)
        n = int(d.expert_offsets[-1].item())
        one_rank_fails(out_what, lambda: ep.combine(make_out(d, n)),
                       lambda: ep.combine(identity_experts(d, n)))
    torch.cuda.synchronize()
    return f"{one_round(ep, 128, gen, rank, el, False, 'after one rank abandoned', 128)} rows"


def main() -> int:
    run = Run("weft python EP test")
    gen, rank = run.gen, run.rank
    el = E // run.W
    ll = weft.ExpertParallel(run.world, num_experts=E, hidden=H, topk=K, max_tokens=128)
    tp = weft.ExpertParallel(run.world, num_experts=E, hidden=H, topk=K, max_tokens=1024, mode="throughput")
    for fp8 in (False, True):
        kind = "fp8" if fp8 else "bf16"
        run.step(f"low latency {kind}, T = 128", lambda: f"{one_round(ll, 128, gen, rank, el, fp8, 'll', 128)} rows")
        run.step(f"low latency {kind}, T per rank, rank 0 empty",
                 lambda: one_round(ll, (0 if rank == 0 else 1 + 37 * rank), gen, rank, el, fp8, "ll uneven", 128) and None)
        run.step(f"throughput {kind}, T = 1024",
                 lambda: f"{one_round(tp, 1024, gen, rank, el, fp8, 'tp', 1024)} rows")

    def host_counts():
        x, ids, w = random_inputs(700 + rank, gen, rank)
        d = tp.dispatch(x, ids, w)
        h = tp.host_counts()
        assert h["expert_counts"] == d.expert_counts.tolist(), "host counts differ from the device's"
        assert h["total_rows"] == int(d.expert_offsets[-1].item())
        return f"{h['total_rows']} rows"

    run.step("throughput host counts", host_counts)
    run.step("low latency graph replay", lambda: check_graph(ll, gen, rank, el, 128))
    run.step("a replayed dispatch with more tokens than the combine's out",
             lambda: check_replay_with_more_tokens(run, ll, gen, rank))
    run.step("torch.compile bf16", lambda: check_compile(ll, gen, rank, False, (96, 96, 40)))
    run.step("torch.compile fp8", lambda: check_compile(ll, gen, rank, True, (96,)))
    run.step("torch.compile bf16, combine into out",
             lambda: check_compile(ll, gen, rank, False, (64,), out_arg=True))
    run.step("torch.compile bf16, aot_eager", lambda: check_compile(ll, gen, rank, False, (64,), "aot_eager"))
    run.step("bad inputs", lambda: check_rejects(run, ll, 128))
    if run.W > 1:
        run.step("bad inputs on one rank", lambda: check_one_rank_rejects(run, ll, gen, rank, el))
    return run.finish(ll, tp)


if __name__ == "__main__":
    sys.exit(main())
