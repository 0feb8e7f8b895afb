"""einstruct's layers side by side with the peers themselves, on CPU.

For each structure and width, every peer computes exactly the map of the
einstruct layer it is compared with (the same factor values, converted once to
the peer's own layout; checked against einstruct's output and input gradient
before any timing, a peer that disagrees is dropped with a note). Peers:

- ``paper``: the papers' layers as their code writes them (our
  re-implementations): BTT's bmm Function with batch-first buffers and its own
  backward (also Monarch in the catalog's layout: BTT of rank 1, and Monarch
  with 4 blocks, a BTT whose rank axis is the block permutation); Monarch's
  block-diagonal butterfly multiply (bmm, careful copies, own backward) for the
  ``-bfly`` rows, einstruct's layer written in the butterfly's output order;
  Kronecker as CoLA's Kronecker operator applies it (move each factor's axis to
  the front, one matmul per factor, on the transposed input); Tensor-Train as
  the papers' TT operator (one ``torch.einsum`` per core); low rank as two
  dense products ``x @ U @ V``.
- ``einsum1``: one ``torch.einsum`` over the input and every factor.
- ``einsum2``: one ``torch.einsum`` per step of the cheapest order.
- ``compile2``: ``torch.compile`` over ``einsum2``.
- ``einops``: ``einops.einsum`` with named axes.
- ``tltorch``: tensorly-torch's ``FactorizedLinear`` (``blocktt``: its
  TT-matrix), for Tensor-Train and Kronecker (TT rank 1).
- ``fastkron``: pyfastkron's fused ``gemkm``, for Kronecker.

Timing: one thread, forward (no grad) and forward + backward (gradients of the
input and every factor), medians of interleaved rounds after a warm-up, each
round in a new (seeded) random order, with glibc's allocator told to keep freed
memory (``--malloc default`` to leave it as it starts; see
``timing.steady_allocator``). The ratio is the fastest peer's time over
einstruct's (> 1: einstruct is faster).

    python benchmarks/bench_peers.py                          # d = 1024 and 2048, N = 2048
    python benchmarks/bench_peers.py --sizes 1024 --structures kronecker --repeats 5
    python benchmarks/bench_peers.py --out /tmp/peers.md
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
from collections.abc import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_layers import einsum_one, einsum_steps  # noqa: E402
from timing import interleaved, median_ms, steady_allocator  # noqa: E402

import einstruct  # noqa: E402

__all__ = ["SPECS", "main"]

Core = Callable[..., torch.Tensor]  # (x as (n, *input axes), *factors) -> y as (n, *output axes)


def _sizes(catalog: str) -> dict[str, int]:
    s = einstruct.load(catalog)
    return {i.name: int(i.size) for i in s.indices}


def _monarch_spec(d: int, blocks: int | None) -> str:
    """Monarch in the butterfly code's layout: output blocks innermost (y[e, f])."""
    if blocks is None:
        z = _sizes(f"structure m = monarch(d = {d})")
        g, a, f, e = z["g"], z["a"], z["f"], z["e"]
        return (
            f"structure monarch(d = {d}):\n    y[e, f] = x[g, a] * A[g, a, f] * B[f, g, e]\n"
            f"    where g = {g}, a = {a}, f = {f}, e = {e}\n"
        )
    b, block = blocks, d // blocks
    return (
        f"structure monarch{b}(d = {d}):\n    y[e, f] = x[g, a] * A[g, a, r, f] * B[f, g, r, e]\n"
        f"    where g = f = {b}, a = e = {block}, r = {block // b}\n"
    )


#: name -> spec text at width d (the papers' layouts; catalog forms where they agree).
SPECS: dict[str, Callable[[int], str]] = {
    "btt1": lambda d: f"structure btt1 = btt(d = {d}, rank = 1)",
    "btt2": lambda d: f"structure btt2 = btt(d = {d}, rank = 2)",
    "monarch": lambda d: f"structure monarch = monarch(d = {d})",
    "monarch4": lambda d: f"structure monarch4 = monarch(d = {d}, blocks = 4)",
    "monarch-bfly": lambda d: _monarch_spec(d, None),
    "monarch4-bfly": lambda d: _monarch_spec(d, 4),
    "kronecker": lambda d: f"structure kronecker = kronecker(d = {d})",
    "tt": lambda d: f"structure tt = tensor_train(d = {d}, rank = 8)",
    "lowrank": lambda d: f"structure lowrank = low_rank(d = {d}, rank = {d // 8})",
}


