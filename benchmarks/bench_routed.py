"""Routed (BTT-MoE) layers against plain BTT of rank k: forward + backward time and saved memory.

Run: python benchmarks/bench_routed.py [--d 1024] [--batch 2048] [--experts 8] [--ks 1 2 4 8] [--repeats 15]
     [--threads N]

For each k, a BTT-MoE layer with E experts keeping the top k per token (the
sparse path: each expert on its own tokens, planned backward) and a plain BTT
of rank k (forced structured), which does the same FLOPs in its factors; also dense ``nn.Linear``
and, at k = 2, the masked path (every expert computed and gated,
``sparse_experts=False``). Everything is timed forward + backward side by
side in one process (interleaved rounds after a warm-up, medians), so the
machine's load hits every row alike; the load average before and after is
printed. "Saved MB" is the activation memory autograd keeps for the backward
(distinct storages, parameters excluded, the input included). Router weights
are random normal, so the experts get roughly even shares of the tokens.
"""

from __future__ import annotations

import argparse
import os
import platform

import torch
from timing import SavedBytes, interleaved, median_ms

import einstruct

__all__ = ["main"]

EQUATION = "    y[f, e] = x[g, a] * A[g, a, f, r] * B[f, g, r, e]\n"
BTT = "structure btt(d = {d}, rank = {k}):\n" + EQUATION
MOE = "structure moe(d = {d}, experts = {experts}, k = {k}):\n" + EQUATION
SIZES = "    where g = a = f = e = d^(1/2), r = {r}\n"


def _layers(d: int, experts: int, ks: list[int], batch: int) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    layers: dict[str, torch.nn.Module] = {"dense": torch.nn.Linear(d, d)}
    for k in ks:
        btt = BTT.format(d=d, k=k) + SIZES.format(r="rank")
        layers[f"btt rank {k}"] = einstruct.compile(btt, batch=batch, strategy="structured")()
        spec = MOE.format(d=d, experts=experts, k=k) + SIZES.format(r="experts") + "    route r top k\n"
        moe = einstruct.compile(spec, batch=batch)
        for sparse in (True, False) if k == 2 else (True,):
            layer = moe(sparse_experts=sparse)
            with torch.no_grad():
                layer.router.weight.normal_()
            layers[f"moe top {k}" + ("" if sparse else " masked")] = layer
    return layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    layers = _layers(args.d, args.experts, args.ks, args.batch)
    x = torch.randn(args.batch, args.d, requires_grad=True)
    params = {p.untyped_storage().data_ptr() for m in layers.values() for p in m.parameters()}
    saved = {}
    for name, layer in layers.items():
        with SavedBytes(params) as counter:
            layer(x)
        saved[name] = counter.nbytes / 2**20
    times = interleaved({k: (lambda m=m: m(x).sum().backward()) for k, m in layers.items()}, args.repeats)
    ms = {name: median_ms(t) for name, t in times.items()}
    load_after = os.getloadavg()
    print(
        f"d = {args.d}, N = {args.batch} tokens, E = {args.experts}, forward + backward, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}; "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    print()
    print("| variant | fwd+bwd ms | saved MB | time / BTT rank k | saved / BTT rank k |")
    print("|---|---|---|---|---|")
    for name in layers:
        k = (
            name.split()[-1]
            if name.startswith("btt")
            else name.split()[2]
            if name.startswith("moe")
            else None
        )
        base = f"btt rank {k}" if k is not None and f"btt rank {k}" in ms else None
        ratio = f"{ms[name] / ms[base]:.2f}" if base else ""
        mem = f"{saved[name] / saved[base]:.2f}" if base else ""
        print(f"| {name} | {ms[name]:.1f} | {saved[name]:.1f} | {ratio} | {mem} |")


if __name__ == "__main__":
    main()
