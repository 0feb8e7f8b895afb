"""Independent references for the tests: dense matrices and routed layers from plain einsums.

Nothing here uses einstruct's planner or generated code: the dense matrix of a
layer is computed with opt_einsum from its parameters and its declared axes,
a routed layer's output from its router's top-k gate and one einsum.
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


def assert_dense_forward_and_backward(layer, tokens: int = 8) -> None:
    """The layer's output and the gradients of its input and every factor equal those of
    its dense matrix (``dense_torch``, bias added) on random float64 tokens."""
    import torch

    x = torch.randn(tokens, layer.in_features, dtype=torch.float64, requires_grad=True)
    g = torch.randn(tokens, layer.out_features, dtype=torch.float64)
    y = layer(x)
    (y * g).sum().backward()
    factors = {n: getattr(layer, n).detach().clone().requires_grad_() for n in layer.factor_axes}
    xr = x.detach().clone().requires_grad_()
    y_ref = xr @ dense_torch(layer, factors).T + layer.bias.detach()
    (y_ref * g).sum().backward()
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(x.grad, xr.grad)
    for name, ref in factors.items():
        torch.testing.assert_close(getattr(layer, name).grad, ref.grad)


def routed_reference(layer, x: np.ndarray):
    """A routed (BTT-MoE) layer's output and aux loss for ``x`` (tokens, in_features),
    computed with numpy and one opt_einsum call over the input, the gate and the factors."""
    experts, k = layer.experts, layer.top_k
    logits = x @ layer.router.weight.detach().numpy().T
    chosen = np.argsort(-logits, axis=1)[:, :k]
    top = np.take_along_axis(logits, chosen, axis=1)
    weights = np.exp(top - top.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    gate = np.zeros_like(logits)
    np.put_along_axis(gate, chosen, weights, axis=1)
    sizes = dict(layer.index_sizes)
    width = int(np.prod([sizes[i] for i in layer.input_axes]))
    xs = np.pad(x, ((0, 0), (0, width - x.shape[1]))).reshape(len(x), *(sizes[i] for i in layer.input_axes))
    letters = {name: opt_einsum.get_symbol(j) for j, name in enumerate(["__n", *sizes])}
    subs = [("__n", *layer.input_axes), ("__n", "r")]
    ops = [xs, gate]
    for name, axes in layer.factor_axes.items():
        subs.append(axes)
        ops.append(getattr(layer, name).detach().numpy())
    eq = ",".join("".join(letters[i] for i in s) for s in subs)
    eq += "->" + "".join(letters[i] for i in ("__n", *layer.output_axes))
    y = opt_einsum.contract(eq, *ops).reshape(len(x), -1)[:, : layer.out_features]
    y = y + layer.bias.detach().numpy()
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    slots = np.zeros_like(logits)
    np.put_along_axis(slots, chosen, 1.0, axis=1)
    balance = experts * np.sum(probs.mean(axis=0) * slots.mean(axis=0) / k)
    log_z = np.log(np.exp(logits - logits.max(axis=1, keepdims=True)).sum(axis=1)) + logits.max(axis=1)
    return y, balance + 0.1 * np.mean(log_z**2)


def routed_torch(layer, params: dict, x):
    """A routed layer's output for ``x`` (tokens, in_features) as a differentiable torch
    expression of ``params`` (name -> tensor, as ``named_parameters``): the top-k gate
    of the router's logits and one ``torch.einsum`` over the input, the gate and the
    factors (every expert computed, then gated)."""
    import torch

    logits = x @ params["router.weight"].T
    top, chosen = logits.topk(layer.top_k, dim=-1)
    gate = torch.zeros_like(logits).scatter(-1, chosen, top.softmax(dim=-1))
    sizes = dict(layer.index_sizes)
    width = int(np.prod([sizes[i] for i in layer.input_axes]))
    xs = torch.nn.functional.pad(x, (0, width - x.shape[1]))
    xs = xs.reshape(len(x), *(sizes[i] for i in layer.input_axes))
    letters = {name: opt_einsum.get_symbol(j) for j, name in enumerate(["__n", *sizes])}
    subs = [("__n", *layer.input_axes), ("__n", "r"), *layer.factor_axes.values()]
    eq = ",".join("".join(letters[i] for i in s) for s in subs)
    eq += "->" + "".join(letters[i] for i in ("__n", *layer.output_axes))
    y = torch.einsum(eq, xs, gate, *(params[name] for name in layer.factor_axes))
    return y.reshape(len(x), -1)[:, : layer.out_features] + params["bias"]