# ---- the papers' layers (re-implemented from the algorithms their code uses) ----


class _BTTPaper(torch.autograd.Function):
    """BTT as the compute-better-spent code runs it: bmm into batch-first buffers, its own backward."""

    @staticmethod
    def forward(ctx, x, w1, w2, g, a, f, r, e):
        n = x.shape[0]
        xs = x.reshape(n, g, a).transpose(0, 1)  # (g, n, a)
        out1 = torch.empty(n, g, f * r, dtype=x.dtype).transpose(0, 1)
        torch.bmm(xs, w1, out=out1)  # (g, n, f r)
        mid = out1.reshape(g, n, f, r).transpose(0, 2).contiguous().reshape(f, n, g * r)
        out2 = torch.empty(n, f, e, dtype=x.dtype).transpose(0, 1)
        torch.bmm(mid, w2, out=out2)  # (f, n, e)
        ctx.save_for_backward(x, w1, w2, mid)
        ctx.sizes = (g, a, f, r, e)
        return out2.transpose(0, 1).reshape(n, f * e)

    @staticmethod
    def backward(ctx, grad):
        x, w1, w2, mid = ctx.saved_tensors
        g, a, f, r, e = ctx.sizes
        n = x.shape[0]
        gr = grad.reshape(n, f, e).transpose(0, 1)  # (f, n, e)
        aux = torch.empty(n, f, g * r, dtype=x.dtype).transpose(0, 1)
        torch.bmm(gr, w2.transpose(1, 2), out=aux)
        aux = aux.reshape(f, n, g, r).transpose(0, 2).contiguous().reshape(g, n, f * r)
        dx = torch.empty(n, g, a, dtype=x.dtype).transpose(0, 1)
        torch.bmm(aux, w1.transpose(1, 2), out=dx)
        dw1 = torch.bmm(aux.transpose(1, 2), x.reshape(n, g, a).transpose(0, 1)).transpose(1, 2)
        dw2 = torch.bmm(gr.transpose(1, 2), mid).transpose(1, 2)
        return dx.transpose(0, 1).reshape(n, g * a), dw1, dw2, None, None, None, None, None


class _ButterflyPaper(torch.autograd.Function):
    """Monarch as the block-diagonal butterfly multiply: w1 (k, q, p), w2 (l, s, r); own backward."""

    @staticmethod
    def forward(ctx, x, w1, w2):
        n = x.shape[0]
        k, q, p = w1.shape
        nl, s, r = w2.shape
        xs = x.reshape(n, k, p).transpose(0, 1)
        out1 = torch.empty(n, k, q, dtype=x.dtype).transpose(0, 1)
        torch.bmm(xs, w1.transpose(-1, -2), out=out1)
        out1 = out1.transpose(0, 1).reshape(n, r, nl).transpose(-1, -2).contiguous().transpose(0, 1)
        out2 = torch.empty(n, nl, s, dtype=x.dtype).transpose(0, 1)
        torch.bmm(out1, w2.transpose(-1, -2), out=out2)
        ctx.save_for_backward(x, w1, w2, out1)
        return out2.permute(1, 2, 0).reshape(n, s * nl)

    @staticmethod
    def backward(ctx, dout):
        x, w1, w2, out1 = ctx.saved_tensors
        n = x.shape[0]
        k, q, p = w1.shape
        nl, s, r = w2.shape
        dr = dout.reshape(n, s, nl).transpose(-1, -2).contiguous().transpose(0, 1)
        dw2 = torch.bmm(dr.transpose(-1, -2), out1)
        d1 = torch.empty(n, nl, r, dtype=x.dtype).transpose(0, 1)
        torch.bmm(dr, w2, out=d1)
        d1 = d1.transpose(0, 1).transpose(-1, -2).contiguous().reshape(n, k, q).transpose(0, 1)
        dx = torch.empty(n, k, p, dtype=x.dtype)
        dx = torch.bmm(d1, w1, out=dx.transpose(0, 1)).transpose(0, 1).reshape(n, k * p)
        dw1 = torch.bmm(d1.transpose(-1, -2), x.reshape(n, k, p).transpose(0, 1))
        return dx, dw1, dw2


