"""Independent references for the tests: dense matrices from plain einsums.

Nothing here uses einstruct's planner or generated code: the dense matrix of a
layer is computed with opt_einsum from its parameters and its declared axes.
"""

from __future__ import annotations

import numpy as np
import opt_einsum


def dense_from_factors(layer) -> np.ndarray:
    """(out_features, in_features) matrix of a generated layer, by one einsum."""
    sizes = dict(layer.index_sizes)
    d_in = int(np.prod([sizes[i] for i in layer.input_axes]))
    eye = np.eye(d_in).reshape(d_in, *(sizes[i] for i in layer.input_axes))
    operands, subscripts = [eye], [("__n", *layer.input_axes)]
    for name, axes in layer.factor_axes.items():
        operands.append(getattr(layer, name).detach().double().numpy())
        subscripts.append(tuple(axes))
    names = ["__n", *sizes]
    sym = {n: opt_einsum.get_symbol(k) for k, n in enumerate(names)}
    eq = ",".join("".join(sym[i] for i in sub) for sub in subscripts)
    eq += "->" + "".join(sym[i] for i in ("__n", *layer.output_axes))
    full = opt_einsum.contract(eq, *operands).reshape(d_in, -1)  # (d_in, d_out) padded
    return full[: layer.in_features, : layer.out_features].T


def dense_torch(layer, factors: dict):
    """The dense matrix as a differentiable torch expression of ``factors``."""
    import torch

    sizes = dict(layer.index_sizes)
    d_in = int(np.prod([sizes[i] for i in layer.input_axes]))
    first = next(iter(factors.values()))
    eye = torch.eye(d_in, dtype=first.dtype).reshape(d_in, *(sizes[i] for i in layer.input_axes))
    names = ["__n", *sizes]
    sym = {n: opt_einsum.get_symbol(k) for k, n in enumerate(names)}
    subs = [("__n", *layer.input_axes)] + [tuple(layer.factor_axes[n]) for n in factors]
    eq = ",".join("".join(sym[i] for i in s) for s in subs)
    eq += "->" + "".join(sym[i] for i in ("__n", *layer.output_axes))
    full = torch.einsum(eq, eye, *factors.values()).reshape(d_in, -1)
    return full[: layer.in_features, : layer.out_features].T
