"""Measure search results where they will run: compiled layers against a dense layer, timed.

Each result is compiled as ``einstruct compile`` would compile it (the torch
backend, the planner's ``auto`` strategy, the contraction order chosen for the
batch) and timed for one forward + backward on ``batch`` random tokens,
float32, side by side with ``torch.nn.Linear`` of the same shape (no bias on
either): every function runs once per round, rounds are repeated after a
warm-up, and each time is the median over the rounds, so slow drifts of a
shared machine hit every layer alike.

Per result: ``ms`` (median forward + backward), ``dense_ms`` (the dense layer's,
same rounds), ``speedup_vs_dense`` = dense_ms / ms and ``measured_efficiency``
= the layer's FLOP/s over the dense layer's FLOP/s (speedup x flops / dense
flops): the fraction of dense throughput the structure reaches on this machine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from ..errors import MissingExtraError, ParameterError
from ..space.pareto import rank_key
from ..space.results import SearchReport, SearchResult
from .build import compile_structure

__all__ = ["DEVICES", "interleaved", "measure_report"]

#: Devices ``--device`` accepts.
DEVICES = ("cpu", "cuda")


def interleaved(
    fns: Mapping[str, Callable[[], object]], repeats: int, warmup: int, sync: Callable[[], None]
) -> dict[str, float]:
    """Median seconds of each function over ``repeats`` rounds (one call of each per round)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            samples[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in samples.items()}


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise MissingExtraError(
            "measuring candidates needs torch", hint="pip install 'einstruct[torch]'"
        ) from None
    return torch


def check_measurable(d_in: int, d_out: int, batch: int) -> None:
    """Refuse, before any search or allocation, timing ``batch`` tokens of a
    ``d_in -> d_out`` layer whose dense baseline alone would not fit (the parameter
    limit, half this machine's memory)."""
    _torch()  # timing needs torch: say so first
    from .measured_paths import check_timing_size

    dense_bytes = 4 * (batch * 2 * (d_in + d_out) + 2 * d_in * d_out)
    check_timing_size(batch, max(d_in, d_out), dense_bytes, "time a smaller --batch")


def measure_report(
    report: SearchReport, device: str = "cpu", batch: int = 256, repeats: int = 7, warmup: int = 2
) -> SearchReport:
    """Time every result of ``report`` against dense; re-rank if the query ranks by measurement."""
    if device not in DEVICES:
        raise ParameterError(f"unknown device '{device}'", hint=f"choose one of {', '.join(DEVICES)}")
    if batch < 1 or repeats < 1 or warmup < 0:
        raise ParameterError("batch and repeats must be at least 1", hint="e.g. --batch 256 --repeats 7")
    torch = _torch()
    if device == "cuda" and not torch.cuda.is_available():
        raise ParameterError("CUDA is not available to torch here", hint="measure with --device cpu")
    from .measured_paths import check_class_timing

    results = list(report.results)
    q = report.query
    check_measurable(q.d_in, q.d_out, batch)
    kw = {"device": device, "dtype": torch.float32}
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, q.d_in, generator=gen).to(device).requires_grad_(True)
    gy = torch.randn(batch, q.d_out, generator=gen).to(device)
    dense = torch.nn.Linear(q.d_in, q.d_out, bias=False, **kw)
    layers: dict[str, Any] = {"dense": dense}
    strategies: dict[str, str] = {}
    for r in results:
        cls = compile_structure(r.structure, batch=batch)
        check_class_timing(cls, batch, 4)
        layer = cls(bias=False, **kw)
        layers[r.name] = layer
        strategies[r.name] = layer.strategy

    def step(layer: Any) -> Callable[[], object]:
        return lambda: layer(x).backward(gy)

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    seconds = interleaved({k: step(v) for k, v in layers.items()}, repeats, warmup, sync)
    dense_ms = 1e3 * seconds["dense"]
    measured = {r.name: _timed(r, 1e3 * seconds[r.name], dense_ms) for r in results}
    if q.rank == "measured":  # the measured results first, fastest first; then the rest as ranked
        rest = [r for r in report.candidates if r.name not in measured]
        candidates = tuple(sorted(measured.values(), key=rank_key("measured"))) + tuple(rest)
    else:
        candidates = tuple(measured.get(r.name, r) for r in report.candidates)
    info = {
        "device": device if device == "cpu" else torch.cuda.get_device_name(),
        "batch": batch,
        "repeats": repeats,
        "dense_ms": dense_ms,
        "strategies": strategies,
        "torch": torch.__version__,
    }
    return replace(report, candidates=candidates, measured=info)


def _timed(r: SearchResult, ms: float, dense_ms: float) -> SearchResult:
    speedup = dense_ms / ms
    return replace(
        r,
        ms=ms,
        dense_ms=dense_ms,
        speedup_vs_dense=speedup,
        measured_efficiency=speedup * float(r.flops_ratio),
    )