def _kron_cola(x: torch.Tensor, mats: list[torch.Tensor]) -> torch.Tensor:
    """CoLA's Kronecker matmat on x^T: each factor's axis to the front, one matmul, back."""
    n = x.shape[0]
    ev = x.T.reshape(*(m.shape[-1] for m in mats), n)
    for i, m in enumerate(mats):
        front = torch.movedim(ev, i, 0)
        out = (m @ front.reshape(m.shape[-1], -1)).reshape(m.shape[0], *front.shape[1:])
        ev = torch.movedim(out, 0, i)
    return ev.reshape(-1, n).T


def _tt_paper(x: torch.Tensor, cores: list[torch.Tensor]) -> torch.Tensor:
    """The papers' TT operator: one einsum per core, cores (k, n, m, l)."""
    n = x.shape[0]
    v = x.view(n, *(c.shape[1] for c in cores), -1)
    for c in cores:
        v = torch.einsum("bn...k,knml->b...ml", v, c)
    return v.reshape(n, -1)


def paper_peer(name: str, z: dict[str, int], factors: list[torch.Tensor]) -> tuple[Callable, list] | None:
    """(fn(x2d, *params), params in the paper's layout) for a structure, or None."""
    A, B = (f.detach() for f in factors)
    if name in ("btt1", "btt2", "monarch", "monarch4"):  # the BTT code runs Monarch as rank 1
        g, a, f, e = z["g"], z["a"], z["f"], z["e"]
        r = z.get("r", 1)
        w = [A.reshape(g, a, f * r), B.reshape(f, g * r, e)]
        return (lambda x, w1, w2: _BTTPaper.apply(x, w1, w2, g, a, f, r, e)), w
    if name == "monarch-bfly":
        return _ButterflyPaper.apply, [A.permute(0, 2, 1), B.permute(0, 2, 1)]
    if name == "monarch4-bfly":
        g, a, r, f = A.shape
        e = B.shape[-1]
        w1 = A.permute(0, 2, 3, 1).reshape(g, r * f, a)
        return _ButterflyPaper.apply, [w1, B.permute(0, 3, 1, 2).reshape(f, e, g * r)]
    if name == "kronecker":
        return (lambda x, at, bt: _kron_cola(x, [at, bt])), [A.T, B.T]
    if name == "tt":
        return (lambda x, c1, c2: _tt_paper(x, [c1, c2])), [A[None], B.permute(1, 0, 2)[..., None]]
    if name == "lowrank":
        return (lambda x, u, v: x @ u @ v), [A, B]
    return None


def _optional(module: str) -> object | None:
    try:
        return importlib.import_module(module)
    except Exception as exc:  # a peer that does not install is skipped, and said so
        print(f"peer {module} unavailable: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None


def tltorch_peer(name: str, z: dict[str, int], factors: list[torch.Tensor]) -> tuple[Callable, list] | None:
    """tensorly-torch's TT-matrix layer carrying the same cores (TT, and Kronecker as TT rank 1)."""
    tl = _optional("tltorch")
    if tl is None or name not in ("tt", "kronecker"):
        return None
    A, B = (f.detach() for f in factors)
    if name == "kronecker":
        A, B = A[..., None], B[:, None, :]
    i1, o1, r = A.shape
    i2, o2 = B.shape[0], B.shape[2]
    layer = tl.FactorizedLinear(
        in_tensorized_features=(i1, i2),
        out_tensorized_features=(o1, o2),
        factorization="blocktt",
        rank=(1, r, 1),
        bias=False,
    )
    with torch.no_grad():
        layer.weight.factors[0].copy_(A.permute(1, 0, 2)[None])  # (1, o1, i1, r)
        layer.weight.factors[1].copy_(B.permute(1, 2, 0)[..., None])  # (r, o2, i2, 1)
    params = list(layer.parameters())
    return (lambda x, *_: layer(x)), params


def fastkron_peer(name: str, factors: list[torch.Tensor]) -> tuple[Callable, list] | None:
    """pyfastkron's fused x @ (A kron B) (its own autograd)."""
    fk = _optional("pyfastkron.fastkrontorch")
    if fk is None or name != "kronecker":
        return None
    # gemkm checks type(f) is torch.Tensor: pass plain views of the leaves
    return (lambda x, a, b: fk.gemkm(x, [a.view(a.shape), b.view(b.shape)])), [f.detach() for f in factors]


def einops_peer(structure) -> Core | None:
    eo = _optional("einops")
    if eo is None:
        return None
    names = {i.name: f"i_{i.name}" for i in structure.indices}
    axes = ["n", *(names[i] for i in structure.input.indices)]
    terms = [" ".join(axes), *(" ".join(names[i] for i in f.indices) for f in structure.factors)]
    pattern = ", ".join(terms) + " -> " + " ".join(["n", *(names[i] for i in structure.output.indices)])
    return lambda x, *fs: eo.einsum(x, *fs, pattern)


def _flat(core: Core, in_shape: tuple[int, ...]) -> Callable:
    """A core over reshaped axes as fn(x2d, *factors) -> y2d."""
    return lambda x, *fs: core(x.reshape(x.shape[0], *in_shape), fs).reshape(x.shape[0], -1)


def _unpacked(core: Callable) -> Core:
    return lambda x, fs: core(x, *fs)


def peers_for(name: str, structure, n: int, factors: list[torch.Tensor]) -> dict[str, tuple[Callable, list]]:
    """Every peer for one structure: name -> (fn(x2d, *params), its own leaf params)."""
    in_shape = tuple(int(structure.size(i)) for i in structure.input.indices)
    z = {i.name: int(i.size) for i in structure.indices}
    own = [f.detach() for f in factors]
    steps = einsum_steps(structure, n)
    out: dict[str, tuple[Callable, list]] = {
        "einsum1": (_flat(einsum_one(structure), in_shape), own),
        "einsum2": (_flat(steps, in_shape), own),
        "compile2": (_flat(torch.compile(steps, dynamic=False), in_shape), own),
    }
    eo = einops_peer(structure)
    if eo is not None:
        out["einops"] = (_flat(_unpacked(eo), in_shape), own)
    for key, peer in (
        ("paper", paper_peer(name, z, factors)),
        ("tltorch", tltorch_peer(name, z, factors)),
        ("fastkron", fastkron_peer(name, factors)),
    ):
        if peer is not None:
            out[key] = peer
    return {k: (fn, [_leaf(p) for p in ps]) for k, (fn, ps) in out.items()}


def _leaf(p: torch.Tensor) -> torch.Tensor:
    """A peer's own parameter: its module's (already a leaf) or a contiguous copy of the converted values."""
    return p if p.requires_grad else p.detach().clone().contiguous().requires_grad_(True)


def agrees(fn: Callable, params: list, x: torch.Tensor, y_ref: torch.Tensor, gx_ref: torch.Tensor, gy) -> str:
    """'' when the peer computes einstruct's map (output and input gradient), else what differs."""
    xx = x.detach().requires_grad_(True)
    y = fn(xx, *params)
    (gx,) = torch.autograd.grad(y, [xx], gy)
    scale = y_ref.abs().max().item() + 1e-12
    err = (y - y_ref).abs().max().item() / scale
    gerr = (gx - gx_ref).abs().max().item() / (gx_ref.abs().max().item() + 1e-12)
    return "" if err < 1e-4 and gerr < 1e-4 else f"output differs by {err:.1e}, input grad by {gerr:.1e}"


def bench(name: str, d: int, n: int, repeats: int) -> list[tuple[str, int, str, dict[str, float], list[str]]]:
    src = SPECS[name](d)
    structure = einstruct.load(src)
    torch._dynamo.reset()  # each structure's torch.compile starts afresh (one code object, many shapes)
    gen = torch.Generator().manual_seed(0)
    layer = einstruct.compile(src, batch=n)(bias=False)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * p.std().clamp_min(0.02))
    # the layer stores each factor in the planner's axis order (factor_axes): the peers get the written order
    stored = type(layer).factor_axes
    factors = [
        getattr(layer, f.name).permute(*(stored[f.name].index(i) for i in f.indices))
        for f in structure.factors
    ]
    x = torch.randn(n, layer.in_features, generator=gen)
    gy = torch.randn(n, layer.out_features, generator=gen)
    xr = x.clone().requires_grad_(True)
    y_ref = layer(xr)
    (gx_ref,) = torch.autograd.grad(y_ref, [xr], gy)
    dense_err = (y_ref - x @ layer.to_dense().T).abs().max().item() / y_ref.abs().max().item()
    assert dense_err < 1e-4, f"einstruct's {name} differs from its dense matrix by {dense_err:.1e}"
    notes: list[str] = []
    runs: dict[str, tuple[Callable, list]] = {
        "einstruct": (lambda xx, *_: layer(xx), list(layer.parameters()))
    }
    for key, (fn, params) in peers_for(name, structure, n, factors).items():
        why = agrees(fn, params, x, y_ref.detach(), gx_ref, gy)
        if why:
            notes.append(f"{key} dropped: {why}")
        else:
            runs[key] = (fn, params)
    rows = []
    xg = x.clone().requires_grad_(True)
    for mode in ("fwd", "fwdbwd"):
        fns = {}
        for key, (fn, params) in runs.items():
            if mode == "fwd":

                def call(fn=fn, params=params) -> None:
                    with torch.no_grad():
                        fn(x, *params)

            else:

                def call(fn=fn, params=params) -> None:
                    fn(xg, *params).backward(gy)

            fns[key] = call
        times = interleaved(fns, repeats=repeats, warmup=2, shuffle=len(rows))
        ms = {k: median_ms(v) for k, v in times.items()}
        rows.append((name, d, mode, ms, notes))
        print(_line(rows[-1]), flush=True)
    return rows


def _line(row) -> str:
    name, d, mode, ms, _ = row
    best = min((k for k in ms if k != "einstruct"), key=ms.__getitem__)
    parts = "  ".join(f"{k} {v:.2f}" for k, v in ms.items())
    return f"{name:9s} d={d:5d} {mode:6s} {parts}  | best peer {best}: {ms[best] / ms['einstruct']:.2f}x"


PEERS = ("paper", "einsum1", "einsum2", "compile2", "einops", "tltorch", "fastkron")


def markdown(rows, header: str) -> str:
    lines = [header, ""]
    lines.append("| structure | d | mode | einstruct ms | " + " | ".join(PEERS) + " | fastest peer | ratio |")
    lines.append("| --- | ---: | --- | ---: | " + " | ".join("---:" for _ in PEERS) + " | --- | ---: |")
    for name, d, mode, ms, _ in rows:
        best = min((k for k in ms if k != "einstruct"), key=ms.__getitem__)
        cells = [f"{ms[p]:.1f}" if p in ms else "-" for p in PEERS]
        ratio = ms[best] / ms["einstruct"]
        lines.append(
            f"| {name} | {d} | {mode} | {ms['einstruct']:.1f} | "
            + " | ".join(cells)
            + f" | {best} | {ratio:.2f}x |"
        )
    notes = sorted({f"{name} d={d}: {note}" for name, d, _, _, ns in rows for note in ns})
    return "\n".join(lines + ([""] + [f"- {n}" for n in notes] if notes else [])) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--structures", nargs="+", default=list(SPECS), choices=list(SPECS))
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="write the markdown table here")
    ap.add_argument(
        "--malloc",
        choices=["steady", "default"],
        default="steady",
        help="steady: glibc keeps freed memory (timing.steady_allocator); default: as the process starts",
    )
    args = ap.parse_args(argv)
    steady = args.malloc == "steady" and steady_allocator()
    torch.set_num_threads(args.threads)
    torch._dynamo.config.recompile_limit = 64
    rows = []
    for d in args.sizes:
        for name in args.structures:
            rows += bench(name, d, args.batch, args.repeats)
    header = (
        f"CPU {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} thread(s), N = {args.batch}, fp32, medians of {args.repeats} interleaved rounds "
        f"in shuffled order, {'steady' if steady else 'default'} allocator (ms)"
    )
    text = markdown(rows, header)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
